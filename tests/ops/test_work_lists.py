"""Pixel work lists on the GPU (``backends/cuda/worklist.py``).

* A list holds exactly the set pixels of its mask, each once: for ``pw_truncate``
  (emitted pixels) and ``pw_linear`` (the union of its operands), frame after frame with
  the counts zeroed by ``FrameArena.begin_frame``.
* ``conv_gemm_gathered`` and ``conv_gemm_listed`` (1×1 convolutions over a listed input,
  rows = listed pixels) match the reference on poisoned outputs, alone and fused into
  their activation, with more row tiles than their persistent grid has slots; they
  return the input's mask and list. ``pw_truncate`` over listed candidates matches the reference too.
* The tiled conv kernels (depthwise, GEMM, split-K; fp16 and fp32) list their output
  pixels, and the activation fused into them truncates over that list in their mask.
* fp16 GEMM convs of every geometry (k×k, strided, dilated, grouped, asymmetric, split-K,
  scalar and vector rows) list their own output pixels (``conv_output_list``) and run
  their GEMM over that list (``conv_gemm_gathered`` where its vectors and taps allow,
  else ``conv_gemm_listed``), alone and fused, matching the reference; their list is
  their mask.
* In a whole fp16 model, every Delta that carries a list lists its mask, and lists on or
  off give bit-identical outputs (a GEMM row's sum does not depend on which rows share
  its block), eagerly and under CUDA-graph replay.
* The activations fused into convs truncate flat over the whole map, gated by their
  candidate mask (``pw_truncate_whole_masked``), with outputs bit-identical to the
  listing kernel's, eagerly and under CUDA-graph replay.
"""
from __future__ import annotations

import operator
import os

import pytest
import torch
from torch import nn

from deltaconvert.convert import convert
from deltaconvert.delta import Delta
from deltaconvert.ops.conv import Conv2d
from deltaconvert.ops.footprint import Footprint
from deltaconvert.ops.linear import LinearCall
from deltaconvert.ops.nonlinear import Nonlinear
from deltaconvert.synthetic import synthetic_video

from .test_cuda_ops import CONVS, DEVICE, MASK_KINDS, V, assert_same, prepare, random_delta

pytestmark = pytest.mark.cuda

HALF = torch.float16


def mask_pixels(mask: torch.Tensor) -> list[int]:
    """The linear indices of the set pixels of a ``(N, 1, H, W)`` mask, ascending."""
    return mask.reshape(-1).nonzero().reshape(-1).tolist()


def listed_pixels(listed) -> list[int]:
    """The entries of a PixelList, ascending (a host sync: tests only)."""
    count = int(listed.count)
    return sorted(listed.index[:count].tolist())


def launched_kernels_of(call) -> set[str]:
    """The names of the kernels ``call()`` launches."""
    from deltaconvert.backends.cuda.kernels import recorded_launches
    with recorded_launches() as launches:
        call()
    return {name for _, name, _ in launches}


def list_of(mask: torch.Tensor, gen: torch.Generator):
    """A PixelList of ``mask`` in shuffled order, as a producing kernel would leave it."""
    from deltaconvert.backends.cuda.worklist import PixelList
    pixels = torch.tensor(mask_pixels(mask), dtype=torch.int32, device=DEVICE)
    order = torch.randperm(pixels.numel(), generator=gen, device=DEVICE)
    index = torch.full((mask.numel(),), -1, dtype=torch.int32, device=DEVICE)
    index[:pixels.numel()] = pixels[order]
    return PixelList(index, torch.tensor([pixels.numel()], dtype=torch.int32, device=DEVICE))


@pytest.fixture
def arena(poisoned):
    from deltaconvert.backends.cuda.arena import FrameArena
    return FrameArena(DEVICE, 4)


def test_truncate_and_linear_list_their_masks(poisoned, arena):
    from deltaconvert.backends.cuda.binding import wrapper_for

    shape = (2, 40, 9, 13)
    relu = Nonlinear(nn.ReLU(), Footprint.POINTWISE, (True,), 0.25).to(DEVICE, HALF)
    add = LinearCall(operator.add, Footprint.POINTWISE, affine=True).to(DEVICE, HALF)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    with torch.no_grad():
        relu(torch.randn(shape, generator=gen, device=DEVICE).to(HALF))
    for slot, op in enumerate((relu, add)):
        op.node_name = f"op{slot}"
        op.accelerated = wrapper_for(op, poisoned)
        op.accelerated.list_count = arena.slot(slot)
    for frame, kind in enumerate(MASK_KINDS * 2):
        with torch.no_grad(), poisoned.frame():
            arena.begin_frame()
            emitted = relu(random_delta(shape, kind, HALF, gen, layout=1))
            summed = add(random_delta(shape, kind, HALF, gen, layout=1),
                         random_delta(shape, "random", HALF, gen, layout=1))
        for name, out in (("pw_truncate", emitted), ("pw_linear", summed)):
            assert listed_pixels(out.extras["pixels"]) == mask_pixels(out.mask), \
                f"frame {frame} ({kind}): {name}'s list is not its mask"


def test_no_list_without_a_slot(poisoned):
    from deltaconvert.backends.cuda.binding import wrapper_for
    relu = Nonlinear(nn.ReLU(), Footprint.POINTWISE, (True,), 0.0).to(DEVICE, HALF)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    with torch.no_grad():
        relu(torch.randn(2, 8, 5, 7, generator=gen, device=DEVICE).to(HALF))
    relu.accelerated = wrapper_for(relu, poisoned)
    with torch.no_grad(), poisoned.frame():
        out = relu(random_delta((2, 8, 5, 7), "random", HALF, gen, layout=1))
    assert "pixels" not in out.extras


LISTED_CONVS = {
    "k16_96": (lambda: nn.Conv2d(16, 96, 1), (2, 16, 9, 11)),       # a partial channel block
    "k144_24": (lambda: nn.Conv2d(144, 24, 1), (2, 144, 7, 9)),     # K over several chunks
    "grouped": (lambda: nn.Conv2d(64, 48, 1, groups=2), (2, 64, 9, 11)),
    "wide": (lambda: nn.Conv2d(32, 1280, 1), (1, 32, 5, 7)),        # 20 channel blocks
    # 48 000 pixels: more row tiles than the one-wave grid has slots (blocks loop).
    "many_rows": (lambda: nn.Conv2d(16, 40, 1), (1, 16, 200, 240)),
}


def run_listed(runtime, ops, reference, shape, seed, kinds=MASK_KINDS):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    for frame, kind in enumerate(kinds):
        d = random_delta(shape, kind, HALF, gen, layout=1)
        listed = list_of(d.mask, gen)
        d = Delta(d.values, d.mask, {"pixels": listed})
        expected = d
        for op in reference:
            expected = op(expected)
        with torch.no_grad(), runtime.frame():
            got = ops[0](d)
            conv_out = got  # the first op's output
            for op in ops[1:]:
                got = op(got)
        torch.cuda.synchronize()
        if isinstance(ops[0], Conv2d):
            assert conv_out.mask is d.mask, "the listed conv returns its input's mask"
            assert conv_out.extras["pixels"] is listed, "the listed conv hands its list on"
        assert_same(got, expected, HALF, f"frame {frame} ({kind}) output")
        for op, ref_op in zip(ops, reference):
            assert_same(op._state, ref_op._state, HALF, f"frame {frame} ({kind}) {op.node_name} state")


@pytest.mark.parametrize("gathered", [True, False], ids=["gathered", "listed"])
@pytest.mark.parametrize("name", LISTED_CONVS)
def test_listed_conv_matches_reference(poisoned, monkeypatch, name, gathered):
    """Each of these convs runs ``conv_gemm_gathered`` (or, with it off,
    ``conv_gemm_listed``) over its input's list."""
    from deltaconvert.backends.cuda import conv as cuda_conv
    monkeypatch.setattr(cuda_conv, "GATHERED", gathered)
    make, shape = LISTED_CONVS[name]
    torch.manual_seed(0)
    ops, reference = prepare(poisoned, lambda: [Conv2d(make())], (V(shape),), HALF, seed=0)
    gemm = "conv_gemm_gathered" if gathered else "conv_gemm_listed"
    with torch.no_grad():
        kernels = launched_kernels_of(lambda: run_listed(poisoned, ops, reference, shape, seed=1))
    assert gemm in kernels, kernels


def test_listed_conv_fused_into_its_activation(poisoned):
    torch.manual_seed(0)
    shape = (2, 24, 11, 13)
    ops, reference = prepare(
        poisoned, lambda: [Conv2d(nn.Conv2d(24, 144, 1, bias=False)),
                           Nonlinear(nn.ReLU6(), Footprint.POINTWISE, (True,), 0.1)],
        (V(shape),), HALF, seed=0, fuse=True)
    with torch.no_grad():
        run_listed(poisoned, ops, reference, shape, seed=1)


class FewMultiprocessors:
    """A runtime as if its GPU had ``count`` multiprocessors: one wave of blocks, and so a
    persistent grid, is that much smaller (everything else is the runtime's)."""

    def __init__(self, runtime, count: int) -> None:
        self._runtime, self.multiprocessors = runtime, count

    def __getattr__(self, name: str):
        return getattr(self._runtime, name)


@pytest.mark.parametrize("multiprocessors", [None, 1], ids=["h200", "one_sm"])
@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_truncate_over_listed_candidates(poisoned, threshold, multiprocessors):
    """An activation whose input carries a list visits only the listed pixels (om zeroed
    by the host) and matches the reference, masks included — also when its persistent
    grid (one wave: 4 blocks on one multiprocessor) loops over many windows."""
    shape = (2, 40, 9, 13) if multiprocessors is None else (2, 40, 45, 53)
    ops, reference = prepare(
        poisoned, lambda: [Nonlinear(nn.Hardswish(), Footprint.POINTWISE, (True,), threshold)],
        (V(shape),), HALF, seed=0)
    if multiprocessors is not None:
        ops[0].accelerated.runtime = FewMultiprocessors(poisoned, multiprocessors)
    with torch.no_grad():
        run_listed(poisoned, ops, reference, shape, seed=1)


TILED_CONVS = {  # conv kernels over tiles: each lists its output pixels when it has a slot
    "depthwise": (lambda: nn.Conv2d(40, 40, 3, padding=1, groups=40, bias=False), (2, 40, 13, 19)),
    "depthwise_s2": (lambda: nn.Conv2d(24, 24, 5, stride=2, padding=2, groups=24, bias=False),
                     (2, 24, 17, 21)),
    "gemm_3x3": (lambda: nn.Conv2d(8, 24, 3, padding=1, bias=False), (2, 8, 13, 19)),
    # 4 tiles × 1 channel block, K = 2304: split-K (the list comes from split 0's blocks).
    "split_k": (lambda: nn.Conv2d(256, 64, 3, padding=1, bias=False), (1, 256, 16, 16)),
}


@pytest.mark.parametrize("dtype", [HALF, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("name", TILED_CONVS)
def test_tiled_conv_lists_its_pixels_for_its_truncation(poisoned, arena, name, dtype):
    """A tiled conv with a list slot lists exactly its output mask, and the activation it
    is fused into truncates over that list, writing its mask into the conv's (which only
    it reads): outputs, masks and state match the reference frame after frame."""
    make, shape = TILED_CONVS[name]
    torch.manual_seed(0)
    ops, reference = prepare(
        poisoned, lambda: [Conv2d(make()), Nonlinear(nn.ReLU6(), Footprint.POINTWISE, (True,), 0.05)],
        (V(shape),), dtype, seed=0, fuse=True)
    ops[0].accelerated.list_count = arena.slot(0)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    with torch.no_grad():
        for frame, kind in enumerate(MASK_KINDS * 2):
            d = random_delta(shape, kind, dtype, gen, layout=1)
            expected = reference[1](reference[0](d))
            with poisoned.frame():
                arena.begin_frame()
                conv_out = ops[0](d)
                assert listed_pixels(conv_out.extras["pixels"]) == mask_pixels(conv_out.mask), \
                    f"frame {frame} ({kind}): the conv's list is not its mask"
                got = ops[1](conv_out)
            torch.cuda.synchronize()
            assert got.mask is conv_out.mask, "the truncation reuses the mask the conv wrote for it"
            assert_same(got, expected, dtype, f"frame {frame} ({kind}) output")
            assert_same(ops[1]._state, reference[1]._state, dtype, f"frame {frame} ({kind}) state")


# fp16 GEMM convs (not depthwise) of CONVS, plus split-K (4 tiles, K = 2304) and many rows.
OWN_ROWS = {**{name: make_shape for name, make_shape in CONVS.items()
               if make_shape[0]().weight.shape[1] != 1},
            "split_k": (lambda: nn.Conv2d(256, 64, 3, padding=1, bias=False), (1, 256, 16, 16)),
            # K = 288: at most two parts; one SM's grid of 4 blocks splits only frames of
            # at most two row tiles (sparse ones), and runs the others in one part. 42
            # channels: scalar weight rows, and conv_listed_sum a channel per thread
            # (split_k: vector rows, four channels per thread).
            "parts_3x3": (lambda: nn.Conv2d(32, 42, 3, padding=1), (1, 32, 90, 100)),
            # Two samples in one list (rows of either sample in one row tile).
            "parts_batch2": (lambda: nn.Conv2d(64, 48, 3, stride=2, padding=1), (2, 64, 20, 18)),
            "many_rows_3x3": (lambda: nn.Conv2d(16, 24, 3, padding=1), (1, 16, 90, 100)),
            # K = 72, one part (conv_gemm_listed); 42 channels: scalar weight rows.
            "scalar_rows_3x3": (lambda: nn.Conv2d(8, 42, 3, padding=1), (1, 8, 40, 50)),
            # conv_gemm_gathered (channels_last frames): 3×3 over 64 channels, 14 400
            # rows, one part or two by the frame's count; and a strided 1×1 whose K = 24
            # ends inside its one chunk.
            "gathered_3x3": (lambda: nn.Conv2d(64, 64, 3, padding=1), (1, 64, 90, 160)),
            "gathered_1x1_s2": (lambda: nn.Conv2d(24, 40, 1, stride=2), (2, 24, 17, 23))}


def listed_gemm_of(conv: nn.Module, values: torch.Tensor, splits: bool) -> set[str]:
    """The kernels a listed GEMM over ``values`` runs: ``conv_gemm_gathered`` where its
    vectors and taps allow (:func:`~deltaconvert.backends.cuda.conv.gathers`), else
    ``conv_gemm_listed``; ``_parts`` and ``conv_listed_sum`` where K may split."""
    from deltaconvert.backends.cuda.conv import gathers, gemm_mode
    cout, cin_g, kh, kw = conv.weight.shape
    weight = torch.empty(8, device=DEVICE, dtype=HALF)  # 16-byte aligned, as packed weights are
    mode = gemm_mode(values, weight, cin_g, cout // conv.groups)
    gemm = "conv_gemm_gathered" if gathers(mode, kh * kw, cin_g) else "conv_gemm_listed"
    return {gemm + "_parts", "conv_listed_sum"} if splits else {gemm}


@pytest.mark.parametrize("multiprocessors", [None, 1], ids=["h200", "one_sm"])
@pytest.mark.parametrize("fuse", [False, True], ids=["alone", "fused"])
@pytest.mark.parametrize("name", OWN_ROWS)
def test_conv_runs_over_its_own_output_list(poisoned, arena, name, fuse, multiprocessors):
    """An fp16 GEMM conv with a list slot lists its output pixels (``conv_output_list``)
    and runs its GEMM over them (``conv_gemm_gathered`` or ``conv_gemm_listed``, or their
    ``_parts`` and ``conv_listed_sum`` where K may split, in one part or several; the
    ``gathered_`` cases on every channels_last frame): its mask and
    list agree, and its output (or its fused activation's output and state) matches the
    reference frame after frame, on NCHW and channels_last inputs (scalar and vector
    rows), also when one multiprocessor's persistent grid loops over many row tiles."""
    from deltaconvert.backends.cuda.conv import listed_parts_bound
    make, shape = OWN_ROWS[name]
    torch.manual_seed(0)
    splits = listed_parts_bound(make().weight[0].numel()) > 1  # K = Cin_g·KH·KW ≥ 256
    chain = (lambda: [Conv2d(make()), Nonlinear(nn.ReLU6(), Footprint.POINTWISE, (True,), 0.05)]) \
        if fuse else (lambda: [Conv2d(make())])
    ops, reference = prepare(poisoned, chain, (V(shape),), HALF, seed=0, fuse=fuse)
    ops[0].accelerated.list_count = arena.slot(0)
    if multiprocessors is not None:
        ops[0].accelerated.runtime = FewMultiprocessors(poisoned, multiprocessors)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    gathered_frames = 0
    with torch.no_grad():
        for frame, kind in enumerate(MASK_KINDS * 2):
            d = random_delta(shape, kind, HALF, gen, layout=frame % 2)
            expected_conv = reference[0](d)
            expected = reference[1](expected_conv) if fuse else expected_conv
            out = {}

            def call():
                with poisoned.frame():
                    arena.begin_frame()
                    out["conv"] = ops[0](d)
                    out["last"] = ops[1](out["conv"]) if fuse else out["conv"]

            kernels = launched_kernels_of(call)
            torch.cuda.synchronize()
            conv_out = out["conv"]
            assert "conv_output_list" in kernels, kernels  # the input carries no list
            assert not kernels & {"conv_gemm", "conv_gemm_split"}, kernels
            # (A fused activation writes its own output mask into the conv's.)
            assert listed_pixels(conv_out.extras["pixels"]) == mask_pixels(expected_conv.mask), \
                f"frame {frame} ({kind}): the conv's list is not its output mask"
            assert_same(out["last"], expected, HALF, f"frame {frame} ({kind}) output")
            for op, ref_op in zip(ops, reference):
                assert_same(op._state, ref_op._state, HALF, f"frame {frame} ({kind}) {op.node_name} state")
            assert listed_gemm_of(ops[0].conv, d.values, splits) <= kernels, kernels
            gathered_frames += any(k.startswith("conv_gemm_gathered") for k in kernels)
    if name.startswith("gathered"):
        assert gathered_frames == len(MASK_KINDS), "every channels_last frame runs conv_gemm_gathered"


class Inverted(nn.Module):
    """Two MobileNetV2-style inverted residual blocks (expand 1×1, depthwise 3×3, project
    1×1, residual add): every kind of list producer and consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                  nn.ReLU6())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(16, 96, 1, bias=False), nn.BatchNorm2d(96), nn.ReLU6(),
                          nn.Conv2d(96, 96, 3, padding=1, groups=96, bias=False),
                          nn.BatchNorm2d(96), nn.ReLU6(),
                          nn.Conv2d(96, 16, 1, bias=False), nn.BatchNorm2d(16))
            for _ in range(2))
        self.head = nn.Conv2d(16, 32, 1)

    def forward(self, x):
        y = self.stem(x)
        for block in self.blocks:
            y = y + block(y)
        return self.head(y)


def with_batch_statistics(net: nn.Module) -> nn.Module:
    """``net`` with random BatchNorm running statistics (so that folding them changes the
    conv weights), in place."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net


def inverted_net() -> nn.Module:
    torch.manual_seed(0)
    return with_batch_statistics(Inverted().eval()).to(DEVICE, HALF)


def clip(frames: int = 8) -> list[torch.Tensor]:
    video = synthetic_video(frames=frames, height=48, width=64, seed=3)
    return [f.to(DEVICE, HALF) for f in video]


def converted():
    return convert(inverted_net(), clip(1)[0], thresholds=0.02, backend="cuda")


def test_every_listed_delta_lists_its_mask(runtime):
    model = converted()
    seen = {"listed": 0}

    def check(module, args, out):
        if isinstance(out, Delta) and "pixels" in out.extras:
            assert listed_pixels(out.extras["pixels"]) == mask_pixels(out.mask), module.node_name
            seen["listed"] += 1

    for op in model.delta_ops().values():
        op.register_forward_hook(check)
    for frame in clip():
        model(frame)
    assert seen["listed"] > 0, "no op produced a work list"


def converted_outputs(frames, cuda_graph: bool, check=lambda kernels: None) -> list[torch.Tensor]:
    """The outputs of a freshly converted model on ``frames[2:]``, eagerly or replayed
    from a CUDA graph; ``check`` is given the kernels of its eager first delta frame. CUDA
    graphs need torch's caching allocator, which the sanitizer run turns off: skips there."""
    if cuda_graph and os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1":
        pytest.skip("CUDA-graph capture needs torch's caching allocator (off under the sanitizer)")
    model = converted()
    model(frames[0])
    check(launched_kernels_of(lambda: model(frames[1])))
    if cuda_graph:
        model.cuda_graph = True
    return [model(f).clone() for f in frames[2:]]


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graph"])
def test_lists_change_no_output(runtime, monkeypatch, cuda_graph):
    from deltaconvert.backends.cuda import worklist
    frames = clip()
    outputs = {}
    for lists in (True, False):
        monkeypatch.setattr(worklist, "WORK_LISTS", lists)

        def check(kernels):
            assert bool(kernels & {"conv_gemm_listed", "conv_gemm_gathered"}) is lists

        outputs[lists] = converted_outputs(frames, cuda_graph, check)
    for i, (on, off) in enumerate(zip(outputs[True], outputs[False])):
        assert torch.equal(on, off), f"frame {i + 2}: lists changed the output"


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graph"])
def test_the_masked_whole_map_truncation_computes_what_the_listing_one_does(runtime, monkeypatch,
                                                                          cuda_graph):
    """The activations fused into the stem, expansion and depthwise convs (accumulated
    work, flat pixel masks, no conv outputs to mark) run ``pw_truncate_whole_masked``:
    threads flat over every pixel's channel vectors, skipping pixels that are not
    candidates. It rounds what the listing kernel rounds, in the same order, so the
    model's outputs agree bit for bit on every frame."""
    from deltaconvert.backends.cuda import pointwise
    frames = clip()
    outputs = {}
    for whole in (True, False):
        if not whole:
            monkeypatch.setattr(pointwise, "whole_span", lambda *a: 0)

        def check(kernels):
            assert ("pw_truncate_whole_masked" in kernels) is whole
            assert ("pw_truncate" in kernels) is not whole

        outputs[whole] = converted_outputs(frames, cuda_graph, check)
    for i, (flat, listing) in enumerate(zip(outputs[True], outputs[False])):
        assert torch.equal(flat, listing), f"frame {i + 2}"
