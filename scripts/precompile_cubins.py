"""Compile every kernel family into the on-disk cubin cache without a GPU, under the key a
GPU process computes (``deltaconvert/backends/cuda/kernels.py``: sources, options,
architecture and ``nvcc --version``), so that processes on a GPU machine with the same
CUDA toolkit release skip nvcc. Used to prepare a checkout for a GPU machine that starts
bare every time: compile here, then carry the cache folder with the checkout and point
``DELTACONVERT_CACHE`` at it there::

    DELTACONVERT_CACHE=$PWD/scratch/cache python3 scripts/precompile_cubins.py
    # on the GPU machine: export DELTACONVERT_CACHE=$PWD/scratch/cache

A GPU machine whose ``nvcc --version`` differs computes other keys and compiles as
before: a stale cubin is never used. Prints one line per family and dtype.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from deltaconvert.backends.cuda.kernels import (SIGNATURES, SUPPORTED_DTYPES, compile_options,
                                                cubin_path, kernel_dir)
from deltaconvert.files import write_bytes_atomic


def nvcc_version(nvcc: str) -> str:
    """``nvcc --version`` as PyCUDA's ``get_nvcc_version`` reads it (part of the key)."""
    return subprocess.run([nvcc, "--version"], capture_output=True, check=True).stdout.decode("utf-8", "replace")


def compile_family(nvcc: str, family: str, dtype: torch.dtype, arch: str, version: str) -> str:
    """Compile ``family`` for ``dtype`` into the cache unless it is there; a status line."""
    options = compile_options(dtype)
    path = cubin_path(family, dtype, arch, options, version)
    if path.is_file():
        return f"{family} {dtype}: cached"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "kernel.cubin"
        run = subprocess.run([nvcc, "--cubin", *options, "-arch", arch, f"-I{kernel_dir()}",
                              str(kernel_dir() / f"{family}.cu"), "-o", str(out)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            return f"{family} {dtype}: nvcc failed\n{run.stderr[-2000:]}"
        write_bytes_atomic(path, out.read_bytes())
    return f"{family} {dtype}: compiled into {path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sm_90", help="GPU architecture (default sm_90: H100/H200)")
    parser.add_argument("--nvcc", default="nvcc")
    parser.add_argument("--jobs", type=int, default=2, help="nvcc processes at once")
    args = parser.parse_args(argv)
    version = nvcc_version(args.nvcc)
    jobs = [(family, dtype) for family in SIGNATURES for dtype in SUPPORTED_DTYPES]
    with ThreadPoolExecutor(args.jobs) as pool:
        lines = list(pool.map(lambda job: compile_family(args.nvcc, *job, args.arch, version), jobs))
    print("\n".join(lines))
    return 1 if any("nvcc failed" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
