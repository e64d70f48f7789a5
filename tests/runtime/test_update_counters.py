"""Update statistics from device counters (deltaconvert.stats): every op's counts equal
the set bytes of the masks it returned, whether a kernel counted them (convolutions,
per-pixel kernels, Sparsify, a fused add counted by its activation's kernel, pooling,
resizing, concatenation) or the op summed its mask; frames with statistics off are not
counted; reset starts again. On the CUDA backend the pooling, resize and concatenation
kernels count their own masks (no torch sum per op)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from deltaconvert.convert import convert
from deltaconvert.delta import Delta
from deltaconvert.synthetic import synthetic_video


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Hardswish())
        self.project = nn.Conv2d(32, 16, 1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))

    def forward(self, x):
        y = self.stem(x)
        y = self.relu(y + self.project(self.depthwise(self.expand(y))))  # fused add → ReLU
        y = torch.cat([y, self.up(self.pool(y))], dim=1)
        return self.head(self.pool(y))


def residual_net(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    net = Residual().eval()
    with torch.no_grad():
        net.stem[1].running_mean.uniform_(-0.2, 0.2)
        net.stem[1].running_var.uniform_(0.5, 2.0)
    return net.to(device)


class MaskCounts:
    """The set mask bytes of every op's Delta outputs, per op, from forward hooks (while
    ``counting``)."""

    def __init__(self, model) -> None:
        self.counting = True
        self.last: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.pixels: dict[str, int] = {}
        self.kernel_counted: dict[str, bool] = {}  # the last Delta's mask counted by a kernel
        for name, op in model.delta_ops().items():
            op.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module, args, out):
            if self.counting and isinstance(out, Delta):
                count = int(out.mask.sum())
                self.last[name] = count
                self.total[name] = self.total.get(name, 0) + count
                self.pixels[name] = out.mask.numel()
                self.kernel_counted[name] = out.extras.get("counted_by") is module
        return hook

    def check(self, stats: dict, frames: int) -> None:
        assert stats["delta_frames"] == frames
        assert any(self.last.values()), "no op updated anything"
        for name, entry in stats["layers"].items():
            if name not in self.last:
                assert "updated_last" not in entry, name
                continue
            assert entry["updated_last"] == self.last[name] / self.pixels[name], name
            assert entry["updated_mean"] == pytest.approx(
                self.total[name] / (self.pixels[name] * frames), rel=1e-12), name


def run_and_check(model, frames: list[torch.Tensor]) -> MaskCounts:
    """Delta frames with statistics on, except frame 3; checked after every counted frame."""
    counts = MaskCounts(model)
    model(frames[0])
    counted = 0
    for t, x in enumerate(frames[1:], start=1):
        counts.counting = model.track_stats = t != 3
        model(x)
        if counts.counting:
            counted += 1
            counts.check(model.stats(), counted)
    assert counted == len(frames) - 2
    model.reset()
    model.track_stats = True
    model(frames[0])
    assert model.stats()["work_fraction_last"] is None  # no delta frame in the new sequence
    return counts


def test_counts_match_the_masks_on_the_reference_backend():
    frames = synthetic_video(6, 20, 24, batch=2, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert(residual_net(torch.device("cpu")), frames[0], thresholds=0.02,
                        backend="reference")
    run_and_check(model, frames)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_counts_match_the_masks(runtime, dtype):
    device = torch.device("cuda", 0)
    frames = [f.to(device, dtype) for f in synthetic_video(6, 20, 24, batch=2, seed=4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert(residual_net(device).to(dtype), frames[0], thresholds=0.02, backend="cuda")
    model.set_input_sparsify(dilation=1)
    counts = run_and_check(model, frames)
    from deltaconvert.backends.cuda.cat import CatKernel
    from deltaconvert.backends.cuda.pooling import AvgPoolKernel, MaxPoolKernel
    from deltaconvert.backends.cuda.resize import ResizeKernel
    kinds = (CatKernel, AvgPoolKernel, MaxPoolKernel, ResizeKernel)
    ops = model.delta_ops()
    counted = {name: counts.kernel_counted[name] for name in counts.kernel_counted
               if isinstance(ops[name].accelerated, kinds)}
    assert len(counted) == 5, counted  # two max pools, a global pool, a resize, a cat
    assert all(counted.values()), f"summed by torch, not counted by the kernel: {counted}"


@pytest.mark.cuda
def test_graph_replay_counts_as_eager(runtime):
    device = torch.device("cuda", 0)
    frames = [f.to(device) for f in synthetic_video(8, 20, 24, batch=2, seed=5)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graphed = convert(residual_net(device), frames[0], thresholds=0.02, backend="cuda",
                          cuda_graph=True)
        eager = convert(residual_net(device), frames[0], thresholds=0.02, backend="cuda")
    for x in frames:
        graphed(x), eager(x)
    assert graphed.graph_replay.captured is not None
    got, want = graphed.stats(), eager.stats()
    assert got == want
    assert 0.0 < got["work_fraction_mean"] < 1.0
