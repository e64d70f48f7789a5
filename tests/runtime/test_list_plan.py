"""Which ops list their output pixels (bind time, no GPU): those whose output is read by
a 1×1, stride-1, unpadded convolution (``takes_pixel_list``) or by a truncating op."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from deltaconvert.backends.cuda.conv import takes_pixel_list
from deltaconvert.backends.cuda.worklist import list_producers
from deltaconvert.convert import convert
from deltaconvert.ops.conv import Conv2d


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())   # → 1×1: lists
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU6())          # → depthwise
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU())
        self.project = nn.Conv2d(16, 8, 1)                                    # → add
        self.strided = nn.Conv2d(8, 8, 1, stride=2)                           # no list
        self.padded = nn.Conv2d(8, 8, 1, padding=1)                           # no list

    def forward(self, x):
        y = self.stem(x)
        y = y + self.project(self.depthwise(self.expand(y)))                 # add → 1×1 convs
        return self.strided(y) + self.padded(y)[..., 1:-1:2, 1:-1:2]


def test_producers_are_the_inputs_of_pixel_preserving_convs():
    model = convert(Net().eval(), torch.randn(1, 3, 8, 8), backend="reference")
    ops = model.delta_ops()
    consumers = {name for name, op in ops.items() if takes_pixel_list(op)}
    assert len(consumers) == 2  # expand and project; strided and padded are not
    producers = list_producers(model, takes_pixel_list)
    readers = {}
    for node in model.graph.nodes:
        if node.op == "call_module" and node.target in consumers:
            readers[node.target] = node.args[0].target
    assert producers == set(readers.values())
    assert all(type(ops[name]).__name__ == "Nonlinear" for name in producers)  # stem, depthwise acts


def test_bound_plan_lists_for_list_consumers_and_truncations():
    """At bind time (``accelerate``), an op gets a list slot when a 1×1 conv or a
    truncating op reads its output: the activations feeding 1×1 convs, and every conv
    whose activation truncates (tiled convs list their output for it). No GPU needed:
    binding only builds the wrappers."""
    from types import SimpleNamespace

    from deltaconvert.backends.cuda.binding import accelerate
    from deltaconvert.backends.cuda.arena import FrameArena

    model = convert(Net().eval(), torch.randn(1, 3, 8, 8), backend="reference")
    runtime = SimpleNamespace(device=torch.device("cpu"), multiprocessors=1)
    wrappers = accelerate(model, runtime, FrameArena(torch.device("cpu"), len(model.delta_ops())))
    listing = [model.delta_ops()[name] for name, w in wrappers.items() if w.list_count is not None]
    kernels = sorted(tuple(op.conv.weight.shape[2:]) for op in listing if isinstance(op, Conv2d))
    assert kernels == [(1, 1), (3, 3), (3, 3)]  # expand, depthwise and stem feed activations
    assert sorted(type(op).__name__ for op in listing) == ["Conv2d"] * 3 + ["Nonlinear"] * 2


def test_fp16_gemm_convs_list_their_own_rows(monkeypatch):
    """``lists_rows``: every fp16, zero-padded conv but a depthwise one, with at most
    LISTED_TAPS kernel taps, runs its GEMM over listed output pixels (and so gets a list
    slot at bind time, whoever reads its output); fp32, depthwise, reflect-padded and
    9×9 convs keep the tiled GEMM, as does every conv with the setting off."""
    from types import SimpleNamespace

    from deltaconvert.backends.cuda import conv as cuda_conv
    from deltaconvert.backends.cuda.arena import FrameArena
    from deltaconvert.backends.cuda.binding import accelerate

    def op(module, dtype=torch.float16):
        return Conv2d(module.to(dtype))

    assert cuda_conv.lists_rows(op(nn.Conv2d(8, 8, 3, padding=1)))
    assert cuda_conv.lists_rows(op(nn.Conv2d(3, 16, 7, stride=2, padding=3)))   # scalar rows
    assert cuda_conv.lists_rows(op(nn.Conv2d(8, 16, 1)))                        # 1×1 too
    assert cuda_conv.lists_rows(op(nn.Conv2d(8, 8, 8)))                         # 64 taps
    assert not cuda_conv.lists_rows(op(nn.Conv2d(8, 8, 9, padding=4)))          # 81 taps
    assert not cuda_conv.lists_rows(op(nn.Conv2d(8, 8, 3, padding=1, groups=8)))
    assert not cuda_conv.lists_rows(op(nn.Conv2d(8, 8, 3, padding=1), torch.float32))
    assert not cuda_conv.lists_rows(op(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")))

    model = convert(Net().eval(), torch.randn(1, 3, 8, 8), backend="reference").half()
    runtime = SimpleNamespace(device=torch.device("cpu"), multiprocessors=1)
    ops = model.delta_ops()
    wrappers = accelerate(model, runtime, FrameArena(torch.device("cpu"), len(ops)))
    slotted = {name for name, w in wrappers.items() if w.list_count is not None}
    gemm_convs = {name for name, op_ in ops.items()
                  if isinstance(op_, Conv2d) and op_.conv.weight.shape[1] != 1}
    assert len(gemm_convs) == 5 and gemm_convs <= slotted  # stem, expand, project, strided, padded

    monkeypatch.setattr(cuda_conv, "LISTED_ROWS", False)
    assert not cuda_conv.lists_rows(op(nn.Conv2d(8, 8, 3, padding=1)))
    wrappers = accelerate(model, runtime, FrameArena(torch.device("cpu"), len(ops)))
    slotted = {name for name, w in wrappers.items() if w.list_count is not None}
    assert {"strided", "padded"} & {n.split(".")[0] for n in slotted} == set()


def test_listed_parts_bound(monkeypatch):
    """A listed GEMM may split its reduction into one part per SPLIT_MIN_K elements, at
    most MAX_SPLITS (the GPU then chooses how many per frame); below two parts, or with
    split-K off, it runs the lean kernel that cannot split."""
    from deltaconvert.backends.cuda import conv as cuda_conv

    minimum, most = cuda_conv.SPLIT_MIN_K, cuda_conv.MAX_SPLITS
    assert cuda_conv.listed_parts_bound(2 * minimum - 1) == 1   # MobileNetV2's expansions
    assert cuda_conv.listed_parts_bound(2 * minimum) == 2
    assert cuda_conv.listed_parts_bound(5 * minimum + 7) == 5
    assert cuda_conv.listed_parts_bound(9 * 512) == most        # ResNet's layer4
    monkeypatch.setattr(cuda_conv, "SPLIT_K", False)
    assert cuda_conv.listed_parts_bound(9 * 512) == 1


class Stage(nn.Module):
    """A stem, a max pool, then ResNet's stage entry (a 3×3 stride-2 conv and a 1×1
    stride-2 downsample reading one ReLU), a 1×1 conv, a depthwise conv and a 3×3 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())        # reads the pool
        self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.down = nn.Conv2d(8, 16, 1, stride=2)
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU())                # its input's list
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU())
        self.head = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        y = self.a(self.stem(x))
        y = torch.relu(self.b(y) + self.down(y))
        return self.head(self.dw(self.pw(y)))


def test_truncations_list_the_outputs_of_the_convs_that_read_them(monkeypatch):
    """At bind time each truncating op gets the fp16 convs (at most CONV_TARGETS) whose
    first argument is its output and that list their own output pixels
    (``output_lists``): the stage's 3×3 stride-2 conv and 1×1 stride-2 downsample, and
    the head after the depthwise conv's ReLU; not the 1×1 stride-1 conv (it runs over its
    input's list), the depthwise conv (tiled), nor the conv after the max pool (no
    truncation). In fp32 no conv lists rows, so no truncation has targets."""
    from types import SimpleNamespace

    from deltaconvert.backends.cuda.arena import FrameArena
    from deltaconvert.backends.cuda.binding import accelerate
    from deltaconvert.backends.cuda.pointwise import Truncating

    def targets(model):
        runtime = SimpleNamespace(device=torch.device("cpu"), multiprocessors=1)
        wrappers = accelerate(model, runtime, FrameArena(torch.device("cpu"), len(model.delta_ops())))
        return sorted(sorted((tuple(op.conv.kernel_size), tuple(op.conv.stride)) for op, _ in w.conv_targets)
                      for w in wrappers.values() if isinstance(w, Truncating) and w.conv_targets)

    model = convert(Stage().eval(), torch.randn(1, 3, 32, 32), backend="reference")
    assert targets(model) == []  # fp32
    assert targets(model.half()) == [[((1, 1), (2, 2)), ((3, 3), (2, 2))], [((3, 3), (1, 1))]]


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1),
    nn.Conv2d(4, 4, (3, 1), stride=(2, 1), padding=(1, 0)),
    nn.Conv2d(4, 4, 3, dilation=2, padding=2, stride=2), nn.Conv2d(4, 4, 4, padding="same"),
    nn.Conv2d(4, 4, 7, stride=2, padding=3), nn.Conv2d(4, 4, 1, stride=2),
    nn.Conv2d(4, 4, (1, 5), padding=(0, 2))], ids=str)
def test_conv_geometry_is_torchs_output_size(conv):
    """``output_lists.conv_geometry``, which the conv kernels and the truncations that
    mark their outputs both use, gives torch's output size on odd and even inputs."""
    from deltaconvert.backends.cuda.output_lists import conv_geometry

    for h, w in ((13, 19), (16, 16), (1, 7)):
        if h < conv.kernel_size[0] - 2 * (conv.padding[0] if conv.padding != "same" else 0):
            continue
        g = conv_geometry(conv, h, w)
        assert (g.oh, g.ow) == tuple(conv(torch.zeros(1, 4, h, w)).shape[2:]), (h, w)
