"""Backend selection. The reference math (:mod:`deltaconvert.ops.reference`) runs
everywhere; the CUDA backend (PyCUDA kernels) accelerates ops on NVIDIA GPUs where it is
installed."""
from __future__ import annotations

import torch

from ..delta import tensor_leaves
from ..errors import BackendUnavailable
from .runtime import DeltaOpGraph, Runtime

BACKENDS = ("auto", "reference", "cuda")

__all__ = ["BACKENDS", "DeltaOpGraph", "Runtime", "bind_backend", "cuda_backend_problem"]


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for leaf in tensor_leaves((args, kwargs)):
        return leaf
    return None


def cuda_backend_problem() -> str | None:
    """Why the CUDA backend cannot run here, or None if it can."""
    from . import cuda
    return cuda.unavailable_reason()


def bind_backend(model: DeltaOpGraph, requested: str, args: tuple, kwargs: dict) -> Runtime:
    """Choose the backend for a new sequence and attach its kernels to the ops.

    ``auto`` picks ``cuda`` for CUDA inputs when PyCUDA and nvcc are usable, else
    ``reference``.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; choose one of {BACKENDS}")
    first = _first_input(args, kwargs)
    device = first.device if first is not None else None
    chosen = requested
    if requested == "auto":
        on_gpu = device is not None and device.type == "cuda"
        chosen = "cuda" if on_gpu and cuda_backend_problem() is None else "reference"
    if chosen == "cuda":
        if device is None or device.type != "cuda":
            raise BackendUnavailable(
                f"backend='cuda' needs CUDA inputs, got inputs on {device}; move the model and "
                "inputs with .cuda(), or use backend='reference'")
        problem = cuda_backend_problem()
        if problem is not None:
            raise BackendUnavailable(problem)
        from . import cuda
        return cuda.bind(model, device, first.dtype)
    for op in model.delta_ops().values():
        op.accelerated = None
    return Runtime("reference")
