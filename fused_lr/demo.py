"""fused_lr's demo: the same training run with stock torch and with fused_lr, side by side.

Run it with ``python -m fused_lr.demo`` (options: ``--help``). It needs the ``demo`` extra
(scikit-learn for the bundled digits dataset, matplotlib for the plot; no download).

What it does:

1. Loads scikit-learn's digits (1797 8x8 images, 10 classes), splits 80/20 (stratified, ``--seed``)
   and builds a small MLP once; the second model is a ``copy.deepcopy`` of the first.
2. Trains both models from that same start on the same mini-batches (each run shuffles with its own
   ``torch.Generator`` seeded with ``--seed``, so the orders are identical):

   * stock:   ``torch.optim.SGD(fused=True)`` + ``torch.optim.lr_scheduler.<X>``
   * fused:   ``fused_lr.FusedSGD``             + ``fused_lr.lr_scheduler.<X>``

   with momentum 0.9 and weight decay, the scheduler stepped once per epoch
   (``--stock-impl default|foreach`` picks torch's other SGD implementations for the stock run).
   ``--optimizer adamw``: ``torch.optim.AdamW`` against ``fused_lr.FusedAdamW`` instead (lr 1e-3,
   weight decay 0.01), the same way.
   The two runs alternate epoch by epoch (the one that goes first switches every epoch), so that
   machine noise falls on both alike.
3. Prints one row per epoch (the LR used in that epoch, mean train loss, test accuracy, for both),
   then the largest absolute parameter and momentum-buffer (AdamW: ``exp_avg``) differences between
   the two models and
   the ratio of the time spent inside ``opt.step()`` + ``sched.step()`` (fused / stock).
4. Saves ``<out>/demo_<schedule>.png``: LR and train loss against the epoch, both runs overlaid
   (fused dashed).

Exit status: 0 when the two runs agree (parameter difference within ``PARAM_TOL``), 1 otherwise.
``run_demo(...)`` returns everything measured as a dict; ``main(argv)`` parses, calls it, and
returns the exit status.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.optim.lr_scheduler as stock_sched
from torch import nn

import fused_lr
import fused_lr.lr_scheduler as fused_sched

__all__ = ["SCHEDULES", "OPTIMIZERS", "PARAM_TOL", "run_demo", "main"]

SCHEDULES = ("step", "exp", "lambda", "cosine")
OPTIMIZERS = ("sgd", "adamw")

# Training hyper-parameters (both runs).
LR = 0.05
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
HIDDEN = 128
DEFAULT_EPOCHS = 30
DEFAULT_BATCH = 64
# --optimizer adamw (betas and eps: torch's defaults).
ADAMW_LR = 1e-3
ADAMW_WEIGHT_DECAY = 0.01

# Largest absolute parameter difference allowed between the stock and the fused run (fp32), per
# implementation of the stock torch.optim.SGD.
#
# "fused" (the default): stock SGD(fused=True) runs the same float32 kernel (torch._fused_sgd_) that
# FusedSGD's torch path calls, on the same batches, and the two LRs agree to float64 rounding
# (closed form vs torch's recurrence: <= 5e-16 relative, which the kernel's float32 arithmetic
# rounds away almost always). Measured: bit-identical parameters (difference 0.0) for every
# schedule, seeds 0-2, 30 epochs. 1e-5 leaves room for an LR that lands on the other side of a
# float32 rounding boundary (a 6e-8 relative change of one step) and for other devices, and is
# far below a real error: a skipped weight decay, or one epoch at the wrong LR, moves the
# parameters by 1e-3 to 1e-1.
#
# "default" / "foreach": torch's for-loop (the CPU default) and foreach implementations round
# differently from the fused kernel (separate multiply and add instead of fused multiply-adds):
# ~1 ulp per element per step. Over 690 steps that is 2e-7 to 1.3e-6 for most seeds, but a
# rounding difference can tip a discontinuous quantity (a ReLU, a sign) and then the difference
# jumps: cosine, seed 0 went 3e-7 -> 2.3e-5 -> 3.4e-4 at single epochs and ended at 7.2e-4.
# Stock's own for-loop and stock's own fused SGD differ by exactly the same 7.2e-4 there, so this
# is torch's rounding, not fused_lr. The bound is 5e-3: a sanity check, not a parity proof.
#
# --optimizer adamw uses the same bounds, for the same reasons: FusedAdamW's torch path calls
# torch._fused_adamw_, stock AdamW(fused=True)'s kernel. Measured (cosine, seed 0, 30 epochs):
# 0.0 against "fused", 2.5e-7 against "default" and "foreach".
PARAM_TOL = {"fused": 1e-5, "default": 5e-3, "foreach": 5e-3}


def _lambda_095(epoch):
    """LambdaLR multiplier for ``--schedule lambda``: ``0.95 ** epoch`` (plain arithmetic, so
    fused_lr runs it on the device step counter)."""
    return 0.95**epoch


def _make_scheduler(module, kind: str, opt, epochs: int):
    """The per-epoch scheduler ``kind`` from ``module`` (torch's or fused_lr's: same signatures)."""
    if kind == "step":
        return module.StepLR(opt, step_size=10, gamma=0.1)
    if kind == "exp":
        return module.ExponentialLR(opt, gamma=0.9)
    if kind == "lambda":
        return module.LambdaLR(opt, _lambda_095)
    if kind == "cosine":
        return module.CosineAnnealingLR(opt, T_max=epochs)
    raise ValueError(f"unknown schedule {kind!r}; choose from {SCHEDULES}")


def _load_digits(seed: int, device: torch.device):
    """Digits (bundled with scikit-learn), pixels scaled to [0, 1], stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)

    def t(a, dtype):
        return torch.as_tensor(a, dtype=dtype, device=device)

    return t(x_tr / 16.0, torch.float32), t(y_tr, torch.int64), t(x_te / 16.0, torch.float32), t(y_te, torch.int64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Run:
    """One of the two training runs: model, optimizer, scheduler, shuffling generator, records."""

    def __init__(self, name: str, model: nn.Module, opt, sched, seed: int) -> None:
        self.name = name
        self.model = model
        self.opt = opt
        self.sched = sched
        self.gen = torch.Generator().manual_seed(seed)  # CPU generator: same permutations on any device
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.accs: list[float] = []
        self.step_time = 0.0  # seconds inside opt.step() + sched.step()
        self.n_opt_steps = 0

    def epoch(self, x, y, x_te, y_te, batch_size: int) -> None:
        device = x.device
        self.lrs.append(float(self.opt.param_groups[0]["lr"]))  # the LR used in this epoch
        self.model.train()
        perm = torch.randperm(x.shape[0], generator=self.gen).to(device)
        total = torch.zeros((), device=device)
        n_batches = 0
        for start in range(0, x.shape[0], batch_size):
            idx = perm[start : start + batch_size]
            loss = nn.functional.cross_entropy(self.model(x[idx]), y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            _sync(device)
            t0 = time.perf_counter()
            self.opt.step()
            _sync(device)
            self.step_time += time.perf_counter() - t0
            self.n_opt_steps += 1
            total += loss.detach()
            n_batches += 1
        _sync(device)
        t0 = time.perf_counter()
        self.sched.step()
        _sync(device)
        self.step_time += time.perf_counter() - t0
        self.losses.append(float(total) / n_batches)
        self.model.eval()
        with torch.no_grad():
            self.accs.append(float((self.model(x_te).argmax(1) == y_te).float().mean()))


def _max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((float((u.detach() - v.detach()).abs().max()) for u, v in zip(a, b, strict=True)), default=0.0)


def _state_buffers(model: nn.Module, opt, key: str) -> list[torch.Tensor]:
    return [opt.state[p][key] for p in model.parameters()]


def _plot(path: Path, schedule: str, stock: _Run, fused: _Run, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(len(stock.lrs)))
    fig, (ax_lr, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    styles = {
        "stock": dict(color="tab:blue", linestyle="-", linewidth=2.5, alpha=0.6),
        "fused": dict(color="tab:orange", linestyle="--", linewidth=1.8),
    }
    impl = {"fused": "fused=True", "foreach": "foreach=True", "default": ""}[result["stock_impl"]]
    name = type(stock.sched).__name__
    opt_name = "AdamW" if result["optimizer"] == "adamw" else "SGD"
    labels = {
        "stock": f"torch.optim.{opt_name}({impl}) + torch's {name}",
        "fused": f"fused_lr.Fused{opt_name} + fused_lr's {name}",
    }
    for run in (stock, fused):
        ax_lr.plot(epochs, run.lrs, label=labels[run.name], drawstyle="steps-post", **styles[run.name])
        ax_loss.plot(epochs, run.losses, label=labels[run.name], **styles[run.name])
    if schedule in ("step", "exp", "lambda"):
        ax_lr.set_yscale("log")
    ax_loss.set_yscale("log")
    ax_lr.set_title(f"learning rate ({schedule} schedule, stepped per epoch)")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("LR used in the epoch")
    ax_loss.set_title("mean train loss (cross-entropy)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    for ax in (ax_lr, ax_loss):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"digits MLP on {result['device']}: test acc stock {stock.accs[-1]:.3f} / fused {fused.accs[-1]:.3f}, "
        f"max |param diff| {result['max_param_diff']:.1e}, step time fused/stock {result['time_ratio']:.2f}",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(
    schedule: str = "step",
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH,
    seed: int = 0,
    out: str | Path = "demo_out",
    plot: bool = True,
    device: str | None = None,
    stock_impl: str = "fused",
    threads: int | None = 1,
    verbose: bool = True,
    optimizer: str = "sgd",
) -> dict[str, Any]:
    """Train the digits MLP with stock torch and with fused_lr; return what was measured.

    Returns a dict with ``lrs``/``losses``/``accs`` (``{"stock": [...], "fused": [...]}``, one entry
    per epoch), ``max_param_diff``, ``max_buffer_diff``, ``max_lr_rel_diff``, ``time_stock``,
    ``time_fused`` (seconds inside ``opt.step()`` + ``sched.step()``), ``time_ratio`` (fused / stock),
    ``param_diff_per_epoch``, ``png`` (path or None), ``tol`` (``PARAM_TOL[stock_impl]``) and ``ok``
    (``max_param_diff <= tol``).

    ``stock_impl``: the stock ``torch.optim.SGD`` implementation, ``"fused"`` (``fused=True``, the
    default: the same arithmetic as FusedSGD's torch path, so the check can be tight and the time
    ratio compares like with like), ``"default"`` (torch's choice: the for-loop on CPU, foreach on
    CUDA) or ``"foreach"``.

    ``optimizer``: ``"sgd"`` (torch.optim.SGD vs FusedSGD) or ``"adamw"`` (torch.optim.AdamW vs
    FusedAdamW, whose torch path runs the kernel of ``AdamW(fused=True)``; ``max_buffer_diff`` then
    compares ``exp_avg``).

    ``threads``: torch's intra-op thread count during the run (restored afterwards); ``None`` keeps
    torch's setting. The default, 1, suits this tiny model: intra-op parallelism buys nothing at
    64x128 matrices, and on a shared machine an OpenMP barrier stalls whenever one of its workers is
    descheduled. Measured on 2 shared CPU cores while other jobs ran: 8-10 ms per optimizer step
    (stock fused SGD and FusedSGD alike, both use torch's parallel fused kernel) instead of
    0.1-0.2 ms, which made a 30-epoch run take 43 s instead of ~10 s.
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_demo(schedule, epochs, batch_size, seed, out, plot, device, stock_impl, verbose, optimizer)
    finally:
        torch.set_num_threads(previous_threads)


def _run_demo(schedule, epochs, batch_size, seed, out, plot, device, stock_impl, verbose, optimizer) -> dict[str, Any]:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose from {OPTIMIZERS}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")
    if stock_impl not in PARAM_TOL:
        raise ValueError(f"unknown stock_impl {stock_impl!r}; choose from {tuple(PARAM_TOL)}")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    say = print if verbose else (lambda *a, **k: None)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")

    x, y, x_te, y_te = _load_digits(seed, dev)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(x.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10)
    ).to(dev)
    model_fused = copy.deepcopy(model)

    stock_kw = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[stock_impl]
    if optimizer == "adamw":
        hyper, buffer_key, stock_cls, fused_cls = (dict(lr=ADAMW_LR, weight_decay=ADAMW_WEIGHT_DECAY), "exp_avg",
                                                   torch.optim.AdamW, fused_lr.FusedAdamW)
    else:
        hyper, buffer_key, stock_cls, fused_cls = (dict(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
                                                   "momentum_buffer", torch.optim.SGD, fused_lr.FusedSGD)
    opt_s = stock_cls(model.parameters(), **hyper, **stock_kw)
    opt_f = fused_cls(model_fused.parameters(), **hyper)
    stock = _Run("stock", model, opt_s, _make_scheduler(stock_sched, schedule, opt_s, epochs), seed)
    fused = _Run("fused", model_fused, opt_f, _make_scheduler(fused_sched, schedule, opt_f, epochs), seed)

    say(
        f"fused_lr demo: digits ({x.shape[0]} train / {x_te.shape[0]} test), MLP 64-{HIDDEN}-{HIDDEN}-10, "
        f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)"
    )
    say(
        f"{stock_cls.__name__} {' '.join(f'{k}={v}' for k, v in hyper.items())}, batch {batch_size}, {epochs} epochs, "
        f"seed {seed}, schedule '{schedule}' ({type(stock.sched).__name__}, stepped per epoch)"
    )
    impl_text = {"fused": "fused=True", "foreach": "foreach=True", "default": "torch's default implementation"}
    say(f"stock: torch.optim.{stock_cls.__name__}({impl_text[stock_impl]}) + "
        f"torch.optim.lr_scheduler.{type(stock.sched).__name__}")
    say(f"fused: fused_lr.{fused_cls.__name__}(backend={opt_f.backend!r}) + "
        f"fused_lr.lr_scheduler.{type(fused.sched).__name__}")
    say()
    tol = PARAM_TOL[stock_impl]
    params_s, params_f = list(model.parameters()), list(model_fused.parameters())
    param_diffs: list[float] = []
    header = (
        f"{'epoch':>5} | {'LR stock':>10} {'LR fused':>10} | {'loss stock':>10} {'loss fused':>10} | "
        f"{'acc stock':>9} {'acc fused':>9} | {'max|dparam|':>11}"
    )
    say(header)
    say("-" * len(header))
    for e in range(epochs):
        # Alternate which run goes first so warm caches and machine noise fall on both alike.
        for run in (stock, fused) if e % 2 == 0 else (fused, stock):
            run.epoch(x, y, x_te, y_te, batch_size)
        param_diffs.append(_max_abs_diff(params_s, params_f))
        say(
            f"{e:>5} | {stock.lrs[e]:>10.3e} {fused.lrs[e]:>10.3e} | {stock.losses[e]:>10.5f} {fused.losses[e]:>10.5f}"
            f" | {stock.accs[e]:>9.4f} {fused.accs[e]:>9.4f} | {param_diffs[e]:>11.2e}"
        )

    max_param_diff = param_diffs[-1]
    max_param = max(float(p.detach().abs().max()) for p in params_s)
    max_buffer_diff = _max_abs_diff(_state_buffers(model, opt_s, buffer_key), _state_buffers(model_fused, opt_f, buffer_key))
    max_lr_rel_diff = max(abs(a - b) / max(abs(a), 1e-300) for a, b in zip(stock.lrs, fused.lrs))
    ratio = fused.step_time / stock.step_time if stock.step_time > 0 else math.nan
    result: dict[str, Any] = dict(
        schedule=schedule,
        optimizer=optimizer,
        epochs=epochs,
        device=str(dev),
        lrs={"stock": stock.lrs, "fused": fused.lrs},
        losses={"stock": stock.losses, "fused": fused.losses},
        accs={"stock": stock.accs, "fused": fused.accs},
        max_param_diff=max_param_diff,
        param_diff_per_epoch=param_diffs,
        max_buffer_diff=max_buffer_diff,
        max_lr_rel_diff=max_lr_rel_diff,
        time_stock=stock.step_time,
        time_fused=fused.step_time,
        time_ratio=ratio,
        n_opt_steps=stock.n_opt_steps,
        stock_impl=stock_impl,
        tol=tol,
        ok=max_param_diff <= tol,
        png=None,
    )

    say()
    say(f"largest |LR stock - LR fused| / LR over the epochs: {max_lr_rel_diff:.2e}")
    say(
        f"largest |param stock - param fused|: {max_param_diff:.3e} (largest |param| {max_param:.3f}; "
        f"tolerance {tol:.0e} against stock '{stock_impl}'); {buffer_key}: {max_buffer_diff:.3e}"
    )
    sync_note = ", torch.cuda.synchronize() before and after each call" if dev.type == "cuda" else ""
    say(
        f"time inside opt.step() + sched.step() ({stock.n_opt_steps} optimizer steps + {epochs} scheduler steps "
        f"per run, time.perf_counter{sync_note}; runs alternated epoch by epoch):"
    )
    say(
        f"  stock {stock.step_time * 1e3:.1f} ms, fused {fused.step_time * 1e3:.1f} ms, "
        f"ratio fused/stock {ratio:.2f} "
        f"({fused.step_time / stock.n_opt_steps * 1e6:.0f} vs {stock.step_time / stock.n_opt_steps * 1e6:.0f} us per step;"
        f" a model this small measures Python overhead, not memory bandwidth)"
    )
    if plot:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        png = out_dir / (f"demo_{schedule}.png" if optimizer == "sgd" else f"demo_{optimizer}_{schedule}.png")
        _plot(png, schedule, stock, fused, result)
        result["png"] = str(png)
        say(f"plot: {png}")
    if not result["ok"]:
        say(
            f"WARNING: stock and fused parameters differ by {max_param_diff:.3e} > {tol:.0e}: "
            "the two runs disagree by more than rounding explains (see PARAM_TOL in fused_lr/demo.py)"
        )
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fused_lr.demo",
        description="Train a small MLP on scikit-learn's digits with stock torch SGD + scheduler and with "
        "fused_lr.FusedSGD + fused_lr's scheduler, from the same seed, and compare.",
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                   help="sgd: torch.optim.SGD vs fused_lr.FusedSGD (default); adamw: torch.optim.AdamW vs "
                   "fused_lr.FusedAdamW (lr 1e-3, weight decay 0.01)")
    p.add_argument("--schedule", choices=SCHEDULES, default="step",
                   help="step: StepLR(step_size=10, gamma=0.1); exp: ExponentialLR(gamma=0.9); "
                   "lambda: LambdaLR(0.95 ** epoch); cosine: CosineAnnealingLR(T_max=epochs). Default: step")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"default {DEFAULT_BATCH}")
    p.add_argument("--seed", type=int, default=0, help="model init, data split and shuffling seed (default 0)")
    p.add_argument("--out", default="demo_out", help="directory for the PNG (default demo_out/)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--stock-impl", choices=tuple(PARAM_TOL), default="fused",
                   help="torch.optim.SGD implementation of the stock run: fused (fused=True, the same "
                   "arithmetic as FusedSGD; default), default (torch's choice: for-loop on CPU, foreach on "
                   "CUDA) or foreach. The parameter tolerance depends on it (PARAM_TOL)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads during the run (default 1: the model is tiny; 0 keeps torch's default)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0: the runs agree, 1: they do not)."""
    args = _parser().parse_args(argv)
    result = run_demo(
        schedule=args.schedule,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        out=args.out,
        plot=not args.no_plot,
        device=args.device,
        stock_impl=args.stock_impl,
        threads=args.threads if args.threads > 0 else None,
        optimizer=args.optimizer,
    )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
