"""The per-sequence plan of dense layers (``backends/cuda/dense_layers.py``), without a
GPU: which calls are eligible, the decision from the sampled candidate counts (one host
read, at the next frame or capture), and cuDNN's first call made only for the convs that
turn dense. The layers' kernels and outputs are tested in ``tests/ops/test_dense_layers.py``.
"""
from __future__ import annotations

import contextlib
import warnings
from types import SimpleNamespace

import pytest
import torch
import torchvision

from deltaconvert.backends.cuda import dense_layers
from deltaconvert.backends.cuda.base import Fused
from deltaconvert.backends.cuda.constants import BLOCK, TRUNC_WHOLE_ITEMS, Activation, PixelFunction
from deltaconvert.backends.cuda.pointwise import KernelFunction, whole_span
from deltaconvert.backends.cuda.binding import accelerate, dense_add_sources
from deltaconvert.backends.cuda.dense_layers import DenseLayerPlan, add_kind, conv_kind, conv_kind_of
from deltaconvert.convert import convert
from deltaconvert.ops.boundary import Sparsify

pytestmark = pytest.mark.dense_layers


class Runtime:
    frame = staticmethod(contextlib.nullcontext)


class Wrapper:
    dense = None


def plan(*sparsifiers: Sparsify) -> DenseLayerPlan:
    return DenseLayerPlan(Runtime(), list(sparsifiers) or [Sparsify()])


def mask(updated: int, pixels: int = 100) -> torch.Tensor:
    m = torch.zeros(1, 1, 1, pixels, dtype=torch.bool)
    m[..., :updated] = True
    return m


@pytest.mark.parametrize("fraction,expected", [(0.3, [False, True, True]), (0.0, [True] * 3),
                                               (1.0, [False, False, True])])
def test_convs_whose_candidates_reach_the_fraction_turn_dense(monkeypatch, fraction, expected):
    monkeypatch.setattr(dense_layers, "DENSE_FROM", fraction)
    layers = plan()
    wrappers, warmed = [Wrapper() for _ in expected], []
    for i, (w, updated) in enumerate(zip(wrappers, (29, 30, 100))):
        layers.sample(w, mask(updated), lambda i=i: warmed.append(i))
    assert all(w.dense is None for w in wrappers)  # undecided until resolved
    layers.resolve()
    assert [w.dense for w in wrappers] == expected
    assert warmed == [i for i, dense in enumerate(expected) if dense]
    layers.resolve()  # nothing waits: no second decision, no second warm-up
    assert warmed == [i for i, dense in enumerate(expected) if dense]


def test_a_dense_adds_conv_sources_warm_up_only_if_it_turns_dense(monkeypatch):
    monkeypatch.setattr(dense_layers, "DENSE_FROM", 0.5)
    layers = plan()
    adds, warmed = [Wrapper(), Wrapper()], []
    for i, (add, updated) in enumerate(zip(adds, (80, 20))):
        layers.sample(add, mask(updated), lambda: None)
        for source in range(2):
            layers.also_warm(add, lambda i=i, source=source: warmed.append((i, source)))
    layers.resolve()
    assert [add.dense for add in adds] == [True, False]
    assert warmed == [(0, 0), (0, 1)]
    layers.resolve()  # nothing kept: no second warm-up
    assert warmed == [(0, 0), (0, 1)]
    for _ in range(3):  # warm-ups of an add that never samples are dropped every frame
        layers.also_warm(adds[1], lambda: warmed.append("late"))
        layers.resolve()
    assert warmed == [(0, 0), (0, 1)] and not layers._also


def test_stale_accumulators_are_restored_between_frames_and_refused_otherwise():
    layers = plan()
    restored = []
    layers.require_current("conv")  # nothing stale
    layers.leave_stale("conv", lambda: restored.append("conv"))
    layers.leave_stale("conv", lambda: restored.append("conv, later"))  # the latest counts
    layers.leave_stale("add", lambda: restored.append("add"))
    with pytest.raises(RuntimeError, match="conv: this dense layer stopped"):
        layers.require_current("conv")
    layers.restore()
    assert restored == ["conv, later", "add"]
    layers.require_current("conv")
    layers.restore()  # nothing left: nothing runs twice
    assert restored == ["conv, later", "add"]


def test_a_restoration_assigns_what_the_whole_map_kernel_would():
    """``round(Σ kᵢ·wholeᵢ + shift)``: the wholes in the model dtype, the sum in fp32."""
    torch.manual_seed(0)
    acc = torch.full((1, 3, 2, 2), float("nan"))
    conv_out = torch.randn(1, 3, 2, 2).half()
    skip = torch.randn(1, 3, 2, 2)  # an fp32 total (a Sparsify's ref): rounded to fp16 first
    shift = torch.randn(3)
    dense_layers.assigned_restoration(lambda: acc, [(1.0, lambda: conv_out), (-0.5, lambda: skip)],
                                      shift, torch.float16)()
    expected = (conv_out.float() - 0.5 * skip.half().float() + shift.view(1, -1, 1, 1)).half().float()
    assert torch.equal(acc, expected)


class DeferringActivation:
    """A stand-in for the Nonlinear op whose accumulator a conv deferred."""

    def __init__(self, shape) -> None:
        self.state = {"acc": [dense_layers.DeferredAccumulator(shape, torch.device("cpu"))]}


def test_a_restoration_allocates_a_deferred_accumulator():
    """A conv that starts as a dense layer leaves its activation a deferred accumulator:
    shape, fp32 and device as the tensor would have, and no memory. Its restoration
    allocates it (channels_last, in the op's state) and assigns ``round(conv(total) + b)``;
    the restoration holds the op weakly."""
    import gc
    import weakref

    torch.manual_seed(1)
    op = DeferringActivation((1, 3, 2, 2))
    placeholder = op.state["acc"][0]
    assert dense_layers.deferred(placeholder) and placeholder.dtype == torch.float32
    assert tuple(placeholder.shape) == (1, 3, 2, 2)
    whole, shift = torch.randn(1, 3, 2, 2).half(), torch.randn(3)
    restore = dense_layers.assigned_restoration(dense_layers.accumulator_of(op), [(1.0, lambda: whole)],
                                                shift, torch.float16)
    restore()
    acc = op.state["acc"][0]
    assert isinstance(acc, torch.Tensor) and acc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(acc, (whole.float() + shift.view(1, -1, 1, 1)).half().float())
    restore()  # allocated once: the second restoration writes the same tensor
    assert op.state["acc"][0] is acc
    held = weakref.ref(op)
    del op
    gc.collect()
    assert held() is None, "a restoration kept its op alive"


def test_a_conv_decided_delta_gets_its_stale_accumulator_restored_when_decided(monkeypatch):
    """A conv that ran as a dense layer on its sampling frame without keeping its
    accumulator (perhaps never allocated) has it restored by ``resolve`` if it is decided
    delta, before the delta kernels add to it; one decided dense keeps it stale."""
    monkeypatch.setattr(dense_layers, "DENSE_FROM", 0.5)
    layers = plan()
    restored = []
    convs = {"busy": Wrapper(), "quiet": Wrapper()}
    for name, updated in (("busy", 80), ("quiet", 20)):
        layers.leave_stale(name, lambda name=name: restored.append(name))
        layers.sample(convs[name], mask(updated), lambda: None, name=name)
    layers.resolve()
    assert (convs["busy"].dense, convs["quiet"].dense) == (True, False)
    assert restored == ["quiet"]
    layers.require_current("quiet")
    with pytest.raises(RuntimeError, match="busy: this dense layer stopped"):
        layers.require_current("busy")


def test_allowed_calls(monkeypatch):
    monkeypatch.setattr(dense_layers, "DENSE_FROM", 0.3)
    gate = Sparsify()
    layers = plan(gate)
    assert layers.allows(torch.float16, 256)
    assert not layers.allows(torch.float32, 256)  # TF32
    assert not layers.allows(torch.float16, 255)
    gate.ready = torch.ones(2, dtype=torch.bool)  # slot mode
    assert not layers.allows(torch.float16, 256)
    gate.ready = None
    monkeypatch.setattr(dense_layers, "DENSE_FROM", 1.5)  # off
    assert not layers.allows(torch.float16, 256)


@pytest.mark.parametrize("fractions", [(0.3, 0.5, 0.15, 2.0), (2.0, 0.04, 0.3, 0.5),
                                       (0.2, 0.6, 0.9, 0.6)])
def test_each_kind_of_conv_turns_dense_from_its_own_fraction(monkeypatch, fractions):
    """1×1 convs, spatial convs, narrow convs (an RGB stem) and depthwise convs turn
    dense from their own fractions; an add decides as a 1×1 conv by default."""
    kinds = ("conv", "spatial", "narrow", "depthwise")
    for kind, fraction in zip(kinds, fractions):
        monkeypatch.setattr(dense_layers, {"conv": "DENSE_FROM", "spatial": "DENSE_SPATIAL_FROM",
                                           "narrow": "DENSE_NARROW_FROM",
                                           "depthwise": "DENSE_DEPTHWISE_FROM"}[kind], fraction)
    layers = plan()
    assert layers.allows(torch.float16, 256) == (fractions[0] <= 1)
    convs = {kind: Wrapper() for kind in kinds}
    for (kind, w), fraction in zip(convs.items(), fractions):
        assert layers.allows(torch.float16, 256, kind) == (fraction <= 1)
        layers.sample(w, mask(55), lambda: None, kind)
    layers.resolve()
    assert {kind: w.dense for kind, w in convs.items()} == {
        kind: 0.55 >= fraction for kind, fraction in zip(kinds, fractions)}


@pytest.mark.parametrize("conv_ms,dense", [(0.049, True), (0.050, True), (0.051, False)])
def test_a_depthwise_conv_turns_dense_only_within_its_copies(monkeypatch, conv_ms, dense):
    """A depthwise conv that reaches its fraction is timed (its warm-up, the dense conv,
    against a copy of its input) and turns dense only within ``DEPTHWISE_COPY_RATIO``
    copies; other kinds are not timed, nor a depthwise conv below its fraction."""
    monkeypatch.setattr(dense_layers, "DENSE_FROM", 0.3)
    monkeypatch.setattr(dense_layers, "DENSE_DEPTHWISE_FROM", 0.3)
    monkeypatch.setattr(dense_layers, "DEPTHWISE_COPY_RATIO", 5.0)
    source = torch.zeros(1, 4, 8, 8)
    timed = []

    def device_time(fn, device):
        timed.append(fn)
        return conv_ms if fn is conv else 0.01

    def conv():
        return None

    monkeypatch.setattr(dense_layers, "device_time", device_time)
    layers = plan()
    depthwise, below, other = Wrapper(), Wrapper(), Wrapper()
    layers.sample(depthwise, mask(55), conv, "depthwise", source)
    layers.sample(below, mask(20), conv, "depthwise", source)
    layers.sample(other, mask(55), conv, "conv", source)
    layers.resolve()
    assert (depthwise.dense, below.dense, other.dense) == (dense, False, True)
    assert len(timed) == 2 and timed[0] is conv  # the depthwise conv and its copy, once


def test_a_conv_kind_follows_its_input_channels_per_group_and_taps():
    """As the delta kernels choose: one input channel per group runs the depthwise kernel
    (any channel multiplier, any taps), a few the GEMM over narrow rows (an RGB stem),
    more a GEMM over one tap (1×1) or over gathered taps (spatial)."""
    assert [conv_kind(c) for c in (1, 2, 3, 7, 8, 64)] == [
        "depthwise", "narrow", "narrow", "narrow", "conv", "conv"]
    assert [conv_kind(c, 9) for c in (1, 3, 8, 64)] == ["depthwise", "narrow", "spatial", "spatial"]
    assert conv_kind_of(torch.nn.Conv2d(64, 64, (1, 3))) == "spatial"
    assert conv_kind_of(torch.nn.Conv2d(3, 64, 7)) == "narrow"
    assert conv_kind_of(torch.nn.Conv2d(32, 32, 3, groups=32)) == "depthwise"
    assert add_kind(["conv", "spatial"]) == add_kind(["spatial"]) == "spatial"
    assert add_kind(["conv", "conv"]) == add_kind([]) == "conv"


def bound(arch: str):
    """The torchvision model ``arch`` converted at 64×64 (reference backend), and the CUDA
    backend's wrappers of its ops, built without a GPU (no kernel runs here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert(getattr(torchvision.models, arch)().eval(), torch.randn(1, 3, 64, 64),
                        backend="reference")
    return model, accelerate(model, SimpleNamespace(device=torch.device("cpu"), multiprocessors=1))


def test_dense_adds_are_the_residual_adds_whose_operands_have_whole_values():
    """ResNet's add → ReLU: every block (layer1.0's skip is the max pool's output, whose
    sent values hand on as its total), each with its conv sources (the downsample conv
    too)."""
    model, wrappers = bound("resnet18")
    adds = dense_add_sources(model, wrappers)
    ops = model.delta_ops()
    assert sorted(adds) == sorted(n for n in ops if n.endswith("add"))
    sources = {name: sorted(name for name, w in wrappers.items() if w in convs)
               for name, convs in adds.items()}
    assert sources["layer1.0.add"] == ["layer1.0.conv2"]
    assert sources["layer1.1.add"] == ["layer1.1.conv2"]
    assert sources["layer2.0.add"] == ["layer2.0.conv2", "layer2.0.downsample.0"]


@pytest.mark.parametrize("arch,kind", [("resnet18", "spatial"), ("resnet50", "conv")])
def test_a_dense_add_decides_as_its_spatial_conv_sources(arch, kind):
    """Each conv wrapper knows its kind from its conv; a residual add decides as a spatial
    conv where one of its sources is (the basic block's 3×3 conv2), else as a 1×1 conv
    (the bottleneck's conv3 and downsample)."""
    model, wrappers = bound(arch)
    assert (wrappers["conv1"].kind, wrappers["layer1.0.conv1"].kind) == (
        "narrow", "spatial" if arch == "resnet18" else "conv")
    assert wrappers["layer2.0.downsample.0"].kind == "conv"
    adds = dense_add_sources(model, wrappers)
    assert {add_kind([conv.kind for conv in convs]) for convs in adds.values()} == {kind}


def test_the_adds_that_keep_their_total_are_those_before_a_fused_conv():
    """MobileNetV2: every skip add keeps its running total (the next block's expansion,
    fused into its ReLU6, reads it); ResNet's adds are fused into their ReLU and keep
    none."""
    from deltaconvert.backends.cuda.binding import whole_readers
    mobilenet, wrappers = bound("mobilenet_v2")
    resnet, resnet_wrappers = bound("resnet18")
    adds = sorted(n for n in mobilenet.delta_ops() if n.endswith("add"))
    readers = whole_readers(mobilenet, wrappers)
    assert len(adds) == 10 and sorted(readers) == adds
    for name, convs in readers.items():
        block = int(name.split(".")[1])
        assert convs == [wrappers[f"features.{block + 1}.conv.0.0"]], name  # the next expansion
        add = wrappers[name]
        assert add.whole_readers == convs and add.keeps_total  # undecided: kept
        convs[0].dense, convs[0].layer_call = False, (torch.float16, 64, "conv")
        assert not add.keeps_total  # decided delta: no longer kept
        convs[0].dense = True
        assert add.keeps_total  # a dense layer
        convs[0].layer_call = None
        assert not add.keeps_total  # a dense delta reads no total
    assert whole_readers(resnet, resnet_wrappers) == {}


def test_the_truncations_read_by_convs_alone_are_mobilenets_relu6s():
    """``binding.total_readers``: every ReLU6 of MobileNetV2 is read by one conv alone
    (an expansion's by its depthwise conv, a depthwise conv's by its projection, the
    stem's by block 1's depthwise conv), except the last one, which the pooling reads."""
    from deltaconvert.backends.cuda.binding import total_readers
    mobilenet, wrappers = bound("mobilenet_v2")
    readers = total_readers(mobilenet, wrappers)
    assert readers["features.0.2"] == [wrappers["features.1.conv.0.0"]]
    assert readers["features.2.conv.0.2"] == [wrappers["features.2.conv.1.0"]]
    assert readers["features.2.conv.1.2"] == [wrappers["features.2.conv.2"]]
    assert len(readers) == 34 and "features.18.2" not in readers


def test_the_convs_that_may_start_dense_read_their_inputs_total_from_its_producer():
    """``binding.total_sources``: MobileNetV2's stem (the input Sparsify's reference), its
    17 depthwise convs (their expansion's or the stem's ReLU6, sent values) and the 10
    expansions after a skip add (the add's running total); not the expansions after a
    projection (a conv keeps no total), nor the projections (no activation). Each source
    reads its producer's state when called."""
    from deltaconvert.backends.cuda.binding import total_sources
    mobilenet, wrappers = bound("mobilenet_v2")
    sources = total_sources(mobilenet, wrappers)
    ops = mobilenet.delta_ops()
    depthwise = [n for n, op in ops.items() if getattr(op, "conv", None) is not None
                 and op.conv.groups > 1]
    after_adds = [f"features.{int(n.split('.')[1]) + 1}.conv.0.0" for n in ops if n.endswith("add")]
    assert len(depthwise) == 17 and len(after_adds) == 10
    assert sorted(sources) == sorted(["features.0.0", *depthwise, *after_adds])
    installed = {name for name, w in wrappers.items() if getattr(w, "total_source", None)}
    assert installed == set(sources)
    for name, producer, key in (("features.1.conv.0.0", "features.0.2", "sent"),
                                ("features.4.conv.0.0", "features.3.add", "total")):
        value = torch.zeros(1)
        ops[producer].state[key] = value
        assert wrappers[name].total_source() is value
    stem = next(op for op in ops.values() if isinstance(op, Sparsify))
    stem.state["ref"] = value = torch.ones(1)
    assert wrappers["features.0.0"].total_source() is value


@pytest.mark.parametrize("channels,width", [(6, 1), (16, 8), (20, 4), (144, 8), (2048, 8),
                                            (2052, 4), (600, 1)])
def test_a_whole_map_round_holds_at_most_its_items_per_thread(channels, width):
    """Each block round of ``pw_truncate_whole`` holds at most ``TRUNC_WHOLE_ITEMS``
    channel vectors per thread and ``BLOCK`` pixels, as many pixels as fit; wider pixels,
    and calls without a width, fall back to the scanning kernel (span 0)."""
    vectors = channels // width
    span = whole_span(channels, width)
    if vectors > TRUNC_WHOLE_ITEMS * BLOCK:
        assert span == 0
    else:
        assert 1 <= span <= BLOCK and span * vectors <= TRUNC_WHOLE_ITEMS * BLOCK
        assert span == BLOCK or (span + 1) * vectors > TRUNC_WHOLE_ITEMS * BLOCK  # as full as fits
    assert whole_span(channels, 0) == 0


def nhwc(channels: int, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    return torch.zeros(2, channels, 5, 7, dtype=dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels,width", [(144, 8), (20, 4), (6, 1)])
def test_whole_maps_are_dense_layers_over_flat_nhwc_tensors(channels, width):
    """``pw_truncate_whole`` runs only assigning work (a dense layer's) with an
    element-wise function over flat NHWC tensors (element (p, c) at p·C + c), in the
    widest vectors (16 bytes, 4 channels, 1) that divide C and align every tensor (added
    work of one operand with a flat mask runs ``pw_truncate_whole_added``: see the next
    test); any other call scans (width 0)."""
    from deltaconvert.backends.cuda.pointwise import whole_width
    from deltaconvert.delta import Delta

    shape = (2, channels, 5, 7)
    relu = KernelFunction(Activation.RELU)
    full = torch.ones(2, 1, 5, 7, dtype=torch.bool)

    def work(values: torch.Tensor, assign: bool = True) -> Fused:
        return Fused(None, [Delta(values, full)], [1.0], lin=True, assign=assign)

    sent, out, acc = nhwc(channels), nhwc(channels), nhwc(channels, torch.float32)
    assert whole_width(work(nhwc(channels)), relu, shape, sent, out, acc) == width
    assert whole_width(work(nhwc(channels)), relu, shape, sent, out, None) == width
    assert whole_width(work(nhwc(channels), assign=False), relu, shape, sent, out) == width
    two = Fused(None, [Delta(nhwc(channels), full)] * 2, [1.0, 1.0], lin=True)
    assert whole_width(two, relu, shape, sent, out) == 0
    for code in (PixelFunction.PRODUCT, PixelFunction.LAYER_NORM):
        assert whole_width(work(nhwc(channels)), KernelFunction(code), shape, sent, out) == 0
    nchw = torch.zeros(shape, dtype=torch.float16)
    assert whole_width(work(nchw), relu, shape, sent, out) == 0
    assert whole_width(work(nhwc(channels)), relu, shape, sent, nchw) == 0
    broadcast = torch.zeros(2, channels, 1, 1, dtype=torch.float16)
    assert whole_width(work(broadcast), relu, shape, sent, out) == 0
    if width > 1:  # 2 bytes off alignment: single channels; 8 bytes off: vectors of 4
        storage = torch.zeros(2 * channels * 35 + 8, dtype=torch.float16)
        shifted = storage[1:1 + 2 * channels * 35].view(2, 5, 7, channels).permute(0, 3, 1, 2)
        assert whole_width(work(shifted), relu, shape, sent, out) == 1
        storage4 = storage[4:4 + 2 * channels * 35].view(2, 5, 7, channels).permute(0, 3, 1, 2)
        assert whole_width(work(storage4), relu, shape, sent, out) == 4


@pytest.mark.parametrize("channels,width", [(144, 8), (20, 4), (6, 1)])
def test_accumulated_work_runs_over_the_whole_map_by_its_flat_pixel_mask(channels, width):
    """``pw_truncate_whole_masked`` takes accumulated work (a conv's epilogue added into
    the accumulator), and ``pw_truncate_whole_added`` added work (``lin``: a dense
    delta's), of one operand whose mask is a flat (N, 1, H, W) pixel mask, over flat NHWC
    sent values, output and accumulator (and added values), in the widest vectors that
    fit; a broadcast or strided mask, two operands, added values that are not flat NHWC,
    an NCHW accumulator or a product scan (width 0)."""
    from deltaconvert.backends.cuda.pointwise import whole_width
    from deltaconvert.delta import Delta

    shape = (2, channels, 5, 7)
    relu = KernelFunction(Activation.RELU)
    values = nhwc(channels)
    mask = torch.zeros(2, 1, 5, 7, dtype=torch.bool)

    def work(*masks: torch.Tensor, lin: bool = False) -> Fused:
        return Fused(None, [Delta(values, m) for m in masks], [1.0] * len(masks), lin=lin)

    sent, out, acc = nhwc(channels), nhwc(channels), nhwc(channels, torch.float32)
    assert whole_width(work(mask), relu, shape, sent, out, acc) == width
    assert whole_width(work(mask), KernelFunction(PixelFunction.PRODUCT), shape, sent, out, acc) == 0
    assert whole_width(work(mask, mask), relu, shape, sent, out, acc) == 0
    assert whole_width(work(mask, lin=True), relu, shape, sent, out, acc) == width
    nchw = Fused(None, [Delta(torch.zeros(shape, dtype=torch.float16), mask)], [1.0], lin=True)
    assert whole_width(nchw, relu, shape, sent, out, acc) == 0
    assert whole_width(work(mask.expand(2, 1, 5, 7)[:1].expand(2, 1, 5, 7)), relu, shape, sent, out, acc) == 0
    assert whole_width(work(torch.zeros(2, 1, 5, 14, dtype=torch.bool)[..., ::2]), relu, shape, sent,
                       out, acc) == 0
    assert whole_width(work(mask), relu, shape, sent, out, torch.zeros(shape)) == 0
