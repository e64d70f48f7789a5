"""DeltaGraphModule: the converted model, an ``fx.GraphModule`` that keeps state
between calls.

The first call after conversion or :meth:`~DeltaGraphModule.reset` is a dense frame
that fills every op's buffers and returns exactly the original model's output; each
later call processes only what changed. A batch of N is N independent streams.
Moving or casting the model (``.to()``, ``.half()``, ``.cuda()``) resets the sequence.
"""
from __future__ import annotations

import copy
from collections.abc import MutableMapping
from typing import Any, Iterator

import torch
from torch import fx, nn

from .backends import Runtime, bind_backend
from .cuda_graph import CudaGraphReplay
from .errors import UnknownLayer
from .ops.base import DeltaOp
from .ops.boundary import Sparsify
from .stats import collect_stats
from .validation import (check_dilation, check_frame_inputs, unknown_layer_message,
                         validate_threshold)


class Thresholds(MutableMapping):
    """Per-layer truncation thresholds of a converted model, by stable node name.

    ``model.thresholds["layer1.0.relu"] = 0.05``; input Sparsify ops appear under their
    names (``x_sparsify``). Only ops that truncate have a threshold (activations, max
    pooling, products, Sparsify); linear ops have none.
    """

    def __init__(self, model: "DeltaGraphModule") -> None:
        self._model = model

    def _ops(self) -> dict[str, DeltaOp]:
        return {name: op for name, op in self._model.delta_ops().items() if op.threshold is not None}

    def _op(self, name: str) -> DeltaOp:
        ops = self._ops()
        if name not in ops:
            raise UnknownLayer(unknown_layer_message(name, list(ops)))
        return ops[name]

    def __getitem__(self, name: str) -> float:
        return self._op(name).threshold

    def __setitem__(self, name: str, value: float) -> None:
        self._op(name).threshold = validate_threshold(value, name)

    def __delitem__(self, name: str) -> None:
        raise TypeError("thresholds cannot be deleted; set them to 0.0 instead")

    def __iter__(self) -> Iterator[str]:
        return iter(self._ops())

    def __len__(self) -> int:
        return len(self._ops())

    def __repr__(self) -> str:
        return f"Thresholds({dict(self)})"


class DeltaGraphModule(fx.GraphModule):
    """A converted delta model. See the module docstring for the sequence semantics."""

    def __init__(self, root: nn.Module, graph: fx.Graph, class_name: str = "DeltaModel",
                 *, backend: str = "auto", conversion: dict | None = None) -> None:
        super().__init__(root, graph, class_name)
        self.backend = backend
        # Plain data describing the conversion (source architecture, dense islands, …).
        self.conversion: dict = dict(conversion or {})
        self._sequence_started = False
        self._delta_frames = 0  # delta frames run with statistics on
        self._track_stats = True
        self._runtime: Runtime | None = None
        # Replay delta frames through one CUDA graph (see deltaconvert.cuda_graph).
        self.cuda_graph = False
        self._replay: CudaGraphReplay | None = None

    # -- sequence control ---------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._sequence_started and self._track_stats:
            self._delta_frames += 1
        if self.cuda_graph and self._sequence_started:
            if self._replay is None:
                self._replay = CudaGraphReplay(self._run_frame, self._runtime, self._settings)
            return self._replay(args, kwargs)
        return self._run_frame(*args, **kwargs)

    def _settings(self) -> tuple:
        """Every op's settings that a captured CUDA graph bakes in."""
        return tuple(op.settings() for op in self.delta_ops().values())

    @property
    def graph_replay(self) -> CudaGraphReplay | None:
        """The CUDA-graph replay of the current sequence (None in eager mode and before
        the first delta frame)."""
        return self._replay

    def _run_frame(self, *args: Any, **kwargs: Any) -> Any:
        """One eager frame (binds the backend on the first frame of a sequence)."""
        if not self._sequence_started:
            check_frame_inputs(self.conversion.get("inputs"), args)
            self._runtime = bind_backend(self, self.backend, args, kwargs)
        with torch.no_grad(), self._runtime.frame():
            out = super().__call__(*args, **kwargs)
        self._sequence_started = True
        return out

    def reset(self) -> None:
        """Start a new sequence: the next call is a dense first frame."""
        for op in self.delta_ops().values():
            op.reset_state()
        self._sequence_started = False
        self._delta_frames = 0
        self._replay = None

    def __deepcopy__(self, memo: dict) -> "DeltaGraphModule":
        """An independent model with the same conversion, thresholds and switches; it
        starts a new sequence."""
        clone = super().__deepcopy__(memo)
        for key in ("backend", "conversion", "cuda_graph", "_track_stats"):
            setattr(clone, key, copy.deepcopy(getattr(self, key), memo))
        clone._runtime = None
        clone.reset()
        return clone

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half(), …
        self.reset()
        return super()._apply(fn, *args, **kwargs)

    @property
    def active_backend(self) -> str | None:
        """The backend running the current sequence ('reference' or 'cuda')."""
        return self._runtime.name if self._runtime is not None else None

    # -- introspection ------------------------------------------------------------------
    def delta_ops(self) -> dict[str, DeltaOp]:
        """Every delta op by stable name, in graph order."""
        ops = {}
        for node in self.graph.nodes:
            if node.op == "call_module":
                module = self.get_submodule(node.target)
                if isinstance(module, DeltaOp):
                    ops[node.target] = module
        return ops

    @property
    def track_stats(self) -> bool:
        """Whether ops record update statistics for :meth:`stats` (a small device-side
        reduction per op and frame; switch off for timing)."""
        return self._track_stats

    @track_stats.setter
    def track_stats(self, enabled: bool) -> None:
        self._track_stats = bool(enabled)
        for op in self.delta_ops().values():
            op.track_stats = self._track_stats

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self)

    def input_sparsifiers(self) -> dict[str, Sparsify]:
        """The Sparsify ops that read model inputs (not re-entries after dense islands)."""
        out = {}
        for node in self.graph.nodes:
            if node.op == "call_module" and isinstance(self.get_submodule(node.target), Sparsify):
                if node.args[0].op == "placeholder":
                    out[node.target] = self.get_submodule(node.target)
        return out

    def set_input_sparsify(self, threshold: float | None = None, dilation: int | None = None) -> None:
        """Set τ_in and the mask dilation of every input Sparsify."""
        for name, op in self.input_sparsifiers().items():
            if threshold is not None:
                op.threshold = validate_threshold(threshold, name)
            if dilation is not None:
                op.dilation = check_dilation(dilation, f"dilation for {name!r}")

    @property
    def dense_islands(self) -> dict[str, str]:
        """Ops that run dense inside the model, with the reason."""
        return dict(self.conversion.get("dense_islands", {}))

    def state_bytes(self) -> int:
        """Memory held by the sequence state of every op."""
        return sum(op.state_bytes() for op in self.delta_ops().values())

    def stats(self) -> dict[str, Any]:
        """Update statistics of the current sequence (synchronises with the device).

        ``layers[name]``: ``updated_last`` and ``updated_mean``, the fraction of output
        pixels updated on the last delta frame and on average over the delta frames
        (the dense first frame is not counted), and ``dense_macs`` per frame.
        ``work_fraction_last``/``_mean``: multiply-adds a perfect delta kernel does over
        the dense multiply-adds, ``Σ updated·macs / Σ macs`` over ops with weights.
        """
        return collect_stats(self.delta_ops(), self._delta_frames)
