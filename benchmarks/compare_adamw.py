"""fused_lr against stock torch.optim.AdamW: one optimizer step plus its scheduler step, side by side.

Run from the repository root (``benchmarks/run.py --optimizer adamw`` runs this comparison, with the
same options)::

    python benchmarks/compare_adamw.py --quick    # a few minutes on a 2-core CPU (QUICK below)
    python benchmarks/compare_adamw.py            # every set x every schedule x every method

Methods (columns), all over the same tensors, lr 1e-3, betas (0.9, 0.999), weight decay 0.01:

* ``fused_lr[torch]``   ``FusedAdamW(backend="torch")`` + the fused_lr scheduler
* ``fused_lr[triton]``  ``FusedAdamW(backend="triton")`` + the fused_lr scheduler, where Triton can
  run (a CUDA device); otherwise skipped, the footnote says why
* ``stock fused``       ``torch.optim.AdamW(fused=True)`` + the stock scheduler (baseline)
* ``stock foreach``     ``torch.optim.AdamW(foreach=True)`` + the stock scheduler (baseline)
* ``stock capturable``  ``torch.optim.AdamW(foreach=True, capturable=True)`` + the stock scheduler
  (CUDA only: torch refuses capturable CPU parameters)
* ``torch.compile``     ``torch.optim.AdamW`` with a tensor LR, its step compiled, + the stock
  scheduler (``harness.methods``), as in ``compare_sgd.py``

Schedules and parameter sets: those of ``compare_sgd.py`` (``step_epoch``, ``cosine_iter``,
``plateau_epoch``; ``resnet50``, ``gpt2_small``, ``many_small``, ``one_large``). All fp32, no
amsgrad: 28 bytes moved per parameter (``harness.bandwidth.ADAMW_FP32``: read p, g, exp_avg,
exp_avg_sq; write p, exp_avg, exp_avg_sq). Results are written as
``adamw-<device slug>-<date>.json`` / ``.png``.

QUICK (``--quick``): as ``compare_sgd.py``'s (resnet50, many_small, one_large on CPU; cosine_iter
on every set plus step_epoch on resnet50; torch.compile on one_large only on CPU).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch.optim.lr_scheduler as stock_schedulers

import fused_lr.lr_scheduler as fused_schedulers

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # benchmarks/ holds harness and param_sets
    sys.path.insert(0, str(_HERE))

import compare_sgd  # noqa: E402
from harness import cli  # noqa: E402
from harness.bandwidth import ADAMW_FP32  # noqa: E402
from harness.methods import (  # noqa: E402
    Method,
    capturable_unavailable,
    fused_adamw,
    stock_adamw,
    triton_unavailable,
)
from harness.suite import Comparison  # noqa: E402
from param_sets import PARAM_SETS  # noqa: E402

HYPER = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01)
SCHEDULES = compare_sgd.SCHEDULES
EPOCH_STEPS = compare_sgd.EPOCH_STEPS


def _stock(name: str, kind: str, **kw) -> Method:
    return Method(name, stock_adamw(kind), stock_schedulers, **kw)


def _fused(name: str, backend: str, **kw) -> Method:
    return Method(name, fused_adamw(backend), fused_schedulers, **kw)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        _fused("fused_lr[torch]", "torch"),
        _fused("fused_lr[triton]", "triton", unavailable=triton_unavailable),
        _stock("stock fused", "fused", baseline=True),
        _stock("stock foreach", "foreach", baseline=True),
        _stock("stock capturable", "capturable", unavailable=capturable_unavailable),
        _stock("torch.compile", "default", compiled=True),
    )
}

COMPARISON = Comparison(
    script=_HERE / "compare_adamw.py",
    title="fused_lr vs stock AdamW: one optimizer step + its scheduler step (fp32)",
    sets=PARAM_SETS,
    schedules=SCHEDULES,
    methods=METHODS,
    hyper=HYPER,
    plan=functools.partial(compare_sgd.make_plan, table=METHODS),
    bytes_per_param=ADAMW_FP32,
    settings=dict(epoch_steps=EPOCH_STEPS, dtype="float32", optimizer="AdamW"),
    stem="adamw-",
)


def main(argv=None) -> int:
    return cli.main(COMPARISON, argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
