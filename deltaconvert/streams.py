"""StreamPool: stream ids mapped to the slots of one converted model.

A pool owns a model with a fixed number of slots (``model.slots``, the batch size, so a
captured CUDA graph keeps its shapes). Each admitted stream holds one slot until it is
released or stays silent for ``idle_timeout`` seconds. Invariants:

* a stream's first frame in its slot is dense (the original model's output for it),
  whether the slot is fresh, was released by another stream, or the stream itself was
  released and comes back;
* :meth:`StreamPool.step` runs the frames of the streams that have one in one call of
  the model (:meth:`~deltaconvert.model.DeltaGraphModule.run_slots`); the other slots
  are idle: they do no work and keep their state exactly;
* a stream's outputs depend only on its own frames, never on which streams share the
  pool.

When every slot holds a stream, admitting another either raises :class:`PoolFull`
(``when_full="error"``, the default) or blocks until a slot is released or an admitted
stream has been silent for ``idle_timeout`` (``when_full="wait"``, at most
``wait_timeout`` seconds, then PoolFull).

A pool is thread-safe: several threads may admit, release and step at once (e.g. one
thread per camera, or a loop stepping while others add and end streams); model calls
are serialised, one at a time. A step whose new stream waits for a slot lets the other
threads go on meanwhile.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Mapping
from typing import Any, Callable

import torch

from .delta import map_tensor_leaves
from .errors import ConfigError, PoolFull
from .model import DeltaGraphModule

WHEN_FULL = ("error", "wait")


class StreamPool:
    """Slots of ``model`` handed out to streams by id.

    Args:
        model: a converted model; its sequence is reset and ``model.slots`` set to
            ``slots``.
        slots: how many streams run at once (the batch size of every model call).
        idle_timeout: seconds after its last frame at which a stream is released to make
            room (checked when a stream needs a slot); None keeps streams until released.
        clock: the time source (seconds) of ``idle_timeout``, ``time.monotonic`` unless
            a test passes one.
        when_full: what admitting a stream into a full pool does: ``"error"`` raises
            PoolFull, ``"wait"`` blocks until a slot is free.
        wait_timeout: with ``"wait"``, the most seconds to block before PoolFull; None
            waits as long as it takes.
    """

    def __init__(self, model: DeltaGraphModule, slots: int, idle_timeout: float | None = None,
                 clock: Callable[[], float] = time.monotonic, *, when_full: str = "error",
                 wait_timeout: float | None = None) -> None:
        for name, value in (("idle_timeout", idle_timeout), ("wait_timeout", wait_timeout)):
            if value is not None and not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be a number of seconds > 0 (or None), "
                                  f"got {value!r}")
        if when_full not in WHEN_FULL:
            raise ConfigError(f"when_full must be 'error' (raise PoolFull) or 'wait' (block "
                              f"until a slot is free), got {when_full!r}")
        if wait_timeout is not None and when_full != "wait":
            raise ConfigError(f"wait_timeout={wait_timeout!r} applies only to a pool that "
                              "waits: pass when_full='wait' as well, or drop wait_timeout")
        model.slots = slots
        self.model = model
        self.idle_timeout = idle_timeout
        self.when_full = when_full
        self.wait_timeout = wait_timeout
        self._clock = clock
        self._slot_of: dict[Hashable, int] = {}
        self._last_seen: dict[Hashable, float] = {}
        self._free = list(range(slots))
        self._waiting = 0
        # Guards the fields above and the model; notified whenever a slot is freed.
        self._lock = threading.Condition(threading.RLock())

    @property
    def capacity(self) -> int:
        return self.model.slots

    @property
    def streams(self) -> dict[Hashable, int]:
        """The admitted streams and their slots."""
        with self._lock:
            return dict(self._slot_of)

    @property
    def waiting(self) -> int:
        """How many admissions are blocked waiting for a slot now (``when_full="wait"``)."""
        return self._waiting

    def __contains__(self, stream: Hashable) -> bool:
        return stream in self._slot_of

    def admit(self, stream: Hashable) -> int:
        """Give ``stream`` a slot (its next frame is dense) and return the slot.

        When every slot is taken after releasing idle streams: raises PoolFull, or with
        ``when_full="wait"`` blocks until a slot is free (PoolFull after ``wait_timeout``).
        """
        with self._lock:
            return self._admit(stream)

    def _admit(self, stream: Hashable) -> int:
        """:meth:`admit`, the lock held (a wait releases it meanwhile)."""
        deadline = None if self.wait_timeout is None else time.monotonic() + self.wait_timeout
        while True:
            if stream in self._slot_of:
                raise ConfigError(f"stream {stream!r} is already admitted (slot "
                                  f"{self._slot_of[stream]}); release it first to restart it")
            if not self._free:
                self.release_idle()
            if self._free:
                break
            if self.when_full == "error":
                raise PoolFull(
                    f"all {self.capacity} slots hold streams; cannot admit stream {stream!r}. "
                    "Release a stream (pool.release(id)), set idle_timeout to free silent ones, "
                    "create the pool with more slots, or with when_full='wait' to wait for a slot")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise PoolFull(
                    f"all {self.capacity} slots still hold streams after waiting "
                    f"wait_timeout={self.wait_timeout} s; cannot admit stream {stream!r}. "
                    "Release streams sooner, set idle_timeout, raise wait_timeout or create "
                    "the pool with more slots")
            self._waiting += 1
            try:
                self._lock.wait(_earliest(left, self._until_idle()))
            finally:
                self._waiting -= 1
        slot = self._free.pop(0)
        self.model.reset(slots=[slot])
        self._slot_of[stream] = slot
        self._last_seen[stream] = self._clock()
        return slot

    def _until_idle(self) -> float | None:
        """Seconds until the next admitted stream may be released as idle (None: never)."""
        if self.idle_timeout is None or not self._last_seen:
            return None
        return min(self._last_seen.values()) + self.idle_timeout - self._clock()

    def release(self, stream: Hashable) -> None:
        """Free the slot of ``stream``; its state is discarded (the slot restarts densely
        for whichever stream gets it next)."""
        with self._lock:
            if stream not in self._slot_of:
                admitted = ", ".join(repr(s) for s in self._slot_of) or "none"
                raise KeyError(f"stream {stream!r} is not in the pool (admitted: {admitted})")
            slot = self._slot_of.pop(stream)
            del self._last_seen[stream]
            self._free.append(slot)
            self._free.sort()
            self._lock.notify_all()

    def release_idle(self) -> list[Hashable]:
        """Release the streams silent for ``idle_timeout`` seconds or more; returns their ids."""
        if self.idle_timeout is None:
            return []
        with self._lock:
            now = self._clock()
            idle = [s for s, seen in self._last_seen.items() if now - seen >= self.idle_timeout]
            for stream in idle:
                self.release(stream)
            return idle

    def step(self, frames: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """One frame for each stream in ``frames`` (id → model input with one sample),
        unknown streams admitted first (see :meth:`admit`); returns id → output (one
        sample each), in one call of the model."""
        if not frames:
            return {}
        if len(frames) > self.capacity:
            raise PoolFull(f"{len(frames)} streams in one step, but the pool has "
                           f"{self.capacity} slots; step at most {self.capacity} streams at "
                           "once, or create the pool with more slots")
        ids = list(frames)
        batch = torch.cat([_one_sample(frames[s], s) for s in ids], dim=0)
        with self._lock:
            # A wait for a slot lets other threads release streams, this step's included:
            # admit until every stream of the step holds a slot at once.
            while missing := [s for s in ids if s not in self._slot_of]:
                self._admit(missing[0])
            now = self._clock()
            for stream in ids:
                self._last_seen[stream] = now
            out = self.model.run_slots([self._slot_of[s] for s in ids], batch)
        return {s: _row(out, i) for i, s in enumerate(ids)}


def _earliest(*delays: float | None) -> float | None:
    """The shortest of the given delays (seconds), None when every one is None."""
    known = [max(d, 0.0) for d in delays if d is not None]
    return min(known) if known else None


def _one_sample(frame: Any, stream: Hashable) -> torch.Tensor:
    if not isinstance(frame, torch.Tensor) or frame.dim() < 1 or frame.shape[0] != 1:
        shape = tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame).__name__
        raise ValueError(f"stream {stream!r}: a frame must be a tensor with one sample "
                         f"(batch dimension 1, e.g. (1, 3, H, W)), got {shape}")
    return frame


def _row(out: Any, i: int) -> Any:
    return map_tensor_leaves(out, lambda t: t[i:i + 1])
