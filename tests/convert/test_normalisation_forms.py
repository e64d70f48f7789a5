"""New normalised forms, each against the dense op at threshold 0 (and with zero dense
islands): functional batch-norm, parameter-only subgraphs folded to constants, padding
computed from the input size (also −∞ padding before max pooling), stacked-tensor
reductions (weighted sums), channel groups (split attention, selective kernels)."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deltaconvert
from deltaconvert.synthetic import synthetic_video


def _frames(height=20, width=28, batch=2, count=4):
    return synthetic_video(count, height, width, batch=batch, seed=3)


def _check(model: nn.Module, frames, islands: int = 0):
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deltaconvert.DenseFallbackWarning)
        delta = deltaconvert.convert(model, frames[0])
    assert len(delta.dense_islands) == islands, delta.dense_islands
    with torch.no_grad():
        for frame in frames:
            torch.testing.assert_close(delta(frame), model(frame), rtol=1e-5, atol=1e-5)
    return delta


class FunctionalBatchNorm(nn.Module):
    """timm's BatchNormAct2d in miniature: ``F.batch_norm`` on running statistics then
    an activation; once after a conv (folded), once after an add (a channel scale)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(6), nn.BatchNorm2d(6)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)

    def _bn(self, bn, x):
        return F.batch_norm(x, bn.running_mean, bn.running_var, weight=bn.weight, bias=bn.bias,
                            training=False, eps=bn.eps)

    def forward(self, x):
        y = F.silu(self._bn(self.bn1, self.conv(x)))
        return F.relu(self._bn(self.bn2, y + 1.0))


def test_functional_batch_norm_is_folded_or_a_channel_scale():
    delta = _check(FunctionalBatchNorm(), _frames())
    kinds = {type(op).__name__ for op in delta.delta_ops().values()}
    assert "ChannelScale" in kinds  # the one after the add
    assert sum(type(op).__name__ == "Conv2d" for op in delta.delta_ops().values()) == 1


def test_functional_batch_norm_in_training_mode_is_not_rewritten():
    class Batchwise(nn.Module):
        def forward(self, x):
            return F.batch_norm(x, None, None, training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deltaconvert.DenseFallbackWarning)
        delta = deltaconvert.convert(Batchwise(), _frames()[0])
    assert len(delta.dense_islands) == 1


class StandardisedConv(nn.Module):
    """Weight standardisation as in timm's ScaledStdConv2d: the weight is computed from
    parameters on every call."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 3, 3, 3))
        self.gain = nn.Parameter(torch.rand(5, 1, 1, 1) + 0.5)

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.relu(F.conv2d(x, w * self.gain, padding=1))


def test_parameter_only_subgraph_becomes_a_constant():
    delta = _check(StandardisedConv(), _frames())
    assert sum(type(op).__name__ == "Conv2d" for op in delta.delta_ops().values()) == 1


def test_folding_does_not_touch_the_callers_model():
    model = StandardisedConv()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _check(model, _frames())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class SamePadConv(nn.Module):
    """TensorFlow 'SAME' padding computed from the input size in Python (timm's
    Conv2dSame / pad_same), which torch.fx cannot trace symbolically. The max pool's
    input is ≤ −1 wherever the ReLU is 0: there a −∞ border never wins, a zero one would."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.pool = nn.MaxPool2d(3, 2)

    @staticmethod
    def _pad(x, k, s, value=0.0):
        ih, iw = x.size()[-2:]
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)

    def forward(self, x):
        y = F.relu(self.conv(self._pad(x, 3, 2))) - 1.0
        return self.pool(self._pad(y, 3, 2, value=-float("inf")))


def test_size_dependent_padding_is_resolved_for_the_example_size():
    model = SamePadConv().eval()
    delta = _check(model, _frames(21, 30))
    delta.reset()
    with torch.no_grad():
        for frame in synthetic_video(2, 21, 30, batch=3, seed=4):  # any batch size
            expected = model(frame)
            torch.testing.assert_close(delta(frame), expected)
            assert (expected[..., -1] < 0).any()  # windows on the −∞ border

    delta.reset()
    with pytest.raises(deltaconvert.SequenceMismatch,
                       match=r"converted for inputs of size \(N, 3, 21, 30\).*<root> \(SamePadConv\)"
                             r".*Convert the original model again"):
        delta(torch.randn(1, 3, 24, 32))


class WeightedFusion(nn.Module):
    """BiFPN fast normalised fusion: ``Σ wᵢ·xᵢ / (Σ w + ε)`` through stack + sum, the
    weights a function of parameters only."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.weight = nn.Parameter(torch.tensor([0.7, 1.3, 0.4]))

    def forward(self, x):
        w = F.relu(self.weight)
        w = w / (w.sum() + 1e-4)
        xs = [self.a(x), self.b(x), self.b(x) * 0.5]
        fused = torch.sum(torch.stack([w[i] * t for i, t in enumerate(xs)], dim=-1), dim=-1)
        return F.silu(fused) + torch.stack(xs, dim=1).mean(1)


def test_stack_and_reduction_over_the_stacked_dim_stay_in_delta_form():
    _check(WeightedFusion(), _frames())


class SplitAttention(nn.Module):
    """timm's SplitAttn (ResNeSt) in miniature: the radix branches as channel groups of
    one conv, summed over the radix (``reshape → sum(1)``), global pool → 1×1 convs →
    softmax over the radix per cardinal group (``view → transpose → softmax(1) →
    reshape``), then the branches weighted by it and summed (``(x ⊙ a).sum(1)``)."""

    def __init__(self, radix: int, cardinality: int, combine=torch.mul):
        super().__init__()
        self.radix, self.cardinality, self.combine = radix, cardinality, combine
        width = 4 * cardinality
        self.conv = nn.Conv2d(3, width * radix, 3, padding=1)
        self.fc1 = nn.Conv2d(width, 8, 1)
        self.fc2 = nn.Conv2d(8, width * radix, 1, groups=cardinality)

    def forward(self, x):
        x = F.relu(self.conv(x))
        b, rc, h, w = x.shape
        x = x.reshape(b, self.radix, rc // self.radix, h, w)
        gap = F.relu(self.fc1(x.sum(dim=1).mean((2, 3), keepdim=True)))
        attn = self.fc2(gap).view(b, self.cardinality, self.radix, -1).transpose(1, 2)
        attn = F.softmax(attn, dim=1).reshape(b, -1).view(b, -1, 1, 1)
        out = self.combine(x, attn.reshape(b, self.radix, rc // self.radix, 1, 1))
        return out.sum(dim=1).contiguous()


class SelectiveKernel(nn.Module):
    """timm's SelectiveKernel (SKNet) in miniature: branches stacked on dim 1, an
    attention over the branches (softmax over dim 1 of a 5-D view), ``(x · a).sum(1)``."""

    def __init__(self):
        super().__init__()
        self.paths = nn.ModuleList([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 5, padding=2)])
        self.fc = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1))

    def forward(self, x):
        x = torch.stack([F.relu(p(x)) for p in self.paths], dim=1)
        a = self.fc(x.sum(1).mean((2, 3), keepdim=True))
        b, c, h, w = a.shape
        a = torch.softmax(a.view(b, 2, c // 2, h, w), dim=1)
        return torch.sum(x * a, dim=1)


@pytest.mark.parametrize("model", [
    SplitAttention(2, 1), SplitAttention(2, 2), SplitAttention(4, 1),
    SplitAttention(2, 1, torch.add), SplitAttention(3, 2, torch.sub), SelectiveKernel(),
], ids=["radix2", "radix2_cardinality2", "radix4", "add", "sub", "selective_kernel"])
def test_channel_groups_become_channel_ops(model):
    """Sums, softmaxes and element-wise ops over channel groups (5-D views of 4-D maps)
    become slices, adds and a per-pixel ChannelGroupSoftmax: no dense island."""
    delta = _check(model, _frames())
    kinds = [type(getattr(op, "fn", op)).__name__ for op in delta.delta_ops().values()]
    assert "ChannelGroupSoftmax" in kinds
