"""FusedSGD + fused_lr schedulers inside training frameworks, against the same framework run with
torch.optim.SGD + the stock scheduler: what the user sees there (the logged LRs and losses) and the
trained parameters.

* The protocol the frameworks use, emulated with plain torch (runs without the frameworks): what
  Lightning's scheduler loop, its LearningRateMonitor and HF Trainer's LR logging do with a
  scheduler and with ``param_groups[i]["lr"]`` (a float, as in stock).
* Lightning: ``configure_optimizers`` with intervals "epoch" and "step" and ReduceLROnPlateau on a
  monitored metric; what ``LearningRateMonitor`` (logging_interval "step", "epoch" and None) writes
  to a CSVLogger, row by row; a Lightning checkpoint resumed.
* HF ``Trainer``: ``trainer.state.log_history`` (``learning_rate``, ``loss``, ``grad_norm`` at every
  step) with our schedulers passed in ``optimizers=(opt, sched)``, with HF's own schedulers driving
  FusedSGD, and with ``optimizer_cls_and_kwargs``.

The README's test command installs the ``frameworks`` extra, so these run on every landing; they
skip where lightning / transformers are not installed, except under FUSED_LR_REQUIRE_FRAMEWORKS=1
(set by .ci/run), where a missing framework fails them. Both are imported inside the tests, so
the rest of the suite neither waits for them nor sees what they set process-wide (restored below).

Tolerances: LRs LR_RTOL (tests/conftest.py); parameters TRAJ_TOL[float32]; logged losses LOSS_TOL.
"""

from __future__ import annotations

import copy
import csv
import importlib
import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import TRAJ_TOL, assert_close, assert_lrs_close

import fused_lr
import fused_lr.lr_scheduler as fused

TOL = TRAJ_TOL[torch.float32]
# A logged loss (and HF's grad_norm) is computed from parameters that agree to TOL on fixed data;
# through this 2-layer tanh network on unit-scale data an error moves by about the parameters'
# relative error, and a mean of squares at most doubles it, so TOL covers the logged values too.
# Measured here: parameters within 3e-6 relative after 9-12 steps, logged losses bit-identical,
# grad_norm within 1.1e-7. A loss taken one step off (what these tests look for) differs by > 1e-2.
LOSS_TOL = TOL
OPT_KW = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)


@pytest.fixture(autouse=True)
def _process_state_restored():
    """Lightning and HF change process-wide state that would reach the tests after this file:
    Lightning sets environment variables (PYTORCH_NVML_BASED_CUDA_CHECK, and CUBLAS_WORKSPACE_CONFIG
    with torch.use_deterministic_algorithms(True) when asked to be deterministic); both seed every
    global RNG. Put everything back after each test."""
    env = dict(os.environ)
    det = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    rngs = torch.get_rng_state(), random.getstate()
    np_rng = np.random.get_state()
    yield
    os.environ.clear()
    os.environ.update(env)
    torch.use_deterministic_algorithms(det[0], warn_only=det[1])
    torch.set_num_threads(threads)
    torch.set_rng_state(rngs[0])
    random.setstate(rngs[1])
    np.random.set_state(np_rng)


def _framework(name):
    """Import a framework inside a test: skip where it is not installed, fail in CI (.ci/run sets
    FUSED_LR_REQUIRE_FRAMEWORKS=1) so that a broken install cannot pass as skips."""
    if os.environ.get("FUSED_LR_REQUIRE_FRAMEWORKS") == "1":
        return importlib.import_module(name)
    return pytest.importorskip(name)


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.randn(4, 2, generator=g) + 0.1 * torch.randn(n, 2, generator=g)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


# ------------------------------------------------------------------------ the protocol, plain torch


@pytest.mark.parametrize("kind", ["step", "cosine", "plateau"])
def test_framework_protocol_emulated(kind):
    """What the frameworks do, op for op: scheduler.step() (plateau: step(metric tensor)) after the
    optimizer step, get_last_lr()[0] (HF's logged LR), group["lr"] read and formatted at log time
    (Lightning's LearningRateMonitor and loggers), state_dict deep-copied and JSON-logged values."""
    x, y = _data()
    nets = [_net(), _net()]
    opts = [torch.optim.SGD(nets[0].parameters(), **OPT_KW), fused_lr.FusedSGD(nets[1].parameters(), **OPT_KW)]
    make = {
        "step": lambda M, o: M.StepLR(o, 3, 0.5),
        "cosine": lambda M, o: M.CosineAnnealingLR(o, 5, 1e-3),
        "plateau": lambda M, o: M.ReduceLROnPlateau(o, patience=0, factor=0.5),
    }[kind]
    scheds = [make(stock, opts[0]), make(fused, opts[1])]
    logs = [[], []]
    for epoch in range(9):
        for i in range(2):
            net, opt, sched = nets[i], opts[i], scheds[i]
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            metric = loss.detach() if epoch < 3 else loss.detach() + 1.0  # stalls: plateau reduces
            sched.step(metric) if kind == "plateau" else sched.step()
            lr = opt.param_groups[0]["lr"]  # a float in both
            assert type(lr) is float, f"{kind}: group['lr'] is {type(lr)}"
            hf = opt.param_groups[0]["lr"] if kind == "plateau" else sched.get_last_lr()[0]
            hf = hf.item() if torch.is_tensor(hf) else hf  # HF Trainer._get_learning_rate
            logs[i].append(
                (
                    float(lr),
                    f"{lr:.6e}",  # progress bars and loggers format it
                    math.isfinite(lr),
                    json.dumps({"lr": float(lr)}),
                    hf,
                    type(hf),
                )
            )
        sds = [copy.deepcopy(o.state_dict()) for o in opts]
        assert type(sds[1]["param_groups"][0]["lr"]) is float
        assert_lrs_close([sds[1]["param_groups"][0]["lr"]], [sds[0]["param_groups"][0]["lr"]], f"{kind} state_dict")
    for t, (a, b) in enumerate(zip(*logs)):
        # formatted and JSON values parse back to the same LR (closed form vs recurrence: ~1 ulp)
        parsed = [float(b[1]), json.loads(b[3])["lr"]]
        assert_lrs_close([b[0], b[4], *parsed], [a[0], a[4], float(a[1]), json.loads(a[3])["lr"]], f"{kind} epoch {t}")
        assert b[2] is a[2] is True and b[5] is a[5] is float, f"{kind} epoch {t}: {b} vs {a}"
    assert len({a[0] for a in logs[0]}) > 2, "the schedule should change the LR"
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        assert_close(q, p, what=f"{kind} params", **TOL)


def test_lr_object_held_by_a_monitor_is_a_value():
    """A monitor that keeps ``group["lr"]`` itself (Lightning's LearningRateMonitor.lrs does) keeps
    the float of that step, as with stock SGD: the everyday ``lrs.append(group["lr"])``."""
    held = {}
    for name, make, mod in (("stock", torch.optim.SGD, stock), ("fused", fused_lr.FusedSGD, fused)):
        opt = make([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
        sched = mod.StepLR(opt, 1, 0.5)
        held[name] = []
        for _ in range(3):
            held[name].append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    assert held["fused"] == held["stock"] == [1.0, 0.5, 0.25]
    assert all(type(v) is float for v in held["fused"])


# ------------------------------------------------------------------------ Lightning

# scheduler under test -> Lightning's interval for it (StepLR per epoch, cosine per step, plateau per
# epoch on the epoch's mean training loss)
LIGHTNING_INTERVAL = {"step": "epoch", "cosine": "step", "plateau": "epoch"}


def _lightning_run(root, use_fused, sched_name, monitor_interval="step", epochs=4, ckpt_path=None, save=False):
    """A tiny regression model trained by Lightning on CPU: 2 parameter groups (LRs 0.1 and 0.05),
    3 batches per epoch, a CSVLogger and a LearningRateMonitor (LRs, momenta, weight decays).
    Returns the parameters, each group's LR at every batch start, the logger's CSV rows and the
    monitor's ``lrs``."""
    L = _framework("lightning.pytorch")
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)
    interval = LIGHTNING_INTERVAL[sched_name]

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, _):
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.log("batch_loss", loss)  # at every step
            self.log("train_loss", loss, on_step=False, on_epoch=True)  # the epoch's mean: plateau's metric
            return loss

        def configure_optimizers(self):
            M = fused if use_fused else stock
            groups = [{"params": self.net[0].parameters()}, {"params": self.net[2].parameters(), "lr": 0.05}]
            opt = (fused_lr.FusedSGD if use_fused else torch.optim.SGD)(groups, **OPT_KW)
            if sched_name == "plateau":  # epoch losses 5.5, 2.9, 1.1, 1.3: reduces after epochs 1 and 3
                sched = M.ReduceLROnPlateau(opt, patience=0, factor=0.5, threshold=0.5)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval, "monitor": "train_loss"}}
            sched = M.StepLR(opt, 2, 0.5) if sched_name == "step" else M.CosineAnnealingLR(opt, 5, 1e-3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}

    class Recorder(L.Callback):
        def __init__(self):
            self.lrs = []

        def on_train_batch_start(self, trainer, *_):
            self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    rec = Recorder()
    monitor = L.callbacks.LearningRateMonitor(logging_interval=monitor_interval, log_momentum=True, log_weight_decay=True)
    callbacks = [rec, monitor]
    if save:
        callbacks.append(L.callbacks.ModelCheckpoint(dirpath=root, save_last=True))
    logger = L.loggers.CSVLogger(root, name="csv")  # a new version_<n> folder per run
    module = Module()
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=logger, callbacks=callbacks, log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=save, num_sanity_val_steps=0,
    )
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        # the monitor names its keys after the optimizer's class: lr-SGD/pg1 and lr-FusedSGD/pg1
        rows = [{k.replace("FusedSGD", "SGD"): v for k, v in row.items()} for row in csv.DictReader(f)]
    lrs = {k.replace("FusedSGD", "SGD"): v for k, v in monitor.lrs.items()}
    return [p.detach().clone() for p in module.parameters()], rec.lrs, rows, lrs


def _assert_rows_match(rows_b, rows_a, what):
    """The logger's CSV, row for row: the same columns, the same step and epoch in each row, the same
    cells filled; LR, momentum and weight-decay cells within LR_RTOL, losses within LOSS_TOL."""
    assert len(rows_b) == len(rows_a), f"{what}: {len(rows_b)} CSV rows vs stock's {len(rows_a)}"
    assert rows_b and rows_b[0].keys() == rows_a[0].keys(), f"{what}: columns {list(rows_b[0])} vs {list(rows_a[0])}"
    for n, (b, a) in enumerate(zip(rows_b, rows_a)):
        for k in a:
            where = f"{what}: CSV row {n} (step {a['step']}) column {k}"
            assert (b[k] == "") == (a[k] == ""), f"{where}: {b[k]!r} vs stock {a[k]!r}"
            if a[k] == "" or k in ("step", "epoch"):
                assert b[k] == a[k], f"{where}: {b[k]!r} vs stock {a[k]!r}"
            elif k.startswith("lr-"):  # LRs, momenta, weight decays
                assert_lrs_close([float(b[k])], [float(a[k])], where)
            else:
                assert_close(
                    torch.tensor(float(b[k])), torch.tensor(float(a[k])), what=where, **LOSS_TOL
                )


def _lr_columns(rows):
    return sorted({k for row in rows for k, v in row.items() if k.startswith("lr-") and v != ""})


@pytest.mark.parametrize("monitor_interval", ["step", "epoch", None])
@pytest.mark.parametrize("sched_name", ["step", "cosine", "plateau"])
def test_lightning_lr_monitor_and_training_match_stock(tmp_path, sched_name, monitor_interval):
    """StepLR per epoch, CosineAnnealingLR per step, ReduceLROnPlateau on the monitored train_loss:
    what LearningRateMonitor logs for both groups (every batch for "step", every epoch start for
    "epoch", the scheduler's own interval for None), the losses logged beside them, each group's LR
    at every batch start and the trained parameters, against the same run with stock SGD."""
    ps_a, lrs_a, rows_a, mon_a = _lightning_run(tmp_path / "a", False, sched_name, monitor_interval)
    ps_b, lrs_b, rows_b, mon_b = _lightning_run(tmp_path / "b", True, sched_name, monitor_interval)
    what = f"Lightning {sched_name} ({LIGHTNING_INTERVAL[sched_name]}), monitor {monitor_interval}"
    _assert_rows_match(rows_b, rows_a, what)
    cols = _lr_columns(rows_a)
    assert cols == [f"lr-SGD/pg{i}{s}" for i in (1, 2) for s in ("", "-momentum", "-weight_decay")], cols
    n_logged = {"step": 12, "epoch": 4, None: 4 if LIGHTNING_INTERVAL[sched_name] == "epoch" else 12}[monitor_interval]
    lr_rows = [r for r in rows_a if r["lr-SGD/pg1"] != ""]
    assert len(lr_rows) == n_logged, f"{what}: {len(lr_rows)} LR rows"
    logged = [float(r["lr-SGD/pg1"]) for r in lr_rows]
    assert len(set(logged)) > 1, f"{what}: the schedule should change the logged LR: {logged}"
    # the monitor's own record: floats of each logging time, not one object updated later
    assert mon_b.keys() == mon_a.keys() == {"lr-SGD/pg1", "lr-SGD/pg2"}
    for k in mon_a:
        assert all(type(v) is float for v in mon_b[k]), f"{what}: {k} holds {[type(v) for v in mon_b[k]]}"
        assert len(mon_b[k]) == len(mon_a[k]) == n_logged
        for n, (b, a) in enumerate(zip(mon_b[k], mon_a[k])):
            assert_lrs_close([b], [a], f"{what}: LearningRateMonitor.lrs[{k!r}][{n}]")
    for t, (b, a) in enumerate(zip(lrs_b, lrs_a, strict=True)):
        assert all(type(v) is float for v in b), f"{what}: batch {t} group LRs {b}"
        assert_lrs_close(b, a, f"{what}: group LRs at batch {t}")
    for p, q in zip(ps_a, ps_b):
        assert_close(q, p, what=f"{what} params", **TOL)


def test_lightning_checkpoint_resume_matches_stock(tmp_path):
    """Lightning's own checkpoint (optimizer and scheduler state_dicts inside) after 2 epochs,
    resumed with ``fit(ckpt_path=...)`` for 4 in all: the stock run's LRs and logged rows from the
    resumed step on, and its end state."""
    _lightning_run(tmp_path, True, "step", epochs=2, save=True)
    ps_b, lrs_b, rows_b, _ = _lightning_run(tmp_path, True, "step", epochs=4, ckpt_path=str(tmp_path / "last.ckpt"))
    ps_a, lrs_a, rows_a, _ = _lightning_run(tmp_path / "a", False, "step", epochs=4)
    assert len(lrs_b) == 6
    for t, (b, a) in enumerate(zip(lrs_b, lrs_a[-6:], strict=True)):
        assert_lrs_close(b, a, f"Lightning resumed: group LRs at batch {t + 6}")
    first = min(int(r["step"]) for r in rows_b)
    _assert_rows_match(rows_b, [r for r in rows_a if int(r["step"]) >= first], "Lightning resumed")
    for p, q in zip(ps_a, ps_b):
        assert_close(q, p, what="Lightning resumed params", **TOL)


# ------------------------------------------------------------------------ Hugging Face Trainer


def _warmup_linear(step):  # transformers' get_linear_schedule_with_warmup(warmup 3, 9 steps), written out
    return step / 3 if step < 3 else max(0.0, (9 - step) / 6)


# name -> (our scheduler passed in optimizers=(opt, sched) | None: HF builds it, extra TrainingArguments)
HF_CASES = {
    "step": (lambda M, o: M.StepLR(o, 3, 0.5), {}),
    "warmup_lambda": (lambda M, o: M.LambdaLR(o, _warmup_linear), {}),
    "cosine": (lambda M, o: M.CosineAnnealingLR(o, T_max=6, eta_min=1e-3), {}),
    # HF steps a plateau scheduler after each evaluation, on eval_loss, and logs group["lr"]
    "plateau": (
        lambda M, o: M.ReduceLROnPlateau(o, patience=0, factor=0.5, threshold=0.2),
        dict(eval_strategy="steps", eval_steps=1, metric_for_best_model="loss"),
    ),
    # HF's own LambdaLR (torch's) driving the optimizer through group["lr"]
    "hf_linear_warmup": (None, dict(lr_scheduler_type="linear", warmup_steps=3)),
    # HF builds the optimizer too (its decay / no-decay groups) from the class and keyword arguments
    "hf_cls_and_kwargs": (None, dict(lr_scheduler_type="cosine", warmup_steps=2)),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_trainer_logs_and_training_match_stock(tmp_path, monkeypatch, case):
    """``trainer.state.log_history`` with logging_steps=1: ``learning_rate``, ``loss`` and
    ``grad_norm`` at each of 9 steps (and ``eval_loss`` for plateau), and the trained parameters,
    FusedSGD against stock SGD with the same scheduler."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here needs the hub; never reach for it
    tf = _framework("transformers")
    x, y = _data()
    make_sched, extra = HF_CASES[case]

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"x": x[i], "labels": y[i]}

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x, labels):
            return {"loss": torch.nn.functional.mse_loss(self.net(x), labels)}

    runs = []
    for use_fused in (False, True):
        model = Model()
        opt_cls = fused_lr.FusedSGD if use_fused else torch.optim.SGD
        kw = {}
        if case == "hf_cls_and_kwargs":
            kw["optimizer_cls_and_kwargs"] = (opt_cls, dict(lr=OPT_KW["lr"], momentum=OPT_KW["momentum"]))
        else:
            opt = opt_cls(model.parameters(), **OPT_KW)
            kw["optimizers"] = (opt, make_sched(fused if use_fused else stock, opt) if make_sched else None)
        if "eval_strategy" in extra:
            kw["eval_dataset"] = Data()
        args = tf.TrainingArguments(
            output_dir=str(tmp_path / str(use_fused)), max_steps=9, per_device_train_batch_size=8, logging_steps=1,
            report_to=[], save_strategy="no", use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
            dataloader_num_workers=0, learning_rate=OPT_KW["lr"], weight_decay=OPT_KW["weight_decay"], **extra,
        )
        trainer = tf.Trainer(model=model, args=args, train_dataset=Data(), **kw)
        trainer.train()
        assert isinstance(trainer.optimizer.optimizer, opt_cls)  # inside accelerate's AcceleratedOptimizer
        train_logs = [h for h in trainer.state.log_history if "learning_rate" in h]
        eval_logs = [h for h in trainer.state.log_history if "eval_loss" in h]
        runs.append(([p.detach().clone() for p in model.parameters()], train_logs, eval_logs))
    (pa, la, ea), (pb, lb, eb) = runs
    what = f"HF Trainer {case}"
    assert [h["step"] for h in lb] == [h["step"] for h in la] == list(range(1, 10)), what
    lrs_a, lrs_b = [h["learning_rate"] for h in la], [h["learning_rate"] for h in lb]
    assert all(type(v) is float for v in lrs_b), f"{what}: logged {[type(v) for v in lrs_b]}"
    assert len(set(lrs_a)) > 2, f"{what}: the schedule should change the LR: {lrs_a}"
    for n, (b, a) in enumerate(zip(lrs_b, lrs_a)):
        assert_lrs_close([b], [a], f"{what}: logged learning_rate at step {n + 1}")
    for key in ("loss", "grad_norm"):
        assert_close(
            torch.tensor([h[key] for h in lb]), torch.tensor([h[key] for h in la]), what=f"{what}: logged {key}",
            **LOSS_TOL,
        )
    assert len(eb) == len(ea) == (9 if "eval_strategy" in extra else 0), what
    if ea:
        assert_close(
            torch.tensor([h["eval_loss"] for h in eb]), torch.tensor([h["eval_loss"] for h in ea]),
            what=f"{what}: eval_loss", **LOSS_TOL,
        )
    for p, q in zip(pa, pb):
        assert_close(q, p, what=f"{what} params", **TOL)
