"""FusedSGD(backend="triton") end to end under Triton's interpreter (in a child process).

The checks live in tests/_triton_optimizer_subprocess.py: TRITON_INTERPRET=1 must be set before
triton is imported, which this pytest process may already have done.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent / "_triton_optimizer_subprocess.py"

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def run_cases():
    def run(*cases, env_extra=None):
        env = dict(os.environ, TRITON_INTERPRET="1", **(env_extra or {}))
        proc = subprocess.run([sys.executable, str(SCRIPT), *cases], env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"{cases} failed under the interpreter:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}", pytrace=False)
        for case in cases:
            assert f"{case}: ok" in proc.stdout

    return run


def test_every_scheduler_one_launch_per_step(run_cases):
    """Step/cosine/multistep/linear/lambda (device and table)/stock scheduler/manual decay: params and
    buffers vs stock torch.optim.SGD + stock scheduler and vs the torch path at every step, one kernel
    launch per dtype per step, sched.step() doing no device work, the counter advanced by the kernel."""
    run_cases("schedulers")


def test_bf16_and_plateau_and_epoch_schedules(run_cases):
    run_cases("bf16", "plateau", "epoch_schedule", "edits")


def test_state_dict_resume_on_the_triton_path(run_cases):
    run_cases("resume")


def test_steady_state_fast_path_and_its_fallbacks(run_cases):
    run_cases("fast_path")


def test_amp_gradscaler_on_the_triton_path(run_cases):
    """GradScaler.step(FusedSGD(backend="triton")) vs stock SGD + GradScaler and vs the torch path:
    skipped first steps (the device-side first-step flag survives them; state_dict reports no buffer),
    a deferred scheduler step applied by a skipped launch; fp32, bf16, fp16 (vs the torch path) and mixed."""
    run_cases("amp", "amp_bf16", "amp_fp16", "amp_mixed")


def test_fused_clipping_on_the_triton_path(run_cases):
    """Norm kernels + clipped update vs clip_grad_norm_ + stock SGD (2-norm and inf-norm, with AMP;
    complex params take the torch path under the inf-norm and join the norm as an extra partial),
    a NaN gradient, error_if_nonfinite raising before anything changes."""
    run_cases("clip", "clip_plain")


def test_every_layout_on_the_triton_path(run_cases):
    """Slices, as_strided views, transposed, channels_last, 0-dim parameters; gradients contiguous,
    permuted, expanded, views: vs stock SGD's for-loop (fp32, fp64, bf16) with nothing outside a
    parameter written; dense layouts stay in the kernel and on the fast path (tests/_layout_cases.py)."""
    run_cases("layouts")


def test_optimizer_api_and_torch_optim_db_on_the_triton_path(run_cases, tmp_path):
    """tests/_optimizer_api_cases.py (named parameters, groups edited directly, state keys and
    hooks, deepcopy/pickle, sparse gradients, meta parameters, differentiable, foreach/fused) and
    torch's SGD test data (tests/_optim_db_cases.py) on backend="triton", beside stock, in one child
    process. torch's data is built here and handed over pickled: importing it costs ~10 s, which
    this process pays once for tests/test_optim_db.py too."""
    import _optim_db_cases as db

    path = tmp_path / "optim_db.pkl"
    path.write_bytes(pickle.dumps(db.torch_data(with_schedulers=False)))
    run_cases("api", "optim_db", env_extra={"FUSED_LR_OPTIM_DB": str(path)})


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error():
    import torch

    import fused_lr
    from fused_lr import engine

    if engine.interpreting():
        pytest.skip("this pytest process runs under TRITON_INTERPRET=1")
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fused_lr.FusedSGD([p], lr=0.1, backend="triton")
    assert fused_lr.FusedSGD([p], lr=0.1).implementation == "torch"  # auto on CPU
