"""Non-linear ops: recompute from accumulated inputs, emit truncated output changes.

State per op: ``a_i``, the accumulated value of each varying input (fp32 or wider),
and ``o``, the output value downstream layers have been sent (in the model dtype for
16-bit models, where that is exact, else fp32 or wider). For the output
pixels in the footprint of the input updates::

    a_i += δx_i;   v = f(a_1, …);   δy = v − o
    emit where max_c |δy| > τ, and there  o ← v

What is not emitted waits in ``v − o``: truncation defers an update, never loses it.
The first frame computes ``f(x…)`` with the same ``f``; a dense frame that restarts a
running sequence writes ``a_i ← x_i`` and ``o ← f(x…)`` into the buffers it holds. One
class covers element-wise activations, per-pixel channel-mixing ops (LayerNorm over
channels, softmax over channels), products of varying tensors (``POINTWISE`` footprint)
and max pooling (``REAPPLY`` footprint).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..delta import Delta, map_tensor_leaves, tensor_leaves
from . import reference as ref
from .base import DeltaOp, kept
from .footprint import Footprint, output_masks


class Nonlinear(DeltaOp):
    """``y = f(x…)`` with accumulate-recompute-truncate updates.

    ``varying[i]`` tells whether the i-th tensor argument depends on the model input
    (accumulated) or is a constant (passed through, e.g. a PReLU slope or a learned
    scale given as a tensor operand).
    """

    def __init__(self, fn: Callable[..., Any], footprint: Footprint, varying: Sequence[bool],
                 threshold: float = 0.0) -> None:
        super().__init__()
        self.fn = fn
        self.footprint = footprint
        self.varying = tuple(bool(v) for v in varying)
        self.threshold = float(threshold)

    def dense(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        leaves = list(tensor_leaves((args, kwargs)))
        if len(leaves) != len(self.varying):
            raise TypeError(f"{self.node_name}: expected {len(self.varying)} tensor arguments, "
                            f"got {len(leaves)}")
        out = self.fn(*args, **kwargs)
        held = self._state.get("acc") or []
        varying = [x for x, v in zip(leaves, self.varying) if v]
        self._state["acc"] = [kept(held[i] if i < len(held) else None, x,
                                   ref.buffer_dtype(x.dtype, x.device))
                              for i, x in enumerate(varying)]
        self._keep("sent", out, ref.sent_dtype(out.dtype, out.device))
        return out

    def delta(self, *args: Any, **kwargs: Any) -> Delta:
        acc = self._state["acc"]
        deltas = [leaf for leaf in tensor_leaves((args, kwargs)) if isinstance(leaf, Delta)]
        for a, d in zip(acc, deltas):
            ref.accumulate(a, d)
        current = iter(acc)
        a_args, a_kwargs = map_tensor_leaves(
            (args, kwargs), lambda leaf: next(current).to(leaf.dtype) if isinstance(leaf, Delta) else leaf)
        v = self.fn(*a_args, **a_kwargs)
        candidates = output_masks(self.footprint, self.fn, args, kwargs, v)
        return ref.truncate(v, self._state["sent"], candidates, self.threshold, v.dtype)

    def extra_repr(self) -> str:
        fn = getattr(self.fn, "__name__", None) or repr(self.fn)
        return f"{super().extra_repr()}, fn={fn}, footprint={self.footprint.value}"
