"""Programmatic dependent launch (PDL), opt-in (``DELTACONVERT_CUDA_PDL=1``): kernels
launched through the CUDA driver's ``cuLaunchKernelEx`` with the
programmatic-stream-serialization attribute, so that the next kernel on the stream
launches, and its blocks become resident, while the kernel before it still runs; captured
into a CUDA graph, the attribute becomes a programmatic edge. With it on, kernels launch
this way while a CUDA graph is captured (``Kernel.__call__`` in :mod:`.kernels`), where
the edges save each replayed kernel part of its launch: mobilenet_v2 at τ=0.1 0.725 →
0.666 ms per frame, at τ=0.01 (its accuracy criterion) 1–2 %, resnet18 at τ=0.1 2.5 %
(PERF_NOTES §51 b). Eager frames launch through PyCUDA either way.

It is off by default because on some H200 machines (two of the six seen)
``torch.cuda.CUDAGraph.capture_end`` segfaults inside the driver when captured launches
carry the attribute: there a given capture crashes every time, on the other machines it
never has, and without the attribute no machine has crashed (PERF_NOTES §49 e, §50 a,
§51 b). A library must not take the user's process down for a few per cent, so the
fast path is the user's choice until the cause is known.

Every entry point of ``cuda_kernels/`` starts with ``DC_GRID_START()`` (common.cuh): it
waits until the previous kernel on the stream has completed and its writes are visible
(``griddepcontrol.wait``), then lets the next kernel launch
(``griddepcontrol.launch_dependents``). So no kernel reads or writes memory before its
predecessor is done — the order of the stream is kept — and at most the next kernel's
launch overlaps a running one.

The attribute is set only where the launch's single upstream node in the capture is a
kernel node (ours, torch's or cuDNN's: :func:`takes_edge`); after a memcpy, memset,
event or conditional node, after a join of several streams and at the start of a capture
(or of a conditional body) the kernel launches without it, as PyCUDA would. Programmatic
edges from nodes other than kernels are outside what the driver documents (an edge of
the programmatic type joins kernel nodes). This narrowing did not remove the crash above
(PERF_NOTES §51 b). Edges from torch's kernels, which never trigger their dependents
early, still gain: the next kernel launches as their blocks exit, not after the
kernel's completion (mobilenet_v2 at τ=0.01, whose dense layers are cuDNN convs
followed by our truncations: 3 % slower without them, §50). ``DELTACONVERT_CUDA_PDL_EDGES``
narrows the rule further, to tell on a machine that crashes what the crash needs:
``own`` (edges only from our own kernels) or ``none`` (no edge, while the captured
launches still go through ``cuLaunchKernelEx``); ``kernel`` is the rule above.

PyCUDA launches with ``cuLaunchKernel`` (no attributes) and exposes no function handle,
so this module loads the same cubin into the current context (``cuModuleLoadData``)
and launches its entry points itself, with the arguments packed as PyCUDA packs them
(struct formats of :data:`~.kernels.SIGNATURES`, native alignment).
"""
from __future__ import annotations

import ctypes
import os
import struct
from typing import NamedTuple, Sequence

ENABLED = os.environ.get("DELTACONVERT_CUDA_PDL", "0") == "1"
# Which upstream nodes a captured launch takes its programmatic edge from (takes_edge).
EDGE_RULES = ("kernel", "own", "none")
EDGES = os.environ.get("DELTACONVERT_CUDA_PDL_EDGES", "kernel")

_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID
_CAPTURE_ACTIVE = 1  # CU_STREAM_CAPTURE_STATUS_ACTIVE
_NODE_KERNEL = 0  # CU_GRAPH_NODE_TYPE_KERNEL
_PARAM_BUFFER_POINTER, _PARAM_BUFFER_SIZE, _PARAM_END = 1, 2, 0


class _AttributeValue(ctypes.Union):
    _fields_ = [("pad", ctypes.c_char * 64), ("allowed", ctypes.c_int), ("align", ctypes.c_void_p)]


class _Attribute(ctypes.Structure):
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", _AttributeValue)]


class _KernelNodeParams(ctypes.Structure):  # CUDA_KERNEL_NODE_PARAMS_v2
    _fields_ = [("func", ctypes.c_void_p), ("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared_bytes", ctypes.c_uint), ("kernel_params", ctypes.c_void_p),
                ("extra", ctypes.c_void_p), ("kern", ctypes.c_void_p), ("ctx", ctypes.c_void_p)]


class _LaunchConfig(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared_bytes", ctypes.c_uint), ("stream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_Attribute)), ("num_attrs", ctypes.c_uint)]


_DRIVER: ctypes.CDLL | None = None
_OWN_FUNCTIONS: set[int] = set()  # the CUfunction of every DependentFunction (rule "own")


def driver() -> ctypes.CDLL:
    global _DRIVER
    if _DRIVER is None:
        lib = ctypes.CDLL("libcuda.so.1")
        lib.cuModuleLoadData.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p]
        lib.cuModuleGetFunction.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
                                            ctypes.c_char_p]
        lib.cuLaunchKernelEx.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p,
                                         ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        # cuStreamGetCaptureInfo: _v3 (CUDA 12.3 drivers on) has an edge-data output
        # before the count, which _v2 lacks; capture_info passes it where there is one.
        p = ctypes.c_void_p
        lib.capture_edges = hasattr(lib, "cuStreamGetCaptureInfo_v3")
        lib.get_capture_info = (lib.cuStreamGetCaptureInfo_v3 if lib.capture_edges
                            else lib.cuStreamGetCaptureInfo_v2)
        lib.get_capture_info.argtypes = [
            p, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(p),
            ctypes.POINTER(ctypes.POINTER(p)), *([ctypes.POINTER(p)] if lib.capture_edges else []),
            ctypes.POINTER(ctypes.c_size_t)]
        lib.cuGraphNodeGetType.argtypes = [p, ctypes.POINTER(ctypes.c_int)]
        if hasattr(lib, "cuGraphKernelNodeGetParams_v2"):  # CUDA 12 drivers on (rule "own")
            lib.cuGraphKernelNodeGetParams_v2.argtypes = [p, ctypes.POINTER(_KernelNodeParams)]
        _DRIVER = lib
    return _DRIVER


def check(result: int, what: str) -> None:
    if result != 0:
        raise RuntimeError(f"{what} failed with CUDA driver error {result}")


class CaptureInfo(NamedTuple):
    """The capture under way on a stream: its graph and the nodes the next captured node
    will depend on."""
    graph: ctypes.c_void_p
    dependencies: tuple[int, ...]


def capture_info(stream: int, what: str) -> CaptureInfo:
    """:class:`CaptureInfo` of the capture under way on ``stream`` (an error naming
    ``what`` if none is)."""
    status, capture_id = ctypes.c_int(), ctypes.c_uint64()
    graph, edges, count = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_size_t()
    deps = ctypes.POINTER(ctypes.c_void_p)()
    lib = driver()
    outputs = [status, capture_id, graph, deps, *([edges] if lib.capture_edges else []), count]
    check(lib.get_capture_info(stream, *map(ctypes.byref, outputs)), "cuStreamGetCaptureInfo")
    if status.value != _CAPTURE_ACTIVE:
        raise RuntimeError(f"{what}: the backend stream is not capturing a CUDA graph")
    return CaptureInfo(graph, tuple(deps[i] for i in range(count.value)))


def edge_rule() -> str:
    """The rule of ``DELTACONVERT_CUDA_PDL_EDGES`` (one of :data:`EDGE_RULES`)."""
    if EDGES not in EDGE_RULES:
        raise ValueError(f"DELTACONVERT_CUDA_PDL_EDGES={EDGES!r} is not a rule for programmatic "
                         f"edges: set it to one of {', '.join(EDGE_RULES)} (or leave it unset)")
    return EDGES


def upstream_kernel(stream: int) -> int | None:
    """The node the next node captured on ``stream`` depends on, where that is exactly one
    node and a kernel node (a programmatic edge's possible upstream); else None."""
    dependencies = capture_info(stream, "dependent launch").dependencies
    if len(dependencies) != 1:
        return None
    node_type = ctypes.c_int()
    check(driver().cuGraphNodeGetType(dependencies[0], ctypes.byref(node_type)), "cuGraphNodeGetType")
    return dependencies[0] if node_type.value == _NODE_KERNEL else None


def kernel_function(node: int) -> int:
    """The function (``CUfunction``) a captured kernel node launches."""
    lib = driver()
    if not hasattr(lib, "cuGraphKernelNodeGetParams_v2"):
        raise RuntimeError("DELTACONVERT_CUDA_PDL_EDGES=own needs a CUDA 12 driver "
                           "(cuGraphKernelNodeGetParams_v2): use kernel or none")
    params = _KernelNodeParams()
    check(lib.cuGraphKernelNodeGetParams_v2(node, ctypes.byref(params)),
          "cuGraphKernelNodeGetParams")
    return params.func or 0


def takes_edge(stream: int) -> bool:
    """Whether the launch captured next on ``stream`` takes a programmatic edge from its
    upstream node: that node is a kernel node (rule ``kernel``), one of our kernels (rule
    ``own``), or never (rule ``none``)."""
    rule = edge_rule()
    if rule == "none":
        return False
    upstream = upstream_kernel(stream)
    return upstream is not None and (rule == "kernel" or kernel_function(upstream) in _OWN_FUNCTIONS)


class DependentModule:
    """A cubin loaded into the current context for dependent launches (keep it alive as
    long as its functions are launched)."""

    def __init__(self, cubin: bytes) -> None:
        self.handle = ctypes.c_void_p()  # the driver copies the image during the call
        check(driver().cuModuleLoadData(ctypes.byref(self.handle), cubin), "cuModuleLoadData")

    def function(self, name: str, signature: str) -> "DependentFunction":
        handle = ctypes.c_void_p()
        check(driver().cuModuleGetFunction(ctypes.byref(handle), self.handle, name.encode()),
               f"cuModuleGetFunction({name})")
        _OWN_FUNCTIONS.add(handle.value)
        return DependentFunction(self, handle, name, signature)


class DependentFunction:
    """One entry point, launched with the programmatic-stream-serialization attribute
    where its upstream node allows (:func:`takes_edge`)."""

    def __init__(self, module: DependentModule, handle: ctypes.c_void_p, name: str,
                 signature: str) -> None:
        self.module, self.handle, self.name = module, handle, name
        self._pack = struct.Struct("@" + signature).pack
        self._attribute = _Attribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION)
        self._attribute.value.allowed = 1

    def launch(self, grid: Sequence[int], block: Sequence[int], stream: int,
               values: Sequence[object]) -> None:
        packed = self._pack(*values)
        buffer = ctypes.create_string_buffer(packed, len(packed))
        size = ctypes.c_size_t(len(packed))
        extra = (ctypes.c_void_p * 5)(_PARAM_BUFFER_POINTER, ctypes.addressof(buffer),
                                      _PARAM_BUFFER_SIZE, ctypes.addressof(size), _PARAM_END)
        programmatic = takes_edge(stream)
        config = _LaunchConfig((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), 0,
                               stream, ctypes.pointer(self._attribute), int(programmatic))
        check(driver().cuLaunchKernelEx(ctypes.byref(config), self.handle, None, extra),
               f"cuLaunchKernelEx({self.name})")
