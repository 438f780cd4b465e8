"""The command line every comparison shares (``python benchmarks/run.py --help``).

``main(comparison, argv)``: pick the device, drop the methods that cannot run there (each with its
reason), let the comparison plan its cells, run them (``suite.run``), print the table and write
``<out>/<device slug>-<date>.json`` and ``.png``. ``--cell SPEC`` (internal) is the child side of a
cell run in its own process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import suite
from .env import device_slug
from .report import format_table

RESULTS = Path(__file__).resolve().parents[1] / "results"


def parse_args(comparison: suite.Comparison, argv=None, description: str = "") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the short run (< 2 min on a 2-core CPU)")
    p.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu")
    p.add_argument("--sets", nargs="+", choices=list(comparison.sets), default=None)
    p.add_argument("--schedules", nargs="+", choices=list(comparison.schedules), default=None)
    p.add_argument("--repeats", type=int, default=None, help="timing rounds per cell (default 5 quick, 11 full)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile column")
    p.add_argument("--print-slug", action="store_true", help="print the device slug and exit")
    p.add_argument("--in-process", action="store_true", help="run every cell in this process (default: one process per cell)")
    p.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: one cell, JSON spec
    return p.parse_args(argv)


def available_methods(comparison: suite.Comparison, device: torch.device, no_compile: bool) -> tuple[list[str], dict[str, str]]:
    """The method names that can run on ``device``, and {name: why not} for the others."""
    names, skipped = [], {}
    for name, m in comparison.methods.items():
        why = "--no-compile" if (no_compile and m.compiled) else m.unavailable(device)
        if why:
            skipped[name] = why
        else:
            names.append(name)
    return names, skipped


def main(comparison: suite.Comparison, argv=None, description: str = "", prog: str | None = None) -> int:
    """Run ``comparison`` from the command line ``argv`` (default ``sys.argv[1:]``); ``prog`` names the
    script in the recorded command when ``argv`` is given (default: the comparison's file)."""
    args = parse_args(comparison, argv, description)
    if args.cell is not None:
        return suite.cell_worker(comparison, json.loads(args.cell))
    dev_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev_type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device available", file=sys.stderr)
        return 2
    device = torch.device(dev_type)
    if args.print_slug:
        print(device_slug(device))
        return 0
    # One thread count for the whole run (torch's default unless --threads), recorded in the JSON.
    torch.set_num_threads(args.threads or torch.get_num_threads())
    cuda = device.type == "cuda"
    repeats = args.repeats or (5 if args.quick else 11)
    target_s = (0.05 if cuda else 0.1) if args.quick else (0.1 if cuda else 0.3)
    names, skipped = available_methods(comparison, device, args.no_compile)
    plan = comparison.plan(args, device, names)
    report, json_path, png_path = suite.run(
        comparison,
        {s: comparison.sets[s]() for s in {c[0] for c in plan.cells}},
        plan.cells,
        device=device,
        repeats=repeats,
        target_s=target_s,
        skipped=skipped,
        notes=plan.notes,
        command=[Path(sys.executable).name, *sys.argv] if argv is None else [prog or Path(comparison.script).name, *argv],
        quick=args.quick,
        out_dir=args.out,
        isolate=not args.in_process,
    )
    print(format_table(report))
    print(f"\nwrote {json_path}\nwrote {png_path}" if png_path else f"\nwrote {json_path} (no PNG)")
    return 0
