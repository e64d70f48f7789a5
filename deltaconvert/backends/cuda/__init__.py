"""CUDA backend: PyCUDA-compiled delta kernels (see DESIGN.md §3).

``bind(model, device)`` attaches kernels to the ops of a converted model and returns
the :class:`~deltaconvert.backends.Runtime` whose ``frame()`` runs each forward on the
backend's own stream. Nothing here imports PyCUDA until it is used, so CPU-only
installs keep working on the reference backend.

Modules: ``errors`` (requirements and fixes), ``device`` (context, stream, frame),
``kernels`` (compile cache, launch checks), ``tensors`` (layout), one wrapper module
per kernel family (``boundary``, ``pointwise``, ``conv``, ``pooling``, ``resize``,
``cat``), ``fusion`` (epilogue-fusion plan) and ``binding`` (op → wrapper).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .errors import unavailable_reason
from .tensors import poison_outputs

if TYPE_CHECKING:
    from ...model import DeltaGraphModule
    from .. import Runtime

__all__ = ["bind", "capture_stream", "poison_outputs", "unavailable_reason"]


def bind(model: "DeltaGraphModule", device: torch.device) -> "Runtime":
    """Install the kernels on ``model``'s ops for a sequence on ``device``."""
    from .. import Runtime
    from .binding import accelerate
    from .device import device_runtime

    runtime = device_runtime(device)
    accelerate(model, runtime)
    return Runtime("cuda", frame=runtime.frame)


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream a CUDA graph of a CUDA-backend model is captured on."""
    from .device import capture_stream as stream
    return stream(device)
