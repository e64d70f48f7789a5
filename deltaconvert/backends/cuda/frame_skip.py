"""Skipping a replayed frame whose inputs did not change, and restarting densely on a
scene cut: a conditional node of the captured CUDA graph (on by default;
``DELTACONVERT_CUDA_SKIP_UNCHANGED=0`` turns both off, ``DELTACONVERT_CUDA_RESTART_FRACTION=0``
the restart alone).

**Why it is exact.** In a delta frame every op's candidate pixels derive from its
inputs' masks, and the masks start at the model's input Sparsify ops. When none of them
emits a pixel, every mask of the frame is empty: no op emits, no state changes, and each
output would be rewritten with the value it already holds. So the frame's body — every
op after the input Sparsify ops — may be skipped, and its outputs keep the values the
last replay that ran it wrote. That needs: (1) the model's inputs reach the graph only
through input Sparsify ops, and no other Sparsify op re-enters the delta domain
(:func:`skip_plan`; otherwise there is no skip); (2) the body ran since the capture
(``force``, set at capture); (3) no state the body reads changed outside the graph since
it last ran — the model's slot restarts and its eager frames (``cuda_graph`` switched
off) call :meth:`CapturedBody.invalidate`, which sets ``force`` again.

**The dense restart.** When at least :data:`RESTART_FRACTION` of the input pixels
changed, a delta frame costs more than a dense one (every tile is lit, every candidate
emits). The conditional node is then a SWITCH with two branches: 0 the delta frame, 1
the model's dense restart (``DeltaGraphModule._restart_frame``: every op runs dense and
writes its state into the buffers the delta branch reads, as ``reset()`` and a first
frame would, and the outputs are copied into the delta branch's). It is exact: the
output is the original model's, and the sequence continues from a fresh state. Not in
slot mode (a READY gate: idle slots must keep their state exactly). An input Sparsify
that falls back to the reference math adds 1 to ``changed`` (its frame runs, as a delta
frame). Before such a capture the model restarts once, eagerly, at the captured frame
(``DeltaGraphModule._eager_restart``), so cuDNN's first calls for the restart's shapes
and layouts are not captured.

**The captured frame.** Outside the body: the arena's zeroing (which clears the
``changed`` count), the statistics counters, the input Sparsify kernels (which add the
pixels they emit to ``changed``, see ``sparsify_apply``), and ``set_frame_condition``
(``cuda_kernels/graph.cu`` picks the branch from ``changed``, the input pixels emitted,
and ``force``). The last input Sparsify op then calls :meth:`FrameSkip.open`, which adds
the SWITCH node to the graph being captured on the backend stream and captures the rest
of the frame into its delta branch from a second stream of the backend
(``cuStreamBeginCaptureToGraph``: a capturing stream cannot also capture a child graph).
The backend launches on that stream and
torch's current stream is it, so torch ops of the body are captured there too; its
allocations go to the graph's own memory pool, which torch's allocator lets one
capture record to at a time: the outer capture hands it to the body stream and takes
it back (:func:`_route_pool`), so the body's memory lives and dies with the graph.
:meth:`CapturedBody.capture_restart` ends the delta branch's capture and captures the
restart into the other branch on the same stream (the branches never both run, so one
may reuse memory the other freed); :meth:`CapturedBody.__exit__` ends the last capture;
the outer capture then ends as usual. Conditional SWITCH nodes need a CUDA 12.8 driver;
with an older one nothing is installed.

The driver calls go through ctypes (PyCUDA has no graph API), as in
:mod:`.dependent_launch`.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
from typing import Any, Callable

import torch

from ...delta import tensor_leaves
from ...ops.boundary import Sparsify, input_sparsifiers
from ..runtime import DeltaOpGraph
from .arena import FrameArena
from .dependent_launch import capture_info, check, driver
from .device import DeviceRuntime
from .kernels import Args, kernel

ENABLED = os.environ.get("DELTACONVERT_CUDA_SKIP_UNCHANGED", "1") != "0"
# The share of input pixels (summed over the input Sparsify ops) whose change makes a
# replay restart densely instead of running the delta frame; 0 turns the restart off.
RESTART_FRACTION = float(os.environ.get("DELTACONVERT_CUDA_RESTART_FRACTION", "0.5"))
MIN_DRIVER = 12080  # SWITCH conditional nodes

_NODE_CONDITIONAL = 13          # CU_GRAPH_NODE_TYPE_CONDITIONAL
_CONDITION_SWITCH = 2           # CU_GRAPH_COND_TYPE_SWITCH (CUDA 12.8)
_ASSIGN_DEFAULT = 1             # CU_GRAPH_COND_ASSIGN_DEFAULT: the condition is 0 at each launch
_SET_DEPENDENCIES = 1           # CU_STREAM_SET_CAPTURE_DEPENDENCIES
_CAPTURE_THREAD_LOCAL = 1       # CU_STREAM_CAPTURE_MODE_THREAD_LOCAL


class _ConditionalParams(ctypes.Structure):  # CUDA_CONDITIONAL_NODE_PARAMS
    _fields_ = [("handle", ctypes.c_uint64), ("type", ctypes.c_int), ("size", ctypes.c_uint),
                ("graphs", ctypes.POINTER(ctypes.c_void_p)), ("ctx", ctypes.c_void_p)]


class _NodeParams(ctypes.Structure):  # CUgraphNodeParams: 256 bytes, the union at 16
    _fields_ = [("type", ctypes.c_int), ("reserved0", ctypes.c_int * 3),
                ("conditional", _ConditionalParams),
                ("padding", ctypes.c_char * (29 * 8 - ctypes.sizeof(_ConditionalParams))),
                ("reserved2", ctypes.c_longlong)]


assert ctypes.sizeof(_NodeParams) == 256


def _graph_driver() -> ctypes.CDLL:
    lib = driver()
    if not hasattr(lib, "_graph_types_set"):
        p, u64, size = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t
        lib.cuCtxGetCurrent.argtypes = [ctypes.POINTER(p)]
        lib.cuGraphConditionalHandleCreate.argtypes = [ctypes.POINTER(u64), p, p, ctypes.c_uint,
                                                       ctypes.c_uint]
        lib.cuGraphAddNode_v2.argtypes = [ctypes.POINTER(p), p, ctypes.POINTER(p), p, size,
                                          ctypes.POINTER(_NodeParams)]
        lib.cuStreamUpdateCaptureDependencies_v2.argtypes = [p, ctypes.POINTER(p), p, size,
                                                             ctypes.c_uint]
        lib.cuStreamBeginCaptureToGraph.argtypes = [p, p, p, p, size, ctypes.c_int]
        lib.cuStreamEndCapture.argtypes = [p, ctypes.POINTER(p)]
        lib.cuDriverGetVersion.argtypes = [ctypes.POINTER(ctypes.c_int)]
        lib._graph_types_set = True
    return lib


# Reads of an input that give the same value on every frame of a sequence.
_STATIC_READS = {("call_method", "size"), ("call_method", "dim")}
_STATIC_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}


def _reads_values(user: Any, inputs: dict) -> bool:
    """Whether graph node ``user`` of a model input reads its values other than through
    an input Sparsify op (shape queries do not)."""
    if user.op == "call_module" and user.target in inputs:
        return False
    if (user.op, user.target) in _STATIC_READS:
        return False
    return not (user.op == "call_function" and user.target is getattr
                and len(user.args) > 1 and user.args[1] in _STATIC_ATTRIBUTES)


def skip_plan(model: DeltaOpGraph) -> list[str] | None:
    """The input Sparsify ops of ``model`` in graph order, when the model's inputs reach
    its graph only through them (other users only query shapes) and it has no other
    Sparsify op; else None, and no frame is skipped. An input read otherwise could change
    with no Sparsify emitting; a re-entry Sparsify after a dense island may hold a
    remainder ``x − ref`` (at threshold 0, a rounding ulp) that an unchanged frame would
    send and a skipped one would defer."""
    inputs = input_sparsifiers(model)
    ops = model.delta_ops()
    if any(isinstance(op, Sparsify) and name not in inputs for name, op in ops.items()):
        return None
    for node in model.graph.nodes:
        if node.op == "placeholder" and any(_reads_values(user, inputs) for user in node.users):
            return None
    return list(inputs) or None


class FrameSkip:
    """The frame skip of one bound model: the pixel count its input Sparsify kernels
    add to, the ops themselves, and the body a capture arms (see the module docstring)."""

    def __init__(self, runtime: DeviceRuntime, arena: FrameArena, dtype: torch.dtype) -> None:
        self.runtime, self.arena, self.dtype = runtime, arena, dtype
        self.inputs: list[Sparsify] = []  # set by install
        self.armed: CapturedBody | None = None

    def capture(self, graph: torch.cuda.CUDAGraph, pool: tuple[int, int]) -> "CapturedBody":
        """Before ``graph`` is captured: the context to enter inside the capture, around
        the forward (its flags and the body stream are made now, outside it)."""
        self.runtime.body_stream()
        return CapturedBody(self, graph, pool, self.restart_pixels())

    def restart_pixels(self) -> int:
        """The changed input pixels from which a replay restarts densely (0: never)."""
        if RESTART_FRACTION <= 0 or any(op.ready is not None for op in self.inputs):
            return 0
        pixels = 0
        for op in self.inputs:
            shape = op.state["signature"][0]
            pixels += math.prod(shape) // shape[1] if len(shape) > 1 else shape[0]
        return max(1, math.ceil(RESTART_FRACTION * pixels))

    def open(self) -> None:
        """After the last input Sparsify kernel: during an armed capture, the rest of the
        frame goes into the delta branch of a SWITCH node (no-op in eager frames)."""
        if self.armed is not None and not self.armed.opened:
            self.armed.open()


class CapturedBody:
    """The SWITCH node of one captured frame, its ``force`` flag and the restart's pixel
    count (the graph's memory pool holds what the branches allocate)."""

    def __init__(self, skip: FrameSkip, graph: torch.cuda.CUDAGraph, pool: tuple[int, int],
                 restart_pixels: int) -> None:
        self.skip, self.graph, self.pool = skip, graph, pool
        device = skip.runtime.device
        self.force = torch.ones(1, dtype=torch.int32, device=device)
        self.restart_pixels = restart_pixels
        self.opened = False
        self.restart_captured = False
        self._branches: list[ctypes.c_void_p] = []
        self._closing: contextlib.ExitStack | None = None

    @property
    def takes_restart(self) -> bool:
        """Whether the node gets a restart branch (see :class:`~..runtime.WholeFrame`)."""
        return self.restart_pixels > 0

    def __enter__(self) -> "CapturedBody":
        self.skip.armed = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.skip.armed = None
        if self._closing is not None:
            closing, self._closing = self._closing, None
            closing.close()
        if exc[0] is None and len(self._branches) > 1 and not self.restart_captured:
            # the node would take an empty branch on a scene cut: fail the capture
            raise RuntimeError("frame skip: the SWITCH node's restart branch was not "
                               "captured (capture_restart must follow the forward)")

    def open(self) -> None:
        runtime, lib = self.skip.runtime, _graph_driver()
        stream = runtime.launch_stream()[1]  # the stream being captured
        graph = capture_info(stream, "frame skip").graph
        handle = ctypes.c_uint64()
        context = ctypes.c_void_p()
        check(lib.cuCtxGetCurrent(ctypes.byref(context)), "cuCtxGetCurrent")
        check(lib.cuGraphConditionalHandleCreate(ctypes.byref(handle), graph, context, 0,
                                                  _ASSIGN_DEFAULT), "cuGraphConditionalHandleCreate")
        args = Args("frame skip").handle(handle.value).ptr(self.skip.arena.changed).ptr(self.force)
        args.ints(self.restart_pixels)
        kernel(runtime, "graph", "set_frame_condition", self.skip.dtype)((1, 1, 1), (1, 1, 1), args)
        info = capture_info(stream, "frame skip")
        deps = (ctypes.c_void_p * len(info.dependencies))(*info.dependencies)
        params = _NodeParams(type=_NODE_CONDITIONAL)
        params.conditional = _ConditionalParams(handle=handle.value, type=_CONDITION_SWITCH,
                                                size=2 if self.takes_restart else 1,
                                                ctx=context.value)
        node = ctypes.c_void_p()
        check(lib.cuGraphAddNode_v2(ctypes.byref(node), info.graph, deps, None, len(deps),
                                     ctypes.byref(params)),
               "cuGraphAddNode (conditional)")
        self._branches = [ctypes.c_void_p(params.conditional.graphs[i])
                          for i in range(params.conditional.size)]
        check(lib.cuStreamUpdateCaptureDependencies_v2(stream, ctypes.byref(node), None, 1,
                                                        _SET_DEPENDENCIES),
               "cuStreamUpdateCaptureDependencies")
        body_stream, body_torch = runtime.body_stream()
        outer = torch.cuda.current_stream(runtime.device)
        _begin_capture(body_stream.handle, self._branches[0])
        closing = contextlib.ExitStack()
        try:  # a failure half way leaves no capture open on the body stream
            closing.callback(_end_capture, body_stream.handle)
            closing.enter_context(runtime.launching_on(body_stream, body_torch))
            _route_pool(runtime.device.index, self.pool, body_torch)
            closing.callback(_route_pool, runtime.device.index, self.pool, outer)
        except BaseException:
            closing.close()
            raise
        self._closing, self.opened = closing, True

    def capture_restart(self, restart: Callable[[], Any], outputs: Any) -> None:
        """End the delta branch's capture and capture ``restart()`` into the restart
        branch, its outputs copied into the delta branch's ``outputs`` (when the node has
        that branch; if this raises, the whole capture fails)."""
        if not self.opened or len(self._branches) < 2:
            return
        body = self.skip.runtime.body_stream()[0].handle
        _end_capture(body)
        _begin_capture(body, self._branches[1])
        dense = restart()
        targets, values = list(tensor_leaves(outputs)), list(tensor_leaves(dense))
        if len(targets) != len(values):
            raise RuntimeError("dense restart: the restart frame's outputs do not match the "
                               "delta frame's")
        for target, value in zip(targets, values):
            target.copy_(value)
        self.restart_captured = True

    def invalidate(self) -> None:
        """State the body reads changed outside the graph: the next replay runs it."""
        self.force.fill_(1)

    def abandon(self) -> None:
        """The capture failed. torch's ``capture_end`` raises before it ends the pool's
        routing, which the body handed back to the backend stream by that stream's
        handle, so later allocations there would still go to this dead graph's pool:
        end it (nothing to end if the capture failed before the body opened)."""
        if self.opened:
            with contextlib.suppress(RuntimeError):
                torch._C._cuda_endAllocateToPool(self.skip.runtime.device.index, self.pool)


def _route_pool(device: int, pool: tuple[int, int], to: torch.cuda.Stream) -> None:
    """Route the allocations that go to the graph's memory ``pool`` to stream ``to``
    instead of the stream that records to it now (torch's allocator lets one capture at
    a time record to a pool: the outer capture hands it to the body and takes it back).
    Each begin adds a use of the pool that the graph's reset does not undo, so it is
    released once here; the pool lives as long as the graph."""
    torch._C._cuda_endAllocateToPool(device, pool)
    with torch.cuda.stream(to):
        torch._C._cuda_beginAllocateCurrentStreamToPool(device, pool)
    torch._C._cuda_releasePool(device, pool)


def _begin_capture(stream: int, graph: ctypes.c_void_p) -> None:
    check(_graph_driver().cuStreamBeginCaptureToGraph(stream, graph, None, None, 0,
                                                     _CAPTURE_THREAD_LOCAL), "cuStreamBeginCaptureToGraph")


def _end_capture(stream: int) -> None:
    graph = ctypes.c_void_p()
    check(_graph_driver().cuStreamEndCapture(stream, ctypes.byref(graph)), "cuStreamEndCapture")


def install(model: DeltaOpGraph, wrappers: dict[str, Any], skip: FrameSkip) -> bool:
    """Give ``model``'s input Sparsify wrappers the ``changed`` count and the last of them
    the skip to open; False (nothing installed) when :func:`skip_plan` finds no skip or
    the driver has no SWITCH nodes."""
    names = skip_plan(model)
    if (names is None or any(wrappers.get(name) is None for name in names)
            or driver_version() < MIN_DRIVER):
        return False
    for name in names:
        wrappers[name].changed = skip.arena.changed
    wrappers[names[-1]].frame_skip = skip
    skip.inputs = [model.get_submodule(name) for name in names]
    return True


def driver_version() -> int:
    """The CUDA driver's version (1000·major + 10·minor)."""
    version = ctypes.c_int()
    check(_graph_driver().cuDriverGetVersion(ctypes.byref(version)), "cuDriverGetVersion")
    return version.value

