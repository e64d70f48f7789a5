"""Which ops list their output pixels (bind time, no GPU): those whose output is read by
a 1×1, stride-1, unpadded convolution (``takes_pixel_list``) or by a truncating op."""
from __future__ import annotations

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
