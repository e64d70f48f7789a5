"""Constants shared by the CUDA backend's Python side and its kernels, declared once.

The kernels of ``cuda_kernels/`` do not define these names by hand: the backend passes
them to nvcc as ``-D`` defines (:func:`nvcc_flags`), and ``cuda_kernels/constants.cuh``,
generated from this module (:func:`header_text`; a test checks it is current), supplies
the same values to a plain ``nvcc`` that is given no flags. Adding an activation is one
member of :class:`Activation`, one case in ``common.cuh``'s ``activate()``, its entry in
``pointwise.pixel_function`` and ``python3 deltaconvert/backends/cuda/constants.py
--header > cuda_kernels/constants.cuh``.

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


class TruncateInput(enum.IntEnum):
    """What the operands of a truncation launch (``pw_truncate``) contribute to its
    accumulator ``a`` (``in_mode``); ``δ = scale[c] · Σ k_i · operand_i``."""

    ACCUMULATED = 0  # nothing: a producer already added into a; the operands carry masks
    ADD = 1          # a += round(δ)
    ASSIGN = 2       # a = round(δ): the operand is the whole pre-activation (dense layers)


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
RESIDENT_BLOCKS = 4  # blocks per SM that conv_gemm*, conv_depthwise and pw_truncate are
                     # compiled for (their __launch_bounds__): one wave of a persistent
                     # grid is RESIDENT_BLOCKS × SMs (PERF_NOTES §19)
LIST_TILE = 16    # conv_output_list writes LIST_TILE × LIST_TILE output pixels per block
LISTED_TAPS = 64  # most kernel taps (KH·KW) of a conv whose GEMM runs over listed output
                  # pixels: conv_gemm_listed keeps a row's taps as the bits of a 64-bit word
GATHER_ROWS = 128  # listed output pixels per row tile of conv_gemm_gathered
GATHER_K = 32      # its reduction chunk: a chunk lies in one kernel tap where Cin_g is a
                   # multiple of it (or the conv has one tap)
GATHER_STAGES = 3  # its cp.async pipeline depth (what fits 48 KB of static shared memory)
GATHER_RESIDENT = 2  # its blocks per SM (__launch_bounds__): one wave is this × SMs
TRUNC_WHOLE_ITEMS = 2  # channel vectors per thread of pw_truncate over a whole map
                       # (truncate_whole in pointwise.cu; span · C / V ≤ this × BLOCK)
CONV_TARGETS = 2  # convs reading one truncation whose output masks and lists it writes
                  # (ConvTargets in common.cuh; ResNet: a block's conv1 and downsample)

_PREFIXES = {Activation: "ACT_", PixelFunction: "FN_", PoolMode: "POOL_",
             ResizeMode: "RESIZE_", ConvMode: "CONV_", TruncateInput: "TRUNC_IN_"}
_SCALARS = {"DC_BLOCK": BLOCK, "TILE": TILE, "GEMM_CO": GEMM_CO, "DW_CO": DW_CO,
            "CAT_MAX": CAT_MAX, "GLOBAL_PIXELS": GLOBAL_PIXELS,
            "DC_RESIDENT": RESIDENT_BLOCKS, "LIST_TILE": LIST_TILE, "LISTED_TAPS": LISTED_TAPS,
            "GATHER_ROWS": GATHER_ROWS, "GATHER_K": GATHER_K, "GATHER_STAGES": GATHER_STAGES,
            "GATHER_RESIDENT": GATHER_RESIDENT,
            "TRUNC_WHOLE_ITEMS": TRUNC_WHOLE_ITEMS, "CONV_TARGETS": CONV_TARGETS}


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


def header_text() -> str:
    """``cuda_kernels/constants.cuh``: the same defines for a compilation without flags."""
    lines = ["// Generated by `python3 deltaconvert/backends/cuda/constants.py --header`",
             "// from that module, the one declaration of these values; do not edit. The CUDA",
             "// backend passes them as -D flags, which skip this block.",
             "#pragma once", "#ifndef DC_CONSTANTS"]
    lines += [f"#define {name} {value}" for name, value in nvcc_defines().items()]
    return "\n".join([*lines, "#endif", ""])


if __name__ == "__main__":
    import sys
    print(header_text(), end="") if "--header" in sys.argv[1:] else print(" ".join(nvcc_flags()))
