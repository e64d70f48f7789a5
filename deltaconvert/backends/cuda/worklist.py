"""Pixel work lists: the updated pixels of a mask, listed on the GPU by the kernel that
wrote the mask, so that consumers run over the pixels instead of scanning the frame.

A :class:`PixelList` travels with the Delta whose mask it lists, as
``extras["pixels"]``. Invariant: ``index[0:count)`` holds exactly the linear indices
``n·H·W + y·W + x`` of the pixels set in that mask, each once, in no particular order;
``count`` is a one-element int32 device tensor and is never read on the host (no
synchronisation). The producing kernel appends with one atomicAdd per block
(``list_append`` in ``cuda_kernels/common.cuh``), so its count must be zero when it
starts: counts are slots of the bound model's :class:`~.arena.FrameArena`, zeroed once per
frame inside the frame (and so inside a captured CUDA graph).

Producers: ``pw_truncate`` (emitted pixels), ``pw_linear`` (the union of its operands)
and the tiled conv kernels (their output pixels, appended by the block that writes the
tile's mask), for the ops whose output a list consumer reads (:func:`list_producers`:
appending costs a producer about a microsecond, so nothing lists for nobody); and the
output pixels of an fp16 conv whose GEMM runs over them, written by the truncation
whose output it reads (:mod:`.output_lists`) or else by ``conv_output_list``.
Consumers: the fp16 GEMM convolutions (``conv_gemm_listed``: a 1×1, stride-1, unpadded
conv's output mask is its input mask, so it runs over its input's list and hands it on;
any other runs over its own) and truncating ops (``pw_truncate`` over the listed
candidates, with an output mask that starts clear: a region of the frame arena, or the
candidates' own mask when a fused conv wrote it for the truncation alone,
``Fused.owns_masks``).
``DELTACONVERT_CUDA_WORK_LISTS=0`` turns lists off (every kernel scans its masks, as
before lists existed).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

from ...ops.base import DeltaOp
from ..runtime import DeltaOpGraph
from . import tensors
from .kernels import Args

WORK_LISTS = os.environ.get("DELTACONVERT_CUDA_WORK_LISTS", "1") != "0"


@dataclass(frozen=True)
class PixelList:
    """The updated pixels of one mask (see the module docstring)."""

    index: torch.Tensor  # int32, capacity = the mask's element count
    count: torch.Tensor  # int32, one element: the listed pixels


def new_list(pixels: int, count: torch.Tensor | None) -> PixelList | None:
    """An empty list of capacity ``pixels`` counted in ``count`` (an arena slot), or None
    when lists are off or the op has no slot. Poisoned outputs (tests) fill the index
    with -1, so a reader past the count would address no pixel."""
    if not WORK_LISTS or count is None:
        return None
    index = torch.empty(pixels, dtype=torch.int32, device=count.device)
    if tensors.poisoning():
        index.fill_(-1)
    return PixelList(index, count)


def list_extras(listed: PixelList | None) -> dict[str, PixelList]:
    """The extras entry that hands ``listed`` on with its Delta (empty for None)."""
    return {"pixels": listed} if listed is not None else {}


def list_args(layer: str, listed: PixelList | None) -> Args:
    """The (index, count) arguments of a list a kernel fills or reads (null pointers for
    None: no list)."""
    return Args(layer).ptr(listed.index if listed else None).ptr(listed.count if listed else None)


def first_arg_consumers(gm: DeltaOpGraph) -> dict[str, list[str]]:
    """For every op, the ops (names, in graph order) whose first argument is its output
    (bind time)."""
    ops = gm.delta_ops()
    consumers: dict[str, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in ops:
            continue
        source = node.args[0] if node.args else None
        if isinstance(source, fx.Node) and source.op == "call_module" and source.target in ops:
            consumers.setdefault(source.target, []).append(node.target)
    return consumers


def list_producers(gm: DeltaOpGraph, consumes: Callable[[DeltaOp], bool]) -> set[str]:
    """Names of the ops whose output is the first argument of an op that ``consumes`` a
    pixel list (bind time; the kernels still decide per call whether to use it)."""
    ops = gm.delta_ops()
    return {producer for producer, users in first_arg_consumers(gm).items()
            if any(consumes(ops[user]) for user in users)}
