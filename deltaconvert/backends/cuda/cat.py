"""Concatenation along the channels on the CUDA backend (kernel: ``cuda_kernels/cat.cu``).

All operands must be Deltas (a constant among them runs the reference math). Up to
``CAT_MAX`` operands go to one launch, described by one by-value struct whose layout
:data:`OPERAND` mirrors ``CatOperand`` in cat.cu.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...delta import Delta
from ...ops.base import DeltaOp
from ...ops.linear import LinearCall
from .base import Accelerated
from .constants import CAT_MAX
from .kernels import CAT_OPERAND_BYTES, Args, kernel
from .registry import accelerates
from .tensors import lanes_for, mask_strides, new_mask, new_values, pixel_grid, strides4

CAT_FNS = (torch.cat, torch.concat, torch.concatenate)
OPERAND = np.dtype([("v", np.uint64), ("m", np.uint64)]
                   + [(f, np.int32) for f in ("c0", "C", "sN", "sC", "sH", "sW", "mN", "mH", "mW",
                                              "unused")], align=True)
assert OPERAND.itemsize == CAT_OPERAND_BYTES


def cat_arguments(args: tuple, kwargs: dict) -> tuple[Any, int] | None:
    """(tensors, dim) of a torch.cat call."""
    tensors = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if tensors is None or not isinstance(dim, int) or len(args) > 2 or set(kwargs) - {"tensors", "dim"}:
        return None
    return tensors, dim


@accelerates(LinearCall, when=lambda op: any(op.fn is fn for fn in CAT_FNS))
class CatKernel(Accelerated):
    """``op.accelerated`` of a LinearCall wrapping torch.cat along dim 1."""

    def run(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        if op.fn not in CAT_FNS:
            return NotImplemented
        parsed = cat_arguments(args, kwargs)
        if parsed is None:
            return NotImplemented
        tensors, dim = parsed
        if (not 0 < len(tensors) <= CAT_MAX or not all(isinstance(t, Delta) for t in tensors)
                or not self.usable(*tensors)):
            return NotImplemented
        first = tensors[0]
        rank = first.dim()
        if dim % rank != 1 or any(t.dim() != rank or t.shape[:1] != first.shape[:1]
                                  or t.shape[2:] != first.shape[2:] for t in tensors):
            return NotImplemented
        out_shape = (first.shape[0], sum(t.shape[1] for t in tensors), *first.shape[2:])
        table = np.zeros(CAT_MAX, dtype=OPERAND)
        c0 = 0
        for i, t in enumerate(tensors):
            fields = {"v": t.values.data_ptr(), "m": t.mask.data_ptr(), "c0": c0, "C": t.shape[1],
                      **dict(zip(("sN", "sC", "sH", "sW"), strides4(t.values))),
                      **dict(zip(("mN", "mH", "mW"), mask_strides(t.mask, t.shape)))}
            for name, value in fields.items():
                table[name][i] = value
            c0 += t.shape[1]
        device = self.runtime.device
        out, om = new_values(out_shape, first.dtype, device), new_mask(out_shape, device)
        n = out_shape[0]
        h, w = (out_shape[2], out_shape[3]) if rank == 4 else (1, 1)
        lanes = lanes_for(min(t.shape[1] for t in tensors))
        a = Args(op.node_name).blob(table.tobytes()).ints(len(tensors), n, h, w, lanes)
        counter = op.counter_for_kernel()
        a.tensor(out, strides4(out)).ptr(om).ptr(counter)
        grid, block = pixel_grid(n * h * w, lanes)
        kernel(self.runtime, "cat", "cat_channels", first.dtype)(grid, block, a)
        return Delta(out, om, op.counted_extras(counter))
