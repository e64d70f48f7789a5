"""One device as the CUDA backend sees it: the shared primary context, the backend's
own stream, and the per-frame stream join (docs/ARCHITECTURE.md §5).

* torch initialises the device's primary context first; PyCUDA then retains that same
  context (never ``pycuda.autoinit``, which would create a second one) and pushes it
  around each frame.
* PyCUDA can only launch on streams it created, so the backend owns one
  ``pycuda.driver.Stream`` per device, wrapped for torch as an ``ExternalStream``. A
  frame runs every op (kernels and torch ops alike) on it: on entry it waits for the
  caller's stream, on exit the caller's stream waits for it. Inside a CUDA-graph
  capture on that stream the joins are skipped (the frame is already on it).
* A second stream of its own (:meth:`DeviceRuntime.body_stream`) captures the body of a
  conditional graph node (:mod:`.frame_skip`): :meth:`DeviceRuntime.launching_on` makes
  it the stream the calling thread's launches and torch ops use, for a while.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

from .errors import driver_module

CU_STREAM_NON_BLOCKING = 0x1
_DEVICES: dict[int, "DeviceRuntime"] = {}
_LOCK = threading.Lock()


class DeviceRuntime:
    """The primary context and the backend stream of one CUDA device."""

    def __init__(self, index: int) -> None:
        drv = driver_module()
        self.index = index
        self.device = torch.device("cuda", index)
        torch.zeros((), device=self.device)  # torch creates the primary context first
        drv.init()
        pyc_device = drv.Device(index)
        major, minor = pyc_device.compute_capability()
        self.arch = f"sm_{major}{minor}"
        self.multiprocessors = torch.cuda.get_device_properties(index).multi_processor_count
        self.context = pyc_device.retain_primary_context()
        self.context.push()
        try:
            # Non-blocking: no implicit sync with the legacy default stream; frames join
            # the caller's stream explicitly.
            self.stream = drv.Stream(CU_STREAM_NON_BLOCKING)
        finally:
            drv.Context.pop()
        self.torch_stream = torch.cuda.ExternalStream(self.stream.handle, device=self.device)
        self.handle = self.torch_stream.cuda_stream
        self._body: tuple[object, torch.cuda.ExternalStream] | None = None
        self._launch = threading.local()  # .stream: this thread's launching_on override

    def body_stream(self) -> tuple[object, torch.cuda.ExternalStream]:
        """A second non-blocking stream of the backend (PyCUDA's, and torch's view of it),
        created on first use."""
        if self._body is None:
            drv = driver_module()
            with self.pushed():
                stream = drv.Stream(CU_STREAM_NON_BLOCKING)
            self._body = (stream, torch.cuda.ExternalStream(stream.handle, device=self.device))
        return self._body

    def launch_stream(self) -> tuple[object, int]:
        """(PyCUDA stream, handle) the kernels launch on: the backend stream, or in this
        thread the one :meth:`launching_on` set."""
        return getattr(self._launch, "stream", None) or (self.stream, self.handle)

    @contextlib.contextmanager
    def launching_on(self, stream: object, torch_stream: torch.cuda.ExternalStream) -> Iterator[None]:
        """Inside this block this thread's kernels launch on ``stream`` and torch's
        current stream is ``torch_stream`` (its view of the same stream); other threads
        keep the backend stream."""
        saved = getattr(self._launch, "stream", None)
        self._launch.stream = (stream, torch_stream.cuda_stream)
        try:
            with torch.cuda.stream(torch_stream):
                yield
        finally:
            self._launch.stream = saved

    @contextlib.contextmanager
    def pushed(self) -> Iterator[None]:
        """The device's primary context is current in PyCUDA inside this block."""
        drv = driver_module()
        self.context.push()
        try:
            yield
        finally:
            drv.Context.pop()

    @contextlib.contextmanager
    def frame(self) -> Iterator[None]:
        """Run one forward on the backend stream, joined to the caller's stream."""
        caller = torch.cuda.current_stream(self.device)
        with self.pushed():
            if caller.cuda_stream == self.handle:
                yield
                return
            self.torch_stream.wait_stream(caller)
            with torch.cuda.stream(self.torch_stream):
                yield
            caller.wait_stream(self.torch_stream)

    def check_stream(self, layer: str) -> None:
        """Refuse a launch that would not run on the backend stream: outside a frame its
        order against torch's work would be undefined, and during a CUDA-graph capture
        it would be silently left out of the graph."""
        current = torch.cuda.current_stream(self.device)
        if current.cuda_stream == self.launch_stream()[1]:
            return
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"{layer}: a CUDA graph is being captured on a stream other than the CUDA "
                "backend's own; its kernels would be missing from the graph. Capture with "
                "deltaconvert.cuda_graph (or convert(..., cuda_graph=True)), which captures "
                "on the backend stream.")
        raise RuntimeError(
            f"{layer}: CUDA backend kernel launched outside the model's frame (current stream "
            "is not the backend stream); call the converted model itself rather than its ops")


def device_runtime(device: torch.device | int) -> DeviceRuntime:
    """The (process-wide, lazily created) runtime of a CUDA device."""
    index = device if isinstance(device, int) else (
        device.index if device.index is not None else torch.cuda.current_device())
    with _LOCK:
        runtime = _DEVICES.get(index)
        if runtime is None:
            runtime = _DEVICES[index] = DeviceRuntime(index)
    return runtime

