"""CUDA backend: PyCUDA-compiled delta kernels (see DESIGN.md §3)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...model import DeltaGraphModule
    from .. import Runtime


def unavailable_reason() -> str | None:
    return ("the CUDA backend is not built yet; use backend='reference' "
            "(it runs on the GPU with plain PyTorch ops)")


def bind(model: "DeltaGraphModule", device) -> "Runtime":
    raise NotImplementedError
