"""The PNG: step time per (set, schedule) and method (log scale, p20-p80 whiskers) above the share
of the copy bandwidth each reaches; the title names the comparison, device, threads, torch, date."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(report: dict[str, Any], path: Path, title: str = "") -> Path:
    """Draw ``report`` (a report dict, as in the JSON) into ``path``; needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = report["cells"]
    methods: list[str] = []
    for c in cells:
        methods += [m for m in c["methods"] if m not in methods]
    fig, (ax_t, ax_b) = plt.subplots(2, 1, figsize=(max(7.0, 1.6 * len(cells) + 2), 8), sharex=True)
    width = 0.8 / max(len(methods), 1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, m in enumerate(methods):
        xs, ts, lo, hi, shares = [], [], [], [], []
        for i, c in enumerate(cells):
            r = c["methods"].get(m)
            if not r or r["status"] != "ok":
                continue
            xs.append(i + (j - (len(methods) - 1) / 2) * width)
            ts.append(r["median_s"] * 1e3)
            lo.append((r["median_s"] - r["p20_s"]) * 1e3)
            hi.append((r["p80_s"] - r["median_s"]) * 1e3)
            shares.append(100 * (r["copy_share"] or 0))
        color = colors[j % len(colors)]
        ax_t.bar(xs, ts, width, yerr=[lo, hi], capsize=2, label=m, color=color)
        ax_b.bar(xs, shares, width, label=m, color=color)
    ax_t.set_yscale("log")
    fmt = matplotlib.ticker.FuncFormatter(lambda y, _pos: f"{y:g}")
    ax_t.yaxis.set_major_formatter(fmt)
    ax_t.yaxis.set_minor_formatter(fmt)
    ax_t.tick_params(axis="y", which="minor", labelsize=7)
    ax_t.set_ylabel("step time, ms (median, p20-p80; log)")
    ax_t.grid(axis="y", which="both", alpha=0.3)
    ax_b.set_ylabel("% of copy bandwidth\n(dst.copy_(src) timed in the same rounds)")
    ax_b.axhline(100, color="gray", lw=0.8, ls="--")
    ax_b.grid(axis="y", alpha=0.3)
    ax_b.set_xticks(range(len(cells)))
    ax_b.set_xticklabels([f"{c['set']}\n{c['schedule']}" for c in cells], fontsize=8)
    dev = report["device"]
    fig.suptitle(
        f"{title}\n{dev['name']} ({dev['type']}, {report['host']['torch_threads']} threads), "
        f"torch {report['versions']['torch']}, {report['created'][:10]}",
        fontsize=9,
        y=0.995,
    )
    handles, names = ax_t.get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=min(len(methods), 5), fontsize=8, bbox_to_anchor=(0.5, 0.945))
    fig.tight_layout(rect=(0, 0, 1, 0.91))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
