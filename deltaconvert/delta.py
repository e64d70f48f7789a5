"""The value that flows between delta ops.

A :class:`Delta` is a change to a tensor of shape ``(N, C, *spatial)``: dim 0 is the
batch (N independent video streams), dim 1 the channels, every further dim a pixel
coordinate (zero spatial dims: a tensor ``(N, C)`` is one pixel per stream).

Invariants every op relies on:

* ``mask`` has shape ``(N, 1, *spatial)`` and dtype ``bool``: one update flag per
  sample and pixel, shared by all channels.
* ``values`` has the shape of the tensor whose change it describes. Where ``mask`` is
  False the values are *unspecified* (a backend may leave stale data there to avoid
  touching inactive pixels); every reader treats them as zero. Where ``mask`` is True
  they are the exact change.

A Delta answers the shape queries a traced model makes of its tensors (``.shape``,
``.size()``, ``.dim()``, ``.dtype``, ``.device``), so graph code such as
``x.size(0)`` runs unchanged on either kind of value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch


@dataclass
class Delta:
    values: torch.Tensor
    mask: torch.Tensor
    # Backend-private data derived from ``mask`` (e.g. a GPU tile work list). Any op
    # that builds a new mask starts with an empty dict.
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def size(self, dim: int | None = None):
        return self.values.size() if dim is None else self.values.size(dim)

    def dim(self) -> int:
        return self.values.dim()

    @property
    def ndim(self) -> int:
        return self.values.dim()

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def masked_values(self) -> torch.Tensor:
        """``values`` with every pixel outside ``mask`` set to exactly zero."""
        return torch.where(self.mask, self.values, torch.zeros((), dtype=self.values.dtype,
                                                                 device=self.values.device))

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Delta(shape={tuple(self.values.shape)}, dtype={self.values.dtype})"


def mask_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    """The mask shape ``(N, 1, *spatial)`` for a value of shape ``(N, C, *spatial)``."""
    return (shape[0], 1, *shape[2:])


def tensor_leaves(tree: Any) -> Iterator[Any]:
    """Tensors and Deltas inside nested lists, tuples and dicts (not inside torch.Size)."""
    if isinstance(tree, (torch.Tensor, Delta)):
        yield tree
    elif type(tree) in (list, tuple):
        for item in tree:
            yield from tensor_leaves(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from tensor_leaves(item)


def map_tensor_leaves(tree: Any, fn: Callable[[Any], Any]) -> Any:
    """Rebuild ``tree`` with ``fn`` applied to each tensor or Delta leaf."""
    if isinstance(tree, (torch.Tensor, Delta)):
        return fn(tree)
    if type(tree) in (list, tuple):
        return type(tree)(map_tensor_leaves(item, fn) for item in tree)
    if isinstance(tree, dict):
        return type(tree)((k, map_tensor_leaves(v, fn)) for k, v in tree.items())
    return tree


def contains_delta(tree: Any) -> bool:
    return any(isinstance(leaf, Delta) for leaf in tensor_leaves(tree))
