"""Call order across CUDA streams for a module with state.

A converted model's calls read and write its state on the GPU, on the stream current at
the call (a CUDA-graph replay runs there; an eager frame joins the backend's stream to
it). Calls made from one stream are ordered by that stream. When a call comes from
another stream than the previous one — camera threads with streams of their own sharing
a :class:`~deltaconvert.streams.StreamPool`, say — :class:`StreamOrder` makes it wait
for all the work queued on the previous call's stream (an event recorded there at the
switch), so no call reads state that an earlier call is still writing.

Invariant: every call of the module runs after every earlier call has finished on the
device, whatever streams they came from. Cost: a call from the same stream as the last
one queries the current stream handle; a switch adds one event record and wait. Limits:
inside a CUDA-graph capture of the caller's own no wait is added (an event recorded
outside a capture cannot be waited on inside it; the capture orders its own work), and
the previous call's stream must still exist at the switch.
"""
from __future__ import annotations

import torch


class StreamOrder:
    """The CUDA stream of a module's last call, and the wait a call from another needs."""

    def __init__(self) -> None:
        self._last: tuple[int, int] | None = None  # (device index, stream handle)

    def enter(self, device: torch.device) -> None:
        """Order a call about to run on ``device``'s current stream after the last call."""
        if device.type != "cuda":
            return
        index = device.index if device.index is not None else torch.cuda.current_device()
        current = (index, torch._C._cuda_getCurrentRawStream(index))
        last, self._last = self._last, current
        if last is None or last == current or torch.cuda.is_current_stream_capturing():
            return
        event = torch.cuda.Event()
        event.record(torch.cuda.ExternalStream(last[1], device=torch.device("cuda", last[0])))
        torch.cuda.current_stream(index).wait_event(event)
