"""Every delta op against its dense PyTorch op: odd sizes, batch 2, random update masks,
all pixels, no pixel, single corner pixels.

Each case wraps one op in a tiny module, converts it, and feeds a sequence of frames
that differ from their predecessor on a known mask. Checked per frame:
* the output equals the dense op's output (relative error ≤ 1e-5);
* the op's update mask is exactly the set of output pixels whose value changed — a
  superset would be correct but wasteful, a missing pixel would be wrong;
* the op reads its input deltas only inside their masks (the harness fills the
  unspecified values outside every mask with NaN).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deltaconvert
from deltaconvert.delta import Delta
from deltaconvert.metrics import relative_error
from deltaconvert.ops.base import DeltaOp
from deltaconvert.ops.boundary import Densify, Sparsify

N, H, W = 2, 11, 13


def _masks(spatial, seed):
    """Update masks (N, 1, *spatial) of a sequence: sparse, denser, all, none, corners."""
    g = torch.Generator().manual_seed(seed)
    shape = (N, 1, *spatial)
    corners = torch.zeros(shape, dtype=torch.bool)
    corners[(0, 0, *[0] * len(spatial))] = True
    corners[(1, 0, *[s - 1 for s in spatial])] = True
    return [torch.rand(shape, generator=g) < 0.1,
            torch.rand(shape, generator=g) < 0.4,
            torch.ones(shape, dtype=torch.bool),
            torch.zeros(shape, dtype=torch.bool),
            corners]


def _frames(shapes, seed=0):
    """Frames for each input: frame t+1 differs from frame t exactly on mask t."""
    g = torch.Generator().manual_seed(seed)
    current = [torch.randn(s, generator=g) for s in shapes]
    sequence = [list(current)]
    for step, masks in enumerate(zip(*[_masks(s[2:], seed + i) for i, s in enumerate(shapes)])):
        nxt = []
        for x, m in zip(current, masks):
            change = torch.randn(x.shape, generator=g)
            change = change + torch.sign(change) * 0.1  # no accidental zero change
            nxt.append(torch.where(m, x + change, x))
        current = nxt
        sequence.append(list(current))
    return sequence


class _Capture:
    """Records the output Delta of the op under test, and poisons inputs outside masks."""

    def __init__(self, op: DeltaOp):
        self.outputs = []
        op.register_forward_pre_hook(self._poison)
        op.register_forward_hook(lambda mod, args, out: self.outputs.append(out))

    @staticmethod
    def _poison(module, args):
        def poisoned(a):
            if isinstance(a, Delta):
                return Delta(torch.where(a.mask, a.values, torch.full_like(a.values, math.nan)), a.mask)
            if isinstance(a, (list, tuple)):
                return type(a)(poisoned(x) for x in a)
            return a
        return tuple(poisoned(a) for a in args)


def _changed_pixels(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return (after - before).abs().amax(dim=1, keepdim=True) > 0


def check_op(module: nn.Module, *shapes, tolerance: float = 1e-5, exact_mask: bool = True):
    """Convert ``module`` (one op between input Sparsify and output Densify) and check it
    over a sequence of frames (see module docstring)."""
    module = module.eval()
    frames = _frames(shapes)
    delta = deltaconvert.convert(module, tuple(frames[0]))
    ops = [op for op in delta.delta_ops().values() if not isinstance(op, (Sparsify, Densify))]
    assert len(ops) >= 1
    capture = _Capture(ops[-1])
    previous = None
    for t, inputs in enumerate(frames):
        with torch.no_grad():
            expected = module(*inputs)
        actual = delta(*inputs)
        assert torch.isfinite(actual).all(), f"frame {t}: non-finite output"
        assert relative_error(actual, expected) <= tolerance, f"frame {t}"
        if previous is not None and len(ops) == 1:
            out = capture.outputs[-1]
            changed = _changed_pixels(previous, expected)
            assert not (changed & ~out.mask).any(), f"frame {t}: changed pixels missing from mask"
            if exact_mask:
                assert torch.equal(out.mask, changed), f"frame {t}: mask wider than the change"
        previous = expected
    return delta


class Call(nn.Module):
    """A module calling ``fn(x, *args, **kwargs)``."""

    def __init__(self, fn, *args, **kwargs):
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def forward(self, x):
        return self.fn(x, *self.args, **self.kwargs)


class Call2(Call):
    """A module calling ``fn(a, b)``."""

    def forward(self, a, b):
        return self.fn(a, b, *self.args, **self.kwargs)


# -- convolutions ----------------------------------------------------------------------------
CONVS = {
    "1x3": dict(in_channels=3, out_channels=5, kernel_size=(1, 3)),
    "3x1": dict(in_channels=3, out_channels=5, kernel_size=(3, 1), padding=(1, 0)),
    "7x1": dict(in_channels=4, out_channels=6, kernel_size=(7, 1), padding=(3, 0)),
    "7x7": dict(in_channels=4, out_channels=6, kernel_size=7, padding=3),
    "1x1": dict(in_channels=4, out_channels=7, kernel_size=1),
    "stride2": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    "stride2x1_asym": dict(in_channels=4, out_channels=6, kernel_size=3, stride=(2, 1), padding=(0, 2)),
    "dilation2": dict(in_channels=4, out_channels=6, kernel_size=3, dilation=2, padding=2),
    "same_odd": dict(in_channels=4, out_channels=6, kernel_size=5, padding="same"),
    "same_even": dict(in_channels=4, out_channels=6, kernel_size=4, padding="same"),
    "groups": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2),
    "depthwise": dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6),
    "no_bias": dict(in_channels=4, out_channels=6, kernel_size=3, bias=False),
    "reflect": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
    "circular": dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, padding_mode="circular"),
    "replicate": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="replicate"),
}


@pytest.mark.parametrize("config", CONVS.values(), ids=CONVS.keys())
def test_conv2d(config):
    check_op(nn.Conv2d(**config), (N, config["in_channels"], H, W))


@pytest.mark.parametrize("config", [
    dict(kernel_size=3, stride=2, padding=1, output_padding=1),
    dict(kernel_size=2, stride=2),
    dict(kernel_size=3, stride=1, padding=1, groups=2),
    dict(kernel_size=4, stride=2, padding=1, dilation=1),
], ids=["s2_op1", "k2s2", "groups", "k4s2"])
def test_conv_transpose2d(config):
    check_op(nn.ConvTranspose2d(4, 6, **config), (N, 4, H, W))


def test_linear_on_pixels_of_one():
    check_op(nn.Linear(12, 5), (N, 12))


def test_standalone_batch_norm_is_a_scale():
    bn = nn.BatchNorm2d(5)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    check_op(bn, (N, 5, H, W))


# -- non-linear per-pixel ops ---------------------------------------------------------------
ACTIVATIONS = [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1), nn.Hardtanh(-0.5, 0.7), nn.Sigmoid(),
               nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(), nn.GELU(), nn.GELU("tanh"), nn.Tanh(),
               nn.ELU(0.7), nn.PReLU(5), nn.SELU(), nn.Softplus(), nn.Mish()]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda m: type(m).__name__)
def test_activation(act):
    check_op(act, (N, 5, H, W))


@pytest.mark.parametrize("module", [
    Call(F.relu), Call(torch.sigmoid), Call(lambda x: x.relu()), Call(F.leaky_relu, 0.2),
    Call(torch.clamp, -0.3, 0.4), Call(torch.abs), Call(lambda x: x ** 2),
    Call(F.softmax, dim=1), Call(F.normalize, dim=1), Call(lambda x: x.mean(1, keepdim=True)),
    Call(torch.amax, 1, keepdim=True),
], ids=["F.relu", "torch.sigmoid", "method_relu", "F.leaky_relu", "clamp", "abs", "pow",
        "softmax_dim1", "normalize_dim1", "channel_mean", "channel_amax"])
def test_functional_pointwise(module):
    check_op(module, (N, 5, H, W))


@pytest.mark.parametrize("groups", [2, 3])
def test_softmax_across_channel_groups(groups):
    """A softmax over the group dim of ``x.view(N, R, C/R, H, W)`` is one per-pixel op,
    ChannelGroupSoftmax, on the map (the views around it collapse)."""
    def fn(x):
        n, c, h, w = x.shape
        return x.view(n, groups, c // groups, h, w).softmax(1).reshape(n, c, h, w)
    delta = check_op(Call(fn), (N, 6, H, W))
    (op,) = [op for op in delta.delta_ops().values() if not isinstance(op, (Sparsify, Densify))]
    assert type(op.fn).__name__ == "ChannelGroupSoftmax" and op.fn.groups == groups


def test_product_of_varying_tensors():
    check_op(Call2(torch.mul), (N, 4, H, W), (N, 4, H, W))


def test_squeeze_excite_broadcast_product():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return x * torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))
    check_op(SE(), (N, 4, H, W))


def test_division_of_varying_tensors():
    check_op(Call2(lambda a, b: a / (b.abs() + 1)), (N, 3, H, W), (N, 3, H, W))


# -- pooling, resizing, padding -------------------------------------------------------------
@pytest.mark.parametrize("pool", [
    nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2, 2), nn.MaxPool2d(3, 2, ceil_mode=True),
    nn.MaxPool2d(3, 1, 1), nn.MaxPool2d(3, 2, 1, dilation=2), nn.AdaptiveMaxPool2d((2, 3)),
], ids=["k3s2p1", "k2s2", "ceil", "k3s1", "dilated", "adaptive"])
def test_max_pool(pool):
    check_op(pool, (N, 4, H, W))


@pytest.mark.parametrize("pool", [
    nn.AvgPool2d(3, 2, 1), nn.AvgPool2d(2, 2, ceil_mode=True),
    nn.AvgPool2d(3, 2, 1, count_include_pad=False), nn.AvgPool2d(3, 1, divisor_override=2),
    nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((3, 5)), nn.AdaptiveAvgPool2d((14, 15)),
], ids=["k3s2p1", "ceil", "no_pad_count", "divisor", "global", "3x5", "upsampling"])
def test_avg_pool(pool):
    check_op(pool, (N, 4, H, W))


@pytest.mark.parametrize("module", [
    nn.Upsample(scale_factor=2, mode="nearest"),
    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
    nn.Upsample(scale_factor=3, mode="bilinear", align_corners=True),
    nn.UpsamplingNearest2d(size=(17, 20)),
    Call(F.interpolate, size=(20, 23), mode="bilinear", align_corners=False),
    Call(F.interpolate, scale_factor=0.5, mode="nearest"),
    Call(F.interpolate, scale_factor=0.5, mode="bilinear"),
    Call(lambda x: F.interpolate(x, size=(x.shape[-2] * 2, x.shape[-1] + 5), mode="bilinear")),
], ids=["nearest2", "bilinear2", "bilinear3_corners", "nearest_size", "bilinear_size",
        "nearest_down", "bilinear_down", "size_from_shape"])
def test_resize(module):
    check_op(module, (N, 3, H, W))


@pytest.mark.parametrize("module", [
    nn.ZeroPad2d((1, 2, 0, 3)), nn.ReflectionPad2d(2), nn.ReplicationPad2d(1),
    Call(F.pad, (2, 1, 1, 0), mode="reflect"), Call(F.pad, (1, 1, 2, 2)),
], ids=["zero", "reflect", "replicate", "F.pad_reflect", "F.pad_zeros"])
def test_pad(module):
    check_op(module, (N, 3, H, W))


@pytest.mark.parametrize("module", [
    nn.ConstantPad2d((1, 2, 0, 3), 2.5), Call(F.pad, (2, 1, 1, 0), value=-1.0),
    Call(lambda x: F.max_pool2d(F.pad(x, (0, 1, 1, 1), value=-math.inf), 3, 2)),
], ids=["module", "F.pad", "minus_inf_then_max_pool"])
def test_constant_pad(module):
    """Padding with a constant c ≠ 0: the border keeps c, the deltas are padded with 0.
    All-negative inputs: a −∞ border must never win a max (a zero one would)."""
    delta = check_op(module, (N, 3, H, W))
    check_op(nn.Sequential(Call(lambda x: x - 10.0), module), (N, 3, H, W))
    from deltaconvert.ops.linear import ConstantPad
    assert any(isinstance(op, ConstantPad) for op in delta.delta_ops().values())


# -- arithmetic and plumbing ----------------------------------------------------------------
@pytest.mark.parametrize("fn,inputs", [
    (lambda a, b: a + b, 2), (lambda a, b: a - b, 2), (lambda a, b: torch.add(a, b, alpha=2), 2),
    (lambda a: a * 2.5, 1), (lambda a: a / 3, 1), (lambda a: -a, 1), (lambda a: a + 1.0, 1),
    (lambda a: 2 - a, 1), (lambda a: a.sub(0.5), 1),
], ids=["add", "sub", "add_alpha", "mul_const", "div_const", "neg", "add_const", "rsub",
        "method_sub"])
def test_arithmetic(fn, inputs):
    check_op((Call, Call2)[inputs - 1](fn), *[(N, 4, H, W)] * inputs)


def test_scale_by_parameter():
    class LayerScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gamma = nn.Parameter(torch.randn(4, 1, 1))

        def forward(self, x):
            return self.gamma * x
    check_op(LayerScale(), (N, 4, H, W))


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_cat(dim):
    check_op(Call2(lambda a, b: torch.cat([a, b], dim)), (N, 3, H, W), (N, 3, H, W))


@pytest.mark.parametrize("fn", [
    lambda x: x[:, 1:4], lambda x: x[:, :, 2:-1, ::2], lambda x: x[:, ::2, 1:],
], ids=["channels", "spatial", "both"])
def test_getitem(fn):
    check_op(Call(fn), (N, 5, H, W))


def test_chunk_along_channels():
    class Swap(nn.Module):
        def forward(self, x):
            a, b = x.chunk(2, 1)
            return torch.cat([b, a * 1.5], 1)
    check_op(Swap(), (N, 6, H, W))


def test_split_along_space():
    class Split(nn.Module):
        def forward(self, x):
            top, bottom = torch.split(x, [5, 6], dim=2)
            return torch.cat([bottom, top], dim=2)
    check_op(Split(), (N, 3, H, W))


@pytest.mark.parametrize("dim,stack_dim", [(1, 1), (2, 2), (-1, 1)])
def test_unbind(dim, stack_dim):
    """Items of ``unbind`` (``dim=1``: each item's dim 1 is the image's height, its mask
    per column of the image) combined and stacked (a cat and an unflatten)."""
    class Unbind(nn.Module):
        def forward(self, x):
            a, b, c = x[:, :, :3, :3].unbind(dim)
            return torch.stack([F.relu(a - b), c * 0.5], stack_dim)
    delta = check_op(Unbind(), (N, 3, H, W), exact_mask=False)
    assert delta.dense_islands == {}


def test_unbind_of_the_batch_runs_dense():
    with pytest.warns(deltaconvert.DenseFallbackWarning, match="unbinding the batch dim"):
        deltaconvert.convert(Call(lambda x: torch.stack(x.unbind(0))), torch.randn(N, 3, H, W))


def test_channel_shuffle_becomes_a_gather():
    def shuffle(x):
        b, c, h, w = x.size()
        return x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
    delta = check_op(Call(shuffle), (N, 6, H, W))
    from deltaconvert.ops.linear import ChannelGather
    assert any(isinstance(op, ChannelGather) for op in delta.delta_ops().values())


@pytest.mark.parametrize("shape,fn", [
    ((N, 4, 1, 1), lambda x: torch.flatten(x, 1)),
    ((N, 4, H, W), lambda x: x.flatten(1)),
    ((N, 4, H, W), lambda x: x.view(x.size(0), -1)),
    ((N, 4), lambda x: x.view(x.size(0), x.size(1), 1, 1)),
], ids=["pooled", "image", "view", "unflatten"])
def test_flatten_and_reshape(shape, fn):
    check_op(Call(fn), shape)


def test_channel_layer_norm_from_channels_last_block():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(6)
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    delta = check_op(Block(), (N, 6, H, W), exact_mask=False)
    assert not any("permute" in str(n.target) for n in delta.graph.nodes)


# -- boundaries and truncation --------------------------------------------------------------
def test_sparsify_defers_small_changes_until_they_add_up():
    op = Sparsify(threshold=0.5)
    x = torch.zeros(1, 2, 3, 3)
    op(x)
    small = x.clone()
    small[0, :, 1, 1] = 0.3
    first = op(small)
    assert not first.mask.any()
    bigger = small.clone()
    bigger[0, :, 1, 1] = 0.6
    second = op(bigger)
    assert second.mask[0, 0, 1, 1] and second.mask.sum() == 1
    assert torch.allclose(second.values[0, :, 1, 1], torch.tensor([0.6, 0.6]))


def test_sparsify_dilates_the_mask():
    op = Sparsify(threshold=0.0, dilation=1)
    x = torch.zeros(1, 1, 5, 5)
    op(x)
    y = x.clone()
    y[0, 0, 0, 0] = 1.0
    d = op(y)
    expected = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    expected[0, 0, :2, :2] = True
    assert torch.equal(d.mask, expected)
    assert d.values[0, 0, 0, 1] == 0  # dilated pixels carry their (zero) change


def test_truncation_defers_and_never_loses_updates():
    """τ > 0 on a ReLU: an output change below τ is held back, then sent in full once the
    accumulated change exceeds τ; the densified output then equals the dense value."""
    model = nn.Sequential(nn.ReLU())
    delta = deltaconvert.convert(model, torch.zeros(1, 1, 1, 1))
    delta.thresholds["0"] = 0.25
    frames = [0.5, 0.6, 0.7, 0.8]
    outputs = [delta(torch.full((1, 1, 1, 1), v)).item() for v in frames]
    assert outputs == pytest.approx([0.5, 0.5, 0.5, 0.8])


def test_densify_returns_a_copy():
    op = Densify()
    x = torch.ones(1, 2, 2, 2)
    out = op(x)
    d = Delta(torch.full_like(x, 2.0), torch.ones(1, 1, 2, 2, dtype=torch.bool))
    y = op(d)
    y.zero_()
    again = op(Delta(torch.zeros_like(x), torch.zeros(1, 1, 2, 2, dtype=torch.bool)))
    assert torch.equal(again, torch.full_like(x, 3.0))
    assert out is x
