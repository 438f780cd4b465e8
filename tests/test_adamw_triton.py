"""FusedAdamW / FusedAdam(backend="triton") end to end under Triton's interpreter, in one child process.

The checks live in tests/_triton_adamw_subprocess.py (TRITON_INTERPRET=1 must be set before triton
is imported, which this pytest process may already have done). Every case runs in one child
(a module fixture), so the interpreter's start-up and torch's optimizer test data are paid once;
each test then reports its own cases.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent / "_triton_adamw_subprocess.py"
CASES = ("combos", "schedulers", "bf16", "amp", "clip", "compile", "resume", "layouts", "misaligned", "optim_db", "bad_input")

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    """Runs every case; returns (stdout, stderr, returncode). A failing case stops the child, so
    the cases after it report as not run."""
    import _optim_db_cases as db

    path = tmp_path_factory.mktemp("adamw_triton") / "optim_db.pkl"
    path.write_bytes(pickle.dumps({n: db.torch_data(with_schedulers=False, name=n) for n in ("adamw", "adam")}))
    env = dict(os.environ, TRITON_INTERPRET="1", FUSED_LR_OPTIM_DB=str(path))
    proc = subprocess.run([sys.executable, str(SCRIPT), *CASES], env=env, capture_output=True, text=True, timeout=900)
    return proc.stdout, proc.stderr, proc.returncode


def _check(child, *cases):
    out, err, rc = child
    missing = [c for c in cases if f"{c}: ok" not in out]
    if missing:
        pytest.fail(f"{missing} failed or did not run under the interpreter (rc {rc}):\n{out[-3000:]}\n{err[-6000:]}",
                    pytrace=False)


def test_every_option_combination_matches_stock_one_launch_per_dtype(child):
    """amsgrad x maximize x weight_decay as per-parameter groups with their own LRs, sizes 0-dim, 1,
    127, 1025 (three chunks), a complex parameter, a None grad on one step, a parameter unfrozen
    late: kernel vs stock for-loop, stock foreach and the torch path after every step (params,
    step, exp_avg, exp_avg_sq, max_exp_avg_sq), fp32 and fp64, AdamW and Adam, one launch per
    dtype per step, every group's LR as stock's."""
    _check(child, "combos")


def test_per_group_and_momentum_cycling_schedules(child):
    """PerGroupLR (two schedules in one launch), CosineAnnealingLR, OneCycleLR and CyclicLR
    cycling betas[0] (read by the kernel from the schedule's momentum row) as torch cycles it."""
    _check(child, "schedulers")


def test_bf16_against_the_torch_path(child):
    _check(child, "bf16")


def test_amp_skipped_steps_including_the_first(child):
    """GradScaler: skipped steps (the first included) leave params, moments and step unchanged on
    the kernel path; the rest matches stock's for-loop; step counts equal stock's."""
    _check(child, "amp")


def test_fused_clipping_on_the_kernel(child):
    """max_grad_norm (norm kernels + clipped update) vs clip_grad_norm_ + stock, 2-norm and inf-norm."""
    _check(child, "clip")


def test_kernel_inside_a_compiled_step(child):
    """torch.compile (aot_eager): the kernel through the custom op, no recompile, steps as stock."""
    _check(child, "compile")


def test_state_dict_interchange_with_stock_mid_schedule(child):
    _check(child, "resume")


def test_every_layout_on_the_kernel(child):
    """tests/_layout_cases.py: views, transposes, channels_last, 0-dim; nothing outside a parameter
    written; dense layouts stay in the kernel, moments in the parameter's strides."""
    _check(child, "layouts")



def test_misaligned_tensor_splits_the_launch_and_advances_each_step_count_once(child):
    """An aligned and a misaligned parameter of one dtype (3 and 2 chunks): two launches per step,
    the aligned one's on the vector path (ALIGNED=True); each ``step`` advanced once per step and
    not on an AMP-skipped one; parameters and state as stock's."""
    _check(child, "misaligned")

def test_torch_optim_db_on_the_kernel(child):
    """torch's optim_inputs_func_adamw / _adam (15 inputs each) and their error inputs (12 each)."""
    _check(child, "optim_db")


def test_bad_input_raises_before_anything_changes(child):
    _check(child, "bad_input")
