"""Compiling, caching and launching the kernels of ``cuda_kernels/``.

* Each kernel family is one source file ``cuda_kernels/<family>.cu`` with fixed
  ``extern "C"`` entry points; it is specialised for the model dtype by
  ``-DDC_SCALAR=float|__half`` and compiled once per (device, family, dtype) with
  ``SourceModule(..., no_extern_c=True, arch=<the device's>, include_dirs=[cuda_kernels/])``
  into an in-process cache (PyCUDA's disk cache still runs nvcc's preprocessor each time).
* Kernel parameters are described in :data:`SIGNATURES` (struct format characters, as
  ``Function.prepare`` takes them). :class:`Args` builds a launch's arguments and its
  format together, and every launch checks the format against the signature, the grid
  and block against the device limits, int32 ranges and the stream, raising errors that
  name the layer. ``tests/ops/test_kernel_sources.py`` checks :data:`SIGNATURES`
  against the CUDA sources.
* Kernels launch through PyCUDA; with ``DELTACONVERT_CUDA_PDL=1`` those launched while a
  CUDA graph is captured are programmatic dependent launches (:mod:`.dependent_launch`,
  off by default: a driver crash on some machines).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ...errors import BackendUnavailable
from ...files import cache_dir, write_bytes_atomic
from . import dependent_launch
from .constants import CAT_MAX, CONV_TARGETS, nvcc_flags
from .dependent_launch import DependentFunction, DependentModule
from .device import DeviceRuntime
from .errors import FIX_NVCC, FIX_REFERENCE
from .tensors import mask_strides

INT32_MAX = 2**31 - 1

# A delta operand of pointwise.cu: values + 4 strides, mask + 3 strides, coefficient.
_OPERAND = "PiiiiPiiif"
_T4 = "Piiii"  # a tensor pointer and its (N, C, H, W) strides
_M3 = "Piii"   # a mask pointer and its (N, H, W) strides
_CONV = "i" * 16 + _T4 + _M3 + "Pi" + _T4 * 2 + "PiPP" + "PP"  # CONV_PARAMS in conv.cu
CAT_OPERAND_BYTES = 56
# ConvTargets in common.cuh (packed by output_lists.mark_outputs): CONV_TARGETS targets of
# 64 bytes, then their number and a pad.
CONV_TARGETS_BYTES = CONV_TARGETS * 64 + 8
_TRUNCATE = (f"{CONV_TARGETS_BYTES}s" + "i" * 8 + _OPERAND * 2 + "PiP" + "iff" + _T4 * 2 + "PP"
             + _T4 + "f" + _T4 + "PPPPPPPi")  # TRUNC_PARAMS in pointwise.cu, and vec

SIGNATURES: dict[str, dict[str, str]] = {
    "pointwise": {
        "pw_linear": "i" * 7 + _OPERAND * 2 + "Pi" + _T4 + "PPPPi" + _T4 + "Pi",  # …, total, vec
        "pw_accumulate": "i" * 6 + _OPERAND + _T4,
        "pw_accumulate_flat": "iiiiPPPi",
        "pw_truncate": _TRUNCATE,
        "pw_truncate_whole": _TRUNCATE + "i",  # and clean
        "pw_truncate_whole_masked": _TRUNCATE + "i",
        "pw_truncate_whole_added": _TRUNCATE + "i",
        "pw_truncate_marking": _TRUNCATE,
        "pw_truncate_whole_marking": _TRUNCATE + "i",
        "pw_restart": "iiffPPPi",
    },
    "sparsify": {
        "sparsify_mask": "i" * 5 + _T4 * 2 + "fP",
        "sparsify_apply": "i" * 5 + _T4 * 2 + "fPi" + _T4 + "PPP",
    },
    "conv": {
        "conv_gemm": _CONV,
        "conv_gemm_split": _CONV,
        "conv_gemm_listed": _CONV + "PP",
        "conv_gemm_listed_parts": _CONV + "PP",
        "conv_gemm_gathered": _CONV + "PP",
        "conv_gemm_gathered_parts": _CONV + "PP",
        "conv_listed_sum": "i" * 6 + "P" + "PP" + "i" + _T4 * 2,
        "conv_output_list": _CONV,
        "conv_depthwise": _CONV,
        "conv_split_sum": "i" * 5 + "PPi" + _T4 * 2,
    },
    "pool": {
        "pool_window": "i" * 18 + _T4 + _M3 + _T4 * 2 + "f" + _T4 + "PP",
        "pool_global_sum": "iii" + _T4 + _M3 + "PP",
        "pool_global_finish": "ifPPPiiPP",
    },
    "resize": {
        "resize": "i" * 9 + "ff" + _T4 + _M3 + _T4 + "PP",
    },
    "cat": {
        "cat_channels": f"{CAT_MAX * CAT_OPERAND_BYTES}s" + "i" * 5 + _T4 + "PP",
    },
    "graph": {
        "set_frame_condition": "QPPi",
    },
}

_SCALAR_TYPES = {torch.float32: "float", torch.float16: "__half"}
SUPPORTED_DTYPES = tuple(_SCALAR_TYPES)


def kernel_dir() -> Path:
    """The kernel sources: ``$DELTACONVERT_CUDA_KERNELS`` if set, else the checkout's
    ``cuda_kernels/`` (editable installs), else the copy installed with the package as
    ``deltaconvert/cuda_kernels`` (wheels)."""
    override = os.environ.get("DELTACONVERT_CUDA_KERNELS")
    package = Path(__file__).resolve().parents[2]
    candidates = [Path(override)] if override else [package.parent / "cuda_kernels",
                                                    package / "cuda_kernels"]
    for path in candidates:
        if (path / "common.cuh").is_file():
            return path
    raise BackendUnavailable(
        f"the CUDA kernel sources are not at {' or '.join(map(str, candidates))}; set "
        f"DELTACONVERT_CUDA_KERNELS to the project's cuda_kernels/ directory, {FIX_REFERENCE}")


class Args:
    """A launch's argument values and their format, built side by side."""

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self.format = ""
        self.values: list[Any] = []

    def ints(self, *values: int) -> "Args":
        for v in values:
            v = int(v)
            if not -INT32_MAX - 1 <= v <= INT32_MAX:
                raise ValueError(f"{self.layer}: {v} does not fit the kernels' 32-bit indices; "
                                 "use smaller frames or batches, or backend='reference'")
            self.format += "i"
            self.values.append(v)
        return self

    def floats(self, *values: float) -> "Args":
        for v in values:
            self.format += "f"
            self.values.append(float(v))
        return self

    def ptr(self, tensor: torch.Tensor | None) -> "Args":
        self.format += "P"
        self.values.append(0 if tensor is None else tensor.data_ptr())
        return self

    def tensor(self, t: torch.Tensor | None, strides: Sequence[int] = (0, 0, 0, 0)) -> "Args":
        """A tensor pointer and its element strides (as addressed by the kernel)."""
        if t is not None:
            _check_extent(t, self.layer)
        return self.ptr(t).ints(*strides)

    def mask(self, m: torch.Tensor | None, target: Sequence[int]) -> "Args":
        """A mask pointer and its (N, H, W) strides, broadcast to the rank-4 ``target``."""
        if m is None:
            return self.ptr(None).ints(0, 0, 0)
        return self.ptr(m).ints(*mask_strides(m, target))

    def extend(self, other: "Args") -> "Args":
        """Append the values of ``other`` (arguments shared by two launches)."""
        self.format += other.format
        self.values.extend(other.values)
        return self

    def handle(self, value: int) -> "Args":
        """An unsigned 64-bit value (a CUDA-graph conditional handle)."""
        self.format += "Q"
        self.values.append(int(value))
        return self

    def blob(self, data: bytes) -> "Args":
        self.format += f"{len(data)}s"
        self.values.append(data)
        return self


def _check_extent(t: torch.Tensor, layer: str) -> None:
    extent = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()) if size)
    if extent > INT32_MAX:
        raise ValueError(f"{layer}: a tensor of shape {tuple(t.shape)} exceeds the kernels' "
                         "32-bit indexing; use smaller frames or batches, or backend='reference'")


class Kernel:
    """One prepared entry point of a compiled family."""

    MAX_GRID = (INT32_MAX, 65535, 65535)

    def __init__(self, runtime: DeviceRuntime, function: Any, name: str, signature: str,
                 dependent: DependentFunction | None = None) -> None:
        self.runtime = runtime
        self.name = name
        self.signature = signature
        self.function = function
        self.dependent = dependent
        function.prepare(signature)

    def __call__(self, grid: tuple[int, int, int], block: tuple[int, int, int], args: Args) -> None:
        layer = args.layer
        if args.format != self.signature:
            raise RuntimeError(f"{layer}: arguments of {self.name} do not match its signature "
                               f"({args.format!r} != {self.signature!r})")
        if any(g <= 0 for g in grid):
            return  # nothing to compute (an empty tensor)
        if any(g > limit for g, limit in zip(grid, self.MAX_GRID)):
            raise ValueError(f"{layer}: grid {grid} of {self.name} exceeds the device limits "
                             f"{self.MAX_GRID}; use smaller frames or batches")
        threads = block[0] * block[1] * block[2]
        if not 0 < threads <= 1024:
            raise ValueError(f"{layer}: invalid block {block} for {self.name}")
        self.runtime.check_stream(layer)
        stream, handle = self.runtime.launch_stream()
        if self.dependent is not None and torch.cuda.is_current_stream_capturing():
            self.dependent.launch(grid, block, handle, args.values)
        else:
            self.function.prepared_async_call(grid, block, stream, *args.values)


@contextlib.contextmanager
def recorded_launches() -> Iterator[list[tuple[str, str, tuple[int, int, int]]]]:
    """(layer, kernel, grid) of every launch made inside the block, in order (a profiling
    and testing aid; launches of empty grids, which run nothing, are left out)."""
    launches: list[tuple[str, str, tuple[int, int, int]]] = []
    original = Kernel.__call__

    def record(self: Kernel, grid: tuple[int, int, int], block: tuple[int, int, int],
               args: Args) -> None:
        if all(g > 0 for g in grid):
            launches.append((args.layer, self.name, tuple(grid)))
        original(self, grid, block, args)

    Kernel.__call__ = record  # type: ignore[method-assign]
    try:
        yield launches
    finally:
        Kernel.__call__ = original  # type: ignore[method-assign]


_MODULES: dict[tuple[int, str, torch.dtype], tuple[Any, DependentModule | None]] = {}
_KERNELS: dict[tuple[int, str, str, torch.dtype], Kernel] = {}
_COMPILE_LOCK = threading.Lock()


def cubin_path(family: str, dtype: torch.dtype, arch: str, options: list[str],
               nvcc_version: str) -> Path:
    """Where the compiled ``family`` for ``dtype`` and ``arch`` is cached on disk: the
    name holds a hash of the source, every header beside it, the options and nvcc's
    version, so an edit or a new toolkit never reuses a stale cubin."""
    directory = kernel_dir()
    digest = hashlib.sha256()
    for part in (directory / f"{family}.cu", *sorted(directory.glob("*.cuh"))):
        digest.update(part.name.encode() + b"\0" + part.read_bytes() + b"\0")
    digest.update("\0".join([*options, arch, nvcc_version]).encode())
    return cache_dir("cubins") / f"{family}-{_SCALAR_TYPES[dtype]}-{arch}-{digest.hexdigest()[:24]}.cubin"


def compile_options(dtype: torch.dtype) -> list[str]:
    """nvcc's options for a kernel family in ``dtype``, besides the architecture and the
    include folder: the language standard, the scalar type and every shared constant
    (:func:`~.constants.nvcc_flags`). Part of the cubin cache key (:func:`cubin_path`)."""
    return ["-std=c++17", f"-DDC_SCALAR={_SCALAR_TYPES[dtype]}", *nvcc_flags()]


def _compile(runtime: DeviceRuntime, family: str,
             dtype: torch.dtype) -> tuple[Any, DependentModule | None]:
    """The loaded module of ``family`` for ``dtype`` — PyCUDA's, and with dependent
    launches on (:mod:`.dependent_launch`) the same cubin loaded for them: nvcc runs only
    when no cubin of the same source, options and toolkit is cached on disk (see
    :func:`cubin_path`)."""
    from pycuda.compiler import compile as nvcc_compile  # lazy: needs the driver
    from pycuda.compiler import get_nvcc_version

    from .errors import driver_module

    directory = kernel_dir()
    options = compile_options(dtype)
    try:
        path = cubin_path(family, dtype, runtime.arch, options, get_nvcc_version("nvcc"))
        if path.is_file():
            cubin = path.read_bytes()
        else:
            cubin = nvcc_compile((directory / f"{family}.cu").read_text(), options=options,
                                 no_extern_c=True, arch=runtime.arch, cache_dir=False,
                                 include_dirs=[str(directory)])
            with contextlib.suppress(OSError):  # a read-only cache only costs time
                write_bytes_atomic(path, cubin)
    except OSError as exc:  # nvcc missing or not executable
        raise BackendUnavailable(f"compiling the CUDA kernels failed ({exc}): {FIX_NVCC}, "
                                 f"{FIX_REFERENCE}") from exc
    with runtime.pushed():
        return (driver_module().module_from_buffer(cubin),
                DependentModule(cubin) if dependent_launch.ENABLED else None)


def load_all(runtime: DeviceRuntime, dtype: torch.dtype) -> None:
    """Load every entry point for ``dtype`` now: a module must not be compiled or loaded
    while a CUDA graph is being captured (a threshold change can recapture on a path the
    eager frames never took)."""
    for family, entries in SIGNATURES.items():
        for name in entries:
            kernel(runtime, family, name, dtype)


def kernel(runtime: DeviceRuntime, family: str, name: str, dtype: torch.dtype) -> Kernel:
    """The prepared entry point ``name`` of ``family`` for ``dtype`` (compiled on first use)."""
    key = (runtime.index, family, name, dtype)
    found = _KERNELS.get(key)
    if found is not None:
        return found
    with _COMPILE_LOCK:
        module_key = (runtime.index, family, dtype)
        loaded = _MODULES.get(module_key)
        if loaded is None:
            loaded = _MODULES[module_key] = _compile(runtime, family, dtype)
        module, dependent = loaded
        signature = SIGNATURES[family][name]
        found = _KERNELS[key] = Kernel(runtime, module.get_function(name), name, signature,
                                       dependent.function(name, signature) if dependent else None)
    return found
