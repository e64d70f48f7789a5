"""Device memory that is zero at the start of every frame: one memset per frame instead
of one per buffer.

A :class:`FrameArena` belongs to one bound model. It holds the work-list counts (one
int32 slot per op, :meth:`FrameArena.slot`), the frame's ``changed`` count (the pixels
the input Sparsify kernels emitted, see :mod:`.frame_skip`) and the regions that kernels need zeroed
each frame, such as the output masks that a kernel writes only where it has work
(:meth:`FrameArena.zeroed`). :meth:`FrameArena.begin_frame` zeroes both inside the
frame, so a captured CUDA graph replays the zeroing.

Regions are keyed by their owner (op name and role) and laid out on first request, at
the end of the arena, which grows by doubling into a new zeroed buffer (the views of
this frame keep the old one alive). A key asked for a second time in one frame, or
first seen while a CUDA graph is captured, gets a freshly zeroed tensor of its own (one
memset, always correct). A buffer that a captured graph used is never freed, so the
graph still zeroes and uses the memory it was captured with.
"""
from __future__ import annotations

import math
from typing import Hashable, Sequence

import torch

from .tensors import mask_shape, new_mask

ALIGN = 16  # bytes: regions start on 16-byte boundaries (vector loads)


class FrameArena:
    """Per-frame zeroed device memory of one bound model (see the module docstring)."""

    def __init__(self, device: torch.device, slots: int) -> None:
        self.device = device
        self.counts = torch.zeros(slots + 1, dtype=torch.int32, device=device)
        self.changed = self.counts[slots:]  # one int32 after the op slots
        self._regions: dict[Hashable, tuple[int, int]] = {}  # key -> (offset, bytes)
        self._buffer = torch.zeros(0, dtype=torch.uint8, device=device)
        self._used = 0                                       # bytes laid out
        self._pinned: list[torch.Tensor] = []                # buffers captured graphs use
        self._given: set[Hashable] = set()                   # keys handed out this frame

    def slot(self, index: int) -> torch.Tensor:
        """The work-list count of op number ``index`` (a one-element int32 view)."""
        return self.counts[index:index + 1]

    def _capturing(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()

    def zeroed(self, key: Hashable, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """A contiguous tensor of ``shape`` and ``dtype`` that is zero now (frame start)
        and is this frame's only tensor under ``key``."""
        nbytes = math.prod(int(size) for size in shape) * dtype.itemsize
        region = self._regions.get(key)
        laid_out = region is not None and region[1] == nbytes
        if key in self._given or (not laid_out and self._capturing()):
            return torch.zeros(tuple(shape), dtype=dtype, device=self.device)
        if not laid_out:
            region = self._append(key, nbytes)
        self._given.add(key)
        offset = region[0]
        return self._buffer[offset:offset + nbytes].view(dtype).view(tuple(shape))

    def _append(self, key: Hashable, nbytes: int) -> tuple[int, int]:
        offset = self._used
        self._used = offset + -(-nbytes // ALIGN) * ALIGN
        if self._used > self._buffer.numel():  # regions past the old end are zero: fresh
            self._buffer = torch.zeros(max(self._used, 2 * self._buffer.numel()),
                                       dtype=torch.uint8, device=self.device)
        self._regions[key] = (offset, nbytes)
        return self._regions[key]

    def begin_frame(self) -> None:
        """Zero the counts and every region (two memsets on the current stream)."""
        if self._capturing() and not any(b is self._buffer for b in self._pinned):
            self._pinned.append(self._buffer)
        self._given.clear()
        self.counts.zero_()
        if self._used:
            self._buffer[:self._used].zero_()

    def nbytes(self) -> int:
        """Bytes of the current arena (counts and buffer)."""
        return self.counts.numel() * 4 + self._buffer.numel()


def zeroed_mask(arena: FrameArena | None, owner: str, values_shape: Sequence[int],
                device: torch.device) -> torch.Tensor:
    """An all-clear output mask for values of ``values_shape``: a region of ``arena``
    keyed by ``owner`` (an op name), or a mask zeroed here when there is no arena."""
    if arena is None:
        return new_mask(values_shape, device).zero_()
    return arena.zeroed((owner, "mask"), mask_shape(tuple(values_shape)), torch.bool)
