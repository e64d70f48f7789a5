"""The per-sequence plan of dense layers (``backends/cuda/dense_layers.py``), without a
GPU: which calls are eligible, the decision from the sampled candidate counts (one host
read, at the next frame or capture), and cuDNN's first call made only for the convs that
turn dense. The layers' kernels and outputs are tested in ``tests/ops/test_dense_layers.py``.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from deltaconvert.backends.cuda import dense_layers
from deltaconvert.backends.cuda.dense_layers import DenseLayerPlan
from deltaconvert.ops.boundary import Sparsify

pytestmark = pytest.mark.dense_layers


class Runtime:
    frame = staticmethod(contextlib.nullcontext)


class Wrapper:
    dense = None


def plan(*sparsifiers: Sparsify) -> DenseLayerPlan:
    return DenseLayerPlan(Runtime(), list(sparsifiers) or [Sparsify()])


def mask(updated: int, pixels: int = 100) -> torch.Tensor:
    m = torch.zeros(1, 1, 1, pixels, dtype=torch.bool)
    m[..., :updated] = True
    return m


@pytest.mark.parametrize("fraction,expected", [(0.3, [False, True, True]), (0.0, [True] * 3),
                                               (1.0, [False, False, True])])
def test_convs_whose_candidates_reach_the_fraction_turn_dense(monkeypatch, fraction, expected):
    monkeypatch.setattr(dense_layers, "DENSE_FROM", fraction)
    layers = plan()
    wrappers, warmed = [Wrapper() for _ in expected], []
    for i, (w, updated) in enumerate(zip(wrappers, (29, 30, 100))):
        layers.sample(w, mask(updated), lambda i=i: warmed.append(i))
    assert all(w.dense is None for w in wrappers)  # undecided until resolved
    layers.resolve()
    assert [w.dense for w in wrappers] == expected
    assert warmed == [i for i, dense in enumerate(expected) if dense]
    layers.resolve()  # nothing waits: no second decision, no second warm-up
    assert warmed == [i for i, dense in enumerate(expected) if dense]


def test_eligible_calls(monkeypatch):
    monkeypatch.setattr(dense_layers, "DENSE_FROM", 0.3)
    gate = Sparsify()
    layers = plan(gate)
    total = torch.zeros(1)
    assert layers.eligible(torch.float16, total, 256, depthwise=False)
    assert not layers.eligible(torch.float32, total, 256, depthwise=False)  # TF32
    assert not layers.eligible(torch.float16, None, 256, depthwise=False)
    assert not layers.eligible(torch.float16, total, 255, depthwise=False)
    assert not layers.eligible(torch.float16, total, 256, depthwise=True)
    gate.ready = torch.ones(2, dtype=torch.bool)  # slot mode
    assert not layers.eligible(torch.float16, total, 256, depthwise=False)
    gate.ready = None
    monkeypatch.setattr(dense_layers, "DENSE_FROM", 1.5)  # off
    assert not layers.eligible(torch.float16, total, 256, depthwise=False)
