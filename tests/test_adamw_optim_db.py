"""torch's optimizer test data for AdamW and Adam (torch.testing._internal.common_optimizers) through
FusedAdamW / FusedAdam beside stock torch.optim.AdamW / Adam on the torch backend; the Triton
backend runs the same cases in tests/test_adamw_triton.py. See tests/_optim_db_cases.py."""

from __future__ import annotations

import _optim_db_cases as db
import pytest


@pytest.fixture(scope="module", params=["adamw", "adam"])
def data(request):
    return db.torch_data(name=request.param)


def test_every_optim_input_under_every_scheduler_input_matches_stock(data):
    # 5 inputs x (off, differentiable, fused) on CPU = 15, each alone and under the scheduler
    # inputs torch lists (AdamW: 1, Adam: 7); params, step, exp_avg, exp_avg_sq, max_exp_avg_sq.
    n_sched = {"adamw": 1, "adam": 7}[data["name"]]
    assert len(data["inputs"]) == 15 and len(data["schedulers"]) == n_sched
    assert db.run_optim_inputs("torch", data, steps=3) == 15 * (1 + n_sched)


def test_every_error_input_raises_as_stock(data):
    assert db.check_error_inputs("torch", data) == 12
