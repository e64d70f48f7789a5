"""Tensor plumbing between torch and the kernels.

Kernels address every tensor of rank 4 ``(N, C, H, W)`` through element strides; a
rank-2 tensor ``(N, C)`` is seen as ``(N, C, 1, 1)``. A dimension of size 1 that is
broadcast against a larger one gets stride 0. Values the backend creates are
channels_last (the channels of a pixel contiguous); masks are contiguous
``(N, 1, H, W)`` bools (one byte per pixel).

``poison_outputs(True)`` makes every new output NaN-filled (masks 0xFF) so tests can
prove a kernel wrote every value and mask byte it returns as specified.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ...delta import mask_shape
from .constants import BLOCK

_POISON = False


def poison_outputs(enabled: bool) -> None:
    """Fill new outputs with NaN (values) and 0xFF (mask bytes): a debugging aid."""
    global _POISON
    _POISON = bool(enabled)


def poisoning() -> bool:
    """Whether new outputs are poisoned (see :func:`poison_outputs`)."""
    return _POISON


def shape4(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """``(N, C, H, W)`` of a rank-4 or rank-2 shape."""
    if len(shape) == 4:
        return tuple(shape)  # type: ignore[return-value]
    if len(shape) == 2:
        return (shape[0], shape[1], 1, 1)
    raise ValueError(f"kernels take rank-2 or rank-4 tensors, got shape {tuple(shape)}")


def strides4(t: torch.Tensor, target: Sequence[int] | None = None) -> tuple[int, int, int, int]:
    """Element strides of ``t`` as ``(N, C, H, W)``, broadcast to the rank-4 ``target``."""
    size = shape4(t.shape)
    stride = tuple(t.stride()) if t.dim() == 4 else (t.stride(0), t.stride(1), 0, 0)
    if target is None:
        return stride  # type: ignore[return-value]
    out = []
    for s, st, want in zip(size, stride, shape4(target)):
        if s == want:
            out.append(st)
        elif s == 1:
            out.append(0)
        else:
            raise ValueError(f"shape {tuple(t.shape)} does not broadcast to {tuple(target)}")
    return tuple(out)  # type: ignore[return-value]


def mask_strides(mask: torch.Tensor, target: Sequence[int]) -> tuple[int, int, int]:
    """``(N, H, W)`` strides of a ``(N, 1, *spatial)`` mask broadcast to the rank-4 ``target``."""
    n, _, h, w = strides4(mask, (shape4(target)[0], 1, *shape4(target)[2:]))
    return n, h, w


def new_values(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output values tensor (channels_last for rank 4)."""
    fmt = torch.channels_last if len(shape) == 4 else torch.contiguous_format
    t = torch.empty(tuple(shape), dtype=dtype, device=device, memory_format=fmt)
    if _POISON:
        t.fill_(float("nan"))
    return t


def new_mask(values_shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """An output mask for values of ``values_shape`` (contiguous bools)."""
    m = torch.empty(mask_shape(tuple(values_shape)), dtype=torch.bool, device=device)
    if _POISON:
        m.view(torch.uint8).fill_(0xFF)
    return m


_FULL_MASKS: dict[torch.device, torch.Tensor] = {}


def full_mask(values_shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """A mask for values of ``values_shape`` with every pixel set (one byte, broadcast)."""
    if device not in _FULL_MASKS:
        _FULL_MASKS[device] = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=device)
    return _FULL_MASKS[device].expand(mask_shape(tuple(values_shape)))


def placeholder(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A shape-only stand-in for values that a fused consumer never reads (no memory)."""
    return torch.empty((), dtype=dtype, device=device).expand(tuple(shape))


CHANNELS_PER_LANE = 4
MAX_LANES = BLOCK


def lanes_for(channels: int, per_lane: int = CHANNELS_PER_LANE) -> int:
    """Threads per pixel in the per-pixel kernels: the power of two ≥ C / per_lane, at
    most 256.

    About four channels per thread keep each thread's channel loop short: with at most
    32 lanes, a pixel of a 960-channel layer took 30 dependent rounds of loads per pass,
    which left the wide, low-resolution layers latency bound; narrow layers keep few
    threads per pixel. Kernels that load channel vectors take more channels per lane."""
    lanes = 1
    while lanes < min(-(-channels // per_lane), MAX_LANES):
        lanes *= 2
    return lanes


def pixel_grid(pixels: int, lanes: int, threads: int = BLOCK) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Grid and block for one group of ``lanes`` threads per pixel (``lanes`` ≤ ``threads``;
    groups of more than 32 lanes span whole warps, see ``group_reduce`` in common.cuh)."""
    per_block = threads // lanes
    return ((pixels + per_block - 1) // per_block, 1, 1), (threads, 1, 1)


LIST_DEPTH = 4      # rounds of a block-local work list, at most
LIST_BLOCKS = 1800  # fewest blocks a deeper list may leave (~14 per SM of an H200)


def list_grid(pixels: int, lanes: int, threads: int = BLOCK
              ) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
    """Grid, block and span of the kernels with block-local work lists (pointwise.cu;
    see "Block-local work lists" in common.cuh): a block scans ``span`` pixels, hands
    those with work to its ``threads / lanes`` groups, and they take up to ``depth``
    rounds, ``span = groups · depth``.

    Deeper lists make an empty region cheaper (one mask read per pixel instead of
    ``lanes`` threads), but a group then works through up to ``depth`` updated pixels in
    a row. Measured on an H200 (scripts/PERF_NOTES.md §5c): depth 4 halved the 230k- and
    58k-pixel layers of mobilenet_v2 at 720p, and more than doubled the time of layers
    with a few thousand pixels, where too few blocks were left to spread the updates over
    the GPU. So the depth doubles, up to ``LIST_DEPTH``, while at least ``LIST_BLOCKS``
    blocks remain (3600 until the vectorised pw_truncate, 1800 since: §19)."""
    groups = threads // lanes
    depth = 1
    while depth < LIST_DEPTH and -(-pixels // (groups * depth * 2)) >= LIST_BLOCKS:
        depth *= 2
    span = min(threads, groups * depth)
    return (-(-pixels // span), 1, 1), (threads, 1, 1), span


VECTOR_CHANNELS = 4  # channels of one vector load in the per-pixel kernels (pointwise.cu)


def vector_layout(t: torch.Tensor, width: int, target: Sequence[int] | None = None) -> bool:
    """Whether ``t`` (addressed as ``target``, default its own shape) can be read in
    vectors of ``width`` consecutive channels: channel stride 1, pixel strides multiples
    of ``width`` (0 where broadcast) and an address aligned to ``width`` elements."""
    n, c, h, w = strides4(t, target)
    return (c == 1 and not any(s % width for s in (n, h, w))
            and t.data_ptr() % (width * t.element_size()) == 0)


def flat_nhwc(t: torch.Tensor, shape: Sequence[int]) -> bool:
    """Whether ``t`` holds element (pixel p, channel c) of ``shape`` (rank 2 or 4, pixels
    in (N, H, W) order) at offset ``p·C + c``: ``t`` has that shape (no broadcast), and
    every dimension of more than one element has its NHWC stride."""
    n, c, h, w = shape4(shape)
    if tuple(t.shape) != tuple(shape):
        return False
    return all(size == 1 or have == want for size, have, want
               in zip((n, c, h, w), strides4(t), (h * w * c, 1, w * c, c)))


def channel_vectors(shape: Sequence[int], *tensors: torch.Tensor | None) -> bool:
    """Whether the per-pixel kernels may load 4 consecutive channels at once from every
    tensor of ``tensors`` (None: absent) addressed as ``shape``: C a multiple of 4 and
    :func:`vector_layout` for each tensor."""
    return channel_width(shape, *tensors, widths=(VECTOR_CHANNELS,)) == VECTOR_CHANNELS


def channel_width(shape: Sequence[int], *tensors: torch.Tensor | None,
                  widths: Sequence[int] = (2 * VECTOR_CHANNELS, VECTOR_CHANNELS)) -> int:
    """The most consecutive channels of ``widths`` that the per-pixel kernels may load at
    once from every tensor of ``tensors`` (None: absent) addressed as ``shape`` — C a
    multiple of it and :func:`vector_layout` for each tensor — else 1."""
    for width in widths:
        if (shape4(shape)[1] % width == 0
                and all(vector_layout(t, width, shape) for t in tensors if t is not None)):
            return width
    return 1


def as_nhwc(t: torch.Tensor) -> torch.Tensor:
    """``t`` in channels_last layout (itself when it already is, or not rank 4)."""
    if t.dim() != 4 or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous(memory_format=torch.channels_last)


def fp32_vector(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A contiguous fp32 copy of a parameter vector (exact for fp16/bf16 sources), 16-byte
    aligned: the per-pixel kernels load 4 channels of it at a time (``add_input`` in
    pointwise.cu). An aligned fp32 vector on ``device`` is returned as it is."""
    v = t.detach().reshape(-1).to(device=device, dtype=torch.float32).contiguous()
    return v if v.data_ptr() % 16 == 0 else v.clone()
