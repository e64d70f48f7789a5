"""StreamPool: stream ids mapped to the slots of one converted model.

A pool owns a model with a fixed number of slots (``model.slots``, the batch size, so a
captured CUDA graph keeps its shapes). Each admitted stream holds one slot until it is
released or stays silent longer than ``idle_timeout`` seconds. Invariants:

* a stream's first frame in its slot is dense (the original model's output for it),
  whether the slot is fresh, was released by another stream, or the stream itself was
  released and comes back;
* :meth:`StreamPool.step` runs the frames of the streams that have one in one call of
  the model (:meth:`~deltaconvert.model.DeltaGraphModule.run_slots`); the other slots
  are idle: they do no work and keep their state exactly;
* a stream's outputs depend only on its own frames, never on which streams share the
  pool.

A pool is not thread-safe: one caller (a serving loop, a Ray Serve replica's batch
handler) drives it.
"""
from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from typing import Any, Callable

import torch

from .delta import map_tensor_leaves
from .errors import ConfigError, PoolFull
from .model import DeltaGraphModule


class StreamPool:
    """Slots of ``model`` handed out to streams by id.

    Args:
        model: a converted model; its sequence is reset and ``model.slots`` set to
            ``slots``.
        slots: how many streams run at once (the batch size of every model call).
        idle_timeout: seconds after its last frame at which a stream is released to make
            room (checked when a stream is admitted); None keeps streams until released.
        clock: the time source (seconds), ``time.monotonic`` unless a test passes one.
    """

    def __init__(self, model: DeltaGraphModule, slots: int, idle_timeout: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if idle_timeout is not None and not idle_timeout > 0:
            raise ConfigError(f"idle_timeout must be a number of seconds > 0 (or None), "
                              f"got {idle_timeout!r}")
        model.slots = slots
        self.model = model
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._slot_of: dict[Hashable, int] = {}
        self._last_seen: dict[Hashable, float] = {}
        self._free = list(range(slots))

    @property
    def capacity(self) -> int:
        return self.model.slots

    @property
    def streams(self) -> dict[Hashable, int]:
        """The admitted streams and their slots."""
        return dict(self._slot_of)

    def __contains__(self, stream: Hashable) -> bool:
        return stream in self._slot_of

    def admit(self, stream: Hashable) -> int:
        """Give ``stream`` a slot (its next frame is dense) and return the slot.

        Raises PoolFull when every slot is taken after releasing idle streams.
        """
        if stream in self._slot_of:
            raise ConfigError(f"stream {stream!r} is already admitted (slot "
                              f"{self._slot_of[stream]}); release it first to restart it")
        if not self._free:
            self.release_idle()
        if not self._free:
            raise PoolFull(
                f"all {self.capacity} slots hold streams; cannot admit stream {stream!r}. "
                "Release a stream (pool.release(id)), set idle_timeout to free silent ones, "
                "or create the pool with more slots")
        slot = self._free.pop(0)
        self.model.reset(slots=[slot])
        self._slot_of[stream] = slot
        self._last_seen[stream] = self._clock()
        return slot

    def release(self, stream: Hashable) -> None:
        """Free the slot of ``stream``; its state is discarded (the slot restarts densely
        for whichever stream gets it next)."""
        if stream not in self._slot_of:
            admitted = ", ".join(repr(s) for s in self._slot_of) or "none"
            raise KeyError(f"stream {stream!r} is not in the pool (admitted: {admitted})")
        slot = self._slot_of.pop(stream)
        del self._last_seen[stream]
        self._free.append(slot)
        self._free.sort()

    def release_idle(self) -> list[Hashable]:
        """Release the streams silent for longer than ``idle_timeout``; returns their ids."""
        if self.idle_timeout is None:
            return []
        now = self._clock()
        idle = [s for s, seen in self._last_seen.items() if now - seen > self.idle_timeout]
        for stream in idle:
            self.release(stream)
        return idle

    def step(self, frames: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """One frame for each stream in ``frames`` (id → model input with one sample),
        unknown streams admitted first; returns id → output (one sample each), in one
        call of the model."""
        if not frames:
            return {}
        for stream in frames:
            if stream not in self._slot_of:
                self.admit(stream)
        now = self._clock()
        ids = list(frames)
        for stream in ids:
            self._last_seen[stream] = now
        rows = [self._slot_of[s] for s in ids]
        batch = torch.cat([_one_sample(frames[s], s) for s in ids], dim=0)
        out = self.model.run_slots(rows, batch)
        return {s: _row(out, i) for i, s in enumerate(ids)}


def _one_sample(frame: Any, stream: Hashable) -> torch.Tensor:
    if not isinstance(frame, torch.Tensor) or frame.dim() < 1 or frame.shape[0] != 1:
        shape = tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame).__name__
        raise ValueError(f"stream {stream!r}: a frame must be a tensor with one sample "
                         f"(batch dimension 1, e.g. (1, 3, H, W)), got {shape}")
    return frame


def _row(out: Any, i: int) -> Any:
    return map_tensor_leaves(out, lambda t: t[i:i + 1])
