"""Sparsify and Densify: where dense tensors enter and leave the delta domain."""
from __future__ import annotations

import torch

from ..delta import Delta
from ..errors import SequenceMismatch
from . import reference as ref
from .base import DeltaOp


class Sparsify(DeltaOp):
    """Dense tensor → Delta against ``ref``, the input the network has already seen.

    First frame: ``ref ← x`` and ``x`` passes through dense. Later frames:
    ``δ = x − ref``, ``m = max_c|δ| > τ_in`` dilated by ``dilation`` pixels, ``δ ← δ·m``,
    ``ref ← ref + δ``. Checks every frame that shape, dtype and device match the
    sequence's first frame.
    """

    def __init__(self, threshold: float = 0.0, dilation: int = 0) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.dilation = int(dilation)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        self._check_frame(x)
        self._state["ref"] = x.detach().to(ref.buffer_dtype(x.dtype, x.device), copy=True)
        self._state["signature"] = (tuple(x.shape), x.dtype, x.device)
        return x

    def delta(self, x):  # pragma: no cover - a Sparsify never receives a Delta
        raise TypeError(f"{self.node_name}: Sparsify received a Delta")

    def forward(self, x: torch.Tensor):
        if "ref" not in self._state:
            return super().forward(x)
        self._check_frame(x)
        impl = self.accelerated
        out = impl(self, x) if impl is not None else ref.sparsify(
            x, self._state["ref"], self.threshold, self.dilation)
        if self.track_stats:
            self._record(out)
        return out

    def _check_frame(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.node_name}: expected a tensor input, got {type(x).__name__}")
        signature = self._state.get("signature")
        if signature is None:
            return
        shape, dtype, device = signature
        changes = []
        if tuple(x.shape[:1]) != shape[:1]:
            changes.append(f"batch size {shape[0]} → {x.shape[0]}")
        if tuple(x.shape[1:]) != shape[1:]:
            changes.append(f"shape {tuple(shape[1:])} → {tuple(x.shape[1:])} (per sample)")
        if x.dtype != dtype:
            changes.append(f"dtype {dtype} → {x.dtype}")
        if x.device != device:
            changes.append(f"device {device} → {x.device}")
        if changes:
            raise SequenceMismatch(
                f"{self.node_name}: this frame does not continue the current sequence: "
                + "; ".join(changes)
                + ". Call model.reset() to start a new sequence with the new input.")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dilation={self.dilation}"


class Densify(DeltaOp):
    """Delta → dense tensor: keeps ``y``, the value sent so far; ``y += δ`` where updated.

    Returns a copy of ``y`` so that callers (or dense islands) may modify the result
    without corrupting the state.
    """

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        self._state["y"] = x.detach().to(ref.buffer_dtype(x.dtype, x.device), copy=True)
        return x

    def delta(self, d: Delta) -> torch.Tensor:
        y = ref.densify(d, self._state["y"])
        return y.to(d.dtype, copy=True)
