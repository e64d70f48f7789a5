"""DeltaGraphModule: the converted model, an ``fx.GraphModule`` that keeps state
between calls.

The first call after conversion or :meth:`~DeltaGraphModule.reset` is a dense frame
that fills every op's buffers and returns exactly the original model's output; each
later call processes only what changed. A batch of N is N independent streams.
Moving or casting the model (``.to()``, ``.half()``, ``.cuda()``) resets the sequence.

**Slots.** The N rows of the batch are *slots*, one stream each, and the batch size is
fixed for the sequence (so a captured CUDA graph keeps its shapes). ``model.slots = N``
fixes it ahead of the first frame (otherwise the first frame's batch size does).

* ``model.run_slots(rows, frames)`` runs frames for a subset of slots: ``frames`` has
  ``len(rows)`` samples, row ``i`` being slot ``rows[i]``; the result has the same rows.
  Slots not in ``rows`` are *not ready*: their input Sparsify mask rows are empty, so
  no op does work for them, and their state is kept exactly (READY gate,
  :class:`~deltaconvert.ops.boundary.Sparsify`). ``model(frames)`` is the case of every
  slot being ready.
* ``model.reset(slots=[...])`` restarts chosen slots: the next frame of such a slot is
  dense for its row — the original model's output for that sample — while the other
  slots continue as delta frames. The restarted rows run densely as a sub-batch on an
  empty state, and the buffers that dense run builds are written into their rows of
  every op's state in place (:meth:`~deltaconvert.ops.base.DeltaOp.write_rows`); then
  the other slots' frame runs, gated, through the eager or CUDA-graph path as usual.
* The first frame of a sequence is dense for every slot; slots that get no frame in it
  (``run_slots`` with a subset) are restarted at their first frame.

A slot's outputs do not depend on its neighbours: every op works per sample, a
neighbour that is idle contributes empty masks, and a neighbour's restart only writes
that neighbour's rows. Thresholds are per layer and shared by every slot.
"""
from __future__ import annotations

import copy
from collections.abc import MutableMapping
from typing import Any, Iterator, Sequence

import torch
from torch import fx, nn

from .backends import Runtime, bind_backend
from .cuda_graph import CudaGraphReplay
from .delta import map_tensor_leaves, tensor_leaves
from .errors import ConfigError, SequenceMismatch, UnknownLayer
from .ops.base import DeltaOp
from .ops.boundary import Sparsify, input_sparsifiers
from .stats import UpdateCounters, collect_stats
from .stream_order import StreamOrder
from .validation import (
    check_dilation,
    check_frame_inputs,
    unknown_layer_message,
    validate_threshold,
)

ROW_INDEX_CACHE = 64  # slot patterns whose device index tensors a model keeps


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
        self._counters: UpdateCounters | None = None  # built with the sequence
        self._runtime: Runtime | None = None
        # Replay delta frames through one CUDA graph (see deltaconvert.cuda_graph).
        self.cuda_graph = False
        self._replay: CudaGraphReplay | None = None
        # Slots (see the module docstring): their number, the rows waiting for a dense
        # restart, the READY buffer the input Sparsify ops read (None until a frame
        # leaves a slot out or restarts one), and the full-batch input buffers that
        # run_slots scatters partial frames into.
        self._slots: int | None = None  # set by the user: slot mode
        self._batch: int | None = None  # the batch size of the current sequence
        self._restart: set[int] = set()
        self._ready: torch.Tensor | None = None
        self._ready_rows: tuple[int, ...] | None = None  # the rows _ready holds as True
        self._slot_inputs: Any = None
        # Row index tensors on the inputs' device by (rows, device), least recently used
        # first, so a frame that repeats a recent slot pattern copies nothing to the device.
        self._row_indices: dict[tuple, torch.Tensor] = {}
        self._stream_order = StreamOrder()  # calls from different CUDA streams run in order

    # -- sequence control ---------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._begin_call(args, kwargs)
        if self._slots is not None or self._restart or self._ready is not None:
            self._check_batch(args, kwargs, self.slots)
            return self._slot_frame(list(range(self.slots)), args, kwargs)
        return self._whole_batch_frame(args, kwargs)

    def _begin_call(self, args: tuple, kwargs: dict) -> None:
        """Before any work of a call: its inputs checked on a sequence's first frame, and
        the call ordered after the previous one if it comes from another CUDA stream
        (:class:`~deltaconvert.stream_order.StreamOrder`)."""
        self._check_first_frame(args)
        self._stream_order.enter(_input_device(args, kwargs))

    def _check_first_frame(self, args: tuple) -> None:
        """On a sequence's first frame, check the inputs against what the converted graph
        expects (tensors, rank, channels) before any work."""
        if not self._sequence_started:
            check_frame_inputs(self.conversion.get("inputs"), args)

    def _whole_batch_frame(self, args: tuple, kwargs: dict) -> Any:
        """One frame of every slot, the dense first frame included."""
        if self._sequence_started and self._track_stats:
            self._delta_frames += 1
        if self.cuda_graph and self._sequence_started:
            if self._replay is None:
                self._replay = CudaGraphReplay(self._run_frame, self._runtime, self._settings,
                                               (self._restart_frame, self._eager_restart))
            return self._replay(args, kwargs)
        if not self._sequence_started:  # the first input's batch: as in Sparsify's check
            self._batch = next(iter(tensor_leaves((args, kwargs)))).shape[0]
        if self._replay is not None:
            self._replay.invalidate()  # this eager frame changes state outside the graph
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
            self._runtime = bind_backend(self, self.backend, args, kwargs)
            ops = self.delta_ops()
            self._counters = UpdateCounters(ops, _input_device(args, kwargs))
            self._counters.attach(ops, self._track_stats)
        with torch.no_grad(), self._runtime.frame():
            self._runtime.begin_frame()
            if self._sequence_started and self._track_stats:
                self._counters.begin_frame()
            out = super().__call__(*args, **kwargs)
        self._sequence_started = True
        return out

    def _restart_frame(self, *args: Any, **kwargs: Any) -> Any:
        """A dense frame of every slot on the running sequence: the original model's
        output, with every op's state rewritten in place as a first frame would build it
        (the Sparsify ops' ``restarting`` switch). The CUDA backend captures it as
        the branch a replay takes instead of the delta frame when most input pixels
        changed (a scene cut); it runs inside a capture, in the stream and context the
        capture set up."""
        out = self._restarting_forward(args, kwargs)
        if self._track_stats:
            self._counters.restarted()
        return out

    def _eager_restart(self, *args: Any, **kwargs: Any) -> None:
        """:meth:`_restart_frame` run now, outside any capture (before a capture that
        takes it as a branch): the libraries' first calls for its shapes and layouts
        (cuDNN plans, workspaces) happen here rather than inside the capture, on the
        state itself (no second state is built). Its output is the replay's: the
        captured frame then finds its input equal to the reference and changes nothing.
        It also notes the ops' mask sizes for the restart's statistics (a device copy a
        capture could not make)."""
        if self._track_stats:
            self._counters.note_sizes(self.delta_ops())
        with self._runtime.frame():
            self._restart_frame(*args, **kwargs)

    def _restarting_forward(self, args: tuple, kwargs: dict) -> Any:
        # every Sparsify, re-entries after dense islands too: the ops after them restart
        sparsifiers = [op for op in self.delta_ops().values() if isinstance(op, Sparsify)]
        for op in sparsifiers:
            op.restarting = True
        try:
            with torch.no_grad():
                return super().__call__(*args, **kwargs)
        finally:
            for op in sparsifiers:
                op.restarting = False

    # -- slots -------------------------------------------------------------------------
    @property
    def slots(self) -> int | None:
        """The number of slots (the fixed batch size): as set, else the batch size of the
        current sequence (None before its first frame). Setting it resets the sequence
        and puts the model in slot mode, where every slot's dense frame is computed on
        its own sample alone (see :meth:`run_slots`); None leaves slot mode."""
        return self._slots if self._slots is not None else self._batch

    @slots.setter
    def slots(self, count: int | None) -> None:
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 1):
            raise ConfigError(f"model.slots must be an integer ≥ 1 (or None), got {count!r}")
        self.reset()
        self._slots = count

    def run_slots(self, rows: Sequence[int], *args: Any, **kwargs: Any) -> Any:
        """One frame for the slots ``rows``; the other slots are idle this frame.

        Every input tensor has ``len(rows)`` samples, sample ``i`` belonging to slot
        ``rows[i]``; the outputs have the same rows in the same order. Slots waiting for
        a restart (and every slot on the sequence's first frame) get a dense frame; the
        others a delta frame. Idle slots do no work and keep their state exactly.

        A dense slot frame runs the model on that slot's sample alone (batch 1), so its
        output is the original model's output for the sample whatever else restarts in
        the same frame; the first frame of a sequence also runs every slot densely once
        to build the state buffers (its outputs are not used), so starting costs one
        extra dense batch.
        """
        if self.slots is None:
            raise ConfigError("run_slots needs the number of slots: set model.slots = N "
                              "(the batch size every frame of the sequence is run at) first")
        rows = _check_rows(rows, self.slots)
        self._begin_call(args, kwargs)
        self._check_batch(args, kwargs, len(rows))
        return self._slot_frame(rows, args, kwargs)

    def _check_batch(self, args: tuple, kwargs: dict, expected: int | None) -> None:
        found = _batch_size(args, kwargs)
        if expected is not None and found != expected:
            raise SequenceMismatch(
                f"expected inputs with {expected} samples (one per slot given), got {found}; "
                "pass one sample per slot, or set model.slots to change the number of slots")

    def _slot_frame(self, rows: list[int], args: tuple, kwargs: dict) -> Any:
        """Frames for slots ``rows`` (inputs with ``len(rows)`` samples, in that order)."""
        slots = self.slots
        device = _input_device(args, kwargs)
        every_slot = rows == list(range(slots))
        full_args, full_kwargs = self._full_batch(rows, device, args, kwargs)
        if not self._sequence_started:
            self._whole_batch_frame(full_args, full_kwargs)  # builds the state buffers
            self._restart = set(range(slots))
        self._install_ready_gate(device)
        dense = {}
        for position, row in enumerate(rows):
            if row in self._restart:
                sample_args, sample_kwargs = map_tensor_leaves(
                    (args, kwargs), lambda t, i=position: t[i:i + 1])
                dense[row] = self._dense_rows(self._rows_index([row], device), sample_args,
                                              sample_kwargs)
                self._restart.discard(row)
        # The slots with a delta frame run after the restarts (which are gated off in
        # this run), so the last masks every op saw are this frame's delta masks.
        if dense and self._replay is not None:
            self._replay.invalidate()  # restarted rows' state was written outside the graph
        moving = [r for r in rows if r not in dense]
        out = None
        if moving:
            self._set_ready(moving, device)
            out = self._whole_batch_frame(full_args, full_kwargs)
        for row, rows_out in dense.items():
            out = _write_output_rows(out, self._rows_index([row], device), rows_out, slots)
        # Every output is a fresh tensor (Densify and graph replays return copies), so
        # a frame of every slot in order needs no selection.
        return out if every_slot else _select_rows(out, self._rows_index(rows, device))

    def _rows_index(self, rows: Sequence[int], device: torch.device) -> torch.Tensor:
        """``rows`` as a ``long`` index tensor on ``device``, built once per pattern (the
        last :data:`ROW_INDEX_CACHE` patterns are kept until the sequence is reset)."""
        key = (tuple(rows), device)
        index = self._row_indices.pop(key, None)  # re-inserted below: most recently used
        if index is None:
            index = torch.tensor(key[0], dtype=torch.long, device=device)
            if len(self._row_indices) >= ROW_INDEX_CACHE:
                del self._row_indices[next(iter(self._row_indices))]
        self._row_indices[key] = index
        return index

    def _set_ready(self, rows: list[int], device: torch.device) -> None:
        """Make exactly ``rows`` READY, writing the gate buffer on the device only when
        the set of rows differs from the one it holds."""
        pattern = tuple(sorted(rows))
        if pattern != self._ready_rows:
            self._ready.zero_().index_fill_(0, self._rows_index(pattern, device), True)
            self._ready_rows = pattern

    def _full_batch(self, rows: list[int], device: torch.device, args: tuple,
                    kwargs: dict) -> tuple[tuple, dict]:
        """The inputs of every slot: ``args`` themselves when they hold every slot in
        order, else the persistent input buffers with the given rows written in."""
        if rows == list(range(self.slots)):
            return args, kwargs
        index = self._rows_index(rows, device)
        if self._slot_inputs is None or not self._sequence_started:
            self._slot_inputs = map_tensor_leaves(
                (args, kwargs), lambda t: t.new_zeros((self.slots, *t.shape[1:])))
        buffers = list(tensor_leaves(self._slot_inputs))
        given = list(tensor_leaves((args, kwargs)))
        if len(buffers) != len(given):
            raise SequenceMismatch("the inputs' structure changed within the sequence; "
                                   "call model.reset() to start a new sequence")
        for buffer, tensor in zip(buffers, given):
            if (buffer.shape[1:], buffer.dtype, buffer.device) != (tensor.shape[1:], tensor.dtype,
                                                                    tensor.device):
                raise SequenceMismatch(
                    f"this frame does not continue the current sequence: per-sample shape, "
                    f"dtype and device {tuple(buffer.shape[1:])}, {buffer.dtype}, "
                    f"{buffer.device} → {tuple(tensor.shape[1:])}, {tensor.dtype}, "
                    f"{tensor.device}. Call model.reset() to start a new sequence.")
            buffer.index_copy_(0, index.to(buffer.device), tensor)
        return self._slot_inputs

    def _install_ready_gate(self, device: torch.device) -> None:
        """Give every Sparsify op the READY buffer (once per sequence); a graph captured
        without the gate is dropped so that the next capture includes it."""
        if self._ready is not None:
            return
        self._runtime.restore_state()  # gated frames run the delta kernels on every op's state
        self._ready = torch.ones(self.slots, dtype=torch.bool, device=device)
        self._ready_rows = tuple(range(self.slots))
        for op in self.delta_ops().values():
            if isinstance(op, Sparsify):
                op.ready = self._ready
        self._replay = None

    def _dense_rows(self, index: torch.Tensor, args: tuple, kwargs: dict) -> Any:
        """Dense frame of the slots ``index`` (inputs: those rows, in that order): run on
        an empty state, then write the state it built into those rows in place."""
        ops = self.delta_ops()
        saved = {name: op.swap_state({}) for name, op in ops.items()}
        try:
            with torch.no_grad(), self._runtime.frame():
                out = super().__call__(*args, **kwargs)
        finally:
            fresh = {name: op.swap_state(saved[name]) for name, op in ops.items()}
        for name, op in ops.items():
            op.write_rows(index, fresh[name])
        return out

    def reset(self, slots: Sequence[int] | None = None) -> None:
        """Start a new sequence: the next call is a dense first frame.

        With ``slots``, restart only those slots: the next frame of each is dense for its
        row, and the other slots keep their sequence.
        """
        if slots is not None and self.slots is not None:
            slots = _check_rows(slots, self.slots)
        if slots is not None and self._sequence_started:
            self._restart |= set(slots)
            return
        for op in self.delta_ops().values():
            op.reset_state()
            if isinstance(op, Sparsify):
                op.ready = None
        self._sequence_started = False
        self._delta_frames = 0
        self._counters = None
        self._replay = None
        self._batch = None
        self._restart = set()
        self._ready = None
        self._ready_rows = None
        self._slot_inputs = None
        self._row_indices = {}

    def __deepcopy__(self, memo: dict) -> "DeltaGraphModule":
        """An independent model with the same conversion, thresholds and switches; it
        starts a new sequence."""
        clone = super().__deepcopy__(memo)
        for key in ("backend", "conversion", "cuda_graph", "_track_stats", "_slots"):
            setattr(clone, key, copy.deepcopy(getattr(self, key), memo))
        clone._runtime = None
        clone._stream_order = StreamOrder()
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
        """Whether ops count updated pixels for :meth:`stats` (on the device: two small
        kernels per frame and one atomic add per kernel block that updates something,
        see :mod:`deltaconvert.stats`)."""
        return self._track_stats

    @track_stats.setter
    def track_stats(self, enabled: bool) -> None:
        self._track_stats = bool(enabled)
        ops = self.delta_ops()
        for op in ops.values():
            op.track_stats = self._track_stats
        if self._counters is not None:
            self._counters.attach(ops, self._track_stats)

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self)

    def input_sparsifiers(self) -> dict[str, Sparsify]:
        """The Sparsify ops that read model inputs (not re-entries after dense islands)."""
        return input_sparsifiers(self)

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
        ``dense_restarts``: how many of the delta frames a CUDA-graph replay ran as a
        dense restart because most input pixels changed (a scene cut; they count as
        every pixel updated).
        """
        if self._counters is not None:  # read after the last call, whatever its stream
            self._stream_order.enter(self._counters.frame.device)
        return collect_stats(self.delta_ops(), self._delta_frames, self._counters)


def _batch_size(args: tuple, kwargs: dict) -> int:
    sizes = {t.shape[0] for t in tensor_leaves((args, kwargs)) if t.dim() > 0}
    if len(sizes) != 1:
        raise SequenceMismatch(f"every input tensor needs the same batch size (one sample per "
                               f"slot), got batch sizes {sorted(sizes)}")
    return sizes.pop()


def _input_device(args: tuple, kwargs: dict) -> torch.device:
    leaf = next(iter(tensor_leaves((args, kwargs))), None)
    if leaf is None:
        raise SequenceMismatch("the model's inputs hold no tensor: call it with the frame "
                               "tensor(s) it was converted with")
    return leaf.device


def _check_rows(rows: Sequence[int], slots: int) -> list[int]:
    """``rows`` as a list of distinct slot numbers in ``[0, slots)``."""
    rows = list(rows)
    bad = [r for r in rows if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < slots]
    if bad or not rows:
        raise ConfigError(f"slots must be a non-empty list of distinct integers in [0, {slots}), "
                          f"got {rows!r}")
    if len(set(rows)) != len(rows):
        raise ConfigError(f"slots must be distinct, got {rows!r}")
    return rows


def _select_rows(out: Any, index: torch.Tensor) -> Any:
    return map_tensor_leaves(out, lambda t: t.index_select(0, index.to(t.device)))


def _write_output_rows(out: Any, index: torch.Tensor, rows: Any, slots: int) -> Any:
    """``out`` (every slot's output, or None) with rows ``index`` replaced by ``rows``."""
    if out is None:
        out = map_tensor_leaves(rows, lambda t: t.new_zeros((slots, *t.shape[1:])))
    replacement = iter(list(tensor_leaves(rows)))
    return map_tensor_leaves(
        out, lambda t: t.index_copy(0, index.to(t.device), next(replacement).to(t.dtype)))
