"""N independent video streams in one batch: the many-camera server case.

Stream ``i`` of ``n`` is the benchmark clip started at frame ``i·stride mod T`` (``T``
frames) and wrapping around at the clip's end, so that the streams of one batch show
different frames of the same clip. Batch frame ``t`` stacks, for every stream ``i``, clip
frame ``(i·stride + t) mod T`` along the batch dimension; a delta model treats every
sample as its own sequence (masks, buffers and thresholds per sample), so a wrap-around
is a jump for that stream only. A stride coprime with ``T`` (the default 7 with 40
frames) gives every stream up to ``T`` a different start.
"""
from __future__ import annotations

import torch

DEFAULT_STRIDE = 7


def stream_offsets(streams: int, length: int, stride: int = DEFAULT_STRIDE) -> list[int]:
    """The first clip frame of each of ``streams`` streams over a clip of ``length`` frames."""
    if streams < 1 or length < 1:
        raise ValueError(f"need at least one stream and one frame, got {streams} and {length}")
    return [(index * stride) % length for index in range(streams)]


def stream_batches(frames: list[torch.Tensor], streams: int,
                   stride: int = DEFAULT_STRIDE) -> list[torch.Tensor]:
    """``frames`` (each of batch 1) as ``len(frames)`` batches of ``streams`` samples:
    batch ``t``, sample ``i`` is ``frames[(offset_i + t) mod T]``. One stream returns
    ``frames`` itself."""
    if streams == 1:
        return frames
    length = len(frames)
    offsets = stream_offsets(streams, length, stride)
    return [torch.cat([frames[(offset + t) % length] for offset in offsets]) for t in range(length)]
