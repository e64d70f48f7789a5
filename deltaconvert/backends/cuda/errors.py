"""What the CUDA backend needs, and the error (with its fix) when something is missing.

``pycuda.driver`` is imported lazily: without a GPU driver it fails at import
(``libcuda.so.1``), and CPU-only installs must keep working on the reference backend.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
from types import ModuleType

import torch

from ...errors import BackendUnavailable

FIX_INSTALL = "install the CUDA extra (pip install 'deltaconvert[cuda]')"
FIX_NVCC = ("put the CUDA toolkit's bin directory first on PATH (e.g. "
            "export PATH=/usr/local/cuda/bin:$PATH); PyCUDA compiles the kernels with nvcc at "
            "run time")
FIX_REFERENCE = "or convert with backend='reference' (plain PyTorch ops, also on the GPU)"


def driver_module() -> ModuleType:
    """``pycuda.driver``, or :class:`BackendUnavailable` naming the fix."""
    try:
        import pycuda.driver as drv
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.startswith("pycuda"):
            raise BackendUnavailable(f"the CUDA backend needs PyCUDA: {FIX_INSTALL}, "
                                     f"{FIX_REFERENCE}") from exc
        raise BackendUnavailable(f"PyCUDA is installed but cannot load the CUDA driver ({exc}); "
                                 f"check the NVIDIA driver installation, {FIX_REFERENCE}") from exc
    except OSError as exc:
        raise BackendUnavailable(f"PyCUDA cannot load the CUDA driver ({exc}); check the NVIDIA "
                                 f"driver installation, {FIX_REFERENCE}") from exc
    return drv


@functools.lru_cache(maxsize=1)
def _nvcc_problem() -> str | None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return f"nvcc is not on PATH: {FIX_NVCC}, {FIX_REFERENCE}"
    try:
        result = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{nvcc} does not run ({exc}): {FIX_NVCC}, {FIX_REFERENCE}"
    if result.returncode != 0 or "Cuda compilation tools" not in result.stdout:
        return f"{nvcc} is not a CUDA toolkit's nvcc: {FIX_NVCC}, {FIX_REFERENCE}"
    return None


def unavailable_reason() -> str | None:
    """Why the CUDA backend cannot run here (with the fix), or None if it can."""
    if not torch.cuda.is_available():
        return ("no CUDA device is visible to PyTorch: run on a machine with an NVIDIA GPU, "
                f"{FIX_REFERENCE}")
    try:
        driver_module()
    except BackendUnavailable as exc:
        return str(exc)
    return _nvcc_problem()
