"""The benchmark harness (benchmarks/harness/, benchmarks/compare_sgd.py, benchmarks/run.py) on tiny
sets: its methods compute what they name, it measures, it does the arithmetic right, it writes the
documented JSON and never overwrites an earlier result.

Fast by construction: a few hundred-element tensors, 2-5 rounds of ~10 ms, no torch.compile.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import TRAJ_TOL, assert_close

_BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if str(_BENCH) not in sys.path:  # benchmarks/ is not a package: its modules import each other by name
    sys.path.insert(0, str(_BENCH))

import compare_sgd  # noqa: E402
import run  # noqa: E402
from harness import cli, suite  # noqa: E402
from harness.bandwidth import measure_copy_bandwidth  # noqa: E402
from harness.cell import CELL_KEYS, METHOD_KEYS, measure, summarize  # noqa: E402
from harness.env import device_slug  # noqa: E402
from harness.methods import Method, stock  # noqa: E402
from harness.params import ParamSet, make_params  # noqa: E402
from harness.report import JSON_KEYS, format_table  # noqa: E402
from harness.timing import percentile, round_order  # noqa: E402

CPU = torch.device("cpu")
TINY = ParamSet("tiny", [(64, 8), (64,), (300,)])
METHODS, SCHEDULES = compare_sgd.METHODS, compare_sgd.SCHEDULES
CPU_METHODS = [m for m, meth in METHODS.items() if not meth.compiled and meth.unavailable(CPU) is None]


def _measure(methods, schedule, repeats, **kw):
    return measure(methods, TINY, SCHEDULES[schedule], repeats, hyper=compare_sgd.HYPER, device=CPU, **kw)


@dataclass(frozen=True)
class _Wrapped:
    """``inner`` with its optimizer step wrapped: a known, real change in cost (never a baseline)."""

    name: str
    inner: Method
    wrap: object  # opt_step -> new opt_step
    baseline: bool = False

    def build(self, params, schedule, device, hyper):
        r = self.inner.build(params, schedule, device, hyper)
        r.opt_step = self.wrap(r.opt_step)
        return r


def _times(factor):
    return lambda inner: lambda: [inner() for _ in range(factor)]


def _then_sleep(seconds):
    return lambda inner: lambda: (inner(), time.sleep(seconds))


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_every_method_follows_the_stock_forloop_reference(schedule):
    """What the benchmark times is the update it names: every method's parameters and momentum
    buffers after 45 iterations match torch.optim.SGD(foreach=False) + the stock scheduler, the
    reference of tests/test_sgd_parity.py, within its tolerances. 45 iterations: the per-epoch
    schedules change the LR at their third epoch (iteration 30), and the check demands a change."""
    reference = stock("reference", "forloop")
    ref_params = make_params(TINY.shapes)
    ref = reference.build(ref_params, SCHEDULES[schedule], CPU, compare_sgd.HYPER)
    for _ in range(45):
        ref.iteration()
    assert ref.opt.param_groups[0]["lr"] < compare_sgd.HYPER["lr"], "the schedule never moved the LR"
    for name in CPU_METHODS:
        params = make_params(TINY.shapes)
        r = METHODS[name].build(params, SCHEDULES[schedule], CPU, compare_sgd.HYPER)
        for _ in range(45):
            r.iteration()
        for i, (p, q) in enumerate(zip(params, ref_params)):
            assert_close(p, q, what=f"{name}/{schedule}: param {i}", **TRAJ_TOL[torch.float32])
            buf, ref_buf = r.opt.state[p]["momentum_buffer"], ref.opt.state[q]["momentum_buffer"]
            assert_close(buf, ref_buf, what=f"{name}/{schedule}: buffer {i}", **TRAJ_TOL[torch.float32])


def test_slowed_method_is_reported_slower():
    """The ratio follows the measurement: a method made slower on purpose shows a ratio > 1.5."""
    foreach, fused = METHODS["stock foreach"], METHODS["stock fused"]
    # The sleep is large against scheduling noise on a shared 2-core box (a stalled round can cost
    # milliseconds), so the ratio it must produce (> 1.5) cannot drown in that noise.
    methods = [foreach, fused, _Wrapped("stock foreach x8", foreach, _times(8)),
               _Wrapped("stock fused +sleep", fused, _then_sleep(30e-3))]
    # 5 rounds: the median survives a round or two stalled by another process on a shared CPU.
    res = _measure(methods, "cosine_iter", 5, target_s=0.01, extras=False)["methods"]
    assert all(r["status"] == "ok" for r in res.values()), res
    assert res["stock foreach x8"]["ratio"]["stock foreach"] > 1.5
    assert res["stock fused +sleep"]["ratio"]["stock fused"] > 1.5
    # A baseline against itself is exactly 1; the alternating order ran every method each round.
    assert res["stock foreach"]["ratio"]["stock foreach"] == 1.0
    assert all(len(r["round_s"]) == 5 for r in res.values())


def test_failing_method_is_na_and_does_not_stop_the_others():
    def broken(params, **hyper):
        raise RuntimeError("inductor exploded")

    methods = [METHODS["fused_lr[torch]"], Method("torch.compile", broken, torch.optim.lr_scheduler), METHODS["stock fused"]]
    res = _measure(methods, "plateau_epoch", 2, target_s=0.005)["methods"]
    assert res["torch.compile"]["status"] == "error"
    assert "inductor exploded" in res["torch.compile"]["error"]
    assert res["torch.compile"]["median_s"] is None
    assert res["fused_lr[torch]"]["status"] == "ok" and res["stock fused"]["status"] == "ok"
    # Per-epoch schedules time whole epochs: the step count is a multiple of the epoch length.
    assert res["fused_lr[torch]"]["steps_per_round"] % compare_sgd.EPOCH_STEPS == 0
    assert res["stock fused"]["peak_extra_bytes"] is not None


def test_summarize_arithmetic_on_synthetic_timing():
    numel = 1_000_000  # 20 MB moved per step
    rounds = {
        "stock foreach": [0.004, 0.002, 0.003, 0.005, 0.001],  # median 3 ms
        "stock fused": [0.002, 0.002, 0.002],  # median 2 ms
        "fused_lr[torch]": [0.001, 0.001, 0.001, 0.001],  # median 1 ms
    }
    out = summarize(rounds, 20 * numel, copy_gbps=40.0, baselines=("stock foreach", "stock fused"))
    f = out["fused_lr[torch]"]
    assert f["median_s"] == 0.001
    assert f["gbps"] == pytest.approx(20.0)  # 20 B * 1e6 / 1e-3 s = 20 GB/s
    assert f["copy_share"] == pytest.approx(0.5)
    assert f["ratio"]["stock foreach"] == pytest.approx(1 / 3)
    assert f["ratio"]["stock fused"] == pytest.approx(0.5)
    fe = out["stock foreach"]
    assert fe["median_s"] == 0.003
    assert fe["p20_s"] == pytest.approx(0.0018)  # numpy's linear interpolation over 1..5 ms
    assert fe["p80_s"] == pytest.approx(0.0042)
    assert fe["ratio"]["stock fused"] == pytest.approx(1.5)
    assert fe["gbps"] == pytest.approx(20e6 / 0.003 / 1e9)
    assert percentile([5.0], 20) == 5.0 and math.isnan(percentile([], 50))
    assert round_order(["A", "B", "C", "D"], 0) == ["A", "B", "C", "D"]
    assert round_order(["A", "B", "C", "D"], 1) == ["D", "C", "B", "A"]


def test_copy_bandwidth_counts_two_bytes_moved_per_byte():
    cb = measure_copy_bandwidth(CPU, 3, numel_=1 << 16)
    assert cb["bytes"] == 2 * 4 * (1 << 16)
    assert cb["gbps"] == pytest.approx(cb["bytes"] / cb["median_s"] / 1e9)


def test_json_keys_and_no_overwrite(tmp_path):
    sets = {"tiny": TINY.shapes}
    cells = [("tiny", "cosine_iter", ["fused_lr[torch]", "stock foreach", "stock fused"])]
    kw = dict(device=CPU, repeats=2, target_s=0.005, out_dir=tmp_path, copy_numel=1 << 16, progress=False,
              command=["run.py", "--test"])
    _, j1, p1 = suite.run(compare_sgd.COMPARISON, sets, cells, **kw)
    _, j2, p2 = suite.run(compare_sgd.COMPARISON, sets, cells, **kw)
    assert j1 != j2 and j1.exists() and j2.exists()
    assert j2.name == j1.name[: -len(".json")] + "-2.json"
    assert p1 is not None and p1.exists() and p2.name == j2.name.replace(".json", ".png")
    slug = device_slug(CPU)
    assert j1.name.startswith(slug + "-") and slug.startswith("cpu-")
    first = json.loads(j1.read_text())
    assert set(JSON_KEYS) <= set(first)
    assert first["device"]["type"] == "cpu" and first["host"]["torch_threads"] == torch.get_num_threads()
    assert first["versions"]["torch"] == torch.__version__
    assert first["command"] == ["run.py", "--test"]
    assert first["settings"]["bytes_per_param"] == 20 and first["settings"]["lr"] == compare_sgd.HYPER["lr"]
    (cell,) = first["cells"]
    assert set(CELL_KEYS) <= set(cell)
    assert cell["params"] == 64 * 8 + 64 + 300 and cell["bytes_per_step"] == 20 * cell["params"]
    for r in cell["methods"].values():
        assert set(METHOD_KEYS) <= set(r)
        assert r["status"] == "ok" and r["median_s"] > 0
    # The table renders from the JSON alone.
    table = format_table(first)
    assert "fused_lr[torch]" in table and "x foreach" in table and "x fused" in table


def test_committed_results_still_render():
    """Result files written before the harness was split keep the schema the table reads."""
    for path in sorted((_BENCH / "results").glob("*.json")):
        report = json.loads(path.read_text())
        assert set(JSON_KEYS) <= set(report), path
        assert "stock fused" in format_table(report), path


def test_quick_plan_is_what_the_docstring_says():
    names, skipped = cli.available_methods(compare_sgd.COMPARISON, CPU, no_compile=False)
    assert "fused_lr[triton]" in skipped and "CUDA" in skipped["fused_lr[triton]"]
    assert cli.available_methods(compare_sgd.COMPARISON, CPU, no_compile=True)[1]["torch.compile"] == "--no-compile"
    plan = compare_sgd.make_plan(cli.parse_args(compare_sgd.COMPARISON, ["--quick"]), CPU, names)
    got = {(s, sc): ms for s, sc, ms in plan.cells}
    assert set(got) == {
        ("resnet50", "step_epoch"), ("resnet50", "cosine_iter"),
        ("many_small", "cosine_iter"), ("one_large", "cosine_iter"),
    }
    assert "torch.compile" in got[("one_large", "cosine_iter")]
    assert "torch.compile" not in got[("resnet50", "cosine_iter")]
    full = compare_sgd.make_plan(cli.parse_args(compare_sgd.COMPARISON, []), CPU, names)
    assert len(full.cells) == len(compare_sgd.PARAM_SETS) * len(SCHEDULES)


def test_run_py_entry_point(capsys):
    """benchmarks/gpu_report.sh names its folder with ``run.py --print-slug --device ...``."""
    assert run.main(["--print-slug", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == device_slug(CPU)


def test_cell_in_its_own_process():
    """main()'s default path: the cell runs in a fresh interpreter and comes back as JSON."""
    spec = dict(set="tiny", shapes=TINY.shapes, schedule="step_epoch", methods=["fused_lr[torch]", "stock fused"],
                repeats=2, target_s=0.005, device="cpu", copy_numel=1 << 12, threads=1)
    ticks = []
    cell = suite.cell_in_subprocess(compare_sgd.COMPARISON, spec, ticks.append)
    assert [r["status"] for r in cell["methods"].values()] == ["ok", "ok"], cell
    assert cell["params"] == TINY.numel and cell["copy_gbps"] > 0
    assert len(ticks) == spec["repeats"] + 2  # warm-up, each round, memory


def test_host_overhead_script_measures_the_steady_state_path():
    """benchmarks/host_overhead.py (run in a child: it sets TRITON_INTERPRET=1 before importing
    triton) times the Triton path's host work, and its steady state takes the cached plan."""
    pytest.importorskip("triton")
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import host_overhead as h; "
        "r = h.measure([(64, 8), (300,), (5,)] * 20, rounds=3, steps=5); print(r)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=_BENCH.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = eval(proc.stdout.strip().splitlines()[-1])  # the dict printed above
    assert result["fast_steps"] == 3 * 5  # every timed step took the steady-state path
    assert 0 < result["triton_steady_us"] < result["triton_first_us"]
    assert result["floor_us"] > 0  # (the floor's runner raises if its grads or addresses changed between steps)
    # One launch a steady step (one dtype, every tensor 16-byte aligned), and Triton's launcher
    # (binder + cache key for a CUDA target) timed for it: its error names the internal that moved.
    assert result["launches"] == 1 and result["launcher_error"] is None and result["launcher_us"] > 0


# ---------------------------------------------------------------------------------------- AdamW


def test_adamw_methods_follow_the_stock_forloop_reference():
    """compare_adamw.py's methods that run on CPU compute torch.optim.AdamW(foreach=False) + the
    stock scheduler (parameters, moments, step after 45 iterations of step_epoch, which changes the
    LR at iteration 30); the capturable column is refused on CPU with its reason."""
    import compare_adamw
    from harness.methods import stock_adamw

    reference = Method("reference", stock_adamw("forloop"), torch.optim.lr_scheduler)
    schedule = compare_adamw.SCHEDULES["step_epoch"]
    ref_params = make_params(TINY.shapes)
    ref = reference.build(ref_params, schedule, CPU, compare_adamw.HYPER)
    for _ in range(45):
        ref.iteration()
    assert ref.opt.param_groups[0]["lr"] < compare_adamw.HYPER["lr"], "the schedule never moved the LR"
    names, skipped = cli.available_methods(compare_adamw.COMPARISON, CPU, no_compile=True)
    assert "stock capturable" in skipped and "fused_lr[torch]" in names and "stock fused" in names
    for name in names:
        params = make_params(TINY.shapes)
        r = compare_adamw.METHODS[name].build(params, schedule, CPU, compare_adamw.HYPER)
        for _ in range(45):
            r.iteration()
        for i, (p, q) in enumerate(zip(params, ref_params)):
            assert_close(p, q, what=f"{name}: param {i}", **TRAJ_TOL[torch.float32])
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert_close(r.opt.state[p][key], ref.opt.state[q][key], what=f"{name}: {key} {i}",
                             **TRAJ_TOL[torch.float32])


def test_adamw_comparison_writes_its_own_files(tmp_path):
    """run.py --optimizer adamw: 28 bytes per parameter, files named adamw-<slug>-<date>."""
    import compare_adamw

    sets = {"tiny": TINY.shapes}
    cells = [("tiny", "cosine_iter", ["fused_lr[torch]", "stock fused"])]
    report, j, _ = suite.run(compare_adamw.COMPARISON, sets, cells, device=CPU, repeats=2, target_s=0.005,
                             out_dir=tmp_path, copy_numel=1 << 16, progress=False, command=["run.py", "--test"])
    assert j.name.startswith("adamw-" + device_slug(CPU) + "-")
    assert report["settings"]["bytes_per_param"] == 28 and report["settings"]["optimizer"] == "AdamW"
    assert [r["status"] for r in report["cells"][0]["methods"].values()] == ["ok", "ok"]
    assert run.main(["--optimizer", "adamw", "--print-slug", "--device", "cpu"]) == 0


def test_host_overhead_adamw_set_measures_the_steady_state_path():
    pytest.importorskip("triton")
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import host_overhead as h; "
        "r = h.measure([(64, 8), (300,), (5,)] * 20, rounds=3, steps=5, optimizer='adamw'); print(r)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=_BENCH.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = eval(proc.stdout.strip().splitlines()[-1])
    assert result["fast_steps"] == 3 * 5
    assert 0 < result["triton_steady_us"] < result["triton_first_us"]
    assert result["launches"] == 1 and result["launcher_error"] is None and result["launcher_us"] > 0
