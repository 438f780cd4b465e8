"""The Triton kernels under Triton's CPU interpreter, against the torch references.

Triton reads ``TRITON_INTERPRET`` when ``triton`` is imported, and other test modules in this
process may import it first, so the checks themselves live in ``tests/_triton_subprocess.py`` and
run in child processes started with ``TRITON_INTERPRET=1`` (two at a time: the interpreter is
single-threaded Python). Each test here reports one case's result, with the child's traceback on
failure. What is compared, and every tolerance with its justification, is in that file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "_triton_subprocess.py"

# Two children, balanced by measured run time (about 20-25 s each on 2 cores).
WORKERS = (
    ("sgd_bf16", "production_config", "grad_norm", "engine_state_lists"),
    ("sgd_fp32", "sgd_fp64_fp16", "lr_at", "kernel_shape"),
)
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def interpreter_results(tmp_path_factory) -> dict:
    out_dir = tmp_path_factory.mktemp("triton_interpreter")
    env = dict(os.environ, TRITON_INTERPRET="1")
    # Repository root first, so the child imports this checkout's fused_lr.
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    procs = []
    for k, cases in enumerate(WORKERS):
        out = out_dir / f"worker{k}.json"
        log = open(out_dir / f"worker{k}.log", "w+")
        proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), *cases], env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append((proc, out, log, cases))
    results = {}
    for proc, out, log, cases in procs:
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.seek(0)
        output = log.read()
        log.close()
        if proc.returncode == 0 and out.exists():
            results.update(json.loads(out.read_text()))
        else:
            for case in cases:
                results[case] = dict(ok=False, seconds=None, message=f"child exited with {proc.returncode}:\n{output}")
    return results


def _report(results: dict, case: str) -> None:
    result = results[case]
    if not result["ok"]:
        pytest.fail(f"{case} failed under the interpreter:\n{result['message']}", pytrace=False)
    print(f"{case}: {result['message']} ({result['seconds']} s)")


def test_lr_at_matches_torch_reference(interpreter_results):
    """Every schedule kind at many steps (0, boundaries, past T_max, 10**12, 2**53 - 1)."""
    _report(interpreter_results, "lr_at")


def test_sgd_fp32_matches_stock(interpreter_results):
    """Every option combination as its own group, every schedule kind, mixed sizes, 20 steps,
    a tensor whose first step comes late and a None grad mid-run; bitwise vs the opmath
    reference, within STOCK_TOL of torch.optim.SGD(foreach=False)."""
    _report(interpreter_results, "sgd_fp32")


def test_sgd_bf16_matches_stock(interpreter_results):
    """As for float32; bitwise vs the float32-math reference rounded once to bfloat16, loosely vs
    stock's bfloat16 for-loop, and at least as accurate as stock against the float64 trajectory."""
    _report(interpreter_results, "sgd_bf16")


def test_sgd_fp64_and_fp16(interpreter_results):
    """float64 (float64 math, 1e-12 vs stock) and float16 (bitwise vs the opmath reference)."""
    _report(interpreter_results, "sgd_fp64_fp16")


def test_production_launch_config(interpreter_results):
    """Production BLOCK_SIZE / CHUNK_BLOCKS on a tensor larger than a chunk, plus an unaligned view."""
    _report(interpreter_results, "production_config")


def test_grad_norm_kernels(interpreter_results):
    """Clipping's norm kernels: per-chunk partials (sum of squares, max |g|) for every dtype with NaN
    and inf gradients, written only to the launch's slots; the finalize over more partials than one
    block, with an extra partial and a loss scale, both sides of the clamp, NaN and inf norms."""
    _report(interpreter_results, "grad_norm")


def test_engine_runs_another_optimizers_kernel(interpreter_results):
    """The engine knows no optimizer: a toy kernel spec with two state lists (tests/_toy_kernel.py),
    two groups (one without state), two dtypes, deferred schedule steps written back by the last
    launch, a step AMP skips (a first step's flag survives it) and a loss-scaled step; bitwise
    against the toy's update in torch ops."""
    _report(interpreter_results, "engine_state_lists")


def test_kernel_shape_pieces(interpreter_results):
    """bfloat16 rounding (interpreted round_to_bf16 and the software rounding) vs torch's conversion
    on edge and random bit patterns; AMP unscaling, reciprocal branch (power-of-two scales) and
    division branch, bitwise vs torch's division; smaller balanced chunks (a GPU's SM count) update
    and write back LRs bit for bit as one chunk per tensor."""
    _report(interpreter_results, "kernel_shape")


def test_kernel_constants_match_schedules():
    """The kernel's duplicated kind codes, columns and DESC_WIDTH equal fused_lr.schedules's."""
    from fused_lr.kernels import schedule as K

    from fused_lr import schedules as S

    assert K.DESC_WIDTH.value == S.DESC_WIDTH
    for kind in S.Kind:
        assert hasattr(K, f"KIND_{kind.name}"), f"kernels/schedule.py lacks KIND_{kind.name}"
        assert getattr(K, f"KIND_{kind.name}").value == kind, kind
    for c in S.Col.NAMES:
        if hasattr(K, f"COL_{c}"):
            assert getattr(K, f"COL_{c}").value == getattr(S.Col, c), c


def test_chunk_size_from_sm_count():
    """runtime.chunk_blocks: torch's 64-block chunks where they give 4 programs per SM (or on CPU),
    halved while they do not, never below MIN_CHUNK_BLOCKS."""
    from fused_lr.engine import runtime as R

    cfg = R.launch_config(production=True)
    assert (cfg["CHUNK_BLOCKS"], cfg["MIN_CHUNK_BLOCKS"], cfg["PROGRAMS_PER_SM"]) == (64, 4, 4)
    assert R.chunk_blocks([4 << 20], None, cfg) == 64  # CPU / interpreter: no SM count
    # One 4M-element tensor on 132 SMs (H200): 64 blocks give 64 programs; 8 give 512 < 528; 4 give 1024.
    assert R.chunk_blocks([4 << 20], 132, cfg) == 4
    assert R.chunk_blocks([4 << 20], 16, cfg) == 64  # 64 programs >= 4 * 16
    assert R.chunk_blocks([4 << 20], 17, cfg) == 32  # 64 < 68: halved once, 128 programs
    # Many tensors already fill the GPU: 1000 tensors of one chunk each.
    assert R.chunk_blocks([65536] * 1000, 132, cfg) == 64
    # A tiny launch never fills it: the smallest chunk; empty tensors count for nothing.
    assert R.chunk_blocks([1, 0], 132, cfg) == 4


def test_chunk_table_is_balanced():
    """plan._chunks: each tensor in the fewest chunks of at most chunk_blocks blocks, starting on
    block boundaries, tiling it, all of one size but the last (no program left with a sliver)."""
    import random

    from fused_lr.engine import plan as P

    rng = random.Random(3)
    block = 128
    for _ in range(300):
        numels = [rng.choice([1, 127, 128, 129, rng.randrange(1, 40 * block)]) for _ in range(rng.randrange(1, 5))]
        chunk_blocks = rng.choice([1, 2, 3, 4, 8, 64])
        by_tensor: dict[int, list] = {}
        for k, start, end in P._chunks(numels, block, chunk_blocks):
            by_tensor.setdefault(k, []).append((start, end))
        assert sorted(by_tensor) == list(range(len(numels)))
        for k, spans in by_tensor.items():
            n, blocks = numels[k], -(-numels[k] // block)
            assert len(spans) == -(-blocks // chunk_blocks), (numels, chunk_blocks, spans)
            assert [s for s, _ in spans] == [0] + [e for _, e in spans[:-1]] and spans[-1][1] == n
            sizes = [e - s for s, e in spans]
            assert all(s % block == 0 for s, _ in spans) and max(sizes) <= chunk_blocks * block
            assert len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0]
            assert sizes[0] - sizes[-1] < block * len(spans), (n, chunk_blocks, sizes)  # balanced, not a sliver


def test_cpu_without_interpreter_is_a_clear_error():
    """In this process the kernels are compiled (unless the whole run is interpreted): CPU tensors
    must be refused with a RuntimeError that names TRITON_INTERPRET."""
    import torch

    from fused_lr import engine
    from fused_lr.functional.sgd import sgd_triton

    if engine.interpreting():
        pytest.skip("this pytest process itself runs under TRITON_INTERPRET=1")
    assert engine.triton_available() and not engine.triton_available("cpu")
    p = torch.zeros(4)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        sgd_triton(
            [p], [torch.ones(4)], [None],
            lr=engine.DeviceLR(torch.zeros(1, 8, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                               torch.zeros(1, dtype=torch.int64)),
            momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False,
            first_flags=torch.zeros(1, dtype=torch.int8), flag_slots=[0], ticket=torch.zeros(1, dtype=torch.int32),
            cache=engine.PlanCache(),
        )
