"""Every reason an op falls back to a dense island: ``convert`` names the node and the
reason in one DenseFallbackWarning, lists it in ``dense_islands``, and the converted
model still equals the original at threshold 0 on every frame (a Densify before the
island, a Sparsify after it where the delta region goes on)."""
from __future__ import annotations

import warnings
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deltaconvert
from deltaconvert.metrics import relative_error
from deltaconvert.ops.boundary import Sparsify
from deltaconvert.synthetic import synthetic_video

HEIGHT, WIDTH = 12, 16


class Island(nn.Module):
    """conv → the op under test → (optionally) ReLU, so the island sits inside a delta
    region; ``op`` is a module or a function of the tensor."""

    def __init__(self, op: nn.Module | Callable[[torch.Tensor], torch.Tensor], then_relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.op = op
        self.then_relu = then_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.op(self.conv(x))
        return torch.relu(y) if self.then_relu else y


class MaxPoolWithIndices(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, _ = self.pool(x)
        return values


# name: (op, ReLU after it, a phrase of the reason)
CASES = {
    "batch_norm_without_statistics": (lambda: nn.BatchNorm2d(4, track_running_stats=False), True,
                                      "without running statistics"),
    "layer_norm_over_pixels": (lambda: nn.LayerNorm([HEIGHT, WIDTH]), True, "LayerNorm over spatial"),
    "softmax_over_a_row": (lambda: nn.Softmax(dim=3), True, "softmax over a spatial dim"),
    "normalize_over_columns": (lambda: (lambda y: F.normalize(y, dim=2)), True,
                               "F.normalize over a spatial dim"),
    "max_pool_with_indices": (MaxPoolWithIndices, True, "return_indices"),
    "bicubic_resize": (lambda: (lambda y: F.interpolate(y, scale_factor=2, mode="bicubic")), True,
                       "negative weights"),
    "view_across_pixels": (lambda: (lambda y: y.view(y.shape[0], 4, WIDTH, HEIGHT)), True,
                           "moving elements between the channel and pixel dims"),
    "product_over_pixels": (lambda: (lambda y: y @ y.transpose(2, 3)), True,
                            "contracted over pixels"),
    "sum_over_rows": (lambda: (lambda y: y.sum(dim=2, keepdim=True)), True,
                      "reduction over the channels"),
    "amax_over_columns": (lambda: (lambda y: y.amax(dim=3, keepdim=True)), True,
                          "reduction over the channels"),
    "linear_on_rows": (lambda: nn.Linear(WIDTH, 5), True, "rank > 2"),
    "cat_along_the_batch": (lambda: (lambda y: torch.cat([y, y], dim=0)), False, "batch dim"),
    "flatten_from_the_batch": (lambda: (lambda y: torch.flatten(y)), False, "merges the batch"),
}


@pytest.mark.parametrize("name", CASES)
def test_dense_island_is_named_and_exact(name):
    make_op, then_relu, reason = CASES[name]
    torch.manual_seed(0)
    model = Island(make_op(), then_relu).eval()
    frames = synthetic_video(6, HEIGHT, WIDTH, batch=2, seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        delta = deltaconvert.convert(model, frames[0])
    fallbacks = [w for w in caught if issubclass(w.category, deltaconvert.DenseFallbackWarning)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]
    islands = {node: why for node, why in delta.dense_islands.items() if reason in why}
    assert len(islands) == 1, delta.dense_islands
    (node, _), = islands.items()
    assert node in str(fallbacks[0].message) and reason in str(fallbacks[0].message)
    sparsifies = [op for op in delta.delta_ops().values() if isinstance(op, Sparsify)]
    assert len(sparsifies) == (2 if then_relu else 1)  # the delta region resumes after it
    for frame in frames:
        with torch.no_grad():
            expected = model(frame)
        assert relative_error(delta(frame), expected) <= 1e-5
