"""FusedSGD (and FusedAdamW under FSDP2) + fused_lr schedulers under torch.distributed: DDP, FSDP2 (fully_shard), DCP checkpoints.

Two gloo ranks on CPU, in a child process (tests/_distributed_worker.py holds the cases and their
tolerance): one process group serves every case, so the whole file costs one start-up (~8 s on
2 cores). Each case compares with stock torch.optim.SGD + the stock scheduler trained in one
process on the full batch.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import torch.distributed as dist

WORKER = pathlib.Path(__file__).resolve().parent / "_distributed_worker.py"

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)


@pytest.fixture(scope="module")
def worker_output(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("dcp")
    proc = subprocess.run([sys.executable, str(WORKER), str(ckpt)], capture_output=True, text=True, timeout=300)
    return proc


def _assert_case(proc, case):
    if f"{case}: ok" not in proc.stdout:
        pytest.fail(f"{case} did not pass (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}", pytrace=False)


def test_ddp_matches_single_process_stock(worker_output):
    """DistributedDataParallel + FusedSGD + StepLR / CosineAnnealingLR / ReduceLROnPlateau (metric
    all-reduced on the device; momentum, nesterov, weight decay, two groups) on 2 ranks = stock SGD +
    stock scheduler on the full batch in one process."""
    _assert_case(worker_output, "ddp")


def test_fsdp2_updates_local_shards_like_stock(worker_output):
    """fully_shard (DTensor params, uneven shards): params, DTensor momentum buffers (placements and
    mesh as stock SGD stores them under FSDP2) and LRs match stock at every step."""
    _assert_case(worker_output, "fsdp2")


def test_fsdp2_on_the_triton_path(worker_output):
    """The same FSDP2 run with FusedSGD(backend="triton"), the kernel interpreted on CPU
    (TRITON_INTERPRET=1): the kernel updates the local shards."""
    pytest.importorskip("triton")
    _assert_case(worker_output, "fsdp2_triton")


def test_ddp_adamw_with_bucket_view_grads_matches_stock(worker_output):
    """DDP with gradient_as_bucket_view=True (grads are views into a flat bucket, some off the
    16-byte alignment) + FusedAdamW on both paths = stock AdamW under the same DDP setup: params,
    step, moments and LRs at every step; on the Triton path the dtype's launch is split (the
    aligned tensors on the vector path)."""
    _assert_case(worker_output, "ddp_adamw")


def test_fsdp2_adamw_updates_local_shards_like_stock(worker_output):
    """fully_shard + FusedAdamW (amsgrad, weight decay, cosine) on both paths (the kernel
    interpreted on CPU): params, DTensor moments and step equal stock AdamW's under FSDP2 at every
    step (float64; the same shards and the same arithmetic: tests/_distributed_worker.py's TOL)."""
    _assert_case(worker_output, "fsdp2_adamw")


def test_fsdp2_fused_clipping_reduces_the_norm_across_ranks(worker_output):
    """FusedSGD(max_grad_norm=...) under FSDP2: opt.last_grad_norm is the whole model's norm (the
    shards' partial norms reduced across ranks) and params/buffers follow clip_grad_norm_ + stock
    SGD on the full batch; backend="triton" takes the torch path for these steps."""
    _assert_case(worker_output, "fsdp2_clip")


def test_dcp_save_and_resume_on_two_ranks(worker_output):
    """torch.distributed.checkpoint mid-schedule (get/set_optimizer_state_dict) + the scheduler's
    state_dict; fresh objects resume and continue on stock's trajectory."""
    _assert_case(worker_output, "dcp_2_to_2")


def test_dcp_two_rank_checkpoint_loads_into_one_process(worker_output):
    """The same checkpoint resharded by DCP into an unsharded model in one process (2 -> 1 ranks)."""
    _assert_case(worker_output, "dcp_2_to_1")
    assert worker_output.returncode == 0, worker_output.stderr[-3000:]
