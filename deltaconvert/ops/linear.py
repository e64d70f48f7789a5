"""Linear ops without parameters: the original op applied to the deltas.

For a homogeneous linear op ``f`` (pooling, resizing, padding with zeros, cat,
slicing, flatten, scaling by a constant, add/sub of varying tensors) the change of the
output is ``f(δ)``. For an affine op whose constant enters additively (``x + c``,
``c − x``) the constant lives in the first frame's values and the delta form is the
op with every constant replaced by zero (``affine=True``).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..delta import Delta, map_tensor_leaves
from . import reference as ref
from .base import DeltaOp
from .footprint import Footprint, output_masks


def _zero_constant(leaf: Any) -> Any:
    if isinstance(leaf, Delta):
        return ref.masked(leaf)
    return torch.zeros_like(leaf)


class LinearCall(DeltaOp):
    """``dense = fn(x…)``; ``delta = fn(δ…)`` with the output mask from ``footprint``."""

    def __init__(self, fn: Callable[..., Any], footprint: Footprint, affine: bool = False) -> None:
        super().__init__()
        self.fn = fn
        self.footprint = footprint
        self.affine = affine

    def dense(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def delta(self, *args: Any, **kwargs: Any) -> Any:
        if self.affine:
            v_args, v_kwargs = map_tensor_leaves((args, kwargs), _zero_constant)
            v_args, v_kwargs = _zero_scalars(v_args), _zero_scalars(v_kwargs)
        else:
            v_args, v_kwargs = map_tensor_leaves(
                (args, kwargs), lambda leaf: ref.masked(leaf) if isinstance(leaf, Delta) else leaf)
        values = self.fn(*v_args, **v_kwargs)
        masks = output_masks(self.footprint, self.fn, args, kwargs, values)
        if isinstance(values, (tuple, list)):
            return tuple(Delta(v, m) for v, m in zip(values, masks))
        return Delta(values, masks)

    def extra_repr(self) -> str:
        fn = getattr(self.fn, "__name__", None) or type(self.fn).__name__
        affine = ", affine" if self.affine else ""
        return f"{super().extra_repr()}, fn={fn}, footprint={self.footprint.value}{affine}"


def _zero_scalars(tree: Any) -> Any:
    """Python numbers that are operands of an affine op (``x + 1``) become 0; ``alpha``
    (a multiplier of the second operand) is kept."""
    if isinstance(tree, dict):
        return {k: (v if k == "alpha" else _zero_scalars(v)) for k, v in tree.items()}
    if type(tree) in (list, tuple):
        return type(tree)(_zero_scalars(v) for v in tree)
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return 0
    return tree


class ChannelGather(DeltaOp):
    """``y = x[:, index]``: a fixed channel permutation or selection (e.g. a channel
    shuffle collapsed from a chain of view/transpose ops). Masks pass unchanged."""

    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index.to(torch.long))

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)

    def delta(self, d: Delta) -> Delta:
        return Delta(d.values.index_select(1, self.index), d.mask)


class ConstantPad(DeltaOp):
    """``y = fn(x) = pad(x, pads, value=c)`` for a constant ``c ≠ 0`` (TensorFlow-"same"
    max pooling pads with ``c = −∞``). The border is ``c`` on every frame, so its change
    is zero and ``c`` lives in the first frame's values: ``δy = pad(δx, pads, 0)``, and
    border pixels are never updated (``m_y = pad(m_x, pads, False)``). ``pads`` is in
    :func:`torch.nn.functional.pad` order; ``fn`` (the original call, a module or
    ``F.pad``) takes the call's other arguments."""

    def __init__(self, fn: Callable[..., torch.Tensor], pads: Sequence[int]) -> None:
        super().__init__()
        self.fn = fn
        self.pads = tuple(int(p) for p in pads)

    def dense(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.fn(x, *args, **kwargs)

    def delta(self, d: Delta, *args: Any, **kwargs: Any) -> Delta:
        spatial = self.pads[:2 * (d.dim() - 2)]
        return Delta(F.pad(ref.masked(d), self.pads), F.pad(d.mask, spatial))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pads={self.pads}"
