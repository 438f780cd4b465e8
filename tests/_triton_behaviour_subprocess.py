"""tests/test_torch_scheduler_behaviour.py's behaviours on FusedSGD(backend="triton"), under Triton's
interpreter (TRITON_INTERPRET=1 must be set before triton is imported: a child process).

Each case trains the same parameters with stock torch.optim.SGD + the stock scheduler and with
FusedSGD(backend="triton") + the fused_lr scheduler, and checks at every step that the kernel used
stock's LR (it writes the LR it used back to ``opt.lr_tensor``) and that the parameters agree
(FP32 from tests/_triton_optimizer_subprocess.py: the same argument, fewer steps here).
Prints "CASE: ok" per case and "all: ok" at the end.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    if "triton" in sys.modules:  # pragma: no cover
        raise SystemExit("triton was imported before TRITON_INTERPRET=1 was set")
    os.environ["TRITON_INTERPRET"] = "1"

import copy

import _triton_optimizer_subprocess as B
import torch
import torch.optim.lr_scheduler as stock

import fused_lr
import fused_lr.lr_scheduler as fused
from fused_lr import engine

KW = dict(lr=0.1, momentum=0.9)
TABLE = [0.9**k for k in range(6)]


class Run:
    """Stock SGD and a Triton-path FusedSGD over the same parameters, stepped together."""

    def __init__(self, make):
        self.ref = B.make_params(torch.float32)[:5]  # real tensors: the kernel takes all of them
        self.a_ps, self.k_ps = copy.deepcopy(self.ref), copy.deepcopy(self.ref)
        self.a = torch.optim.SGD(B.groups(self.a_ps), foreach=False, **KW)
        self.k = fused_lr.FusedSGD(B.groups(self.k_ps), backend="triton", **KW)
        assert self.k.implementation == "triton"
        self.sa, self.sk = make(stock, self.a), make(fused, self.k)
        self.t = 0

    def opt_step(self, what):
        gs = B.grads_for(self.t, self.ref)
        B._set(self.a_ps, gs), B._set(self.k_ps, gs)
        for o, _ps in ((self.a, self.a_ps), (self.k, self.k_ps)):  # params of groups added later
            for g in o.param_groups[2:]:
                for p in g["params"]:
                    p.grad = torch.full_like(p, 0.5)
        used = [float(g["lr"]) for g in self.a.param_groups]
        self.a.step(), self.k.step()
        got = self.k.lr_tensor.tolist()
        assert all(abs(x - y) <= 1e-12 * abs(y) for x, y in zip(got, used)), f"{what}: lr used {got} vs stock {used}"
        for i, (p, q) in enumerate(zip(self.a_ps, self.k_ps)):
            B.check_close(q, p, B.FP32, f"{what}: param {i}")
        self.t += 1

    def both(self, action, what):
        self.opt_step(what)
        action(self.sa), action(self.sk)


def case_plateau_added_group():
    run = Run(lambda m, o: m.ReduceLROnPlateau(o, patience=1, factor=0.5, min_lr=1e-2))
    for i, m in enumerate([1.0, 0.9, 0.95, 0.97, 0.99, 0.98, 1.0, 1.0]):
        if i == 2:
            for o in (run.a, run.k):
                o.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))], "lr": 0.05})
        run.both(lambda s: s.step(torch.tensor(m)), f"plateau step {i}")
        assert run.sk.get_last_lr() == [float(g["lr"]) for g in run.a.param_groups]
    run.opt_step("plateau, last")


def case_lambdas():
    class Scale:
        value = 1.0

        def __call__(self, epoch):
            return self.value

    fa, fk = Scale(), Scale()
    run = Run(lambda m, o: m.LambdaLR(o, fa if m is stock else fk))
    for t in range(8):
        fa.value = fk.value = 1.0 / (1 + t % 3)  # changes before each step: torch calls it in step()
        run.both(lambda s: s.step(), f"stateful lambda step {t}")
    run.opt_step("stateful lambda, last")
    for name in ("LambdaLR", "MultiplicativeLR"):
        run = Run(lambda m, o: getattr(m, name)(o, lambda e: TABLE[e]))
        for t in range(1, len(TABLE)):
            run.both(lambda s: s.step(), f"{name} table step {t}")
        run.opt_step(f"{name} table, last")
        sched = run.sk._sched
        before = (run.sk.last_epoch, sched.pending, run.k.lr_tensor.clone(), sched.counter.clone())
        for s in (run.sa, run.sk):
            try:
                s.step()
            except IndexError:
                pass
            else:
                raise AssertionError(f"{name}: step {len(TABLE)} must raise torch's IndexError")
        after = (run.sk.last_epoch, sched.pending, run.k.lr_tensor, sched.counter)
        assert before[:2] == after[:2] and torch.equal(before[2], after[2]) and torch.equal(before[3], after[3])


def case_warm_restarts():
    calls = [None, 2.5, None, ("T_cur", 0), None, 7, None, ("T_i", 9), None, 13.25, None, 4, None]
    run = Run(lambda m, o: m.CosineAnnealingWarmRestarts(o, 3, 2, 1e-3))
    for call in calls:
        if isinstance(call, tuple):
            setattr(run.sa, *call), setattr(run.sk, *call)
            continue
        run.both(lambda s: s.step() if call is None else s.step(call), f"restarts after {call}")
        assert (run.sk.T_cur, run.sk.T_i) == (run.sa.T_cur, run.sa.T_i)
    run.opt_step("restarts, last")


def case_sequential_chain():
    def make(m, o):
        chain = m.ChainedScheduler([m.CosineAnnealingLR(o, 7, 1e-3), m.ExponentialLR(o, 0.95)],
                                   **({"horizon": 8} if m is fused else {}))
        return m.SequentialLR(o, [chain, m.StepLR(o, 2, 0.5)], [9])

    run = Run(make)
    for t in range(14):
        run.both(lambda s: s.step(), f"sequence with a chain, step {t}")
    run.opt_step("sequence with a chain, last")


def _assign(run, g, fn):
    for o in (run.a, run.k):
        o.param_groups[g]["lr"] = fn(o.param_groups[g]["lr"])


def case_assigned():
    """An LR assigned to group["lr"] is used by the next kernel launch and carries on as torch's
    recurrence carries it (edit columns evaluated in the kernel; host-driven groups); the float is
    current right after sched.step() though the kernel applies the step at the next launch."""
    builds = {
        "StepLR": lambda m, o: m.StepLR(o, 3, 0.5),
        "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, 4, 1e-3),
        "LambdaLR": lambda m, o: m.LambdaLR(o, lambda e: 0.9**e),
        "SequentialLR": lambda m, o: m.SequentialLR(o, [m.LinearLR(o, 0.2, total_iters=2), m.ExponentialLR(o, 0.9)], [3]),
    }
    for name, build in builds.items():
        run = Run(build)
        for t in range(9):
            run.both(lambda s: s.step(), f"{name} step {t}")
            assert [g["lr"] for g in run.k.param_groups] == [g["lr"] for g in run.a.param_groups] or all(
                abs(x - y) <= 1e-12 * abs(y) for x, y in zip((g["lr"] for g in run.k.param_groups),
                                                           (g["lr"] for g in run.a.param_groups))), f"{name} floats, step {t}"
            if t == 2:
                _assign(run, 0, lambda lr: lr * 0.5)
            if t == 5:
                _assign(run, 1, lambda lr: 0.03)
        run.opt_step(f"{name} assigned, last")
    run = Run(lambda m, o: None)  # no scheduler: manual decay
    for t in range(4):
        run.opt_step(f"manual decay step {t}")
        _assign(run, 0, lambda lr: lr * 0.9)


def case_composed():
    """Two schedulers stepped on one optimizer chain as torch's: a product of closed forms on the
    device (in lockstep, out of lockstep, the first one left behind) or torch's recurrence on the
    host; with ReduceLROnPlateau on top of a warmup."""
    builds = {
        "lockstep": (lambda m, o: [m.ExponentialLR(o, 0.9), m.MultiStepLR(o, [3, 6], 0.5)], lambda t: (0, 1)),
        "per-epoch": (lambda m, o: [m.LinearLR(o, 0.2, total_iters=4), m.StepLR(o, 2, 0.5)],
                      lambda t: (0,) if t % 3 else (0, 1)),
        "left-behind": (lambda m, o: [m.StepLR(o, 2, 0.5), m.ExponentialLR(o, 0.9)], lambda t: (1,)),
        "host": (lambda m, o: [m.CosineAnnealingLR(o, 5, 1e-3), m.StepLR(o, 3, 0.5)], lambda t: (0, 1)),
    }
    for name, (build, order) in builds.items():
        run = Run(build)
        for t in range(9):
            run.opt_step(f"{name} step {t}")
            for i in order(t):
                run.sa[i].step(), run.sk[i].step()
        run.opt_step(f"{name}, last")
    run = Run(lambda m, o: [m.LinearLR(o, 0.25, total_iters=3), m.ReduceLROnPlateau(o, patience=1, factor=0.5)])
    for t, metric in enumerate([1.0, 0.9, 0.95, 0.97, 0.99, 0.98, 1.0, 1.0]):
        run.opt_step(f"warmup + plateau step {t}")
        for s in (run.sa, run.sk):
            s[0].step()
            s[1].step(metric)
    run.opt_step("warmup + plateau, last")


CASES = {
    "assigned": case_assigned,
    "composed": case_composed,
    "plateau_added_group": case_plateau_added_group,
    "lambdas": case_lambdas,
    "warm_restarts": case_warm_restarts,
    "sequential_chain": case_sequential_chain,
}


if __name__ == "__main__":
    assert engine.interpreting(), "the kernels are not interpreted"
    with engine.override_launch_config(BLOCK_SIZE=128, CHUNK_BLOCKS=4):
        for case in sys.argv[1:] or list(CASES):
            CASES[case]()
            print(f"{case}: ok", flush=True)
    print("all: ok")
