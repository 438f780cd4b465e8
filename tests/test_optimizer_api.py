"""The torch.optim.Optimizer API of FusedSGD beside stock torch.optim.SGD (issue 10, section 4):
named parameters, groups edited in ``param_groups`` directly, non-parameter state keys and the
state-dict hooks, copy.deepcopy / pickle, sparse gradients, meta-device parameters,
differentiable=True and torch's foreach/fused errors.

The checks live in tests/_optimizer_api_cases.py and run here on the torch backend; the Triton
backend runs the same checks under the interpreter in a child process (tests/test_triton_optimizer.py).
"""

from __future__ import annotations

import pytest
from _optimizer_api_cases import CHECKS


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_optimizer_api_beside_stock(name):
    CHECKS[name]("torch")
