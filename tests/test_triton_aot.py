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
* SCALED=True (AMP unscale / clipping): two copies of the hot loop, one multiplying by the
  reciprocal of a power-of-two scale (exact: no division), one dividing with the IEEE ``div.rn``
  (as torch's fused kernels do), never the approximate ``div.full.f32``; SCALED=False has one loop
  and no division there. Both copies are vectorized as above. Adam's update divides in every loop
  (``m / denom``): always the IEEE ``div.rn``, and its square root is ``sqrt.rn``, never
  ``sqrt.approx``.
* bfloat16: the compiled update rounds with the hardware ``cvt.rn.bf16.f32``.
* Registers and spills: ``ptxas -v`` (Triton's bundled ptxas, Triton's flags) on each PTX; the
  registers and spill bytes of every kernel and called function are printed (``pytest -s``); a
  local-memory access (spill) inside a hot loop of the SASS (``cuobjdump -sass``) fails (the engine
  caps registers per thread, ``fused_lr.engine.runtime.MAX_REGISTERS``).
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


def _ptxas_report(ptx: str, cc: int, options: dict) -> dict:
    """``ptxas -v`` (Triton's bundled ptxas, with the flags Triton's own cubin step passes) on
    ``ptx``: ``{function: {"registers", "spill_stores", "spill_loads", "stack"}}`` for the kernel
    and every function it calls (``lr_at`` is not inlined)."""
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        fmad = [] if options.get("enable_fp_fusion", True) else ["--fmad=false"]
        cmd = [get_ptxas(cc).path, "-v", *fmad, "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(cc)}",
               str(src), "-o", str(Path(tmp) / "k.cubin")]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    functions: dict[str, dict] = {}
    current = None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = functions.setdefault(m.group(1), {})
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            continue
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            current = functions.setdefault(m.group(1), {})
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current is not None:
            current["registers"] = int(m.group(1))
    return functions


def _sass_loops(cubin: bytes) -> list[dict]:
    """The innermost loops (backward branches) of ``cubin``'s SASS (Triton's bundled ``cuobjdump
    -sass``), each as its counts of global (``LDG``, ``STG``) and local-memory (``LDL``, ``STL``:
    spills) instructions."""
    import tempfile

    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", str(path)], check=True, capture_output=True,
                              text=True).stdout
    code = []  # (address, instruction) in order
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            code.append((int(m.group(1), 16), m.group(2)))
    index = {address: i for i, (address, _) in enumerate(code)}
    loops = []
    for i, (address, instruction) in enumerate(code):
        m = re.search(r"\bBRA\s+0x([0-9a-f]+)", instruction)
        if m and int(m.group(1), 16) < address and int(m.group(1), 16) in index:
            loops.append((index[int(m.group(1), 16)], i))
    innermost = [(a, b) for a, b in loops if not any((c, d) != (a, b) and a <= c and d <= b for c, d in loops)]
    return [{op: sum(bool(re.search(rf"\b{op}\b", code[k][1])) for k in range(a, b + 1))
             for op in ("LDG", "STG", "LDL", "STL")} for a, b in innermost]


def _sass_hot_loops(loops: list[dict]) -> list[dict]:
    """The hot loops among ``_sass_loops``: those with the most global loads (the update loads
    three operands per element, the norm partials one; the other loops, over groups or flags, load
    one value per iteration)."""
    most = max((loop["LDG"] for loop in loops), default=0)
    return [loop for loop in loops if most and loop["LDG"] == most]


def _child(out_path: str) -> None:
    """Compile everything and write a JSON report: {name: {cc: {...}}}. The compiles (each
    specialization for each capability) are independent: they run in one worker process per CPU
    core, each worker listing the specializations itself (a ``JITFunction`` does not pickle)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from fused_lr import engine

    jobs = [(i, cc) for i in range(len(engine.kernel_specializations())) for cc in CAPABILITIES]
    workers = max(1, min(len(jobs), len(os.sched_getaffinity(0))))
    report: dict = {}
    # (spawn: a fresh interpreter per worker, nothing inherited from this one's imports)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for name, cc, entry in pool.map(_compile_job, jobs):
            report.setdefault(name, {})[cc] = entry
    Path(out_path).write_text(json.dumps(report, indent=1))


def _compile_job(job: tuple[int, int]) -> tuple[str, str, dict]:
    """Worker of ``_child``: specialization ``job[0]`` compiled for capability ``job[1]``, and
    what the tests read of it."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget

    from fused_lr import engine

    assert not engine.interpreting(), "the AOT child must run without TRITON_INTERPRET"
    index, cc = job
    spec = engine.kernel_specializations()[index]
    src = triton.compiler.ASTSource(fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"])
    kernel = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=spec["options"])
    ptx = kernel.asm["ptx"]
    loops = _loops(ptx)
    ptxas = _ptxas_report(ptx, cc, spec["options"])
    sass_loops = _sass_loops(kernel.asm["cubin"])
    if spec["kind"] not in UPDATE_ACCESSES:
        # The norm kernels: the partials kernel's hot loop is the innermost loop that loads.
        hot = _hot_loop(loops, 0)
        loads, stores = _global_accesses(hot)
        return spec["name"], str(cc), dict(
            kind=spec["kind"], loads=loads, stores=stores, itemsize=spec["dtype"].itemsize,
            aligned=spec["aligned"], block=spec["constexprs"].get("BLOCK_SIZE"),
            threads=32 * spec["options"]["num_warps"], ptxas=ptxas, sass_loops=sass_loops,
        )
    # The hot loops: the innermost loops that store (lr_at's loops only load; PTX block
    # layout can also make an outer label-to-branch range that encloses one) with the most
    # stores: the update stores param and buffer vectors, the flag-clearing loop fewer.
    # SCALED=True has two copies of the update loop: multiply by the reciprocal of a
    # power-of-two scale, divide by any other.
    hot = _hot_loop(loops, 1)
    n_hot_stores = len(_global_accesses(hot)[1])
    hots = [body for body in loops if len(_global_accesses(body)[1]) == n_hot_stores and not any(
        o is not body and len(o) < len(body) and set(map(id, o)) <= set(map(id, body)) for o in loops
        if _global_accesses(o)[1])]
    return spec["name"], str(cc), dict(
        kind=spec["kind"],
        scaled=spec["constexprs"]["SCALED"],
        hot_loops=[dict(
            loads=_global_accesses(body)[0],
            stores=_global_accesses(body)[1],
            div_rn=any(re.search(r"\bdiv\.rn\.f(32|64)", line) for line in body),
            div_any=any(re.search(r"\bdiv\.", line) for line in body),
            div_approx=any(re.search(r"\bdiv\.(full|approx)\.", line) for line in body),
            sqrt_approx=any(re.search(r"\bsqrt\.approx\.", line) for line in body),
            sqrt_rn=any(re.search(r"\bsqrt\.rn\.f(32|64)", line) for line in body),
        ) for body in hots],
        loads=_global_accesses(hot)[0],
        stores=_global_accesses(hot)[1],
        itemsize=spec["dtype"].itemsize,
        bf16=spec["dtype"] == torch.bfloat16,
        aligned=spec["aligned"],
        block=spec["constexprs"]["BLOCK_SIZE"],
        threads=32 * spec["options"]["num_warps"],
        pi64="0d400921FB54442D18" in ptx,
        sqrt_rn="sqrt.rn.f64" in ptx,
        libdevice_cos="__internal_trig_reduction" in ptx,
        bf16_hw=bool(re.search(r"\bcvt\.rn\.bf16\.f32\b", ptx)),
        ptxas=ptxas,
        sass_loops=sass_loops,
    )


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


def _not_specialized(fn, what: str) -> set:
    """The arguments ``fn`` lists in ``do_not_specialize`` (``what``) or
    ``do_not_specialize_on_alignment``: a JITFunction keeps the list itself, an InterpretedFunction
    (under TRITON_INTERPRET) its kwargs."""
    kept = getattr(fn, what, None)
    return set(kept if kept is not None else getattr(fn, "kwargs", {}).get(what, ()))


def test_no_kernel_specializes_on_what_changes_mid_run():
    """Every integer argument of every engine kernel (counts, offsets, flags: values that change
    with the parameter set, the schedule or the step) is in the kernel's ``do_not_specialize``,
    and the chunk table pointer (a launch's rows of its dtype's table: the second launch of a
    dtype split by alignment starts 24 bytes x the first's rows in, not always a multiple of 16)
    in ``do_not_specialize_on_alignment``. Triton would otherwise compile a new variant mid-run
    when a count becomes 1 or an offset or pointer stops being a multiple of 16 (a misaligned
    gradient appearing), which ``opt.warmup()`` cannot foresee."""
    from fused_lr import engine

    for spec in engine.kernel_specializations():
        fn = spec["fn"]
        unspecialized = _not_specialized(fn, "do_not_specialize")
        ints = {name for name, kind in spec["signature"].items() if kind in ("i32", "i64")}
        assert ints, spec["name"]
        assert ints <= unspecialized, f"{spec['name']}: {sorted(ints - unspecialized)} specialized"
        if "chunks_ptr" in spec["signature"]:
            assert "chunks_ptr" in _not_specialized(fn, "do_not_specialize_on_alignment"), spec["name"]


def test_every_kernel_takes_its_options_from_one_place():
    """The update and both norm kernels compile (and launch: fused_lr/engine/launch.py passes the
    same call) with runtime.kernel_options: the same warps and floating-point contraction, and the
    register cap of their dtype."""
    import torch

    from fused_lr import engine
    from fused_lr.engine import runtime

    cfg = runtime.launch_config(production=True)
    base = {"num_warps": runtime.NUM_WARPS, "enable_fp_fusion": runtime.ENABLE_FP_FUSION}
    assert runtime.kernel_options(cfg) == {**base, "maxnreg": runtime.MAX_REGISTERS}
    assert runtime.kernel_options(cfg, torch.float64) == {**base, "maxnreg": runtime.MAX_REGISTERS_WIDE}
    specs = engine.kernel_specializations()
    assert {s["kind"] for s in specs} == {*UPDATE_ACCESSES, "norm_partials", "norm_finalize"}
    for s in specs:
        assert s["options"] == runtime.kernel_options(cfg, s["dtype"]), s["name"]


def test_aligned_hot_loop_is_vectorized(aot_report):
    problems = []
    for name, per_cc in aot_report.items():
        for cc, r in per_cc.items():
            if not r["aligned"]:  # False, or None for the finalize kernel
                continue
            vector = "v2.b64" if r["itemsize"] == 8 else "v4.b32"
            per_operand = r["block"] * r["itemsize"] // (r["threads"] * 16)
            # The update loads p, grad, buf and stores p, buf; the norm partials load the grad only.
            n_loads, n_stores = UPDATE_ACCESSES.get(r["kind"], (1, 0))
            want_loads = [f"ld.global.{vector}"] * (n_loads * per_operand)
            want_stores = [f"st.global.{vector}"] * (n_stores * per_operand)
            for loop in r.get("hot_loops", [r]):  # both copies of a SCALED update's loop
                if loop["loads"] != want_loads or loop["stores"] != want_stores:
                    problems.append(f"{name} sm_{cc}: loads {loop['loads']}, stores {loop['stores']}; expected "
                                    f"{len(want_loads)} x {want_loads[0]} and {len(want_stores)} x {want_stores[0]}")
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


def test_scaled_update_divides_or_multiplies_exactly(aot_report):
    """SCALED=True: two copies of the hot loop, one multiplying by the reciprocal of a power-of-two
    scale (SGD: no division at all), one dividing with the IEEE ``div.rn`` (as torch's fused kernels
    do), never the approximate ``div.full.f32``; SCALED=False: one loop (SGD: no division). Adam
    divides ``m / denom`` in every loop: ``div.rn`` and ``sqrt.rn`` only."""
    n = 0
    for name, per_cc in aot_report.items():
        for cc, r in per_cc.items():
            if r["kind"] not in UPDATE_ACCESSES:
                continue
            n += 1
            loops = r["hot_loops"]
            assert not any(loop["div_approx"] for loop in loops), f"{name} sm_{cc}: approximate division in the hot loop"
            assert not any(loop["sqrt_approx"] for loop in loops), f"{name} sm_{cc}: approximate sqrt in the hot loop"
            if r["kind"] != "sgd":
                assert len(loops) == (2 if r["scaled"] else 1), f"{name} sm_{cc}: {len(loops)} hot loops"
                assert all(loop["div_rn"] and loop["sqrt_rn"] for loop in loops), f"{name} sm_{cc}: {loops}"
            elif r["scaled"]:
                assert sorted((loop["div_rn"], loop["div_any"]) for loop in loops) == [(False, False), (True, True)], (
                    f"{name} sm_{cc}: want one loop dividing with div.rn and one without division, got {loops}")
            else:
                assert [loop["div_any"] for loop in loops] == [False], f"{name} sm_{cc}: {loops}"
    assert n == 32 * len(CAPABILITIES)


def test_bf16_uses_the_hardware_conversion(aot_report):
    """Compiled bfloat16 updates round with ``cvt.rn.bf16.f32`` (not the interpreter's integer
    rounding; tests/test_gpu.py checks the two give the same bits)."""
    n = 0
    for name, per_cc in aot_report.items():
        for cc, r in per_cc.items():
            if r["kind"] in UPDATE_ACCESSES and r["bf16"]:
                n += 1
                assert r["bf16_hw"], f"{name} sm_{cc}: no cvt.rn.bf16.f32 in the PTX"
    assert n == 8 * len(CAPABILITIES)  # ALIGNED x SCALED, per update kernel


# Specializations whose SASS hot loop accesses local memory, allowed here: none since the engine
# caps registers per thread (fused_lr.engine.runtime.MAX_REGISTERS, MAX_REGISTERS_WIDE); without
# the cap, 14 update specializations spilled in a hot loop. Any spill in a hot loop fails the test.
KNOWN_HOT_LOOP_SPILLS: set[tuple[str, int]] = set()


def test_registers_and_spills(aot_report):
    """``ptxas -v`` of every specialization (and of the functions it calls), printed as a report
    (``pytest -s``), and no spill inside a hot loop: the SASS of each hot loop (``cuobjdump
    -sass``) has no local-memory access (``LDL`` / ``STL``), except the known ones.

    ptxas does report spill bytes for the update kernels: registers saved around the calls the
    program makes once, before and after its loops (``lr_at``, kept out of line, and libdevice's
    cos slow path), as the calling convention requires; they are printed, and not counted as a
    failure, because they are outside the loops by the SASS check."""
    lines, problems, spilling = [], [], set()
    for name, per_cc in sorted(aot_report.items()):
        for cc, r in sorted(per_cc.items()):
            assert r["ptxas"], f"{name} sm_{cc}: no ptxas -v output parsed"
            for function, f in sorted(r["ptxas"].items()):
                assert "spill_stores" in f, f"{name} sm_{cc} {function}: no spill figures parsed: {f}"
                lines.append(f"sm_{cc} {name} {function}: {f.get('registers', '-')} registers, "
                             f"{f['stack']} B stack, {f['spill_stores']} B spill stores, {f['spill_loads']} B spill loads")
            loops = _sass_hot_loops(r["sass_loops"])
            lines.append(f"sm_{cc} {name} SASS hot loops: {loops}")
            if not loops:
                problems.append(f"{name} sm_{cc}: no SASS hot loop found")
            elif any(loop["LDL"] or loop["STL"] for loop in loops):
                spilling.add((name, int(cc)))
                if (name, int(cc)) not in KNOWN_HOT_LOOP_SPILLS:
                    problems.append(f"{name} sm_{cc}: local-memory accesses in a SASS hot loop: {loops}")
    print("\nptxas -v report:\n" + "\n".join(lines))
    assert not problems, "\n".join(problems)
    # A known spill that is gone: remove it from the list (the list only shrinks).
    assert spilling == KNOWN_HOT_LOOP_SPILLS, f"no longer spilling: {sorted(KNOWN_HOT_LOOP_SPILLS - spilling)}"


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
