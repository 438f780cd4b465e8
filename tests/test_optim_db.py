"""torch's optimizer test data for SGD (torch.testing._internal.common_optimizers) through FusedSGD
beside stock torch.optim.SGD on the torch backend; tests/test_triton_optimizer.py runs the Triton
backend. See tests/_optim_db_cases.py."""

from __future__ import annotations

import _optim_db_cases as db


def test_every_sgd_optim_input_under_every_scheduler_input_matches_stock():
    # 9 inputs x (off, differentiable, fused) on CPU = 27, each alone and under SGD's 7 scheduler inputs.
    runs = db.run_optim_inputs("torch", steps=3, with_schedulers=True)
    assert runs == len(db.optim_inputs()) * (1 + len(db.SGD_INFO.scheduler_inputs)) == 27 * 8


def test_every_sgd_error_input_raises_as_stock():
    assert db.check_error_inputs("torch") == 7
