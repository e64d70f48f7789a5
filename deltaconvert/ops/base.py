"""The base class of every delta op, and the argument plumbing they share.

A delta op replaces one fx node. It is called with the node's original arguments,
where each *varying* tensor (one that depends on the model input) arrives as a plain
tensor on the first frame of a sequence and as a :class:`~deltaconvert.delta.Delta`
on every later frame. ``forward`` dispatches on that:

* no Delta among the arguments → :meth:`DeltaOp.dense`: compute the original op,
  initialise the state buffers, return a tensor (a backend may do that with kernels of
  its own: ``accelerated.dense_in_place``, returning NotImplemented where it does not);
* otherwise → :meth:`DeltaOp.delta` (or the backend's accelerated version of it):
  update the state, return a Delta.

Incoming deltas are read-only: a value may feed several consumers.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..delta import Delta, contains_delta, tensor_leaves

# Attributes of an op that a captured CUDA graph bakes in (see deltaconvert.cuda_graph).
SETTINGS = ("threshold", "dilation", "track_stats")
_settings_generation = 0


def kept(held: Any, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``value`` as a state buffer of ``dtype``: ``held`` overwritten in place when it is
    a tensor of the same shape, dtype and device (its memory layout is kept), else a
    fresh copy of ``value``."""
    if (isinstance(held, torch.Tensor) and held.shape == value.shape and held.dtype == dtype
            and held.device == value.device):
        return held.copy_(value)
    return value.detach().to(dtype, copy=True)


def settings_generation() -> int:
    """A process-wide counter that grows whenever any op's :data:`SETTINGS` attribute is
    assigned: a replayed frame compares one integer instead of every op's settings."""
    return _settings_generation


class DeltaOp(nn.Module):
    """One node of a converted graph: parameters, thresholds and state of a delta op.

    Subclasses implement :meth:`dense` and :meth:`delta` with one shared definition of
    the op's math. ``threshold`` is ``None`` for ops that never truncate (linear ops).
    ``macs_per_pixel`` is the dense multiply-add count per output pixel (for the work
    fraction in :mod:`deltaconvert.stats`).
    """

    threshold: float | None = None
    macs_per_pixel: int = 0
    # This op's slot of the model's update counters (:class:`deltaconvert.stats.
    # UpdateCounters`): a one-element int32 device tensor, None while statistics are off.
    update_counter: torch.Tensor | None = None

    def __init__(self) -> None:
        super().__init__()
        self.node_name = ""
        self.track_stats = True
        self.accelerated: Callable[..., Any] | None = None
        self._state: dict[str, Any] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        if name in SETTINGS:
            global _settings_generation
            _settings_generation += 1
        super().__setattr__(name, value)

    def settings(self) -> tuple:
        """The values of this op's :data:`SETTINGS` (None where it has no such setting)."""
        return tuple(getattr(self, name, None) for name in SETTINGS)

    # -- dispatch -----------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not contains_delta((args, kwargs)):
            kernels = getattr(self.accelerated, "dense_in_place", None)
            out = kernels(self, *args, **kwargs) if kernels is not None else NotImplemented
            if out is NotImplemented:
                out = self.dense(*args, **kwargs)
            if self.track_stats:
                self._record(out)
            return out
        impl = self.accelerated
        out = impl(self, *args, **kwargs) if impl is not None else self.delta(*args, **kwargs)
        if self.track_stats:
            self._record(out)
        return out

    def dense(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def delta(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- state ----------------------------------------------------------------------
    def reset_state(self) -> None:
        """Forget the sequence: the next call is a first frame."""
        self._state = {}

    def swap_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Install ``state`` as the sequence state and return the previous one (the model
        uses this to run a dense sub-batch beside the running sequence)."""
        previous, self._state = self._state, state
        return previous

    def _keep(self, key: str, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Store ``value`` as state ``key`` in ``dtype`` and return the buffer: written
        into the buffer held under ``key`` when it has the same shape, dtype and device
        (a dense frame that restarts a running sequence, whose buffers a captured CUDA
        graph reads, see :class:`~deltaconvert.ops.boundary.Sparsify`), else a copy."""
        self._state[key] = kept(self._state.get(key), value, dtype)
        return self._state[key]

    def write_rows(self, rows: torch.Tensor, fresh: dict[str, Any]) -> None:
        """Restart rows ``rows`` (a ``long`` index vector) of the sequence state in place.

        ``fresh`` is the state :meth:`dense` built on a sub-batch holding exactly those
        rows, in the order of ``rows``. Invariant every op keeps: each tensor that
        :meth:`dense` stores (also inside lists) is a per-sample buffer with the batch in
        dim 0, so row ``i`` of ``fresh`` is the buffer of sample ``rows[i]``; plain data
        (signatures, pixel counts) describes the whole batch and is kept. Buffers are
        written in place (``index_copy_``, any memory layout), so a captured CUDA graph
        that reads them stays valid.
        """
        _write_rows(self._state, fresh, rows, self.node_name)

    def state_bytes(self) -> int:
        """Bytes held in state buffers (accumulators, sent outputs, references), lists of
        them included (a non-linear op keeps one accumulator per varying input)."""
        return sum(t.numel() * t.element_size() for t in tensor_leaves(self._state)
                   if isinstance(t, torch.Tensor))

    # -- statistics ---------------------------------------------------------------------
    def _record(self, out: Any) -> None:
        """Statistics of one call: the pixel count of the output (dense frame) or of its
        mask (delta frame), and the mask's updated pixels added to :attr:`update_counter`
        — by the kernel that wrote the mask when it says so (``extras["counted_by"]``),
        else with one device-side sum here (no host sync)."""
        if isinstance(out, Delta):
            self._state["mask_pixels"] = out.mask.numel()
            counter = self.update_counter
            if counter is not None and out.extras.get("counted_by") is not self:
                counter.add_(out.mask.sum(dtype=torch.int32))
        elif isinstance(out, torch.Tensor) and out.dim() >= 2:
            self._state["out_pixels"] = out.numel() // out.shape[1]

    def counter_for_kernel(self) -> torch.Tensor | None:
        """The counter a kernel writing this op's output mask adds its updated pixels to
        (None: statistics off); the Delta it returns then carries :meth:`counted_extras`."""
        return self.update_counter if self.track_stats else None

    def counted_extras(self, counter: torch.Tensor | None) -> dict[str, Any]:
        """The extras of a Delta whose mask a kernel counted into ``counter`` (from
        :meth:`counter_for_kernel`): ``counted_by=self`` tells :meth:`_record` not to
        count it again; empty when nothing was counted."""
        return {"counted_by": self} if counter is not None else {}

    @property
    def state(self) -> dict[str, Any]:
        """The sequence state: buffers by name (empty before the first frame). Backends
        read and update it in place; it is not saved or copied."""
        return self._state

    def output_pixels(self) -> int:
        """Pixels per sample and channel of the op's output on the dense frame (0 before
        it ran with statistics on)."""
        return self._state.get("out_pixels", 0)

    def mask_pixels(self) -> int:
        """Mask elements (samples × pixels) of the op's last delta output (0 before one)."""
        return self._state.get("mask_pixels", 0)

    # -- pickling and copying -----------------------------------------------------------
    def __getstate__(self) -> dict:
        """Sequence state and backend handles (PyCUDA objects) are not copied or saved: a
        copy starts a new sequence and binds its backend on its first frame."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["_state"] = {}
        state["accelerated"] = None
        state["update_counter"] = None
        return state

    def extra_repr(self) -> str:
        parts = [f"name={self.node_name!r}"] if self.node_name else []
        if self.threshold is not None:
            parts.append(f"threshold={self.threshold}")
        return ", ".join(parts)


def _write_rows(current: Any, fresh: Any, rows: torch.Tensor, where: str) -> None:
    """Copy the tensors of ``fresh`` into rows ``rows`` of the matching tensors of
    ``current`` (dicts and lists matched by key and position; other values, such as
    the signature tuple, are plain data and left alone)."""
    if isinstance(fresh, torch.Tensor):
        if (not isinstance(current, torch.Tensor) or current.shape[1:] != fresh.shape[1:]
                or fresh.shape[0] != rows.numel()):
            raise RuntimeError(
                f"{where}: cannot restart rows: a dense sub-batch built a state buffer of shape "
                f"{tuple(fresh.shape)} that does not match the sequence's "
                f"{tuple(getattr(current, 'shape', ()))}; call model.reset() to restart every row")
        current.index_copy_(0, rows.to(current.device), fresh.to(current.dtype))
    elif isinstance(fresh, dict):
        for key, value in fresh.items():
            _write_rows(current.get(key) if isinstance(current, dict) else None, value, rows,
                        f"{where}[{key!r}]")
    elif isinstance(fresh, list):
        if not isinstance(current, list) or len(current) != len(fresh):
            raise RuntimeError(f"{where}: cannot restart rows: the state's structure changed; "
                               "call model.reset() to restart every row")
        for index, (cur, new) in enumerate(zip(current, fresh)):
            _write_rows(cur, new, rows, f"{where}[{index}]")
