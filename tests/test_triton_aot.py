"""Ahead-of-time compilation of every Triton kernel specialization for sm_80 and sm_90, no GPU needed.

``fused_lr.engine.kernel_specializations()`` lists every (dtype, constexpr) combination the
engine can launch. Each is compiled with ``triton.compile`` for ``GPUTarget("cuda", cc, 32)``,
cc in (80, 90) (ptxas ships with Triton), and the PTX of the update's hot loop (the loop over full
blocks) is checked for what the design promises:

* ALIGNED=True: every global load and store in the hot loop is a 16-byte vector access
  (``ld.global.v4.b32`` / ``st.global.v4.b32`` for 16- and 32-bit types, which pack 8 or 4
  elements; ``.v2.b64`` for float64), and there are exactly as many as the block needs:
  3 operands loaded (p, grad, buf) and 2 stored (p, buf) for SGD, 5 loaded (p, grad, exp_avg,
  exp_avg_sq, max_exp_avg_sq) and 4 stored (all but grad) for Adam, BLOCK_SIZE * itemsize /
  (threads * 16) vectors each.
* ALIGNED=False (a tensor whose address is not a multiple of 16): compiles, with element-wise
  accesses (documented cost of the fallback).
* float64 constants and functions: math.pi stays a float64 literal, sqrt is the IEEE
  ``sqrt.rn.f64``, and cos is libdevice's (``__internal_trig_reduction`` in the PTX).
* SCALED=True (AMP unscale / clipping): the hot loop divides with the IEEE ``div.rn`` (as torch's
  fused kernels do), never the approximate ``div.full.f32``; SCALED=False has no division there
  (SGD). Adam's update divides in every specialization: always ``div.rn``, and its float32 square
  root is the IEEE ``sqrt.rn.f32``, never ``sqrt.approx``.
* The gradient-norm partials kernel (clipping): aligned, its hot loop is one 16-byte vector load
  per BLOCK_SIZE * itemsize / (threads * 16) and no store; unaligned, element-wise loads. The
  finalize kernel compiles for both norm types and both norm dtypes.

Compilation runs in a child process without ``TRITON_INTERPRET`` (the pytest process may have
imported Triton either way), with this file as the child's script.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

CAPABILITIES = (80, 90)
# The update kernels (one per registered optimizer) and the global accesses of their hot loop:
# (operands loaded, operands stored).
UPDATE_ACCESSES = {"sgd": (3, 2), "adamw": (5, 4)}


def _loops(ptx: str) -> list[list[str]]:
    """Bodies of the PTX's loops: from a label to the last branch back to it."""
    lines = ptx.splitlines()
    labels = {}
    for i, line in enumerate(lines):
        m = re.match(r"^(\$L__BB\d+_\d+):", line.strip())
        if m:
            labels[m.group(1)] = i
    loops = []
    for i, line in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);", line)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            loops.append(lines[labels[m.group(1)] : i + 1])
    return loops


def _global_accesses(lines: list[str]) -> tuple[list[str], list[str]]:
    loads = [m.group(0) for line in lines for m in [re.search(r"ld\.global[.\w]*", line)] if m]
    stores = [m.group(0) for line in lines for m in [re.search(r"st\.global[.\w]*", line)] if m]
    return loads, stores


def _hot_loop(loops: list[list[str]], which: int) -> list[str]:
    """Among the innermost loops with global loads (``which=0``) or stores (``which=1``), the one
    with the most of them (an outer label-to-branch range that encloses another loop is skipped)."""
    busy = [body for body in loops if _global_accesses(body)[which]]
    innermost = [b for b in busy if not any(o is not b and len(o) < len(b) and
                                            set(map(id, o)) <= set(map(id, b)) for o in busy)]
    return max(innermost, key=lambda b: len(_global_accesses(b)[which]), default=[])


def _child(out_path: str) -> None:
    """Compile everything and write a JSON report: {name: {cc: {...}}}."""
    import triton
    from triton.backends.compiler import GPUTarget

    from fused_lr import engine

    assert not engine.interpreting(), "the AOT child must run without TRITON_INTERPRET"
    report = {}
    for spec in engine.kernel_specializations():
        report[spec["name"]] = entry = {}
        for cc in CAPABILITIES:
            src = triton.compiler.ASTSource(fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"])
            kernel = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=spec["options"])
            ptx = kernel.asm["ptx"]
            loops = _loops(ptx)
            if spec["kind"] not in UPDATE_ACCESSES:
                # The norm kernels: the partials kernel's hot loop is the innermost loop that loads.
                hot = _hot_loop(loops, 0)
                loads, stores = _global_accesses(hot)
                entry[str(cc)] = dict(
                    kind=spec["kind"], loads=loads, stores=stores, itemsize=spec["dtype"].itemsize,
                    aligned=spec["aligned"], block=spec["constexprs"].get("BLOCK_SIZE"),
                    threads=32 * spec["options"]["num_warps"],
                )
                continue
            # The hot loop: among the innermost loops that store (lr_at's loops only load; PTX
            # block layout can also make an outer label-to-branch range that encloses one), the
            # one with the most stores: the update stores param and buffer vectors, the
            # write-back loop over groups stores one float64 LR per iteration.
            hot = _hot_loop(loops, 1)
            loads, stores = _global_accesses(hot)
            entry[str(cc)] = dict(
                kind=spec["kind"],
                scaled=spec["constexprs"]["SCALED"],
                div_rn=any(re.search(r"\bdiv\.rn\.f(32|64)", line) for line in hot),
                div_approx=any(re.search(r"\bdiv\.(full|approx)\.", line) for line in hot),
                sqrt_approx=any(re.search(r"\bsqrt\.approx\.", line) for line in hot),
                sqrt_rn_hot=any(re.search(r"\bsqrt\.rn\.f(32|64)", line) for line in hot),
                loads=loads,
                stores=stores,
                itemsize=spec["dtype"].itemsize,
                aligned=spec["aligned"],
                block=spec["constexprs"]["BLOCK_SIZE"],
                threads=32 * spec["options"]["num_warps"],
                pi64="0d400921FB54442D18" in ptx,
                sqrt_rn="sqrt.rn.f64" in ptx,
                libdevice_cos="__internal_trig_reduction" in ptx,
                n_regs=kernel.n_regs if hasattr(kernel, "n_regs") else None,
            )
    Path(out_path).write_text(json.dumps(report, indent=1))


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("triton_aot") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"AOT compile child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return json.loads(out.read_text())


def test_every_specialization_compiles(aot_report):
    from fused_lr import engine

    names = [s["name"] for s in engine.kernel_specializations()]
    # At the production launch configuration: each update kernel (SGD, Adam), 4 dtypes x ALIGNED x
    # SCALED (16 each); the norm partials, 4 dtypes x ALIGNED x NORM_INF (16); the norm finalize,
    # 2 norm dtypes x NORM_INF (4).
    assert {s.name for s in engine.registered()} == set(UPDATE_ACCESSES)
    assert len(names) == 52 and len(set(names)) == 52 and sorted(names) == sorted(aot_report)
    for name in names:
        assert sorted(aot_report[name]) == [str(cc) for cc in CAPABILITIES], name


def test_aligned_hot_loop_is_vectorized(aot_report):
    problems = []
    for name, per_cc in aot_report.items():
        for cc, r in per_cc.items():
            if not r["aligned"]:  # False, or None for the finalize kernel
                continue
            vector = "v2.b64" if r["itemsize"] == 8 else "v4.b32"
            per_operand = r["block"] * r["itemsize"] // (r["threads"] * 16)
            # The updates: UPDATE_ACCESSES; the norm partials load the grad only.
            n_loads, n_stores = UPDATE_ACCESSES.get(r["kind"], (1, 0))
            want_loads = [f"ld.global.{vector}"] * (n_loads * per_operand)
            want_stores = [f"st.global.{vector}"] * (n_stores * per_operand)
            if r["loads"] != want_loads or r["stores"] != want_stores:
                problems.append(f"{name} sm_{cc}: loads {r['loads']}, stores {r['stores']}; "
                                f"expected {len(want_loads)} x {want_loads[0]} and {len(want_stores)} x {want_stores[0]}")
    assert not problems, "\n".join(problems)


def test_unaligned_fallback_uses_element_accesses(aot_report):
    checked = 0
    for name, per_cc in aot_report.items():
        for cc, r in per_cc.items():
            if r["aligned"] is not False:
                continue
            checked += 1
            assert r["loads"] and (r["stores"] or r["kind"] not in UPDATE_ACCESSES), f"{name} sm_{cc}: no hot loop found"
            assert not any(".v" in a for a in r["loads"] + r["stores"]), f"{name} sm_{cc}: {r}"
    assert checked == 24 * len(CAPABILITIES)  # 8 unaligned per update kernel + 8 unaligned partials specializations


def test_scaled_update_uses_ieee_division(aot_report):
    n = 0
    for name, per_cc in aot_report.items():
        for cc, r in per_cc.items():
            if r["kind"] not in UPDATE_ACCESSES:
                continue
            n += 1
            assert not r["div_approx"], f"{name} sm_{cc}: approximate division in the hot loop"
            assert not r["sqrt_approx"], f"{name} sm_{cc}: approximate square root in the hot loop"
            if r["kind"] == "sgd":
                assert r["div_rn"] == r["scaled"], f"{name} sm_{cc}: div.rn in hot loop = {r['div_rn']}, SCALED = {r['scaled']}"
            else:  # Adam divides m / denom and sqrt(v) / bias_correction2_sqrt at every step
                assert r["div_rn"] and r["sqrt_rn_hot"], f"{name} sm_{cc}: div.rn {r['div_rn']}, sqrt.rn {r['sqrt_rn_hot']}"
    assert n == 32 * len(CAPABILITIES)


def test_float64_schedule_math(aot_report):
    for name, per_cc in aot_report.items():
        for cc, r in per_cc.items():
            if r["kind"] not in UPDATE_ACCESSES:
                continue
            assert r["pi64"], f"{name} sm_{cc}: math.pi is not a float64 literal in the PTX"
            assert r["sqrt_rn"], f"{name} sm_{cc}: float64 sqrt is not sqrt.rn.f64"
            assert r["libdevice_cos"], f"{name} sm_{cc}: float64 cos is not libdevice's"


if __name__ == "__main__":
    _child(sys.argv[1])
