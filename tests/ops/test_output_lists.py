"""Output lists written by the producer (``backends/cuda/output_lists.py``): a truncation
marks the output mask and pixel list of each conv that reads its output, and the conv
runs its listed GEMM over them without ``conv_output_list``.

* Op level, on every fp16 GEMM conv geometry that lists its own rows (k×k, strided,
  dilated, grouped, asymmetric, even "same" padding, two samples and three), with new
  kernel outputs poisoned: the conv's mask is the reference's output mask, its list holds
  exactly that mask's pixels, and its output matches the reference, frame after frame
  over every mask kind; ``conv_output_list`` does not run where the truncation marks
  (channel vectors), and does where it cannot (NCHW deltas).
* Model level: a ResNet-shaped net whose truncations mark one and two convs (a block's
  3×3 conv and its 1×1 downsample; after an add; after a dense layer's whole-map
  truncation) gives bit-identical outputs with output lists on and off, eagerly and
  under CUDA-graph replay, and only the convs without a truncating producer still list
  their own outputs.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch import nn

from deltaconvert.convert import convert
from deltaconvert.ops.conv import Conv2d
from deltaconvert.ops.footprint import Footprint
from deltaconvert.ops.nonlinear import Nonlinear
from deltaconvert.synthetic import synthetic_video

from .test_cuda_ops import DEVICE, MASK_KINDS, V, assert_same, prepare, random_delta
from .test_work_lists import OWN_ROWS, listed_pixels, mask_pixels, with_batch_statistics

pytestmark = pytest.mark.cuda

HALF = torch.float16


def widened(make):
    """``make`` with its input channels rounded up to a multiple of 4 where its groups
    allow: the truncation marks over channel vectors only."""
    def make_widened() -> nn.Conv2d:
        c = make()
        cin = -(-c.in_channels // 4) * 4
        cin = cin if cin % c.groups == 0 else c.in_channels
        return nn.Conv2d(cin, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                         c.groups, bias=c.bias is not None)
    return make_widened


def own_rows(make) -> bool:
    from deltaconvert.backends.cuda.conv import lists_own_rows
    return lists_own_rows(Conv2d(make().half()))


MARKED = {name: (widened(make), (shape[0], widened(make)().in_channels, *shape[2:]))
          for name, (make, shape) in OWN_ROWS.items() if own_rows(make)}


@pytest.fixture
def arena(poisoned):
    from deltaconvert.backends.cuda.arena import FrameArena
    return FrameArena(DEVICE, 4)


def recorded(call) -> list[tuple[str, str]]:
    """(layer, kernel) of every backend launch of ``call()``, in order."""
    from deltaconvert.backends.cuda.kernels import recorded_launches
    with recorded_launches() as launches:
        call()
    return [(layer, name) for layer, name, _ in launches]


def test_the_cases_cover_every_marked_geometry():
    assert {"3x3", "asym_kernel_stride", "dilated_strided", "grouped", "stem_7x7", "same_even",
            "row_kernel", "parts_batch2"} <= set(MARKED)
    assert "pointwise_1x1" not in MARKED  # runs over its input's list
    assert all(shape[1] % 4 == 0 for _, shape in MARKED.values())


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("name", MARKED)
def test_a_truncation_lists_its_consumer_convs_outputs(poisoned, arena, name, layout):
    """Over channels_last deltas the truncation marks (``pw_truncate_marking``); over NCHW
    ones it cannot use channel vectors, marks nothing, and the conv lists its own
    outputs: the same mask, list and output either way."""
    make, shape = MARKED[name]
    torch.manual_seed(0)
    ops, reference = prepare(
        poisoned, lambda: [Nonlinear(nn.ReLU(), Footprint.POINTWISE, (True,), 0.05), Conv2d(make())],
        (V(shape),), HALF, seed=0)
    relu, conv = ops
    for op in ops:
        op.accelerated.arena = arena
    conv.accelerated.list_count = arena.slot(1)
    relu.accelerated.conv_targets = [(conv, conv.accelerated)]
    marks = layout == "nhwc"
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    with torch.no_grad():
        for frame, kind in enumerate(MASK_KINDS * 2):
            d = random_delta(shape, kind, HALF, gen, layout=int(marks))
            expected_relu = reference[0](d)
            expected = reference[1](expected_relu)
            out = {}

            def call():
                with poisoned.frame():
                    arena.begin_frame()
                    out["relu"] = relu(d)
                    out["conv"] = conv(out["relu"])

            kernels = {kernel for _, kernel in recorded(call)}
            torch.cuda.synchronize()
            what = f"frame {frame} ({kind})"
            assert ("pw_truncate_marking" in kernels) is marks, kernels
            assert ("conv_output_list" in kernels) is not marks, kernels
            assert set(out["relu"].extras.get("output_lists", {})) == ({conv.node_name} if marks else set())
            assert_same(out["relu"], expected_relu, HALF, f"{what} truncation")
            assert torch.equal(out["conv"].mask, expected.mask), f"{what}: the conv's mask"
            assert listed_pixels(out["conv"].extras["pixels"]) == mask_pixels(expected.mask), \
                f"{what}: the conv's list is not its output mask"
            assert_same(out["conv"], expected, HALF, f"{what} conv")


class Stages(nn.Module):
    """ResNet's shape at a small scale: a narrow stem and 3×3 conv, then a stage's first
    block (3×3 stride-2 conv and 1×1 stride-2 downsample, both reading one ReLU; their
    sum fused into a ReLU) and two more convs (dilated, row kernel) reading ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.relu0 = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU()
        self.a, self.relu1 = nn.Conv2d(4, 16, 3, padding=1), nn.ReLU()
        self.b = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.relu2 = nn.ReLU()
        self.c, self.relu3 = nn.Conv2d(32, 32, 3, padding=2, dilation=2), nn.ReLU()
        self.d, self.relu4 = nn.Conv2d(32, 32, (1, 3), padding=(0, 1)), nn.ReLU()
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.a(self.relu0(self.stem(x))))
        y = self.relu2(self.b(y) + self.down(y))
        return self.head(self.relu4(self.d(self.relu3(self.c(y)))))


def stages_net() -> nn.Module:
    return with_batch_statistics(Stages().eval()).to(DEVICE)


def frames() -> list[torch.Tensor]:
    return [f.to(DEVICE).half().contiguous(memory_format=torch.channels_last)
            for f in synthetic_video(8, 48, 64, batch=2, seed=7)]


def outputs_and_launches(net, clip, graph: bool):
    """The delta model's outputs on every frame, the launches of its third frame (the
    first after the dense-layer decision; eager), and the convs each truncation marks
    (by op name)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert(net, clip[0].float(), backend="cuda", thresholds=0.02)
    model.set_input_sparsify(threshold=0.01)
    model = model.to(dtype=HALF)
    outputs = []
    with torch.no_grad():
        outputs += [model(x).clone() for x in clip[:2]]
        launches = recorded(lambda: outputs.append(model(clip[2]).clone()))
        model.cuda_graph = graph
        outputs += [model(x).clone() for x in clip[3:]]
    targets = {name: [op.node_name for op, _ in op_.accelerated.conv_targets]
               for name, op_ in model.delta_ops().items()
               if getattr(op_.accelerated, "conv_targets", ())}
    return outputs, launches, targets


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("dense", ["none", "narrow"])
def test_output_lists_change_no_output(runtime, monkeypatch, graph, dense):
    """``narrow``: the stem and the 3×3 conv over 4 channels run as dense layers, so the
    ReLU that marks the stage's two convs is a whole-map truncation."""
    if graph and os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1":
        pytest.skip("CUDA-graph capture needs torch's caching allocator (off under the sanitizer)")
    from deltaconvert.backends.cuda import dense_layers, output_lists
    monkeypatch.setattr(dense_layers, "DENSE_FROM", 2.0)
    monkeypatch.setattr(dense_layers, "DENSE_SPATIAL_FROM", 2.0)
    monkeypatch.setattr(dense_layers, "DENSE_NARROW_FROM", 0.0 if dense == "narrow" else 2.0)
    net, clip = stages_net(), frames()
    results = {}
    for on in (True, False):
        monkeypatch.setattr(output_lists, "OUTPUT_LISTS", on)
        results[on] = outputs_and_launches(net, clip, graph)
    (on_out, on_launches, targets), (off_out, off_launches, _) = results[True], results[False]
    assert sorted(map(len, targets.values())) == [1, 1, 1, 2], targets  # a; b and down; c; d
    listing = {layer for layer, kernel in on_launches if kernel == "conv_output_list"}
    assert len(listing) == (0 if dense == "narrow" else 1), listing  # the stem reads the Sparsify
    listing = {layer for layer, kernel in off_launches if kernel == "conv_output_list"}
    assert len(listing) == (4 if dense == "narrow" else 6), listing
    if dense == "narrow":
        assert any(kernel == "pw_truncate_whole" for _, kernel in on_launches), on_launches
    for i, (a, b) in enumerate(zip(on_out, off_out)):
        assert torch.isfinite(a).all(), f"frame {i}"
        assert torch.equal(a, b), f"frame {i}: output lists changed the output"
