"""FusedSGD + fused_lr schedulers inside training frameworks, against the same framework run with
torch.optim.SGD + the stock scheduler.

* The protocol the frameworks use, emulated with plain torch (always runs): what Lightning's
  scheduler loop, its LearningRateMonitor and HF Trainer's LR logging do with a scheduler and with
  ``param_groups[i]["lr"]`` (a 0-dim tensor here, a float in stock).
* Lightning (``configure_optimizers``; intervals "epoch" and "step"; ReduceLROnPlateau with a
  monitored metric; a Lightning checkpoint resumed) and HF ``Trainer(optimizers=(opt, sched))``,
  each skipped when the package is not installed (``pip install -e ".[frameworks]"``).

Tolerance: TRAJ_TOL[float32] (tests/conftest.py); LRs LR_RTOL.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.optim.lr_scheduler as stock

import fused_lr
import fused_lr.lr_scheduler as fused

from conftest import TRAJ_TOL, assert_close, assert_lrs_close

TOL = TRAJ_TOL[torch.float32]
OPT_KW = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)


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
            lr = opt.param_groups[0]["lr"]  # a float in stock, a 0-dim device tensor in fused_lr
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


def _lightning_run(tmp_path, use_fused, interval, sched_name, epochs=4, ckpt_path=None, save=False):
    L = pytest.importorskip("lightning.pytorch")
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, _):
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self):
            M = fused if use_fused else stock
            opt = (fused_lr.FusedSGD if use_fused else torch.optim.SGD)(self.parameters(), **OPT_KW)
            if sched_name == "plateau":
                sched = M.ReduceLROnPlateau(opt, patience=0, factor=0.5, threshold=0.2)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval, "monitor": "train_loss"}}
            sched = M.StepLR(opt, 2, 0.5) if sched_name == "step" else M.CosineAnnealingLR(opt, 5, 1e-3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}

    class Recorder(L.Callback):
        def __init__(self):
            self.lrs = []

        def on_train_batch_start(self, trainer, *_):
            self.lrs.append(float(trainer.optimizers[0].param_groups[0]["lr"]))

    class MemoryLogger(L.loggers.Logger):  # what LearningRateMonitor sends to a logger
        name, version = "mem", 0

        def __init__(self):
            super().__init__()
            self.logged = []

        def log_hyperparams(self, *a, **k):
            pass

        def log_metrics(self, metrics, step=None):
            self.logged += [float(v) for k, v in metrics.items() if k.startswith("lr-")]

    rec, logger = Recorder(), MemoryLogger()
    callbacks = [rec, L.callbacks.LearningRateMonitor(logging_interval=interval)]
    if save:
        callbacks.append(L.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True))
    module = Module()
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=logger, callbacks=callbacks, log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=save, num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return [p.detach().clone() for p in module.parameters()], rec.lrs, logger.logged


@pytest.mark.parametrize("interval,sched_name", [("epoch", "step"), ("step", "cosine"), ("epoch", "plateau")])
def test_lightning_configure_optimizers_matches_stock(tmp_path, interval, sched_name):
    ps_a, lrs_a, logged_a = _lightning_run(tmp_path / "a", False, interval, sched_name)
    ps_b, lrs_b, logged_b = _lightning_run(tmp_path / "b", True, interval, sched_name)
    assert_lrs_close(lrs_b, lrs_a, f"Lightning {interval} {sched_name}: LR at every batch")
    assert_lrs_close(logged_b, logged_a, f"Lightning {interval} {sched_name}: LearningRateMonitor")
    assert len(set(lrs_a)) > 1, "the schedule should change the LR"
    for p, q in zip(ps_a, ps_b):
        assert_close(q, p, what=f"Lightning {interval} {sched_name} params", **TOL)


def test_lightning_checkpoint_resume_matches_stock(tmp_path):
    """Lightning's own checkpoint (optimizer and scheduler state_dicts inside) after 2 epochs,
    resumed with ``fit(ckpt_path=...)`` for 4 in all: the stock run's end state."""
    _lightning_run(tmp_path, True, "epoch", "step", epochs=2, save=True)
    ps_b, lrs_b, _ = _lightning_run(tmp_path, True, "epoch", "step", epochs=4, ckpt_path=str(tmp_path / "last.ckpt"))
    ps_a, lrs_a, _ = _lightning_run(tmp_path / "a", False, "epoch", "step", epochs=4)
    assert_lrs_close(lrs_b, lrs_a[-len(lrs_b):], "Lightning resumed: LR at every batch")
    for p, q in zip(ps_a, ps_b):
        assert_close(q, p, what="Lightning resumed params", **TOL)


# ------------------------------------------------------------------------ Hugging Face Trainer


def test_hf_trainer_optimizers_argument_matches_stock(tmp_path):
    tf = pytest.importorskip("transformers")
    x, y = _data()

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
        M = fused if use_fused else stock
        opt = (fused_lr.FusedSGD if use_fused else torch.optim.SGD)(model.parameters(), **OPT_KW)
        sched = M.CosineAnnealingLR(opt, T_max=6, eta_min=1e-3)
        args = tf.TrainingArguments(
            output_dir=str(tmp_path / str(use_fused)), max_steps=9, per_device_train_batch_size=8, logging_steps=1,
            report_to=[], save_strategy="no", use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = tf.Trainer(model=model, args=args, train_dataset=Data(), optimizers=(opt, sched))
        trainer.train()
        lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
        assert all(type(v) is float for v in lrs)
        runs.append(([p.detach().clone() for p in model.parameters()], lrs))
    (pa, la), (pb, lb) = runs
    assert len(la) == 9 and len(set(la)) > 2
    assert_lrs_close(lb, la, "HF Trainer logged learning_rate")
    for p, q in zip(pa, pb):
        assert_close(q, p, what="HF Trainer params", **TOL)
