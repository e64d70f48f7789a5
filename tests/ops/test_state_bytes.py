"""An op's state_bytes counts every state buffer, the lists of them included: a
non-linear op keeps one accumulator per varying input in a list, which a count of the
state's top-level tensors alone missed (at 720p, mobilenet_v2's fp32 accumulators are
two thirds of its state)."""
from __future__ import annotations

import operator

import pytest
import torch

from deltaconvert.ops import reference as ref
from deltaconvert.ops.footprint import Footprint
from deltaconvert.ops.nonlinear import Nonlinear


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@pytest.mark.parametrize("fn,varying", [(torch.relu, (True,)), (operator.mul, (True, True)),
                                        (operator.mul, (True, False))])
def test_nonlinear_state_counts_every_accumulator_and_the_sent_values(fn, varying):
    op = Nonlinear(fn, Footprint.POINTWISE, varying)
    inputs = [torch.randn(2, 4, 8, 8) for _ in varying]
    op.dense(*inputs)
    x = inputs[0]
    acc = itemsize(ref.buffer_dtype(x.dtype, x.device))
    sent = itemsize(ref.sent_dtype(x.dtype, x.device))
    assert op.state_bytes() == x.numel() * (sum(varying) * acc + sent)


def test_16_bit_sent_values_count_at_their_own_size():
    op = Nonlinear(torch.relu, Footprint.POINTWISE, (True,))
    x = torch.randn(2, 4, 8, 8, dtype=torch.float16)
    op.dense(x)
    acc, sent = op._state["acc"][0], op._state["sent"]
    assert op.state_bytes() == acc.numel() * acc.element_size() + sent.numel() * sent.element_size()
    assert acc.element_size() > sent.element_size()  # accumulators stay wider than fp16
