"""The reference math: the delta rules of docs/ARCHITECTURE.md §1 in plain PyTorch.

Every function here is free of host synchronisation (no ``.item()``, no boolean
indexing), so the reference path also runs, and captures into a CUDA graph, on a GPU.
It is the oracle every other backend is tested against.

Conventions: masks are ``bool`` of shape ``(N, 1, *spatial)``; a Delta's values are
unspecified outside its mask, so every reader goes through :func:`masked` first, and
every writer here leaves exact zeros outside the mask it returns.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..delta import Delta, mask_shape


def buffer_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """Dtype of state buffers (accumulated inputs, sent outputs, references).

    At least fp32 whatever the model's dtype. On the CPU, where the reference backend
    is the oracle, fp32 models keep float64 state: fp32 accumulation adds a rounding
    error of ``ε·|a|`` per update, a random walk that grows like ``√frames``.
    """
    if not dtype.is_floating_point:
        return torch.float32
    if device.type == "cpu" and dtype == torch.float32:
        return torch.float64
    return torch.promote_types(dtype, torch.float32)


def sent_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """Dtype of a non-linear op's sent outputs ``o``.

    Every value ``o`` holds is an output value of the op in the model dtype (the dense
    frame's output, or ``v = f(a)`` computed in the model dtype), so a 16-bit model
    stores ``o`` in its own dtype exactly, at half the bytes of fp32. Other dtypes use
    :func:`buffer_dtype`. Differences ``v − o`` are still taken in ≥ fp32.
    """
    if dtype in (torch.float16, torch.bfloat16):
        return dtype
    return buffer_dtype(dtype, device)


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """Precision in which the reference backend evaluates weighted sums of deltas.

    On the CPU, fp32 convolutions of deltas accumulate in float64: the rounding of a
    large dot product (fan-in in the tens of thousands) would otherwise add a fresh
    error of the size of the dense model's own rounding error on every frame, and the
    oracle would drift like ``√frames``. On other devices the model's dtype is used.
    """
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.float64
    return x.dtype


def masked(delta: Delta) -> torch.Tensor:
    """The delta's values with exact zeros outside its mask."""
    return delta.masked_values()


def channel_max_abs(x: torch.Tensor) -> torch.Tensor:
    """``max_c |x|`` as a ``(N, 1, *spatial)`` tensor."""
    return x.abs().amax(dim=1, keepdim=True)


def dilate(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow a mask by ``pixels`` in every spatial direction (a square structuring element)."""
    if pixels <= 0 or mask.dim() < 3:
        return mask
    k = 2 * pixels + 1
    pool = {3: F.max_pool1d, 4: F.max_pool2d, 5: F.max_pool3d}[mask.dim()]
    return pool(mask.float(), kernel_size=k, stride=1, padding=pixels) > 0


def sparsify(x: torch.Tensor, ref: torch.Tensor, threshold: float, dilation: int) -> Delta:
    """``δ = x − ref``; ``m = max_c|δ| > τ`` dilated by ``d``; ``δ ← δ·m``; ``ref += δ``.

    ``ref`` (fp32 or wider) is updated in place; changes below ``τ`` stay in ``x − ref``.
    """
    diff = x.to(ref.dtype) - ref
    mask = dilate(channel_max_abs(diff) > threshold, dilation)
    diff = torch.where(mask, diff, torch.zeros((), dtype=diff.dtype, device=diff.device))
    ref.add_(diff)
    return Delta(diff.to(x.dtype), mask)


def densify(delta: Delta, y: torch.Tensor) -> torch.Tensor:
    """``y += δ`` where updated (in place); returns ``y``."""
    y.add_(masked(delta).to(y.dtype))
    return y


def accumulate(a: torch.Tensor, delta: Delta) -> None:
    """``a += δ`` where updated (in place)."""
    a.add_(masked(delta).to(a.dtype))


def truncate(v: torch.Tensor, o: torch.Tensor, candidates: torch.Tensor, threshold: float,
             out_dtype: torch.dtype) -> Delta:
    """Emit ``δy = v − o`` at candidate pixels whose ``max_c |δy|`` exceeds ``τ``.

    ``o`` (the value downstream has been sent) is updated in place where emitted;
    what is not emitted waits in ``v − o`` for a later frame. The difference is taken
    in ``o``'s dtype promoted to at least fp32 (exact for 16-bit ``v`` and ``o``).
    """
    work = torch.promote_types(o.dtype, torch.float32)
    v = v.to(work)
    dy = v - o.to(work)
    emit = candidates & (channel_max_abs(dy) > threshold)
    dy = torch.where(emit, dy, torch.zeros((), dtype=dy.dtype, device=dy.device))
    o.copy_(torch.where(emit, v, o.to(work)))
    return Delta(dy.to(out_dtype), emit)


def union_mask(masks: Sequence[torch.Tensor], out_shape: Sequence[int]) -> torch.Tensor:
    """OR of masks broadcast to the mask of an output of shape ``out_shape``."""
    target = mask_shape(tuple(out_shape))
    out = None
    for m in masks:
        m = m.expand(target)
        out = m if out is None else (out | m)
    assert out is not None, "union_mask needs at least one mask"
    return out


def reapplied_mask(fn: Callable[..., Any], args: Any, kwargs: dict) -> Any:
    """Footprint of a channel-wise linear op with non-negative coefficients.

    ``fn`` is applied to the float masks in place of the values (constant tensors
    become empty masks); an output pixel is updated iff any of its channels is > 0.
    Returns one mask, or a tuple of masks when ``fn`` returns a tuple.
    """
    out = fn(*args, **kwargs)
    if isinstance(out, (tuple, list)):
        return tuple(o.amax(dim=1, keepdim=True) > 0 for o in out)
    return out.amax(dim=1, keepdim=True) > 0


def window_mask(mask: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int],
                dilation: Sequence[int], pads: Sequence[int], pad_mode: str = "constant"
                ) -> torch.Tensor:
    """Output pixels of a 2-D convolution whose input footprint touches an update.

    ``pads`` is in :func:`torch.nn.functional.pad` order (left, right, top, bottom) and
    ``pad_mode`` the convolution's padding mode, so asymmetric and "same" padding and
    reflect/replicate/circular borders give the exact footprint.
    """
    m = F.pad(mask.float(), list(pads), mode=pad_mode) if any(pads) else mask.float()
    ones = torch.ones((1, 1, *kernel_size), dtype=m.dtype, device=m.device)
    return F.conv2d(m, ones, stride=stride, dilation=dilation) > 0


def transposed_window_mask(mask: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int],
                           padding: Sequence[int], output_padding: Sequence[int],
                           dilation: Sequence[int]) -> torch.Tensor:
    """Output pixels of a 2-D transposed convolution reached by an updated input pixel."""
    m = mask.float()
    ones = torch.ones((1, 1, *kernel_size), dtype=m.dtype, device=m.device)
    return F.conv_transpose2d(m, ones, stride=stride, padding=padding,
                              output_padding=output_padding, dilation=dilation) > 0
