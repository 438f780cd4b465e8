"""torch's optimizer test data for SGD (torch.testing._internal.common_optimizers) through FusedSGD
beside stock torch.optim.SGD on the torch backend; tests/test_triton_optimizer.py runs the Triton
backend. See tests/_optim_db_cases.py."""

from __future__ import annotations

import _optim_db_cases as db
import pytest


@pytest.fixture(scope="module")
def data():
    return db.torch_data()


def test_every_sgd_optim_input_under_every_scheduler_input_matches_stock(data):
    # 9 inputs x (off, differentiable, fused) on CPU = 27, each alone and under SGD's 7 scheduler inputs.
    assert len(data["inputs"]) == 27 and len(data["schedulers"]) == 7
    assert db.run_optim_inputs("torch", data, steps=3) == 27 * 8


def test_every_sgd_error_input_raises_as_stock(data):
    assert db.check_error_inputs("torch", data) == 7
