"""Footprints: which output pixels an op must update, given its inputs' update masks.

An op's footprint is a superset of the output pixels whose value can change when the
inputs change only at their masked pixels. Four rules cover every registered op:

``POINTWISE``
    output pixel ``p`` depends only on input pixel ``p`` (after broadcasting): the OR of
    the broadcast masks. Element-wise and per-pixel (channel-mixing) ops.
``REAPPLY``
    the op is linear and channel-wise with non-negative coefficients (pooling,
    resizing, padding, flatten, cat): applying it to the masks as 0/1 floats gives a
    positive value exactly where an updated pixel contributes.
``REAPPLY_EXPANDED``
    as ``REAPPLY``, but the op also selects or moves channels (slicing, pixel
    shuffle): masks are first expanded to the values' full channel count.
``CHANNELS``
    the op only moves or selects channels: the output mask is the input mask.
"""
from __future__ import annotations

import enum
from typing import Any, Callable

import torch

from ..delta import Delta, map_tensor_leaves, mask_shape, tensor_leaves
from . import reference as ref


class Footprint(enum.Enum):
    POINTWISE = "pointwise"
    REAPPLY = "reapply"
    REAPPLY_EXPANDED = "reapply_expanded"
    CHANNELS = "channels"


def output_masks(kind: Footprint, fn: Callable[..., Any], args: tuple, kwargs: dict,
                 out: Any) -> Any:
    """The update mask of ``out`` (or a tuple of masks, matching a tuple ``out``).

    ``args``/``kwargs`` are the op's runtime arguments (Deltas where varying); ``out`` is
    the op's output value(s), used for shapes.
    """
    deltas = [leaf for leaf in tensor_leaves((args, kwargs)) if isinstance(leaf, Delta)]
    if kind is Footprint.POINTWISE:
        if isinstance(out, (tuple, list)):
            return tuple(ref.union_mask([d.mask for d in deltas], o.shape) for o in out)
        return ref.union_mask([d.mask for d in deltas], out.shape)
    if kind is Footprint.CHANNELS:
        (only,) = deltas
        if isinstance(out, (tuple, list)):
            return tuple(only.mask for _ in out)
        return only.mask
    expand = kind is Footprint.REAPPLY_EXPANDED

    def as_mask(leaf: Any) -> torch.Tensor:
        if isinstance(leaf, Delta):
            m = leaf.mask.to(torch.float32)
            return m.expand(leaf.shape) if expand else m
        shape = leaf.shape if expand else mask_shape(leaf.shape)
        return torch.zeros(shape, dtype=torch.float32, device=leaf.device)

    m_args, m_kwargs = map_tensor_leaves((args, kwargs), as_mask)
    return ref.reapplied_mask(fn, m_args, m_kwargs)
