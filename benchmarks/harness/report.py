"""The report: one table on stdout, a JSON file that never overwrites another, progress on stderr.

``format_table`` renders a report dict (as written to JSON, so an old result file renders too): a
row per (set, schedule, method) with median, p20-p80, the ratio to each baseline (a column per
baseline found in the cells' ``ratio``), GB/s, share of copy bandwidth, peak extra memory, and on
CUDA launches and syncs per iteration; then footnotes (device, how each figure is made, skipped
methods, errors, compile times, notes). ``write_report`` writes ``<stem>.json`` and ``<stem>.png``
at the first free suffix (``-2``, ``-3``, ...).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .timing import error_text

JSON_KEYS = (
    "schema", "created", "command", "quick", "device", "host", "versions", "git", "settings",
    "copy_bandwidth", "skipped_methods", "notes", "cells", "elapsed_s",
)


class Progress:
    """A one-line progress bar on stderr (no dependency); plain lines when stderr is not a terminal."""

    def __init__(self, total: int, width: int = 30, stream=None) -> None:
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.perf_counter()
        self.label = ""
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def set_label(self, label: str) -> None:
        self.label = label
        if not self.tty:
            print(f"[{self.done}/{self.total}] {label}", file=self.stream, flush=True)

    def __call__(self, msg: str) -> None:
        self.done = min(self.done + 1, self.total)
        if self.tty:
            fill = round(self.width * self.done / self.total)
            bar = "#" * fill + "-" * (self.width - fill)
            line = f"\r[{bar}] {self.done}/{self.total} {time.perf_counter() - self.t0:5.0f}s {self.label} {msg}"
            self.stream.write(line[:150].ljust(150))
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "n/a"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def fmt_bytes(b: int | None) -> str:
    if b is None:
        return "n/a"
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= k:
            return f"{b / k:.1f} {unit}"
    return f"{b} B"


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


# What the bytes per parameter of a comparison count (harness.bandwidth).
_BYTES_NOTE = {
    20: "fp32 SGD with momentum: read p, g, buf; write p, buf",
    28: "fp32 AdamW: read p, g, exp_avg, exp_avg_sq; write p, exp_avg, exp_avg_sq",
    36: "fp32 AdamW with amsgrad: max_exp_avg_sq read and written too",
}


def baselines_of(report: dict[str, Any]) -> list[str]:
    """The baselines the cells' ratios refer to, in order of first appearance."""
    seen: list[str] = []
    for cell in report["cells"]:
        for r in cell["methods"].values():
            seen += [b for b in (r.get("ratio") or {}) if b not in seen]
    return seen


def _rows(report: dict[str, Any], head: list[str], baselines: list[str], cuda: bool) -> list[list[str]]:
    rows = []
    for cell in report["cells"]:
        label = f"{cell['set']} ({cell['tensors']}, {cell['params'] / 1e6:.1f}M)"
        for name, r in cell["methods"].items():
            if r["status"] != "ok":
                rows.append([label, cell["schedule"], name, "n/a"] + [""] * (len(head) - 4))
                label = ""
                continue
            ratio = r["ratio"] or {}
            row = [label, cell["schedule"], name, fmt_time(r["median_s"]), f"{fmt_time(r['p20_s'])}-{fmt_time(r['p80_s'])}"]
            row += [_fmt(ratio.get(b), ".2f") for b in baselines]
            row += [
                f"{r['gbps']:.1f}",
                "n/a" if r["copy_share"] is None else f"{100 * r['copy_share']:.0f}%",
                f"{cell['copy_gbps']:.1f}" if cell.get("copy_gbps") else "n/a",
                fmt_bytes(r["peak_extra_bytes"]),
            ]
            if cuda:
                row += [_fmt(r["launches_per_step"], ".1f"), _fmt(r["syncs_per_step"], ".2f")]
            rows.append(row)
            label = ""
    return rows


def _footnotes(report: dict[str, Any], baselines: list[str], cuda: bool) -> list[str]:
    cb, dev, settings = report["copy_bandwidth"], report["device"], report["settings"]
    ratios = " / ".join(f"x {b.removeprefix('stock ')}" for b in baselines)
    foot = [
        f"device: {dev['name']} ({dev['type']}), torch {report['versions']['torch']}, "
        f"threads {report['host']['torch_threads']}; copy probe dst.copy_(src) of {cb['numel'] * 4 / 2**20:.0f} MiB",
        "median/p20-p80: one iteration (opt.step() + the scheduler step when due) over "
        f"{settings['repeats']} rounds, alternating method order; {ratios}: median / the baseline's median "
        "(< 1 = faster)",
        f"GB/s: {settings['bytes_per_param']} bytes/param "
        f"({_BYTES_NOTE.get(settings['bytes_per_param'], 'the least traffic')}) / "
        "median; % copy: share of the copy bandwidth timed in the same rounds as the cell's methods (column "
        f"'copy GB/s'; before/after the run: {cb['start_gbps']:.1f} / {cb['end_gbps']:.1f} GB/s), counted as "
        "2 x size bytes" + ("" if cuda else "; on a CPU with write-allocate caches a copy really moves 3 x size "
                            "(dst is read before it is written) while the optimizer updates its tensors in place, so shares "
                            "above 100% are possible"),
        "peak extra: " + ("torch.cuda.max_memory_allocated delta" if cuda else
                          "peak of the CPU allocator's live extra bytes (torch.profiler profile_memory)")
        + " over one iteration with a scheduler step",
    ]
    if cuda:
        foot.append("launches: GPU kernels per iteration (torch.profiler); syncs: "
                    "torch.cuda.set_sync_debug_mode('warn') warnings per iteration")
    foot += [f"{name}: skipped: {why}" for name, why in report["skipped_methods"].items()]
    for cell in report["cells"]:
        for name, r in cell["methods"].items():
            where = f"{name} on {cell['set']}/{cell['schedule']}"
            if r["status"] != "ok":
                err = (r["error"] or "").splitlines()[-1:] or [""]
                foot.append(f"{where}: n/a: {err[0][:200]}")
            elif r.get("compile_calls_s"):
                foot.append(f"{where}: first calls (compile) " + " + ".join(f"{c:.1f} s" for c in r["compile_calls_s"]))
    return foot + report["notes"]


def format_table(report: dict[str, Any]) -> str:
    """The one table: a row per (set, schedule, method), then footnotes."""
    cuda = report["device"]["type"] == "cuda"
    baselines = baselines_of(report)
    head = ["set", "schedule", "method", "median", "p20-p80"]
    head += [f"x {b.removeprefix('stock ')}" for b in baselines]
    head += ["GB/s", "% copy", "copy GB/s", "peak extra"] + (["launches", "syncs"] if cuda else [])
    rows = _rows(report, head, baselines, cuda)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    rule = "-+-".join("-" * w for w in widths)
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths)), rule]
    for i, row in enumerate(rows):
        if row[0] and i:
            lines.append(rule)
        lines.append(" | ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    return "\n".join(lines + [""] + ["* " + f for f in _footnotes(report, baselines, cuda)])


def unique_stem(out_dir: Path, stem: str, suffixes=(".json", ".png")) -> Path:
    """``out_dir/stem``, or ``stem-2``, ``stem-3``, ... : the first whose files do not exist yet."""
    k = 1
    while True:
        cand = stem if k == 1 else f"{stem}-{k}"
        if not any((out_dir / (cand + s)).exists() for s in suffixes):
            return out_dir / cand
        k += 1


def write_report(
    report: dict[str, Any], out_dir: Path, plot: Callable[[dict[str, Any], Path], object] | None = None,
    prefix: str = "",
) -> tuple[Path, Path | None]:
    """Write ``<prefix><device slug>-<date>.json`` (and ``.png`` with ``plot``) into ``out_dir`` at the
    first free suffix; the name is reserved by creating the JSON exclusively, so two runs cannot
    share it. ``prefix``: a comparison other than SGD's names its files (``adamw-``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = unique_stem(out_dir, f"{prefix}{report['device']['slug']}-{report['created'][:10]}")
    json_path, png_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".png")
    with open(json_path, "x") as f:
        json.dump(report, f, indent=1, default=str)
        f.write("\n")
    if plot is None:
        return json_path, None
    try:
        plot(report, png_path)
    except Exception as e:  # noqa: BLE001 - the figures are in the JSON
        report.setdefault("notes", []).append(f"PNG not written: {error_text(e)}")
        return json_path, None
    return json_path, png_path
