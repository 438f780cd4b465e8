"""fused_lr against stock torch.optim.SGD: one optimizer step plus its scheduler step, side by side.

Run from the repository root (``benchmarks/run.py`` runs this comparison, with the same options)::

    python benchmarks/compare_sgd.py --quick    # < 2 minutes on a 2-core CPU (QUICK below)
    python benchmarks/compare_sgd.py            # every set x every schedule x every method

Methods (columns), all over the same tensors, momentum 0.9, weight decay 1e-4, lr 0.01:

* ``fused_lr[torch]``   ``FusedSGD(backend="torch")`` + the fused_lr scheduler
* ``fused_lr[triton]``  ``FusedSGD(backend="triton")`` + the fused_lr scheduler, where Triton can
  run (a CUDA device); otherwise skipped, the footnote says why
* ``stock foreach``     ``torch.optim.SGD(foreach=True)`` + the stock scheduler (baseline)
* ``stock fused``       ``torch.optim.SGD(fused=True)`` + the stock scheduler (baseline)
* ``torch.compile``     ``torch.optim.SGD`` with a tensor LR, its step compiled, + the stock
  scheduler (``harness.methods``); its first calls are reported as ``compile_calls_s``; a failure is
  recorded as text and shown as "n/a". The JSON says whether Inductor's on-disk cache existed.

Schedules (one iteration = one ``opt.step()`` plus the scheduler step when due):

* ``step_epoch``     ``StepLR(step_size=3, gamma=0.9)`` once per epoch of ``EPOCH_STEPS`` = 10
  iterations (gamma 0.9, not 0.1: thousands of steps must not push the LR into float32 denormals,
  which slow a CPU for reasons unrelated to the code under test)
* ``cosine_iter``    ``CosineAnnealingLR(T_max=1000)`` every iteration
* ``plateau_epoch``  ``ReduceLROnPlateau(factor=0.5, patience=1, min_lr=1e-4)`` once per epoch on a
  0-dim device metric

A 10-iteration epoch is far shorter than a real one: read the per-epoch rows as an upper bound on
per-epoch scheduler costs.

Parameter sets (rows, ``param_sets.py``): ``resnet50`` (161 tensors, 25.6M), ``gpt2_small`` (148,
124M), ``many_small`` (1,000 x 1,024: per-tensor overhead dominates), ``one_large`` (2**24 in one
tensor: bandwidth dominates). All fp32; 20 bytes moved per parameter (``harness.bandwidth``).

Per cell and method: median and p20-p80 of the iteration time (``harness.timing``), ratio to each
stock baseline, GB/s and its share of the copy bandwidth timed in the same rounds
(``harness.bandwidth``), peak extra memory (``harness.memory``), on CUDA launches and syncs per
iteration (``harness.launches``). Each cell runs in a fresh process (``harness.suite``).

QUICK (``--quick``): sets resnet50, many_small, one_large (gpt2_small skipped on CPU, kept on CUDA);
cosine_iter on every set plus step_epoch on resnet50; 5 rounds of about 0.1 s per method (CUDA:
0.05 s); torch.compile only on one_large on CPU (cold CPU compiles of a 161-tensor step take over a
minute on a small CPU, of 1,000 tensors over 6 minutes), on every set on CUDA.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # benchmarks/ holds harness and param_sets
    sys.path.insert(0, str(_HERE))

from harness import cli  # noqa: E402
from harness.bandwidth import SGD_MOMENTUM_FP32  # noqa: E402
from harness.methods import Method, Schedule, fused, stock, triton_unavailable  # noqa: E402
from harness.suite import Comparison, Plan  # noqa: E402
from param_sets import PARAM_SETS  # noqa: E402

HYPER = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)
EPOCH_STEPS = 10  # iterations per "epoch" for the per-epoch schedules

SCHEDULES = {
    s.name: s
    for s in (
        Schedule("step_epoch", "StepLR", dict(step_size=3, gamma=0.9), every=EPOCH_STEPS),
        Schedule("cosine_iter", "CosineAnnealingLR", dict(T_max=1000)),
        Schedule("plateau_epoch", "ReduceLROnPlateau", dict(factor=0.5, patience=1, min_lr=1e-4),
                 every=EPOCH_STEPS, metric=True),
    )
}

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        fused("fused_lr[torch]", "torch"),
        fused("fused_lr[triton]", "triton", unavailable=triton_unavailable),
        stock("stock foreach", "foreach", baseline=True),
        stock("stock fused", "fused", baseline=True),
        stock("torch.compile", "default", compiled=True),
    )
}


def make_plan(args, device: torch.device, methods: list[str], table: dict[str, Method] | None = None) -> Plan:
    """The cells of a run: every set x schedule, or QUICK's subset (module docstring). ``table``:
    the methods the names refer to (default METHODS; compare_adamw.py passes its own)."""
    table = METHODS if table is None else table
    plan = Plan()
    quick_cpu = args.quick and device.type == "cpu"
    sets = args.sets or list(PARAM_SETS)
    if quick_cpu and not args.sets:
        sets = [s for s in sets if s != "gpt2_small"]
        plan.notes.append("--quick on CPU: gpt2_small skipped")
    if args.quick and not args.schedules:
        plan.notes.append("--quick: cosine_iter on every set, step_epoch on resnet50 only, no plateau_epoch")
    for s in sets:
        for sc in args.schedules or list(SCHEDULES):
            if args.quick and not args.schedules and not (sc == "cosine_iter" or (sc == "step_epoch" and s == "resnet50")):
                continue
            compiled_here = not quick_cpu or s == "one_large"
            plan.cells.append((s, sc, [m for m in methods if compiled_here or not table[m].compiled]))
    if quick_cpu and any(table[m].compiled for m in methods):
        plan.notes.append("--quick on CPU: torch.compile measured on one_large only (cold CPU compiles take minutes)")
    return plan


COMPARISON = Comparison(
    script=_HERE / "compare_sgd.py",
    title="fused_lr vs stock SGD: one optimizer step + its scheduler step (fp32, momentum 0.9)",
    sets=PARAM_SETS,
    schedules=SCHEDULES,
    methods=METHODS,
    hyper=HYPER,
    plan=make_plan,
    bytes_per_param=SGD_MOMENTUM_FP32,
    settings=dict(epoch_steps=EPOCH_STEPS, dtype="float32"),
)


def main(argv=None) -> int:
    return cli.main(COMPARISON, argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
