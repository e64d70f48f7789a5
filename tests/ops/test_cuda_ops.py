"""Every accelerated op against the reference backend, on the GPU.

Each case builds an op, runs its dense first frame, copies it (same state) for the
reference, and feeds both the same fresh random deltas over several frames: random
masks, all pixels, none, single pixels at corners and borders, and a block. Input
values outside their masks are NaN (kernels must never read them), kernel outputs
start as NaN / 0xFF (poisoned), masks must agree exactly, values inside the masks and
every state buffer closely. Sizes are odd and batches > 1.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deltaconvert.delta import Delta, mask_shape
from deltaconvert.layers import ChannelLayerNorm
from deltaconvert.metrics import relative_error
from deltaconvert.ops.boundary import Densify, Sparsify
from deltaconvert.ops.conv import ChannelScale, Conv2d, ConvTranspose2d
from deltaconvert.ops.footprint import Footprint
from deltaconvert.ops.linear import LinearCall
from deltaconvert.ops.nonlinear import Nonlinear

pytestmark = pytest.mark.cuda

DEVICE = torch.device("cuda", 0)
DTYPES = [torch.float32, torch.float16]
MASK_KINDS = ("random", "corners", "all", "none", "block", "sparse")
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3}


# -- inputs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class V:
    """A varying input of the given shape (a tensor on the first frame, then Deltas)."""

    shape: tuple[int, ...]


def random_mask(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    n, _, *spatial = shape
    ms = (n, 1, *spatial)
    if kind == "all":
        return torch.ones(ms, dtype=torch.bool, device=DEVICE)
    m = torch.zeros(ms, dtype=torch.bool, device=DEVICE)
    if kind == "random":
        m = torch.rand(ms, generator=gen, device=DEVICE) < 0.3
    elif kind == "sparse":
        m = torch.rand(ms, generator=gen, device=DEVICE) < 0.03
    elif kind == "corners" and spatial:
        h, w = spatial
        spots = [(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0), (h // 2, 0), (0, w // 2)]
        for i in range(n):
            y, x = spots[i % len(spots)]
            m[i, 0, y, x] = True
    elif kind == "corners":
        m[0] = True
    elif kind == "block" and spatial:
        h, w = spatial
        m[:, :, h // 3: h // 3 + max(1, h // 3), w // 2: w // 2 + max(1, w // 3)] = True
    elif kind == "block":
        m[-1] = True
    return m


def random_delta(shape: tuple[int, ...], kind: str, dtype: torch.dtype, gen: torch.Generator,
                 layout: int) -> Delta:
    mask = random_mask(kind, shape, gen)
    values = torch.randn(shape, generator=gen, device=DEVICE).to(dtype)
    values = torch.where(mask, values, torch.full((), float("nan"), dtype=dtype, device=DEVICE))
    if layout % 2 and values.dim() == 4:
        values = values.contiguous(memory_format=torch.channels_last)
    return Delta(values, mask)


def materialise(spec: Any, kind: str | None, dtype: torch.dtype, gen: torch.Generator,
                layout: int) -> Any:
    """Dense tensors (kind None) or Deltas for the V specs inside ``spec``."""
    if isinstance(spec, V):
        if kind is None:
            return torch.randn(spec.shape, generator=gen, device=DEVICE).to(dtype)
        return random_delta(spec.shape, kind, dtype, gen, layout)
    if isinstance(spec, torch.Tensor):
        return spec.to(device=DEVICE, dtype=dtype)
    if isinstance(spec, (list, tuple)):
        return type(spec)(materialise(s, kind, dtype, gen, layout + i) for i, s in enumerate(spec))
    return spec


# -- comparison ------------------------------------------------------------------------------
def assert_same(got: Any, expected: Any, dtype: torch.dtype, what: str) -> None:
    tol = TOLERANCE[dtype]
    if isinstance(expected, Delta):
        assert isinstance(got, Delta), f"{what}: expected a Delta"
        assert got.shape == expected.shape and got.dtype == expected.dtype, what
        want = expected.mask.expand(mask_shape(expected.shape)).to(torch.uint8)
        assert got.mask.shape == want.shape, f"{what}: mask shape"
        assert torch.equal(got.mask.view(torch.uint8), want), f"{what}: masks differ"
        m = want.bool()
        expected_v = torch.where(m, expected.values, torch.zeros((), dtype=dtype, device=DEVICE))
        got_v = torch.where(m, got.values, torch.zeros((), dtype=dtype, device=DEVICE))
        scale = max(1.0, float(expected_v.abs().max())) if expected_v.numel() else 1.0
        torch.testing.assert_close(got_v, expected_v, rtol=tol, atol=tol * scale, msg=what)
    elif isinstance(expected, torch.Tensor):
        scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol * scale, msg=what)
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), what
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same(g, e, dtype, f"{what}[{i}]")
    elif isinstance(expected, dict):
        for key in expected:
            if key not in ("stats", "signature", "out_pixels"):
                assert_same(got[key], expected[key], dtype, f"{what}.{key}")


def run_frames(runtime, ops: list, reference: list, specs: tuple, dtype: torch.dtype,
               seed: int, kinds=MASK_KINDS) -> list:
    """Feed the same deltas through the chain ``ops`` (accelerated) and ``reference``."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    results = []
    for frame, kind in enumerate(kinds):
        inputs = materialise(specs, kind, dtype, gen, frame)
        args, kwargs = inputs if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(
            inputs[1], dict) else (inputs, {})
        expected = reference[0](*args, **kwargs)
        for op in reference[1:]:
            expected = op(expected)
        with runtime.frame():
            got = ops[0](*args, **kwargs)
            results.append(got)
            for op in ops[1:]:
                got = op(got)
        torch.cuda.synchronize()
        assert_same(got, expected, dtype, f"frame {frame} ({kind}) output")
        for op, ref_op in zip(ops, reference):
            assert_same(op._state, ref_op._state, dtype, f"frame {frame} ({kind}) {op.node_name} state")
    return results


def with_state(op):
    """A copy of ``op`` that continues its sequence: copies of ops start a new sequence
    (``DeltaOp.__getstate__`` drops the state), so the state is copied explicitly."""
    clone = copy.deepcopy(op)
    clone._state = copy.deepcopy(op._state)
    return clone


def prepare(runtime, make_ops: Callable[[], list], specs: tuple, dtype: torch.dtype, seed: int,
            fuse: bool = False):
    """Build the op chain, run its dense frame, copy it for the reference, attach kernels."""
    from deltaconvert.backends.cuda.binding import wrapper_for

    ops = [op.to(device=DEVICE, dtype=dtype) for op in make_ops()]
    for i, op in enumerate(ops):
        op.node_name = f"op{i}"
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    dense = materialise(specs, None, dtype, gen, 0)
    args, kwargs = dense if isinstance(dense, tuple) and len(dense) == 2 and isinstance(
        dense[1], dict) else (dense, {})
    with torch.no_grad():
        out = ops[0](*args, **kwargs)
        for op in ops[1:]:
            out = op(out)
    reference = [with_state(op) for op in ops]
    wrappers = [wrapper_for(op, runtime) for op in ops]
    if fuse:
        wrappers[0] = wrapper_for(ops[0], runtime, (ops[1], wrappers[1]))
    for op, wrapper in zip(ops, wrappers):
        assert wrapper is not None, f"{type(op).__name__} is not accelerated"
        op.accelerated = wrapper
    return ops, reference


def check(runtime, make_ops, specs, dtype, seed=0, fuse=False, kinds=MASK_KINDS) -> list:
    ops, reference = prepare(runtime, make_ops, specs, dtype, seed, fuse)
    with torch.no_grad():
        return run_frames(runtime, ops, reference, specs, dtype, seed + 1, kinds)


# -- cases ----------------------------------------------------------------------------------
CONVS = {
    "3x3": (lambda: nn.Conv2d(5, 7, 3, padding=1), (2, 5, 13, 19)),
    "asym_kernel_stride": (lambda: nn.Conv2d(6, 10, (3, 1), stride=(2, 1), padding=(1, 0)), (2, 6, 13, 19)),
    "dilated_strided": (lambda: nn.Conv2d(4, 6, 3, dilation=2, padding=2, stride=2), (3, 4, 15, 11)),
    "grouped": (lambda: nn.Conv2d(8, 12, 3, groups=4, padding=1, bias=False), (2, 8, 9, 17)),
    "depthwise": (lambda: nn.Conv2d(40, 40, 3, groups=40, padding=1), (2, 40, 13, 19)),
    "depthwise_x2_s2": (lambda: nn.Conv2d(6, 12, 5, groups=6, stride=2, padding=2), (2, 6, 13, 19)),
    # A 24 × 24 input window: more than conv_depthwise stages, read from global memory.
    "depthwise_dilated": (lambda: nn.Conv2d(16, 16, 3, groups=16, dilation=8, padding=8), (2, 16, 21, 23)),
    "pointwise_1x1": (lambda: nn.Conv2d(70, 130, 1), (2, 70, 11, 9)),
    "stem_7x7": (lambda: nn.Conv2d(3, 16, 7, stride=2, padding=3), (2, 3, 23, 17)),
    "same_even": (lambda: nn.Conv2d(5, 6, 4, padding="same"), (2, 5, 10, 13)),
    "row_kernel": (lambda: nn.Conv2d(9, 5, (1, 5), padding=(0, 2)), (2, 9, 7, 21)),
    "one_pixel": (lambda: nn.Conv2d(16, 8, 1), (3, 16, 1, 1)),
    "grouped_1x1": (lambda: nn.Conv2d(12, 24, 1, groups=3), (2, 12, 5, 7)),
    # Channel counts that allow the 16-byte tile loads (on the channels_last frames).
    "vec_3x3": (lambda: nn.Conv2d(64, 96, 3, padding=1), (2, 64, 13, 19)),
    "vec_1x1_grouped": (lambda: nn.Conv2d(64, 48, 1, groups=2), (2, 64, 9, 11)),
    "vec_strided_dilated": (lambda: nn.Conv2d(32, 40, 3, stride=2, dilation=2, padding=2), (2, 32, 15, 17)),
    "vec_a_only": (lambda: nn.Conv2d(32, 30, 1), (3, 32, 7, 9)),
    # Cin_g a multiple of the vector width but not of the reduction chunk: vectors past
    # K are zero (1×1 over 16/24/144 channels, as in MobileNetV2), taps of 8 channels.
    "vec_1x1_k16": (lambda: nn.Conv2d(16, 96, 1), (2, 16, 9, 11)),
    "vec_1x1_k24": (lambda: nn.Conv2d(24, 20, 1), (2, 24, 9, 11)),
    "vec_1x1_k144": (lambda: nn.Conv2d(144, 24, 1), (2, 144, 7, 9)),
    "vec_3x3_k8": (lambda: nn.Conv2d(8, 16, 3, padding=1), (2, 8, 9, 11)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CONVS)
def test_conv2d(poisoned, name, dtype):
    make, shape = CONVS[name]
    torch.manual_seed(0)
    check(poisoned, lambda: [Conv2d(make())], (V(shape),), dtype)


def test_conv_large_fan_in_sums_like_fp64(poisoned):
    """A delta conv's rounding error is not transient: the next layer accumulates it frame
    after frame. The fp32 kernel therefore sums runs of products in fp32 and the runs in
    fp64; over K = 18432 (2048 channels, 3×3: FCN-ResNet50's head) its error against an
    fp64 conv is that of a short fp32 sum (~1.6e-7 simulated), where one sequential fp32
    sum over K is ~2.6e-6 off."""
    torch.manual_seed(0)
    shape = (1, 2048, 9, 11)
    ops, _ = prepare(poisoned, lambda: [Conv2d(nn.Conv2d(2048, 64, 3, padding=1, bias=False))],
                     (V(shape),), torch.float32, seed=0)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    delta = random_delta(shape, "all", torch.float32, gen, layout=1)
    with torch.no_grad(), poisoned.frame():
        got = ops[0](delta)
    torch.cuda.synchronize()
    exact = F.conv2d(delta.values.double(), ops[0].conv.weight.double(), padding=1)
    assert got.mask.all()
    assert relative_error(got.values.double(), exact) < 5e-7


CONV_TRANSPOSES = {
    "s2_output_padding": (lambda: nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1, output_padding=1),
                          (2, 6, 9, 11)),
    "k2s2": (lambda: nn.ConvTranspose2d(8, 4, 2, stride=2), (2, 8, 7, 5)),
    "grouped_dilated": (lambda: nn.ConvTranspose2d(6, 9, 3, padding=2, dilation=2, groups=3),
                        (2, 6, 11, 13)),
    "asym_stride": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=(2, 3), padding=(1, 0),
                                               output_padding=(1, 2), groups=2), (3, 4, 7, 9)),
    "vec_k4s2": (lambda: nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), (2, 32, 7, 9)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CONV_TRANSPOSES)
def test_conv_transpose2d(poisoned, name, dtype):
    make, shape = CONV_TRANSPOSES[name]
    torch.manual_seed(0)
    check(poisoned, lambda: [ConvTranspose2d(make())], (V(shape),), dtype)


def _layer_norm(channels: int) -> ChannelLayerNorm:
    ln = nn.LayerNorm(channels)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    return ChannelLayerNorm(ln)


# Functions of the channel count (the layer norm's weights have one per channel).
ACTIVATIONS = {
    "relu": lambda c: nn.ReLU(), "relu6": lambda c: nn.ReLU6(), "leaky": lambda c: nn.LeakyReLU(0.1),
    "hardtanh": lambda c: nn.Hardtanh(-1.0, 2.0), "sigmoid": lambda c: nn.Sigmoid(),
    "silu": lambda c: nn.SiLU(), "hardswish": lambda c: nn.Hardswish(),
    "hardsigmoid": lambda c: nn.Hardsigmoid(), "gelu": lambda c: nn.GELU(),
    "gelu_tanh": lambda c: nn.GELU("tanh"), "tanh": lambda c: nn.Tanh(), "elu": lambda c: nn.ELU(0.7),
    "layer_norm": _layer_norm,
}


# 37 channels: one channel per load; 40: vectors of 4 channels where the layout allows
# (channels_last frames; the NCHW frames in between fall back to one channel per load).
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels", [37, 40])
@pytest.mark.parametrize("threshold", [0.0, 0.25])
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation(poisoned, name, threshold, channels, dtype):
    make = ACTIVATIONS[name]
    check(poisoned, lambda: [Nonlinear(make(channels), Footprint.POINTWISE, (True,), threshold)],
          (V((2, channels, 9, 11)),), dtype)


# (1, 2100, 3, 4): wider than pw_truncate's register chunk (8 channels × 256 lanes), so
# its emit pass recomputes the chunks instead of reusing registers.
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (3, 40), (1, 2100, 3, 4)], ids=str)
def test_activation_shapes(poisoned, shape):
    check(poisoned, lambda: [Nonlinear(nn.ReLU(), Footprint.POINTWISE, (True,), 0.1)],
          (V(shape),), torch.float32)


def _channel_scale(channels: int) -> ChannelScale:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return ChannelScale(bn.eval())


LAYER_SCALE = torch.randn(21, 1, 1, generator=torch.Generator().manual_seed(3))
LINEAR = {
    "add": (lambda: LinearCall(operator.add, Footprint.POINTWISE, affine=True),
            (V((2, 21, 9, 13)), V((2, 21, 9, 13)))),
    "add_broadcast": (lambda: LinearCall(operator.add, Footprint.POINTWISE, affine=True),
                      (V((2, 21, 9, 13)), V((2, 21, 1, 1)))),
    "add_constant": (lambda: LinearCall(operator.add, Footprint.POINTWISE, affine=True),
                     (V((2, 21, 9, 13)), 1.5)),
    "sub_alpha": (lambda: LinearCall(torch.sub, Footprint.POINTWISE, affine=True),
                  ((V((2, 21, 9, 13)), V((2, 21, 9, 13))), {"alpha": 2.0})),
    "neg": (lambda: LinearCall(operator.neg, Footprint.POINTWISE, affine=True), (V((3, 4, 5, 7)),)),
    "mul_layer_scale": (lambda: LinearCall(operator.mul, Footprint.POINTWISE),
                        (LAYER_SCALE, V((2, 21, 9, 13)))),
    "channel_scale": (lambda: _channel_scale(21), (V((2, 21, 9, 13)),)),
    "channel_scale_2d": (lambda: ChannelScale(nn.BatchNorm1d(21).eval()), (V((3, 21)),)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", LINEAR)
def test_linear_pointwise(poisoned, name, dtype):
    make, specs = LINEAR[name]
    torch.manual_seed(0)
    check(poisoned, lambda: [make()], specs, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shapes", [((2, 24, 9, 13), (2, 24, 1, 1)), ((2, 24, 1, 1), (2, 24, 9, 13)),
                                    ((3, 7, 5, 6), (3, 7, 5, 6))], ids=str)
def test_product(poisoned, shapes, dtype):
    check(poisoned, lambda: [Nonlinear(operator.mul, Footprint.POINTWISE, (True, True), 0.05)],
          tuple(V(s) for s in shapes), dtype)


MAX_POOLS = {
    "3s2p1": lambda: nn.MaxPool2d(3, 2, 1),
    "2_ceil": lambda: nn.MaxPool2d(2, ceil_mode=True),
    "dilated": lambda: nn.MaxPool2d(3, stride=2, padding=1, dilation=2),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("threshold", [0.0, 0.3])
@pytest.mark.parametrize("name", MAX_POOLS)
def test_max_pool(poisoned, name, threshold, dtype):
    make = MAX_POOLS[name]
    check(poisoned, lambda: [Nonlinear(make(), Footprint.REAPPLY, (True,), threshold)],
          (V((2, 19, 13, 17)),), dtype)


AVG_POOLS = {
    "2": lambda: nn.AvgPool2d(2),
    "3s2p1_ceil_exclude": lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
    "3s2p1_divisor": lambda: nn.AvgPool2d(3, 2, 1, divisor_override=5),
    "global": lambda: nn.AdaptiveAvgPool2d(1),
    "adaptive_3x5": lambda: nn.AdaptiveAvgPool2d((3, 5)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", AVG_POOLS)
def test_avg_pool(poisoned, name, dtype):
    make = AVG_POOLS[name]
    check(poisoned, lambda: [LinearCall(make(), Footprint.REAPPLY)], (V((2, 37, 13, 17)),), dtype)


def test_global_pool_large_frame(poisoned):
    """Many blocks per sample feed the atomics; the scratch is re-zeroed every frame."""
    check(poisoned, lambda: [LinearCall(nn.AdaptiveAvgPool2d(1), Footprint.REAPPLY)],
          (V((2, 70, 45, 61)),), torch.float32)


RESIZES = {
    "nearest_size": ((V((2, 6, 7, 9)),), {"size": (17, 29), "mode": "nearest"}),
    "nearest_x2": ((V((2, 6, 7, 9)),), {"scale_factor": 2, "mode": "nearest"}),
    "nearest_exact": ((V((2, 6, 7, 9)),), {"size": (12, 5), "mode": "nearest-exact"}),
    "bilinear": ((V((2, 6, 7, 9)),), {"size": (20, 31), "mode": "bilinear", "align_corners": False}),
    "bilinear_aligned": ((V((2, 6, 7, 9)),), {"size": (20, 31), "mode": "bilinear", "align_corners": True}),
    "bilinear_x1_5": ((V((2, 6, 7, 9)),), {"scale_factor": 1.5, "mode": "bilinear"}),
    "bilinear_from_1x1": ((V((2, 40, 1, 1)),), {"size": (9, 7), "mode": "bilinear", "align_corners": False}),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", RESIZES)
def test_resize(poisoned, name, dtype):
    specs = RESIZES[name]
    check(poisoned, lambda: [LinearCall(F.interpolate, Footprint.REAPPLY)], specs, dtype)


def test_upsample_module(poisoned):
    check(poisoned, lambda: [LinearCall(nn.Upsample(scale_factor=2, mode="bilinear"), Footprint.REAPPLY)],
          (V((2, 5, 6, 7)),), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels", [(3,), (3, 17, 40), (16,) * 25], ids=lambda c: f"{len(c)}x")
def test_cat(poisoned, channels, dtype):
    specs = ([V((2, c, 9, 11)) for c in channels], 1)
    check(poisoned, lambda: [LinearCall(torch.cat, Footprint.REAPPLY)], specs, dtype)


def _frames_for_sparsify(dtype: torch.dtype, gen: torch.Generator, steps: int) -> list:
    x = torch.randn((2, 3, 17, 23), generator=gen, device=DEVICE)
    frames = []
    for t in range(steps):
        x = x.clone()
        if t % 3 == 0:
            x += 0.4 * torch.randn(x.shape, generator=gen, device=DEVICE)
        elif t % 3 == 1:
            x[:, :, 3:8, 5:11] += torch.randn((2, 3, 5, 6), generator=gen, device=DEVICE)
        else:
            x[1, :, -1, -1] += 1.0
        frames.append(x.to(dtype))
    return frames


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("threshold", [0.0, 0.3])
@pytest.mark.parametrize("dilation", [0, 1, 2])
def test_sparsify(poisoned, threshold, dilation, dtype):
    from deltaconvert.backends.cuda.binding import wrapper_for

    gen = torch.Generator(device=DEVICE).manual_seed(7)
    frames = _frames_for_sparsify(dtype, gen, 7)
    op = Sparsify(threshold, dilation)
    op.node_name = "x_sparsify"
    op(frames[0])
    reference = with_state(op)
    op.accelerated = wrapper_for(op, poisoned)
    with torch.no_grad():
        for t, x in enumerate(frames[1:]):
            expected = reference(x)
            with poisoned.frame():
                got = op(x)
            torch.cuda.synchronize()
            assert_same(got, expected, dtype, f"frame {t}")
            assert_same(op._state["ref"], reference._state["ref"], dtype, f"frame {t} ref")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 5, 9, 13), (3, 7)], ids=str)
def test_densify(poisoned, shape, dtype):
    check(poisoned, lambda: [Densify()], (V(shape),), dtype)


FUSIONS = {
    "conv_relu": (lambda: [Conv2d(nn.Conv2d(6, 20, 3, padding=1)),
                           Nonlinear(nn.ReLU(), Footprint.POINTWISE, (True,), 0.1)], (V((2, 6, 13, 19)),)),
    "conv_relu_vector": (lambda: [Conv2d(nn.Conv2d(64, 64, 3, padding=1)),
                                  Nonlinear(nn.ReLU(), Footprint.POINTWISE, (True,), 0.0)], (V((2, 64, 11, 13)),)),
    "depthwise_hardswish": (lambda: [Conv2d(nn.Conv2d(24, 24, 3, stride=2, padding=1, groups=24)),
                                     Nonlinear(nn.Hardswish(), Footprint.POINTWISE, (True,), 0.0)],
                            (V((2, 24, 13, 19)),)),
    "conv_layer_norm": (lambda: [Conv2d(nn.Conv2d(37, 37, 7, padding=3, groups=37)),
                                 Nonlinear(_layer_norm(37), Footprint.POINTWISE, (True,), 0.0)],
                        (V((2, 37, 9, 11)),)),
    "add_relu6": (lambda: [LinearCall(operator.add, Footprint.POINTWISE, affine=True),
                           Nonlinear(nn.ReLU6(), Footprint.POINTWISE, (True,), 0.2)],
                  (V((2, 21, 9, 13)), V((2, 21, 9, 13)))),
    "scale_relu": (lambda: [_channel_scale(21), Nonlinear(nn.ReLU(), Footprint.POINTWISE, (True,), 0.0)],
                   (V((2, 21, 9, 13)),)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", FUSIONS)
def test_fused_epilogue(poisoned, name, dtype):
    make, specs = FUSIONS[name]
    torch.manual_seed(0)
    produced = check(poisoned, make, specs, dtype, fuse=True)
    assert all("fused" in d.extras for d in produced), "the producer did not hand over its work"


# Convs with K = Cin_g·KH·KW ≥ 32 (two splits at least with SPLIT_MIN_K = 16; depthwise
# convs are never split).
SPLIT_K = {**{name: (lambda make=make: [Conv2d(make())], (V(shape),), False)
              for name, (make, shape) in CONVS.items() if make().weight[0].numel() >= 32
              and make().weight.shape[1] > 1},
           "conv_relu": (*FUSIONS["conv_relu"], True),
           "conv_relu_vector": (*FUSIONS["conv_relu_vector"], True)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", SPLIT_K)
def test_conv_split_k(poisoned, monkeypatch, name, dtype):
    """Split-K conv_gemm (small grids with long reductions, as in ResNet's last stages),
    forced on small convs: each split writes its partial sums, ``conv_split_sum`` adds
    them in order and stores them (δy, or into the fused activation's accumulator)."""
    from deltaconvert.backends.cuda import conv, kernels
    monkeypatch.setattr(conv, "SPLIT_MIN_K", 16)
    launched = []
    original = kernels.Kernel.__call__

    def spy(self, grid, block, args):
        launched.append(self.name)
        return original(self, grid, block, args)

    monkeypatch.setattr(kernels.Kernel, "__call__", spy)
    make, specs, fuse = SPLIT_K[name]
    torch.manual_seed(0)
    check(poisoned, make, specs, dtype, fuse=fuse)
    assert "conv_split_sum" in launched, launched


DEEP_LISTS = {
    "relu_narrow": (lambda: [Nonlinear(nn.ReLU(), Footprint.POINTWISE, (True,), 0.1)],
                    (V((2, 37, 9, 11)),), False),
    "relu_wide": (lambda: [Nonlinear(nn.ReLU(), Footprint.POINTWISE, (True,), 0.1)],
                  (V((2, 150, 7, 9)),), False),
    "add": (lambda: [LINEAR["add"][0]()], LINEAR["add"][1], False),
    "densify_wide": (lambda: [Densify()], (V((2, 300, 5, 7)),), False),
    "conv_layer_norm": (*FUSIONS["conv_layer_norm"], True),
    "add_relu6": (*FUSIONS["add_relu6"], True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", DEEP_LISTS)
def test_deep_work_lists(poisoned, monkeypatch, name, dtype):
    """Block-local work lists whose groups take several rounds (as on large frames, see
    ``list_grid``), forced on small tensors: group reductions inside rounds, spare groups,
    pixels of one block spread over rounds."""
    from deltaconvert.backends.cuda import tensors
    monkeypatch.setattr(tensors, "LIST_BLOCKS", 1)
    assert tensors.list_grid(2 * 7 * 9, tensors.lanes_for(150))[2] == 16  # 4 groups × 4 rounds
    make, specs, fuse = DEEP_LISTS[name]
    torch.manual_seed(0)
    check(poisoned, make, specs, dtype, fuse=fuse)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("shape,layout", [((2, 8, 6, 10), 0), ((2, 8, 6, 10), 1),
                                          ((2, 5, 3, 7), 0), ((2, 5, 3, 7), 1)],
                         ids=["nchw-vectors", "nhwc-vectors", "nchw-single", "nhwc-single"])
def test_accumulate_adds_flat_over_the_elements_where_updated(poisoned, dtype, shape, layout):
    """``accumulate`` (Densify's ``y += δ``, a product's operands) runs
    ``pw_accumulate_flat`` where the accumulator and δ share one gap-free layout (NCHW or
    NHWC, in groups of 4 elements where C or H·W allow): ``a + δ`` exactly where the mask
    is set, and nothing elsewhere — the NaN values of clear pixels are not read."""
    from deltaconvert.backends.cuda.kernels import recorded_launches
    from deltaconvert.backends.cuda.pointwise import accumulate

    gen = torch.Generator(device=DEVICE).manual_seed(3)
    for kind in MASK_KINDS:
        d = random_delta(shape, kind, dtype, gen, layout)
        acc = torch.randn(shape, generator=gen, device=DEVICE)
        if layout:
            acc = acc.contiguous(memory_format=torch.channels_last)
        expected = torch.where(d.mask, acc + d.values.float(), acc)
        with recorded_launches() as launches, poisoned.frame():
            accumulate(poisoned, "acc", d, acc)
        torch.cuda.synchronize()
        assert {name for _, name, _ in launches} == {"pw_accumulate_flat"}, kind
        assert torch.equal(acc, expected), kind
