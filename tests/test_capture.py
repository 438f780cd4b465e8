"""CUDA-graph capture and device placement, simulated on CPU (``fused_lr._device.capturing`` and the
CUDA device context patched).

The Triton path's capture behaviour runs in a child process under Triton's interpreter
(tests/_capture_subprocess.py, with an emulated graph: see its docstring): both of torch's recipes
(whole step captured; only ``opt.step()`` captured with ``sched.step()`` eager) match stock torch
replay after replay (no frozen and no double-advanced LR), tables a captured launch reads outlive
eager churn, and work a capture cannot hold is refused with an error naming the fix. The
``_device`` upload rules and the optimizer-level refusal are checked here, in process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fused_lr
from fused_lr import _device

HERE = Path(__file__).resolve().parent


def test_upload_inside_a_capture_is_owned_or_refused(monkeypatch):
    """While capturing, an upload's staging comes from pinned memory set aside before the capture
    (allocating pinned memory is refused in a capture: ``pin_memory`` is never called), and that
    memory goes to its owner's ``keep`` list (the graph's copy node reads it at every replay);
    without a reserve, or with one used up, the upload is refused naming the fix; so is a schedule
    edit (its rows are uploaded from the host)."""
    monkeypatch.setattr(_device, "capturing", lambda device: True)

    def no_pinning(self):
        raise AssertionError("pinned memory allocated inside a capture")

    monkeypatch.setattr(torch.Tensor, "pin_memory", no_pinning)
    meta = torch.device("meta")  # (a device other than the host's: the upload path of an accelerator)
    reserve = _device.Reserve(40, meta)
    reserve.buf = torch.zeros(40, dtype=torch.uint8)  # stands in for the pinned buffer a GPU gets
    keep: list = []
    out = _device.upload([1, 2, 3], torch.int64, meta, keep, reserve)
    hyper = _device.to_device(torch.tensor([0.5]), meta, keep, reserve)  # another dtype, 8-byte aligned
    assert out.device == meta and out.shape == (3,) and hyper.shape == (1,)
    assert len(keep) == 1 and keep[0] is reserve.buf
    assert reserve.buf[:24].view(torch.int64).tolist() == [1, 2, 3]
    assert reserve.buf[24:28].view(torch.float32).tolist() == [0.5]
    with pytest.raises(RuntimeError, match="Run the same step eagerly"):
        _device.upload([1, 2], torch.int64, meta, keep, reserve)  # used up
    with pytest.raises(RuntimeError, match="Run the same step eagerly"):
        _device.upload([1, 2, 3], torch.int64, meta, keep)  # no reserve
    from fused_lr.schedules import device as sched_device

    dst = torch.empty(2, device=meta)
    with pytest.raises(RuntimeError, match="outside the captured region"):
        sched_device._copy_to_device(dst, torch.ones(2))


def test_error_if_nonfinite_under_capture_is_a_clear_error(monkeypatch):
    """error_if_nonfinite reads the norm on the host: under a capture the step refuses before
    changing anything, naming the fix (both backends: the check is the optimizer's)."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = fused_lr.FusedSGD([p], lr=0.1, momentum=0.9, backend="torch", max_grad_norm=1.0, error_if_nonfinite=True)
    p.grad = torch.ones(4)
    opt.step()
    before, buf = p.detach().clone(), opt.state[p]["momentum_buffer"].clone()
    monkeypatch.setattr(_device, "capturing", lambda device: True)
    with pytest.raises(RuntimeError, match="error_if_nonfinite=False"):
        opt.step()
    assert torch.equal(p, before) and torch.equal(opt.state[p]["momentum_buffer"], buf)


CASES = ["capture_errors", "whole_step", "opt_step_only", "ownership", "device_guard", "hyper_is_data", "warmup"]


@pytest.fixture(scope="module")
def child_results() -> str:
    """One child process runs every case (the interpreter is slow to start); its stdout."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, str(HERE / "_capture_subprocess.py"), *CASES], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"failed under the interpreter:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}", pytrace=False)
    return proc.stdout


@pytest.mark.parametrize("case", ["whole_step", "opt_step_only"])
def test_captured_recipes_never_freeze_or_double_advance_the_lr(child_results, case):
    assert f"{case}: ok" in child_results


def test_tables_a_captured_launch_reads_are_never_freed(child_results):
    assert "ownership: ok" in child_results


def test_work_a_capture_cannot_hold_is_refused_naming_the_fix(child_results):
    assert "capture_errors: ok" in child_results


def test_every_launch_is_issued_on_the_parameters_device(child_results):
    """Device placement (a stub device context, see ``case_device_guard``)."""
    assert "device_guard: ok" in child_results


def test_changed_hyper_parameters_rewrite_the_hyper_table_not_the_plan(child_results):
    """A stock OneCycleLR cycling momentum (see ``case_hyper_is_data``)."""
    assert "hyper_is_data: ok" in child_results


def test_warmup_lists_every_variant_and_launches_nothing(child_results):
    """``opt.warmup()`` (see ``case_warmup``; the compiles themselves: tests/test_gpu.py)."""
    assert "warmup: ok" in child_results
