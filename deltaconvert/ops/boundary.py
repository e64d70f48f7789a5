"""Sparsify and Densify: where dense tensors enter and leave the delta domain."""
from __future__ import annotations

from typing import Any

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

    READY gate: when the model runs slots (see :mod:`deltaconvert.model`), ``ready`` is
    the model's ``(N,)`` bool buffer of rows that have a new frame. A row without one
    gets an empty mask (no op downstream does work for it) and its ``ref`` row is left
    exactly as it was: ``m ← m ∧ ready``, ``ref ← where(ready, ref', ref)``. The gate
    sits around whichever backend computes ``δ``, so kernels need no READY input; the
    buffer is read on the device, so a captured CUDA graph follows its new contents.

    Restart: while ``restarting`` is set (by the model, for one forward) the op runs its
    dense frame on a running sequence — ``ref ← x``, ``x`` passes through (channels_last
    on CUDA) — so every op after it runs dense too and, holding its buffers already,
    writes its state into them in place (:meth:`DeltaOp._keep`): the sequence restarts
    at this frame with every buffer where a captured CUDA graph reads it.
    """

    restarting = False  # set by the model around a restart forward

    def __init__(self, threshold: float = 0.0, dilation: int = 0) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.dilation = int(dilation)
        self.ready: torch.Tensor | None = None

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        self._check_frame(x)
        self._keep("ref", x, ref.buffer_dtype(x.dtype, x.device))
        self._state["signature"] = (tuple(x.shape), x.dtype, x.device)
        if self.restarting and x.is_cuda and x.dim() == 4:
            # cuDNN's fast 16-bit kernels are NHWC; the CUDA backend's state is too
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def delta(self, x):  # pragma: no cover - a Sparsify never receives a Delta
        raise TypeError(f"{self.node_name}: Sparsify received a Delta")

    def forward(self, x: torch.Tensor):
        if "ref" not in self._state or self.restarting:
            return super().forward(x)
        self._check_frame(x)
        held = self._state["ref"].clone() if self.ready is not None else None
        impl = self.accelerated
        out = impl(self, x) if impl is not None else ref.sparsify(
            x, self._state["ref"], self.threshold, self.dilation)
        if held is not None:
            out = self._gate(out, held)
        if self.track_stats:
            self._record(out)
        return out

    def _gate(self, out: Delta, held: torch.Tensor) -> Delta:
        """Undo the frame for rows that are not ready: their mask rows become empty and
        their ``ref`` rows get back the values ``held`` before the frame."""
        ready = self.ready.view(-1, *([1] * (out.mask.dim() - 1)))
        reference = self._state["ref"]  # the backend may have replaced it (layout)
        reference.copy_(torch.where(ready, reference, held))
        return Delta(out.values, out.mask & ready)

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

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["ready"] = None  # the model's buffer; a copy gets its own on its first frame
        return state

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dilation={self.dilation}"


class Densify(DeltaOp):
    """Delta → dense tensor: keeps ``y``, the value sent so far; ``y += δ`` where updated.

    Returns a copy of ``y`` so that callers (or dense islands) may modify the result
    without corrupting the state.
    """

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        restart = "y" in self._state
        y = self._keep("y", x, ref.buffer_dtype(x.dtype, x.device))
        # A restart's output has the layout of the delta frames' (a copy of y), which
        # may differ from x's (see Sparsify's restart).
        return y.to(x.dtype, copy=True) if restart else x

    def delta(self, d: Delta) -> torch.Tensor:
        y = ref.densify(d, self._state["y"])
        return y.to(d.dtype, copy=True)


def input_sparsifiers(gm: Any) -> dict[str, Sparsify]:
    """The Sparsify ops of the converted graph ``gm`` (an ``fx.GraphModule``) that read
    model inputs (not re-entries after dense islands), by name in graph order."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), Sparsify):
            if node.args[0].op == "placeholder":
                out[node.target] = gm.get_submodule(node.target)
    return out

