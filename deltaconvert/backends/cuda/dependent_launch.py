"""Programmatic dependent launch (PDL): kernels launched through the CUDA driver's
``cuLaunchKernelEx`` with the programmatic-stream-serialization attribute, so that the
next kernel on the stream launches, and its blocks become resident, while the kernel
before it still runs; captured into a CUDA graph, the attribute becomes a programmatic
edge. Kernels launch this way while a CUDA graph is captured (``Kernel.__call__`` in
:mod:`.kernels`), where the edges save each replayed kernel part of its launch: mobilenet_v2
at τ=0.1 0.754 → 0.718 ms per frame, nothing at work ≥ 0.5 (PERF_NOTES §45 f). Eager
frames launch through PyCUDA, whose host cost per launch is below the ctypes path's.
``DELTACONVERT_CUDA_PDL=0`` turns it off.

Every entry point of ``cuda_kernels/`` starts with ``DC_GRID_START()`` (common.cuh): it
waits until the previous kernel on the stream has completed and its writes are visible
(``griddepcontrol.wait``), then lets the next kernel launch
(``griddepcontrol.launch_dependents``). So no kernel reads or writes memory before its
predecessor is done — the order of the stream is kept — and at most the next kernel's
launch overlaps a running one. A kernel of torch between two of ours requests no
overlap: the one after it starts when it completes, as without the attribute.

PyCUDA launches with ``cuLaunchKernel`` (no attributes) and exposes no function handle,
so this module loads the same cubin into the current context (``cuModuleLoadData``)
and launches its entry points itself, with the arguments packed as PyCUDA packs them
(struct formats of :data:`~.kernels.SIGNATURES`, native alignment).
"""
from __future__ import annotations

import ctypes
import os
import struct
from typing import Sequence

ENABLED = os.environ.get("DELTACONVERT_CUDA_PDL", "1") == "1"

_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID
_PARAM_BUFFER_POINTER, _PARAM_BUFFER_SIZE, _PARAM_END = 1, 2, 0


class _AttributeValue(ctypes.Union):
    _fields_ = [("pad", ctypes.c_char * 64), ("allowed", ctypes.c_int), ("align", ctypes.c_void_p)]


class _Attribute(ctypes.Structure):
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", _AttributeValue)]


class _LaunchConfig(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared_bytes", ctypes.c_uint), ("stream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_Attribute)), ("num_attrs", ctypes.c_uint)]


_DRIVER: ctypes.CDLL | None = None


def driver() -> ctypes.CDLL:
    global _DRIVER
    if _DRIVER is None:
        lib = ctypes.CDLL("libcuda.so.1")
        lib.cuModuleLoadData.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p]
        lib.cuModuleGetFunction.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
                                            ctypes.c_char_p]
        lib.cuLaunchKernelEx.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p,
                                         ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        _DRIVER = lib
    return _DRIVER


def check(result: int, what: str) -> None:
    if result != 0:
        raise RuntimeError(f"{what} failed with CUDA driver error {result}")


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
        return DependentFunction(self, handle, name, signature)


class DependentFunction:
    """One entry point, launched with the programmatic-stream-serialization attribute."""

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
        config = _LaunchConfig((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), 0,
                               stream, ctypes.pointer(self._attribute), 1)
        check(driver().cuLaunchKernelEx(ctypes.byref(config), self.handle, None, extra),
               f"cuLaunchKernelEx({self.name})")
