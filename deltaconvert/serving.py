"""The serving core a replica runs (no Ray here; :mod:`deltaconvert.serve` wraps it).

A :class:`StreamEngine` owns one model and its :class:`~deltaconvert.streams.StreamPool`.
Requests carry a stream id and the stream's frame number; the engine answers a batch of
requests with as few model calls as possible (one per *round*; a round holds at most
one frame per stream, taken in arrival order). Invariants:

* **No stale state.** A stream continues from its state only when this engine ran the
  stream's previous frame (``frame == last + 1``). Otherwise — a stream it has never
  seen, one that moved here from a replica that died, one that comes back after
  another replica served it, frame 0 (a client restarting), a gap or a repeat — the
  stream restarts with a dense frame, and the reply says ``dense=True``.
* **Errors stay with their stream.** A request that fails (e.g. a full pool) gets its
  exception as its reply; the other requests of the batch are answered normally.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .delta import map_tensor_leaves
from .errors import SequenceMismatch
from .model import DeltaGraphModule
from .streams import StreamPool


@dataclass(frozen=True)
class FrameRequest:
    """Frame number ``frame`` (0, 1, … per stream) of stream ``stream``: a model input
    with one sample."""

    stream: str
    frame: int
    input: torch.Tensor


@dataclass(frozen=True)
class FrameReply:
    """The output (one sample, on the CPU) of a request; ``dense`` when the stream
    (re)started at this frame; ``replica`` names the engine that ran it."""

    stream: str
    frame: int
    output: Any
    dense: bool
    replica: str


class StreamEngine:
    """Requests → batched :meth:`StreamPool.step` calls (see the module docstring)."""

    def __init__(self, model: DeltaGraphModule, slots: int, idle_timeout: float | None = None,
                 name: str = "local") -> None:
        self.pool = StreamPool(model, slots, idle_timeout=idle_timeout)
        self.name = name
        self._last: dict[str, int] = {}
        self._signature: tuple | None = None  # per-sample shape and dtype of the inputs
        self._device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def run(self, requests: Sequence[FrameRequest]) -> list[FrameReply | Exception]:
        """Replies in the order of ``requests``."""
        replies: list[FrameReply | Exception | None] = [None] * len(requests)
        pending = list(enumerate(requests))
        while pending:
            round_, later, seen = [], [], set()
            for item in pending:
                (later if item[1].stream in seen else round_).append(item)
                seen.add(item[1].stream)
            self._run_round(round_, replies)
            pending = later
        return replies  # type: ignore[return-value]

    def _run_round(self, items: list[tuple[int, FrameRequest]],
                   replies: list[FrameReply | Exception | None]) -> None:
        admitted, dense = [], set()
        for position, request in items:
            try:
                self._check_input(request)
                if request.stream in self.pool and self._last.get(request.stream) != request.frame - 1:
                    self.pool.release(request.stream)
                if request.stream not in self.pool:
                    self.pool.admit(request.stream)
                    dense.add(request.stream)
                admitted.append((position, request))
            except Exception as error:  # this request's failure only
                replies[position] = error
        if not admitted:
            return
        frames = {r.stream: r.input.to(self._device) for _, r in admitted}
        try:
            outputs = self.pool.step(frames)
        except Exception as error:
            for position, request in admitted:
                replies[position] = error
                self.forget(request.stream)  # its state may be half-updated
            return
        self._last = {s: f for s, f in self._last.items() if s in self.pool}
        for position, request in admitted:
            self._last[request.stream] = request.frame
            output = map_tensor_leaves(outputs[request.stream], lambda t: t.detach().cpu())
            replies[position] = FrameReply(request.stream, request.frame, output,
                                           request.stream in dense, self.name)

    def _check_input(self, request: FrameRequest) -> None:
        x = request.input
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != 1:
            raise ValueError(f"stream {request.stream!r}: a frame must be a tensor with one "
                             f"sample, e.g. (1, 3, H, W)")
        signature = (tuple(x.shape[1:]), x.dtype)
        if self._signature is None:
            self._signature = signature
        elif signature != self._signature:
            raise SequenceMismatch(
                f"stream {request.stream!r}: frames of shape {tuple(x.shape[1:])} and dtype "
                f"{x.dtype}, but this replica runs {self._signature[0]} {self._signature[1]}; "
                "resize frames to the size every stream of the deployment uses")

    def forget(self, stream: str) -> None:
        """End ``stream`` here (its slot is freed; unknown streams are ignored)."""
        if stream in self.pool:
            self.pool.release(stream)
        self._last.pop(stream, None)
