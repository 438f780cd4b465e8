"""A comparison's run: its cells, each in a fresh process, measured into one report dict.

A ``Comparison`` is the declaration a comparison file makes: parameter sets, schedules, methods,
hyper-parameters, bytes moved per parameter, and its plan (which cells a run covers). ``run``
measures the copy bandwidth alone, then every cell (``cell.measure``), then the copy bandwidth again,
and gathers the report (``JSON_KEYS``; schema 1), written as JSON + PNG when ``out_dir`` is given.

Each cell runs in a fresh Python process (``<comparison script> --cell SPEC``; ``isolate=False`` runs
them here), so no cell inherits the allocator state of the cells before it. Measured on the 2-core
CPU this was written on: in one process, stock foreach (~100 MB of temporaries per ResNet-50 step)
took 35 ms in a set's first cell and 56 ms in the next, whatever the schedule; in fresh processes
41-44 ms in both.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import env
from .bandwidth import SGD_MOMENTUM_FP32, CopyProbe, measure_copy_bandwidth
from .cell import empty_cell, measure
from .methods import Method, Schedule, forget_compiled
from .params import ParamSet, Shape, make_params
from .plot import plot
from .report import Progress, write_report

_NOISE = ("Profiler record function",)  # child stderr lines not passed on


@dataclass
class Plan:
    """Which (set, schedule, method names) cells a run covers, and notes on what it left out."""

    cells: list[tuple[str, str, list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Comparison:
    """What a comparison file declares; the harness does the rest."""

    script: Path  # the comparison's file: ``python <script> --cell SPEC`` measures one cell
    title: str  # first line of the plot's title
    sets: dict[str, Callable[[], list[Shape]]]
    schedules: dict[str, Schedule]
    methods: dict[str, Method]
    hyper: dict[str, Any]  # optimizer keyword arguments shared by every method (lr, momentum, ...)
    plan: Callable[[Any, torch.device, list[str]], Plan]  # (parsed args, device, method names) -> Plan
    bytes_per_param: int = SGD_MOMENTUM_FP32
    settings: dict[str, Any] = field(default_factory=dict)  # more settings to record
    stem: str = ""  # result files are <stem><device slug>-<date>.json / .png

    def measure(self, pset: ParamSet, schedule: str, names: list[str], **kw) -> dict[str, Any]:
        return measure([self.methods[m] for m in names], pset, self.schedules[schedule], hyper=self.hyper,
                       bytes_per_param=self.bytes_per_param, **kw)


def cell_in_subprocess(comparison: Comparison, spec: dict[str, Any], tick: Callable[[str], None]) -> dict[str, Any]:
    """Run one cell in a fresh interpreter; a crash becomes a cell of error results."""
    cmd = [sys.executable, str(comparison.script), "--cell", json.dumps(spec)]
    cell = None
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        for line in proc.stdout:
            if line.startswith("TICK "):
                tick(line[5:].strip())
            elif line.startswith("CELL_JSON "):
                cell = json.loads(line[10:])
        rc = proc.wait()
        err.seek(0)
        err_text = err.read()
    for line in err_text.splitlines():  # pass the worker's warnings on, without known noise
        if line.strip() and not any(n in line for n in _NOISE):
            print(line, file=sys.stderr)
    if cell is None:
        tail = "\n".join(err_text.strip().splitlines()[-5:])
        error = dict(status="error", error=f"cell process exited with {rc}: {tail}")
        pset = ParamSet(spec["set"], [tuple(s) for s in spec["shapes"]])
        cell = empty_cell(pset, spec["schedule"], comparison.bytes_per_param, {m: dict(error) for m in spec["methods"]})
    return cell


def cell_worker(comparison: Comparison, spec: dict[str, Any]) -> int:
    """The child side of ``cell_in_subprocess``: measure one cell, print it as JSON on stdout."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cell = comparison.measure(
        ParamSet(spec["set"], [tuple(x) for x in spec["shapes"]]), spec["schedule"], spec["methods"],
        repeats=spec["repeats"], device=device, target_s=spec["target_s"],
        copy_probe=CopyProbe(device, spec["copy_numel"]),
        progress=lambda msg: print(f"TICK {msg}", flush=True),
    )
    print("CELL_JSON " + json.dumps(cell, default=str), flush=True)
    return 0


def _cells_in_process(comparison, sets, cells, device, tick, bar, **kw) -> list[dict[str, Any]]:
    """The cells measured in this process, over one set of tensors per parameter set."""
    out = []
    by_set: dict[str, list[tuple[str, list[str]]]] = {}
    for s, sc, ms in cells:
        by_set.setdefault(s, []).append((sc, ms))
    for s, todo in by_set.items():
        pset = ParamSet(s, sets[s])
        params = make_params(pset.shapes, device=device)
        for sc, ms in todo:
            if bar:
                bar.set_label(f"{s}/{sc}")
            out.append(comparison.measure(pset, sc, ms, device=device, params=params, progress=tick, **kw))
        forget_compiled()
        del params
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def run(
    comparison: Comparison,
    sets: dict[str, list[Shape]],
    cells: list[tuple[str, str, list[str]]],
    *,
    device: torch.device,
    repeats: int,
    target_s: float,
    skipped: dict[str, str] | None = None,
    notes: list[str] | None = None,
    command: list[str] | None = None,
    quick: bool = False,
    out_dir: Path | None = None,
    copy_numel: int | None = None,
    progress: bool = True,
    isolate: bool = False,
) -> tuple[dict[str, Any], Path | None, Path | None]:
    """Measure ``cells`` [(set name, schedule name, method names)] over ``sets`` {name: shapes};
    write JSON + PNG into ``out_dir`` when given. ``isolate``: each cell in a fresh process."""
    t_start = time.perf_counter()
    report: dict[str, Any] = dict(
        schema=1,
        created=env.now(),
        command=command if command is not None else [sys.executable, *sys.argv],
        quick=quick,
        **env.environment(device),
        settings=dict(
            repeats=repeats, target_round_s=target_s, **comparison.settings, **comparison.hyper,
            bytes_per_param=comparison.bytes_per_param, **env.inductor_cache(), cells_isolated=isolate,
        ),
        skipped_methods=dict(skipped or {}),
        notes=list(notes or []),
        cells=[],
    )
    bar = Progress(2 + sum(repeats + 2 for _ in cells)) if progress else None
    tick = bar if bar else (lambda _m: None)
    if bar:
        bar.set_label("copy bandwidth")
    copy_start = measure_copy_bandwidth(device, repeats, copy_numel)
    tick("done")
    n_copy = copy_start["numel"]
    if isolate:
        for s, sc, ms in cells:
            if bar:
                bar.set_label(f"{s}/{sc}")
            spec = dict(set=s, shapes=sets[s], schedule=sc, methods=ms, repeats=repeats, target_s=target_s,
                        device=str(device), copy_numel=n_copy, threads=torch.get_num_threads())
            report["cells"].append(cell_in_subprocess(comparison, spec, tick))
    else:
        probe = CopyProbe(device, n_copy)
        report["cells"] = _cells_in_process(comparison, sets, cells, device, tick, bar, repeats=repeats,
                                            target_s=target_s, copy_probe=probe)
        del probe
    if bar:  # measured again at the end, for the record: shares use each cell's own copy measurement
        bar.set_label("copy bandwidth")
    copy_end = measure_copy_bandwidth(device, repeats, copy_numel)
    tick("done")
    report["copy_bandwidth"] = dict(copy_start, start_gbps=copy_start["gbps"], end_gbps=copy_end["gbps"],
                                    gbps=max(copy_start["gbps"], copy_end["gbps"]))
    if bar:
        bar.close()
    report["elapsed_s"] = time.perf_counter() - t_start
    json_path = png_path = None
    if out_dir is not None:
        json_path, png_path = write_report(report, out_dir, functools.partial(plot, title=comparison.title),
                                           prefix=comparison.stem)
    return report, json_path, png_path

