"""Output lists written by the producer: a truncation writes the output masks and pixel
lists of the convs that read its output, so that those convs need no
``conv_output_list`` launch.

**Why.** A conv whose GEMM runs over a list of its own output pixels
(:func:`~.conv.lists_own_rows`: any fp16 GEMM conv but a 1×1 stride-1 one, which runs
over its input's list) first lists them with ``conv_output_list``, which costs ~4 µs a
launch whatever it does: its launch and its dependency (PERF_NOTES §40 d; 11 to 18
launches per ResNet-18 frame). The truncation that emits the conv's input pixels has
them at hand.

**Math.** Output pixel ``(oy, ox)`` of a zero-padded conv reads input rows
``oy·sh − pt + ky·dh`` (``ky < KH``) and columns ``ox·sw − pl + kx·dw``; so the outputs
whose footprint holds an input pixel ``(y, x)`` are ``oy = (y + pt − ky·dh) / sh`` for
every ``ky`` where that divides exactly and ``0 ≤ oy < OH``, likewise ``ox``. For every
pixel it emits and every tap, the truncation sets that output's mask byte (an atomicOr
on its 32-bit word) and the thread that turned the byte on appends the pixel to the
conv's list (``mark_conv_outputs`` in ``cuda_kernels/common.cuh``). Invariant: after the
truncation, the conv's mask is exactly ``conv_output_list``'s and its list holds each set
pixel once, in another order (a GEMM row's sum does not depend on the order, so outputs
are bit-identical). The mask is a region of the frame arena keyed by the conv (zero at
the frame's start); the count is the conv's own list slot, zeroed with it.

**Which convs.** At bind time each truncation gets the convs (at most
:data:`~.constants.CONV_TARGETS`) whose first argument is its output, that list their
own rows and have a list slot (``binding.output_list_targets``). At run time it skips a
target that would not run its listed GEMM (:meth:`~.conv.ConvKernel.wants_output_list`:
a dense layer, another dtype); a conv that finds no outputs marked for it lists them
itself, so correctness never depends on the two agreeing.
``DELTACONVERT_CUDA_OUTPUT_LISTS=0`` turns it off.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .arena import FrameArena, zeroed_mask
from .constants import CONV_TARGETS
from .kernels import CONV_TARGETS_BYTES
from .worklist import PixelList, new_list

OUTPUT_LISTS = os.environ.get("DELTACONVERT_CUDA_OUTPUT_LISTS", "1") != "0"

# ConvTarget in common.cuh: ten ints (output size, geometry), then the mask, list and
# count pointers; ConvTargets: CONV_TARGETS of them, then their number and a pad.
_TARGET = "10iPPP"
_TARGETS_TAIL = "ii"
TARGET_BYTES = struct.calcsize(_TARGET)
assert CONV_TARGETS * TARGET_BYTES + struct.calcsize(_TARGETS_TAIL) == CONV_TARGETS_BYTES


@dataclass(frozen=True)
class ConvGeometry:
    """A zero-padded conv's window over an ``h × w`` input: kernel, stride, padding
    (top, left, bottom, right), dilation, and its output size ``oh × ow``."""

    kh: int
    kw: int
    sh: int
    sw: int
    top: int
    left: int
    bottom: int
    right: int
    dh: int
    dw: int
    oh: int
    ow: int


def conv_geometry(conv: Any, h: int, w: int) -> ConvGeometry:
    """The geometry of ``conv`` (an ``nn.Conv2d``, or what has its attributes) over an
    ``h × w`` input: ``oh = (h + pt + pb − dh·(kh − 1) − 1) / sh + 1``, likewise ``ow``."""
    kh, kw = conv.weight.shape[2:]
    sh, sw = conv.stride
    dh, dw = conv.dilation
    left, right, top, bottom = conv._reversed_padding_repeated_twice
    return ConvGeometry(kh, kw, sh, sw, top, left, bottom, right, dh, dw,
                        (h + top + bottom - dh * (kh - 1) - 1) // sh + 1,
                        (w + left + right - dw * (kw - 1) - 1) // sw + 1)


@dataclass
class MarkedOutputs:
    """What one truncation launch marks: the kernel's ``ConvTargets`` argument, and each
    target conv's output mask and list by the conv's op name (handed on with the
    truncation's output as ``extras["output_lists"]``)."""

    argument: bytes = bytes(CONV_TARGETS_BYTES)
    outputs: dict[str, tuple[torch.Tensor, PixelList]] = field(default_factory=dict)


NO_TARGETS = MarkedOutputs()


def mark_outputs(targets: Sequence[tuple[Any, Any]], in_shape: Sequence[int], dtype: torch.dtype,
                 arena: FrameArena | None) -> MarkedOutputs:
    """The outputs a truncation with output ``in_shape`` (NCHW) marks this call for its
    ``targets`` (conv op, its ConvKernel): those of the convs that would run their listed
    GEMM over their own output pixels, each with a zeroed arena mask and an empty list in
    its own slot."""
    if not OUTPUT_LISTS or arena is None or len(in_shape) != 4:
        return NO_TARGETS
    n, _, h, w = in_shape
    packed, outputs = [], {}
    for op, wrapper in targets[:CONV_TARGETS]:
        g = conv_geometry(op.conv, h, w)
        if not wrapper.wants_output_list(op, dtype, g.oh * g.ow):
            continue
        listed = new_list(n * g.oh * g.ow, wrapper.list_count)
        if listed is None:
            continue
        mask = zeroed_mask(arena, op.node_name, (n, op.conv.out_channels, g.oh, g.ow), arena.device)
        packed.append(struct.pack(_TARGET, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.top, g.left, g.dh,
                                  g.dw, mask.data_ptr(), listed.index.data_ptr(),
                                  listed.count.data_ptr()))
        outputs[op.node_name] = (mask, listed)
    if not outputs:
        return NO_TARGETS
    argument = b"".join(packed).ljust(CONV_TARGETS * TARGET_BYTES, b"\0")
    return MarkedOutputs(argument + struct.pack(_TARGETS_TAIL, len(packed), 0), outputs)
