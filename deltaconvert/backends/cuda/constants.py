"""Constants shared by the CUDA backend's Python side and its kernels, declared once.

The kernels of ``cuda_kernels/`` do not define these names: every compilation passes
them as ``-D`` defines (:func:`nvcc_flags`), and ``common.cuh`` refuses to compile
without them. Adding an activation is one member of :class:`Activation`, one case in
``common.cuh``'s ``activate()`` and its entry in ``pointwise.pixel_function``.

This module uses the standard library only, so that build scripts can print the flags
without importing torch: ``python3 deltaconvert/backends/cuda/constants.py``.
"""
from __future__ import annotations

import enum


class Activation(enum.IntEnum):
    """Element-wise functions ``f`` of the accumulate–recompute–truncate rule (``p0``,
    ``p1`` are the function's parameters); each matches torch's definition."""

    IDENTITY = 0
    RELU = 1
    HARDTANH = 2      # clamp(x, p0, p1); ReLU6 is (0, 6)
    LEAKY_RELU = 3    # x > 0 ? x : p0·x
    SIGMOID = 4
    SILU = 5
    HARDSWISH = 6
    HARDSIGMOID = 7
    GELU = 8          # exact (erf)
    GELU_TANH = 9
    TANH = 10
    ELU = 11          # x > 0 ? x : p0·(exp(x) − 1)


class PixelFunction(enum.IntEnum):
    """Per-pixel functions of the truncation kernel beyond the activations."""

    PRODUCT = 100     # v = a0 · a1 (two varying operands, broadcast by strides)
    LAYER_NORM = 101  # v = (a0 − mean_c a0) / sqrt(var_c a0 + eps) · w + b


class PoolMode(enum.IntEnum):
    MAX = 0
    AVG = 1
    ADAPTIVE_AVG = 2


class ResizeMode(enum.IntEnum):
    NEAREST = 0
    NEAREST_EXACT = 1
    BILINEAR = 2


class ConvMode(enum.IntFlag):
    """Bits of a convolution launch's ``mode`` argument."""

    ACCUMULATE = 1  # add into the fused consumer's accumulator instead of writing values
    VECTOR_A = 2    # 16-byte loads of the gathered input rows
    VECTOR_B = 4    # 16-byte loads of the packed weights


BLOCK = 256       # threads of every block the backend launches (1-D blocks)
TILE = 8          # a convolution's output tile is TILE × TILE pixels
GEMM_CO = 64      # output channels per conv_gemm block
DW_CO = 32        # output channels per conv_depthwise block
CAT_MAX = 32      # operands of one cat_channels launch
GLOBAL_PIXELS = 64  # input pixels per pool_global_sum block

_PREFIXES = {Activation: "ACT_", PixelFunction: "FN_", PoolMode: "POOL_",
             ResizeMode: "RESIZE_", ConvMode: "CONV_"}
_SCALARS = {"DC_BLOCK": BLOCK, "TILE": TILE, "GEMM_CO": GEMM_CO, "DW_CO": DW_CO,
            "CAT_MAX": CAT_MAX, "GLOBAL_PIXELS": GLOBAL_PIXELS}


def nvcc_defines() -> dict[str, int]:
    """Every shared constant by the name the kernels use (``ACT_RELU``, ``TILE``, …),
    plus ``DC_CONSTANTS``, whose presence ``common.cuh`` checks."""
    names = {"DC_CONSTANTS": 1, **_SCALARS}
    for kind, prefix in _PREFIXES.items():
        names.update({prefix + member.name: int(member.value) for member in kind})
    return names


def nvcc_flags() -> list[str]:
    """The ``-DNAME=VALUE`` options every kernel compilation needs."""
    return [f"-D{name}={value}" for name, value in nvcc_defines().items()]


if __name__ == "__main__":
    print(" ".join(nvcc_flags()))
