"""FusedSGD + fused_lr schedulers under torch.distributed (gloo, CPU), run in a child process.

Run by tests/test_distributed.py as ``python tests/_distributed_worker.py CKPT_DIR``. It spawns two
ranks (one process group for every case: process start-up and ``import torch`` dominate the cost),
then loads the FSDP2 checkpoint they wrote in this single process (world size 1). Prints
``CASE: ok`` for every case that passed; a failing check raises and the process exits non-zero.

Every case compares against stock ``torch.optim.SGD(foreach=False)`` + the stock scheduler trained
in one process on the full batch: what the distributed run must reproduce.

Tolerance (float64 throughout): the distributed runs average the gradients of two half batches
(DDP's all-reduce / FSDP2's reduce-scatter, then a division by the world size) where the reference
takes the mean of one full batch, and fused_lr's CPU kernel contracts multiply-adds that the
for-loop rounds separately: each step's values differ by a few float64 ulp (~1e-16 relative), and
over these 12 small-LR steps the differences add up without growing faster (SGD at these LRs is a
contraction). rtol 1e-10 leaves a factor ~1e4 of margin; any real error (a wrong LR, a skipped
shard, a buffer reset) is > 1e-3.
"""

from __future__ import annotations

import os
import sys
import tempfile

# FusedSGD(backend="triton") runs on CPU tensors only under Triton's interpreter, which must be
# chosen before triton is first imported (the spawned ranks inherit it). The torch path ignores it.
os.environ["TRITON_INTERPRET"] = "1"

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.optim.lr_scheduler as stock

import fused_lr
import fused_lr.lr_scheduler as fused

TOL = dict(rtol=1e-10, atol=1e-12)
DTYPE = torch.float64
STEPS = 12
SAVE_AT = 5  # the DCP checkpoint is taken after this many steps
WORLD = 2
BATCH = 8  # full batch; each rank takes BATCH // WORLD rows
OPT_KW = dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
SCHEDULES = {
    "StepLR": dict(step_size=3, gamma=0.5),
    "CosineAnnealingLR": dict(T_max=4, eta_min=1e-3),  # past T_max: the cosine comes back up
    "ReduceLROnPlateau": dict(patience=1, factor=0.5),  # stepped with the loss, stalled from STALL on
}
STALL = 4


def plateau_metric(loss, t):
    """The training loss until STALL, then a worse constant offset: the plateau reduces in the run."""
    return loss if t < STALL else loss + 10.0


def make_model() -> torch.nn.Module:
    # Odd sizes: FSDP2 shards dim 0 unevenly (7 rows -> 4 + 3, 3 rows -> 2 + 1).
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).to(DTYPE)


def groups(model):
    """Two groups with their own LR: the schedulers must keep them apart on every rank."""
    return [dict(params=model[0].parameters()), dict(params=model[2].parameters(), lr=0.05)]


def batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, 5, generator=g, dtype=DTYPE), torch.randn(BATCH, 3, generator=g, dtype=DTYPE)


def loss_fn(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)  # a mean: half-batch means averaged = full mean


def reference(sched_name, steps=STEPS, dcp_init=False, clip=None):
    """Stock SGD + stock scheduler, one process, full batch: (params, momentum buffers, LRs) per step.

    ``dcp_init``: call DCP's get_optimizer_state_dict before the first step, as the run compared
    with does. It initializes the state by a step with zero grads and the LR zeroed, which leaves
    momentum buffers of ``weight_decay * p`` (any optimizer: it is DCP's doing).
    ``clip``: torch.nn.utils.clip_grad_norm_ to this norm before each step (its total norm is the
    4th entry of each step's record).
    """
    model = make_model()
    opt = torch.optim.SGD(groups(model), foreach=False, **OPT_KW)
    sched = getattr(stock, sched_name)(opt, **SCHEDULES[sched_name])
    if dcp_init:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        get_optimizer_state_dict(model, opt)
    out = []
    for t in range(steps):
        x, y = batch(t)
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip) if clip is not None else None
        opt.step()
        sched.step(plateau_metric(loss.item(), t)) if sched_name == "ReduceLROnPlateau" else sched.step()
        out.append(
            (
                [p.detach().clone() for p in model.parameters()],
                [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()],
                [g["lr"] for g in opt.param_groups],
                norm,
            )
        )
    return out


def full(t):
    return t.full_tensor() if isinstance(t, torch.distributed.tensor.DTensor) else t


def check(what, got, expected):
    torch.testing.assert_close(full(got).detach(), expected, msg=lambda m: f"{what}: {m}", **TOL)


def check_step(what, model, opt, ref_step, got_lrs=None):
    ps, bufs, lrs, _ = ref_step
    for i, (p, rp, rb) in enumerate(zip(model.parameters(), ps, bufs)):
        check(f"{what} param {i}", p, rp)
        check(f"{what} momentum buffer {i}", opt.state[p]["momentum_buffer"], rb)
    got = got_lrs if got_lrs is not None else [float(g["lr"]) for g in opt.param_groups]
    assert all(abs(a - e) <= 1e-15 + 1e-9 * abs(e) for a, e in zip(got, lrs)), f"{what}: LRs {got} vs stock {lrs}"


def train_local(model, opt, sched, steps, rank, world):
    """Each rank trains on its slice of every full batch."""
    for t in steps:
        x, y = batch(t)
        rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        opt.zero_grad()
        loss = loss_fn(model, x[rows], y[rows])
        loss.backward()
        opt.step()
        if isinstance(sched, (stock.ReduceLROnPlateau, fused.ReduceLROnPlateau)):
            # Every rank must decide from the same metric: the mean of the ranks' losses (the
            # full-batch loss), reduced on the device (gloo has no AVG: SUM, then divide).
            metric = loss.detach().clone()
            dist.all_reduce(metric)
            sched.step(plateau_metric(metric / world, t))
        else:
            sched.step()
        yield t


# ---------------------------------------------------------------------------------- cases (2 ranks)


def case_ddp(rank, world):
    """DDP needs nothing from the optimizer: every rank applies the same all-reduced gradient.
    ReduceLROnPlateau gets the all-reduced loss, so every rank makes stock's decisions."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    for name in SCHEDULES:
        ref = reference(name)
        model = DDP(make_model())
        opt = fused_lr.FusedSGD(groups(model.module), **OPT_KW)
        sched = getattr(fused, name)(opt, **SCHEDULES[name])
        for t in train_local(model, opt, sched, range(STEPS), rank, world):
            check_step(f"DDP {name} rank {rank} step {t}", model.module, opt, ref[t])


def fsdp_model():
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    return model


def case_fsdp2(rank, world, backend="torch"):
    """fully_shard: DTensor params and grads; FusedSGD updates the local shards, and stores its
    momentum buffers as DTensors sharded like the params, as stock SGD does under FSDP2."""
    from torch.distributed.tensor import DTensor

    name = "CosineAnnealingLR"
    ref = reference(name)
    model, stock_model = fsdp_model(), fsdp_model()
    opt = fused_lr.FusedSGD(groups(model), backend=backend, **OPT_KW)
    assert opt.implementation == backend
    sched = getattr(fused, name)(opt, **SCHEDULES[name])
    stock_opt = torch.optim.SGD(groups(stock_model), foreach=False, **OPT_KW)
    stock_sched = getattr(stock, name)(stock_opt, **SCHEDULES[name])
    stock_steps = train_local(stock_model, stock_opt, stock_sched, range(STEPS), rank, world)
    for t, _ in zip(train_local(model, opt, sched, range(STEPS), rank, world), stock_steps):
        # The Triton path applies a scheduler step in the next update kernel (docs/backends.md);
        # get_last_lr() is the host's LR for the next step, known without reading the device.
        lrs = sched.get_last_lr() if backend == "triton" else None
        check_step(f"FSDP2 {backend} path, rank {rank} step {t}", model, opt, ref[t], lrs)
    for p, q in zip(model.parameters(), stock_model.parameters()):
        ours, theirs = opt.state[p]["momentum_buffer"], stock_opt.state[q]["momentum_buffer"]
        assert isinstance(p, DTensor) and isinstance(ours, DTensor) and isinstance(theirs, DTensor)
        assert (ours.placements, ours.shape, ours.to_local().shape) == (theirs.placements, theirs.shape, theirs.to_local().shape)
        assert ours.device_mesh == theirs.device_mesh
        check("FSDP2 buffer vs stock SGD under FSDP2", ours, full(theirs))


ADAM_KW = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1, amsgrad=True)


def adamw_beside_stock(label, model, stock_model, backend, rank, world):
    """FusedAdamW and stock AdamW (for-loop), each with a cosine schedule, on ``model`` and
    ``stock_model`` (wrapped by FSDP2 or DDP alike; a DDP model's groups are its module's), trained
    side by side on each rank's slice. Yields ``(what, opt)`` after every step, once each step's
    params, every AdamW state tensor (DTensors: placed as stock's) and the LRs equal stock's."""
    from torch.distributed.tensor import DTensor

    name = "CosineAnnealingLR"
    opt = fused_lr.FusedAdamW(groups(getattr(model, "module", model)), backend=backend, **ADAM_KW)
    assert opt.implementation == backend
    sched = getattr(fused, name)(opt, **SCHEDULES[name])
    stock_opt = torch.optim.AdamW(groups(getattr(stock_model, "module", stock_model)), foreach=False, **ADAM_KW)
    stock_sched = getattr(stock, name)(stock_opt, **SCHEDULES[name])
    stock_steps = train_local(stock_model, stock_opt, stock_sched, range(STEPS), rank, world)
    for t, _ in zip(train_local(model, opt, sched, range(STEPS), rank, world), stock_steps):
        what = f"{label} AdamW {backend} path, rank {rank} step {t}"
        for i, (p, q) in enumerate(zip(model.parameters(), stock_model.parameters())):
            check(f"{what} param {i}", p, full(q))
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                ours, theirs = opt.state[p][key], stock_opt.state[q][key]
                if isinstance(theirs, DTensor):
                    assert isinstance(ours, DTensor) and ours.placements == theirs.placements, f"{what}: {key} {i}"
                check(f"{what} {key} {i}", ours, full(theirs))
            check(f"{what} step {i}", opt.state[p]["step"], full(stock_opt.state[q]["step"]).to(opt.state[p]["step"]))
        got, lrs = [float(g["lr"]) for g in opt.param_groups], [g["lr"] for g in stock_opt.param_groups]
        assert all(abs(a - e) <= 1e-15 + 1e-9 * abs(e) for a, e in zip(got, lrs)), f"{what}: LRs {got} vs {lrs}"
        yield what, opt


def case_fsdp2_adamw(rank, world, backend="torch"):
    """fully_shard + FusedAdamW: the local shards updated as stock AdamW (for-loop) updates them
    under the same FSDP2 setup, with a cosine schedule; exp_avg, exp_avg_sq and max_exp_avg_sq are
    DTensors sharded like the params, ``step`` a plain tensor (as stock keeps it), all equal to
    stock's at every step."""
    from torch.distributed.tensor import DTensor

    model = fsdp_model()
    for what, opt in adamw_beside_stock("FSDP2", model, fsdp_model(), backend, rank, world):
        for i, p in enumerate(model.parameters()):
            assert isinstance(p, DTensor), f"{what}: param {i}"
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                assert isinstance(opt.state[p][key], DTensor), f"{what}: {key} {i}"


def case_ddp_adamw(rank, world, backend="torch"):
    """DDP with ``gradient_as_bucket_view=True`` (every grad a view into a flat bucket, some off the
    16-byte alignment: the Triton path splits the dtype's launch) + FusedAdamW + cosine = stock
    AdamW (for-loop) under the same DDP setup, params and every state tensor at every step."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(make_model(), gradient_as_bucket_view=True)
    plan = None
    stock_model = DDP(make_model(), gradient_as_bucket_view=True)
    for what, opt in adamw_beside_stock("DDP", model, stock_model, backend, rank, world):
        # (DDP rebuilds its buckets after the first step, in the order the grads became ready: the
        # misaligned ones change, 1 and 3 then 0 and 2 here; some are aligned at every step.)
        misaligned = [i for i, p in enumerate(model.parameters()) if p.grad.data_ptr() % 16]
        assert 0 < len(misaligned) < 4, f"{what}: grads off the 16-byte alignment: {misaligned}"
        plan = opt._engine.steady.plan if backend == "triton" else None
    if backend == "triton":
        parts = [aligned for launch in plan.launches for aligned, *_ in launch.parts]
        assert parts == [True, False], parts  # the aligned grads' tensors kept the vector path


CLIP = 0.05  # below every step's total grad norm here: each step is really clipped


def case_fsdp2_clip(rank, world, backend="torch"):
    """Fused clipping under FSDP2: the total norm must be the norm over the whole model (the ranks'
    shards reduced across ranks), the update that of clip_grad_norm_ + SGD on the full batch."""
    name = "StepLR"
    ref = reference(name, clip=CLIP)
    model = fsdp_model()
    opt = fused_lr.FusedSGD(groups(model), backend=backend, max_grad_norm=CLIP, **OPT_KW)
    sched = getattr(fused, name)(opt, **SCHEDULES[name])
    for t in train_local(model, opt, sched, range(STEPS), rank, world):
        lrs = sched.get_last_lr() if backend == "triton" else None
        check_step(f"FSDP2 clipped, {backend} path, rank {rank} step {t}", model, opt, ref[t], lrs)
        norm = opt.last_grad_norm
        check(f"FSDP2 clipped, {backend} path, rank {rank} step {t}: total norm", norm, ref[t][3])


def dcp_resume(model, ckpt_dir, name="StepLR"):
    """Fresh FusedSGD + scheduler for ``model``, restored from the DCP checkpoint in ``ckpt_dir``
    (model and optimizer through torch's state-dict helpers, the scheduler from sched.pt)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opt = fused_lr.FusedSGD(groups(model), **OPT_KW)
    sched = getattr(fused, name)(opt, **SCHEDULES[name])
    sd = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(sd, checkpoint_id=ckpt_dir)
    set_model_state_dict(model, sd["model"])
    set_optimizer_state_dict(model, opt, sd["optim"])
    sched.load_state_dict(torch.load(os.path.join(ckpt_dir, "sched.pt"), weights_only=True))
    return opt, sched


def case_dcp_save_and_resume(rank, world, ckpt_dir):
    """torch.distributed.checkpoint under FSDP2: save the sharded model + optimizer state mid-schedule
    (and the scheduler's state_dict), resume in fresh objects on 2 ranks, finish; params, buffers
    and LRs must match the uninterrupted stock run at every step after the resume."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    name = "StepLR"
    ref = reference(name, dcp_init=True)
    model = fsdp_model()
    opt = fused_lr.FusedSGD(groups(model), **OPT_KW)
    sched = getattr(fused, name)(opt, **SCHEDULES[name])
    # A checkpoint before the first step (DCP's _init_optim_state steps with the LR zeroed around
    # it): it must not change the LR the training then uses.
    get_optimizer_state_dict(model, opt)
    for t in train_local(model, opt, sched, range(SAVE_AT), rank, world):
        check_step(f"DCP before save rank {rank} step {t}", model, opt, ref[t])
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=ckpt_dir)
    if rank == 0:
        torch.save(sched.state_dict(), os.path.join(ckpt_dir, "sched.pt"))
    dist.barrier()

    model = fsdp_model()  # fresh objects, as after a restart
    opt, sched = dcp_resume(model, ckpt_dir, name)
    for t in train_local(model, opt, sched, range(SAVE_AT, STEPS), rank, world):
        check_step(f"DCP resumed on {world} ranks, rank {rank} step {t}", model, opt, ref[t])


def worker(rank, world, port, ckpt_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        case_ddp(rank, world)
        if rank == 0:
            print("ddp: ok", flush=True)
        case_fsdp2(rank, world)
        if rank == 0:
            print("fsdp2: ok", flush=True)
        from fused_lr import engine

        if engine.triton_available(torch.device("cpu")):
            # The Triton kernel (interpreted) on the local shards: the same code path as on CUDA.
            with engine.override_launch_config(BLOCK_SIZE=128, CHUNK_BLOCKS=4):
                case_fsdp2(rank, world, backend="triton")
            if rank == 0:
                print("fsdp2_triton: ok", flush=True)
        case_fsdp2_adamw(rank, world)
        if engine.triton_available(torch.device("cpu")):
            case_fsdp2_adamw(rank, world, backend="triton")
        if rank == 0:
            print("fsdp2_adamw: ok", flush=True)
        case_ddp_adamw(rank, world)
        if engine.triton_available(torch.device("cpu")):
            with engine.override_launch_config(BLOCK_SIZE=128, CHUNK_BLOCKS=4):
                case_ddp_adamw(rank, world, backend="triton")
        if rank == 0:
            print("ddp_adamw: ok", flush=True)
        case_fsdp2_clip(rank, world)
        if engine.triton_available(torch.device("cpu")):
            case_fsdp2_clip(rank, world, backend="triton")  # routed to the torch path (docs/distributed.md)
        if rank == 0:
            print("fsdp2_clip: ok", flush=True)
        case_dcp_save_and_resume(rank, world, ckpt_dir)
        if rank == 0:
            print("dcp_2_to_2: ok", flush=True)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------- world size 1


def case_dcp_load_into_one_process(ckpt_dir):
    """The 2-rank FSDP2 checkpoint loaded into an unsharded model in one process (no process group):
    DCP reshards the DTensor shards into full tensors; the run continues as stock's."""
    ref = reference("StepLR", dcp_init=True)
    model = make_model()
    opt, sched = dcp_resume(model, ckpt_dir)
    check_step("DCP loaded into 1 process, at the checkpoint", model, opt, ref[SAVE_AT - 1])
    for t in train_local(model, opt, sched, range(SAVE_AT, STEPS), 0, 1):
        check_step(f"DCP resumed on 1 process, step {t}", model, opt, ref[t])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = sys.argv[1] if len(sys.argv) > 1 else tmp
        mp.spawn(worker, args=(WORLD, free_port(), ckpt), nprocs=WORLD)
        case_dcp_load_into_one_process(ckpt)
        print("dcp_2_to_1: ok", flush=True)
