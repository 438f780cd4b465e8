"""One-command benchmark: fused_lr against stock torch.optim.SGD on this machine, side by side.

Run from the repository root::

    python benchmarks/run.py            # full: every set x every schedule x every method
    python benchmarks/run.py --quick    # < 2 minutes on a 2-core CPU
    python benchmarks/run.py --optimizer adamw --quick    # the AdamW comparison

Options: ``--optimizer sgd|adamw`` (default sgd: which comparison),
``--out DIR`` (default ``benchmarks/results``), ``--device cpu|cuda`` (default: CUDA when
available), ``--sets NAME ...`` (resnet50 gpt2_small many_small one_large), ``--schedules NAME ...``
(step_epoch cosine_iter plateau_epoch), ``--repeats N`` (timing rounds), ``--threads N``
(``torch.set_num_threads``; default torch's choice, recorded), ``--no-compile``, ``--print-slug``,
``--in-process`` (every cell in this process instead of one process per cell).

What it runs: the comparisons below, declared one per file on the shared harness
(``benchmarks/harness/``, whose modules each document how their figure is made):

* ``compare_sgd.py``  methods x parameter sets x schedules: step time, ratios to stock, GB/s
  against the measured copy bandwidth, peak extra memory, CUDA launches and syncs
* ``compare_adamw.py``  the same for AdamW (``--optimizer adamw``; files ``adamw-<slug>-<date>.*``)

(``host_overhead.py``, the host work of a Triton-path step measured on CPU, runs on its own: it
must set ``TRITON_INTERPRET=1`` before Triton is imported.)

Output: one table on stdout; ``<out>/<device-slug>-<YYYY-MM-DD>.json`` and ``.png`` (a result of
another device is never overwritten: the slug names the device, and an existing file of the same
device and date gets the next free suffix ``-2``, ``-3``, ...). JSON keys: ``harness.report.JSON_KEYS``,
``harness.cell.CELL_KEYS`` and ``METHOD_KEYS`` (schema 1).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # benchmarks/ holds the comparisons and harness
    sys.path.insert(0, str(_HERE))

import argparse  # noqa: E402

import compare_adamw  # noqa: E402
import compare_sgd  # noqa: E402
from harness import cli  # noqa: E402

COMPARISONS = {"sgd": compare_sgd.COMPARISON, "adamw": compare_adamw.COMPARISON}


def main(argv=None) -> int:
    """``--optimizer`` picks the comparison (one result file per run); the rest is ``cli.main``'s."""
    pick = argparse.ArgumentParser(add_help=False)
    pick.add_argument("--optimizer", choices=list(COMPARISONS), default="sgd")
    args, rest = pick.parse_known_args(sys.argv[1:] if argv is None else argv)
    if argv is None and args.optimizer == "sgd":
        rest = None  # (the recorded command stays the command line as typed)
    prog = "run.py" if args.optimizer == "sgd" else f"run.py --optimizer {args.optimizer}"
    return cli.main(COMPARISONS[args.optimizer], rest, description=__doc__.split("\n\n")[0], prog=prog)


if __name__ == "__main__":
    sys.exit(main())
