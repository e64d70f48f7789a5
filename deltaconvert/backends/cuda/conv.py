"""Conv2d on the CUDA backend (kernels: ``cuda_kernels/conv.cu``).

``δy = conv(δx)`` without bias on the output pixels whose footprint touches an update.
Groups with one input channel each (depthwise, any channel multiplier) use
``conv_depthwise``; every other configuration (dense k×k, 1×1, grouped, asymmetric
kernels and padding, stride, dilation) uses the implicit-GEMM ``conv_gemm``. Padding
modes other than zeros run the reference math.

When the conv's only consumer is a truncating activation (the fusion plan), the
epilogue adds ``round(δy)`` straight into the activation's accumulator and the conv
returns only its mask; the activation then truncates (no δy values round trip).

In fp16 every conv but a depthwise one runs its GEMM over a pixel work list
(:mod:`.worklist`) of its output pixels: the GEMM rows are the listed pixels, on a
persistent grid of one wave, so its cost follows the candidates rather than the 8×8
tiles they touch (scattered changes light up most tiles). Where each reduction chunk
lies in one kernel tap and rows and weights load as 16-byte vectors (:func:`gathers`:
1×1 convs, and k×k convs over multiples of GATHER_K channels per group, channels_last)
``conv_gemm_gathered`` runs it, 128 rows per tile with ``mma.sync`` and a ``cp.async``
pipeline; any other conv runs ``conv_gemm_listed`` (64 rows per tile, wmma).
``DELTACONVERT_CUDA_GATHERED=0`` runs ``conv_gemm_listed`` everywhere.
A 1×1, stride-1, unpadded conv's output mask is its input mask, so it runs over, and
hands on, the list its input carries; any other runs over a list of its own output
pixels and hands it on: the truncation that produced its input wrote it, with the
output mask (:mod:`.output_lists`), or else it lists them first (``conv_output_list``,
one mask byte per output pixel).
``DELTACONVERT_CUDA_LISTED_ROWS=0`` keeps the tiled GEMM (the tiled kernels then list
their output pixels only for a consumer that reads lists).

A fused conv whose input carries its whole value (``extras["total"]``) may instead be a
*dense layer* (:mod:`.dense_layers`): cuDNN computes ``conv(total)``, and the consumer
assigns it, plus the bias, to its accumulator (:meth:`ConvKernel.recompute`). It runs as
one on its sequence's first delta frame, where the plan samples the candidates the delta
kernels would have (:meth:`ConvKernel.candidates`), and its consumer's accumulator is
not allocated until the delta kernels need it (:meth:`ConvKernel.dense_in_place`). Any other
1×1 conv that keeps its pixels may run cuDNN over its whole delta map instead, a *dense
delta* (:meth:`ConvKernel.convolve_whole_delta`).

Few GEMM rows over a long reduction leave most SMs idle, so the reduction splits. A
listed GEMM whose K allows it (:func:`listed_parts_bound`) runs
``conv_gemm_listed_parts`` (``conv_gemm_gathered_parts``), which decides on the GPU from
the frame's list count how many parts to split K into (as many as give each row tile and
part a block of its one-wave grid); the parts write fp32 partial sums by list row (one
part too), and ``conv_listed_sum`` adds them in part order and applies the epilogue at
the listed pixels. Where K cannot split (K < 2·SPLIT_MIN_K: MobileNetV2's expansions)
the lean ``conv_gemm_listed`` (``conv_gemm_gathered``) runs, without the split path's
registers. A tiled ``conv_gemm`` grid with fewer blocks than one wave (fp32, or listed
rows off) splits on the host (:func:`k_splits`): each split writes partial sums at the
output pixel and ``conv_split_sum`` adds them where the output mask is set.
"""
from __future__ import annotations

import os
import weakref
from typing import Any, Callable, Sequence

import torch

from ...delta import Delta
from ...ops.base import DeltaOp
from ...ops.conv import Conv2d
from .base import Accelerated, Consumer, Fused
from .constants import (BLOCK, DW_CO, GATHER_K, GATHER_RESIDENT, GATHER_ROWS, GEMM_CO, LIST_TILE,
                        LISTED_TAPS, RESIDENT_BLOCKS, TILE, ConvMode)
from .dense_layers import (
    ConvKind,
    DeferredAccumulator,
    DenseLayerPlan,
    accumulator_of,
    assigned_restoration,
    conv_kind_of,
)
from .device import DeviceRuntime
from .kernels import Args, kernel
from .output_lists import conv_geometry
from .pointwise import VectorCache, nhwc_state
from .registry import accelerates
from .tensors import (
    as_nhwc,
    full_mask,
    new_mask,
    new_values,
    placeholder,
    strides4,
    vector_layout,
)
from .worklist import list_args, list_extras, new_list

# conv_gemm mode bits (conv.cu)
# 16-byte tile loads where layout and alignment allow (DELTACONVERT_CUDA_VECTOR_LOADS=0: off).
VECTOR_LOADS = os.environ.get("DELTACONVERT_CUDA_VECTOR_LOADS", "1") != "0"
# Split-K for small conv_gemm grids (DELTACONVERT_CUDA_SPLIT_K=0: off).
SPLIT_K = os.environ.get("DELTACONVERT_CUDA_SPLIT_K", "1") != "0"
# GEMM rows = listed output pixels (DELTACONVERT_CUDA_LISTED_ROWS=0: tiles, as before).
LISTED_ROWS = os.environ.get("DELTACONVERT_CUDA_LISTED_ROWS", "1") != "0"
# Listed rows through conv_gemm_gathered where it applies (DELTACONVERT_CUDA_GATHERED=0: never).
GATHERED = os.environ.get("DELTACONVERT_CUDA_GATHERED", "1") != "0"
SPLIT_MIN_K = 128    # fewest reduction elements per split (PERF_NOTES §19: 512 left the
                     # 23×40 layers of MobileNetV2 at 720p, K = 576–960, unsplit)
MAX_SPLITS = 8


def pack_weight(weight: torch.Tensor, groups: int, depthwise: bool) -> torch.Tensor:
    """Weights in the kernels' layout: ``[KH][KW][Cout]`` (depthwise) or
    ``[G][KH][KW][Cin_g][Cout_g]``."""
    cout, cin_g, kh, kw = weight.shape
    w = weight.detach()
    if depthwise:
        return w[:, 0].permute(1, 2, 0).contiguous()
    return w.reshape(groups, cout // groups, cin_g, kh, kw).permute(0, 3, 4, 2, 1).contiguous()


def vector_rows(values: torch.Tensor, channels: int) -> bool:
    """Whether input pixels may be read as 16-byte vectors of ``channels`` consecutive
    channels: NHWC-contiguous channels, ``channels`` a multiple of the vector width (8
    fp16 / 4 fp32) and 16-byte aligned pixels."""
    width = 16 // values.element_size()
    return VECTOR_LOADS and channels % width == 0 and vector_layout(values, width)


def gemm_mode(values: torch.Tensor, weight: torch.Tensor, cin_g: int, cout_g: int) -> int:
    """The conv_gemm vector-load bits: A needs :func:`vector_rows` over Cin_g (so a vector
    stays in one kernel tap); B needs Cout_g a multiple of the vector width."""
    mode = ConvMode.VECTOR_A if vector_rows(values, cin_g) else 0
    if VECTOR_LOADS and cout_g % (16 // weight.element_size()) == 0 and weight.data_ptr() % 16 == 0:
        mode |= ConvMode.VECTOR_B
    return mode


def depthwise_mode(values: torch.Tensor, cin: int, cout: int) -> int:
    """conv_depthwise stages its input window in 16-byte vectors (CONV_VECTOR_A) when each
    output channel reads its own input channel (no channel multiplier) and
    :func:`vector_rows` holds over the channels."""
    return ConvMode.VECTOR_A if cin == cout and vector_rows(values, cin) else 0


def keeps_pixels(conv: Any) -> bool:
    """Whether each output pixel of ``conv`` reads exactly its own input pixel (a 1×1
    kernel at stride 1 without padding, not depthwise): its output mask is then its input
    mask, so it may run over the input's pixel work list and hand that list on."""
    return (tuple(conv.weight.shape[2:]) == (1, 1) and tuple(conv.stride) == (1, 1)
            and not any(conv._reversed_padding_repeated_twice) and conv.weight.shape[1] != 1)


def takes_pixel_list(op: DeltaOp) -> bool:
    """Whether ``op`` consumes its input's pixel work list (bind time: see
    :func:`~.worklist.list_producers`)."""
    return isinstance(op, Conv2d) and op.conv.padding_mode == "zeros" and keeps_pixels(op.conv)


def lists_rows(op: DeltaOp) -> bool:
    """Whether ``op`` runs its GEMM over a list of its output pixels (bind time, so that
    it gets a list-count slot for the list it writes when its input carries none): an
    fp16, zero-padded conv that is not depthwise, with at most LISTED_TAPS kernel taps."""
    if not (LISTED_ROWS and isinstance(op, Conv2d)):
        return False
    conv = op.conv
    _, cin_g, kh, kw = conv.weight.shape
    return (conv.padding_mode == "zeros" and conv.weight.dtype == torch.float16 and cin_g != 1
            and kh * kw <= LISTED_TAPS)


def lists_own_rows(op: DeltaOp) -> bool:
    """Whether ``op`` runs its GEMM over a list of its own output pixels, which it or its
    input's producer (:mod:`.output_lists`) writes: it lists rows (:func:`lists_rows`)
    and cannot run over its input's list (:func:`keeps_pixels`)."""
    return lists_rows(op) and not keeps_pixels(op.conv)


def gathers(mode: int, taps: int, cin_g: int) -> bool:
    """Whether a listed GEMM runs as ``conv_gemm_gathered`` (else ``conv_gemm_listed``):
    16-byte A and B vectors (``mode``), and each reduction chunk of GATHER_K in one kernel
    tap — one tap, or Cin_g a multiple of GATHER_K."""
    vectors = ConvMode.VECTOR_A | ConvMode.VECTOR_B
    return GATHERED and mode & vectors == vectors and (taps == 1 or cin_g % GATHER_K == 0)


def listed_parts_bound(k: int) -> int:
    """The most parts a listed GEMM over a reduction of length ``k`` may split into
    (``conv_gemm_listed_parts``; 1: the lean ``conv_gemm_listed``, which cannot split):
    each part at least SPLIT_MIN_K long, at most MAX_SPLITS. How many it does split into
    is decided on the GPU per frame (``listed_parts`` in conv.cu): as many as give each
    (row tile, part) pair a block of the grid."""
    return max(1, min(MAX_SPLITS, k // SPLIT_MIN_K)) if SPLIT_K else 1


def k_splits(blocks: int, k: int, multiprocessors: int) -> int:
    """How many parts a conv_gemm launch of ``blocks`` blocks splits its reduction of
    length ``k`` into: as many as keep the grid within one wave of resident blocks, each
    at least SPLIT_MIN_K long, at most MAX_SPLITS (1: no split)."""
    if not SPLIT_K:
        return 1
    return max(1, min(MAX_SPLITS, RESIDENT_BLOCKS * multiprocessors // blocks, k // SPLIT_MIN_K))


@accelerates(Conv2d, fuses=True)
class ConvKernel(Accelerated):
    """``op.accelerated`` of a Conv2d (optionally fused into its consumer).

    ``plan``: the bound model's :class:`~.dense_layers.DenseLayerPlan` (None outside a
    bound model); ``dense``: this conv's decision (None until the plan made it): a dense
    layer where the conv may be one, else a dense delta; ``layer_call``: the (dtype,
    output pixels, kind) of the call that sampled it as a dense layer (None: it sampled
    as a dense delta, or not yet), so :attr:`reads_total_only` can be known before the
    conv's next call. A conv
    whose only consumer is an add fused into an activation (``feeds``) hands that add its
    whole output instead of a delta while the add is dense (:meth:`whole_output`).
    ``kind`` (bind time): its conv's :func:`~.dense_layers.conv_kind`, which decides the
    fraction of candidates that turns it dense. ``total_source`` (bind time): where its
    input's producer keeps the whole value it hands on as ``extras["total"]`` (a callable
    reading that state entry), for a restoration made before the conv's first delta
    frame (:meth:`dense_in_place`).
    """

    plan: DenseLayerPlan | None = None
    feeds: Any = None  # the LinearPointwise wrapper of a dense-add candidate it feeds
    total_source: Callable[[], torch.Tensor | None] | None = None

    def __init__(self, runtime: DeviceRuntime, op: DeltaOp, consumer: Consumer | None = None) -> None:
        super().__init__(runtime, op, consumer)
        self._packed: tuple[tuple, torch.Tensor] | None = None
        self.dense: bool | None = None
        self.layer_call: tuple[torch.dtype, int, ConvKind] | None = None
        conv = getattr(op, "conv", None)  # the op's own (a dense layer's) kind
        self.kind: ConvKind = conv_kind_of(conv) if conv is not None else "conv"
        self.vectors = VectorCache(runtime.device)  # the fp32 bias of a dense layer

    @property
    def dense_layer(self) -> bool:
        """Whether this conv was decided a dense layer (sampled as one, decided dense)."""
        return bool(self.dense) and self.layer_call is not None

    @property
    def runs_dense_delta(self) -> bool:
        """Whether this conv's calls run dense deltas (decided dense, and sampled as a
        dense delta rather than as a dense layer): its input must then be clean."""
        return bool(self.dense) and self.layer_call is None

    @property
    def reads_total_only(self) -> bool:
        """Whether this conv's calls now read their input's total and not its delta or
        mask: a :attr:`dense_layer` still allowed (a READY gate rules dense layers out).
        Its producer may then store no delta (:attr:`.pointwise.Truncating.writes_delta`)."""
        return self.dense_layer and self.plan.allows(*self.layer_call)

    def packed(self, weight: torch.Tensor, groups: int, depthwise: bool) -> torch.Tensor:
        key = (weight.data_ptr(), weight._version, weight.dtype, groups, depthwise)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, pack_weight(weight, groups, depthwise))
        return self._packed[1]

    def run(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        if len(args) != 1 or kwargs or not isinstance(args[0], Delta):
            return NotImplemented
        return self.convolve(op.conv, op, args[0])

    def convolve(self, conv: Any, op: DeltaOp, d: Delta) -> Any:
        """``conv(δ)`` for ``op`` (named in errors, counted in statistics); ``conv`` has
        the attributes of an ``nn.Conv2d`` the kernels read (the op's own conv, or the
        adjoint conv of a transposed one). NotImplemented where the kernels decline."""
        if (conv.padding_mode != "zeros" or d.dim() != 4 or not self.usable(d)
                or conv.weight.dtype != d.dtype):
            return NotImplemented
        n, cin, h, w = d.shape
        cout, cin_g, kh, kw = conv.weight.shape
        groups = conv.groups
        g = conv_geometry(conv, h, w)
        oh, ow = g.oh, g.ow
        out_shape = (n, cout, oh, ow)
        depthwise = cin_g == 1
        weight = self.packed(conv.weight, groups, depthwise)
        fused = self.consumer is not None and self.consumer[1].accepts(
            self.consumer[0], out_shape, d.dtype)
        whole = d.extras.get("total")  # the input's whole value, for a dense layer
        eligible = self.plan is not None and conv is getattr(op, "conv", None) and whole is not None
        # The dense paths' fp32 bias, fetched here only and so first made while frames run
        # eagerly (the sampling frame): a copy first made inside a CUDA-graph capture would
        # be a kernel replayed every frame.
        bias = self.vectors.get(op.conv.bias) if eligible else None
        if eligible and self.feeds is not None and self.plan.allows(d.dtype, oh * ow, self.feeds.kind):
            if self.feeds.dense is None:  # the add samples: it would warm this conv up too
                self.plan.also_warm(self.feeds, dense_whole(op, whole, d.dtype))
            if self.feeds.dense:
                return self.whole_output(op, whole, bias, d.dtype, out_shape)
        kind = self.kind
        planned = eligible and fused and self.plan.allows(d.dtype, oh * ow, kind)
        if planned and self.dense is None:  # the sampling frame: a dense layer that samples
            self.plan.sample(self, self.candidates(op, d, g), dense_whole(op, whole, d.dtype),
                             kind, whole, op.node_name)
            self.layer_call = (d.dtype, oh * ow, kind)
        if planned and self.dense is not False:
            return self.recompute(op, whole, bias, d.dtype, out_shape)
        if self.reads_total_only:  # its producer stored no delta for this call to read
            raise RuntimeError(f"{op.node_name}: this dense layer's call cannot run dense "
                               f"(input {tuple(d.shape)}, {d.dtype}), and its input holds no "
                               "delta; change shapes or dtypes between sequences (model.reset())")
        on_delta = (not planned and self.plan is not None and conv is getattr(op, "conv", None)
                    and keeps_pixels(conv) and self.plan.allows(d.dtype, oh * ow, "delta"))
        if on_delta and self.dense:
            return self.convolve_whole_delta(op, d, fused)
        if self.plan is not None:
            self.plan.require_current(op.node_name)  # the delta kernels add to its consumer's
        device = self.runtime.device
        mode = ConvMode.ACCUMULATE if fused else 0
        if depthwise:
            mode |= depthwise_mode(d.values, cin, cout)
        else:
            mode |= gemm_mode(d.values, weight, cin_g, cout // groups)
        tiles = -(-oh // TILE) * -(-ow // TILE)
        channel_blocks = groups * -(-(cout // groups) // GEMM_CO)
        wave = RESIDENT_BLOCKS * self.runtime.multiprocessors
        # The GEMM rows: the input's list where the output mask is the input mask (handed
        # on), else a list of the output pixels: written by the input's producer (marked,
        # with the mask) or by conv_output_list (own).
        listable = d.dtype == torch.float16 and lists_rows(op)
        handed = d.extras.get("pixels") if keeps_pixels(conv) else None
        marked = d.extras.get("output_lists", {}).get(op.node_name)
        if marked is not None and not (listable and handed is None
                                       and tuple(marked[0].shape) == (n, 1, oh, ow)):
            raise RuntimeError(f"{op.node_name}: its input's producer listed its output pixels, "
                               "but this call does not run its GEMM over them")
        rows = handed if listable else None
        if listable and handed is None:
            rows = marked[1] if marked is not None else new_list(n * oh * ow, self.list_count)
        if rows is not None:
            # A persistent grid of one wave: row-tile slots × output-channel blocks × the
            # most parts K may split into (the GPU chooses how many from the list's count).
            # (conv_listed_sum indexes the output's elements in 32 bits.)
            gathered = gathers(mode, kh * kw, cin_g)
            tile_rows = GATHER_ROWS if gathered else TILE * TILE
            gemm_wave = (GATHER_RESIDENT if gathered else RESIDENT_BLOCKS) * self.runtime.multiprocessors
            splits = listed_parts_bound(kh * kw * cin_g) if n * oh * ow * cout < 2**31 else 1
            slots = max(1, gemm_wave // (channel_blocks * splits))
            listed_grid = (min(slots, -(-(n * oh * ow) // tile_rows)), channel_blocks, splits)
            blocks = listed_grid[0] * splits
            # Partial sums by list row: rows < blocks·tile_rows where the frame splits, <
            # the list's capacity where it does not.
            ws = (new_values((max(n * oh * ow, blocks * tile_rows), cout), torch.float32, device)
                  if splits > 1 else None)
        else:
            splits = 1 if depthwise else k_splits(tiles * channel_blocks * n, kh * kw * cin_g,
                                                  self.runtime.multiprocessors)
            ws = new_values((splits, n, oh, ow, cout), torch.float32, device) if splits > 1 else None
        # Tiled kernels list their output pixels when a consumer reads a list.
        produced = new_list(n * oh * ow, self.list_count) if rows is None and handed is None else None
        if marked is not None:
            om = marked[0]
        elif handed is not None and rows is handed:
            om = d.mask
        else:
            om = new_mask(out_shape, device)
        if fused:
            out = placeholder(out_shape, d.dtype, device)
            acc = nhwc_state(self.consumer[0])[0][0]
        else:
            out, acc = new_values(out_shape, d.dtype, device), None
        layer = op.node_name
        args_ = geometry_args(layer, conv, d, g).ptr(weight)
        epilogue = Args(layer).ints(mode).tensor(out, strides4(out))
        epilogue.tensor(acc, strides4(acc) if acc is not None else (0, 0, 0, 0))
        args_.extend(epilogue).ptr(om).ints(splits).ptr(ws)
        counter = op.counter_for_kernel()
        launch = self.launcher(layer, d.dtype, args_)
        if rows is not None:
            gemm_counter = counter  # the GEMM counts a handed or marked list's rows
            if rows is not handed and marked is None:  # the output mask, counted, and its list
                list_tiles = -(-oh // LIST_TILE) * -(-ow // LIST_TILE)
                launch("conv_output_list", (list_tiles, 1, n), counter, rows)
                gemm_counter = None
            gemm = "conv_gemm_gathered" if gathered else "conv_gemm_listed"
            launch(gemm + "_parts" if splits > 1 else gemm, listed_grid, gemm_counter, None, rows)
            if splits > 1:  # adds the parts and stores them
                elements = n * oh * ow * cout
                finish = Args(layer).ints(oh, ow, cout, splits, blocks, tile_rows).ptr(ws)
                finish.extend(list_args(layer, rows)).extend(epilogue)
                kernel(self.runtime, "conv", "conv_listed_sum", d.dtype)(
                    (max(1, min(wave, -(-elements // BLOCK))), 1, 1), (BLOCK, 1, 1), finish)
        elif depthwise:
            launch("conv_depthwise", (tiles, -(-cout // DW_CO), n), counter, produced)
        else:
            launch("conv_gemm_split" if splits > 1 else "conv_gemm", (tiles, channel_blocks, n * splits),
                   counter, produced)
        if splits > 1 and rows is None:
            total = n * oh * ow * cout
            finish = Args(layer).ints(n, oh, ow, cout, splits).ptr(ws).ptr(om).extend(epilogue)
            kernel(self.runtime, "conv", "conv_split_sum", d.dtype)((-(-total // BLOCK), 1, 1),
                                                                    (BLOCK, 1, 1), finish)
        if on_delta and self.dense is None:
            self.plan.sample(self, om, dense_zeros(op, d.shape, d.dtype, device), "delta")
        pixels = list_extras(rows or handed or produced)
        extras = {**op.counted_extras(counter), **pixels}
        if self.feeds is not None and bias is not None:
            extras["bias"] = bias  # for the add's sum of biases, made eagerly too (its shift)
        if fused:
            # A mask this conv wrote is read by its consumer alone, which may reuse it.
            extras["fused"] = Fused(self.consumer[0], [Delta(out, om, pixels)], [1.0], lin=False,
                                    owns_masks=om is not d.mask)
        return Delta(out, om, extras)

    def convolve_whole_delta(self, op: DeltaOp, d: Delta, fused: bool) -> Delta:
        """A dense delta (:mod:`.dense_layers`; a 1×1 conv that keeps its pixels):
        ``δy = conv(δ ⊙ m)`` by cuDNN over the whole map, ``δ`` zeroed outside its mask
        ``m`` (by torch, unless the input is clean already: ``extras["clean"]``), so
        ``δy`` is clean too and its mask is ``m``, with the input's pixel list. Fused, the
        consumer adds ``round(δy)`` at its candidates (statistics: its kernel counts
        them); else ``δy`` is the output (counted here from the list, or from the mask by
        the op's statistics)."""
        values = dense_conv(op, clean_values(d), d.dtype)
        pixels = {key: d.extras[key] for key in ("pixels",) if key in d.extras}
        counter = op.counter_for_kernel()
        if fused:
            work = Fused(self.consumer[0], [Delta(values, d.mask, pixels)], [1.0], lin=True,
                         counter=counter)
            return Delta(placeholder(values.shape, d.dtype, self.runtime.device), d.mask,
                         {**op.counted_extras(counter), **pixels, "fused": work})
        extras = {**pixels, "clean": True}
        if counter is not None and pixels:
            counter.add_(pixels["pixels"].count)
            extras.update(op.counted_extras(counter))
        return Delta(values, d.mask, extras)

    def candidates(self, op: DeltaOp, d: Delta, g: Any) -> torch.Tensor:
        """The output mask the delta kernels would write for ``d`` (the pixels whose
        footprint touches an update; ``g``: the conv's :func:`conv_geometry` on ``d``),
        for the plan's sample on a frame that runs the conv as a dense layer: the input's
        own where the conv keeps pixels, the one the input's producer marked
        (:mod:`.output_lists`), else ``conv_output_list``'s (the mask alone: no list, no
        statistics)."""
        conv = op.conv
        if keeps_pixels(conv):
            return d.mask
        marked = d.extras.get("output_lists", {}).get(op.node_name)
        if marked is not None:
            return marked[0]
        n = d.shape[0]
        om = new_mask((n, conv.out_channels, g.oh, g.ow), self.runtime.device)
        layer = op.node_name
        # Weights, epilogue, splits and workspace: not read by conv_output_list.
        args_ = geometry_args(layer, conv, d, g).ptr(None)
        args_.ints(0).tensor(None).tensor(None).ptr(om).ints(1).ptr(None)
        list_tiles = -(-g.oh // LIST_TILE) * -(-g.ow // LIST_TILE)
        self.launcher(layer, d.dtype, args_)("conv_output_list", (list_tiles, 1, n), None, None)
        return om

    def deferred_shape(self, op: DeltaOp, x: Any) -> tuple[int, int, int, int] | None:
        """The shape of the accumulator to defer (the conv's output on input ``x``) where,
        on the dense first frame of a sequence, the conv will run as a dense layer on its
        sampling frame, else None: the plan allows it and keeps no accumulators, the conv
        is fused into a truncation that takes a deferred accumulator and has no state
        yet, and its input's producer keeps its total (:attr:`total_source`). The
        sampling frame checks again (``eligible`` in :meth:`convolve`); a conv that then
        cannot run dense is refused by the plan
        (:meth:`~.dense_layers.DenseLayerPlan.require_current`)."""
        plan, conv = self.plan, getattr(op, "conv", None)
        if (plan is None or plan.keeps_accumulators or self.total_source is None
                or self.consumer is None or not self.consumer[1].takes_deferred
                or "acc" in self.consumer[0].state or conv is None or not isinstance(x, torch.Tensor)
                or x.dim() != 4 or x.device != self.runtime.device or conv.weight.dtype != x.dtype
                or conv.padding_mode != "zeros" or self.total_source() is None):
            return None
        g = conv_geometry(conv, x.shape[2], x.shape[3])
        if not plan.allows(x.dtype, g.oh * g.ow, self.kind):
            return None
        return x.shape[0], conv.out_channels, g.oh, g.ow

    def dense_in_place(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        """A dense frame runs the op's own conv (NotImplemented). On a sequence's first,
        where the conv starts dense (:meth:`deferred_shape`), its consumer's accumulator
        is deferred (:class:`~.dense_layers.DeferredAccumulator`: no memory) and the plan
        holds its restoration, ``round(conv(total) + b)`` from the input producer's state."""
        shape = self.deferred_shape(op, args[0]) if len(args) == 1 and not kwargs else None
        if shape is not None:
            x, conv, consumer = args[0], op.conv, self.consumer[0]
            consumer.state["acc"] = [DeferredAccumulator(shape, x.device)]
            self.plan.leave_stale(op.node_name, assigned_restoration(
                accumulator_of(consumer), [(1.0, dense_whole(op, self.total_source, x.dtype))],
                self.vectors.get(conv.bias), x.dtype))
        return NotImplemented

    def wants_output_list(self, op: DeltaOp, dtype: torch.dtype, out_pixels: int) -> bool:
        """Whether a call on an input of ``dtype`` (``out_pixels`` output pixels per
        sample) would run the listed GEMM over its own output pixels, which the input's
        producer may then list for it (:mod:`.output_lists`): fp16, a list slot,
        :func:`lists_own_rows`, and not decided dense (a dense layer, or the whole source
        of a dense add). Only speed depends on the answer: a conv whose producer did not
        list its outputs lists them itself."""
        if dtype != torch.float16 or self.list_count is None or not lists_own_rows(op):
            return False
        plan = self.plan
        if plan is None:
            return True
        if self.feeds is not None and self.feeds.dense and plan.allows(dtype, out_pixels, self.feeds.kind):
            return False
        return not (self.dense and plan.allows(dtype, out_pixels, self.kind))

    def launcher(self, layer: str, dtype: torch.dtype, head: Args) -> Callable[..., None]:
        """``launch(name, grid, counter, out_list, rows=None)``: the conv kernel ``name``
        on ``grid`` (blocks of BLOCK threads) with the arguments ``head`` (geometry, input,
        weights, epilogue, output mask, splits, workspace), then the statistics counter,
        the list the kernel appends its output pixels to (None: null pointers) and, given
        ``rows`` (the listed GEMM), the list of its rows."""
        def launch(name: str, grid: tuple[int, int, int], counter: torch.Tensor | None,
                   out_list: Any, rows: Any = None) -> None:
            args_ = Args(layer).extend(head).ptr(counter).extend(list_args(layer, out_list))
            if rows is not None:
                args_.extend(list_args(layer, rows))
            kernel(self.runtime, "conv", name, dtype)(grid, (BLOCK, 1, 1), args_)
        return launch

    def recompute(self, op: DeltaOp, total: torch.Tensor, bias: torch.Tensor | None,
                  dtype: torch.dtype, out_shape: Sequence[int]) -> Delta:
        """A dense layer (:mod:`.dense_layers`): ``conv(total)`` by cuDNN, handed to the
        consumer, which assigns it plus ``bias`` (the conv's fp32 bias, as its ``shift``;
        torch would add the bias in a kernel of its own) to its accumulator; every output
        pixel is a candidate. Unless the plan keeps accumulators, the consumer does not
        write it, and the plan holds its restoration."""
        mask = full_mask(out_shape, self.runtime.device)
        counter = op.counter_for_kernel()  # counted by the consumer's kernel
        keep = self.plan.keeps_accumulators
        work = Fused(self.consumer[0], [Delta(dense_conv(op, total, dtype), mask)],
                     [1.0], lin=True, counter=counter, assign=True, shift=bias, keep=keep)
        if not keep:
            self.plan.leave_stale(op.node_name, assigned_restoration(
                accumulator_of(self.consumer[0]), [(1.0, dense_whole(op, total, dtype))], bias, dtype))
        return Delta(placeholder(out_shape, dtype, self.runtime.device), mask,
                     {**op.counted_extras(counter), "fused": work})

    def whole_output(self, op: DeltaOp, total: torch.Tensor, bias: torch.Tensor | None,
                     dtype: torch.dtype, out_shape: Sequence[int]) -> Delta:
        """For a dense add (:mod:`.dense_layers`): ``conv(total)`` by cuDNN as the
        output's ``extras["whole"]``, ``bias`` (the conv's fp32 bias) as ``extras["bias"]``
        (the add hands both to its consumer) and how to compute the whole again from the
        state as ``extras["recompute"]``; every output pixel counts as updated."""
        counter = op.counter_for_kernel()
        if counter is not None:
            counter.add_(out_shape[0] * out_shape[2] * out_shape[3])
        return Delta(placeholder(out_shape, dtype, self.runtime.device),
                     full_mask(out_shape, self.runtime.device),
                     {**op.counted_extras(counter),
                      "whole": dense_conv(op, total, dtype),
                      "bias": bias,
                      "recompute": dense_whole(op, total, dtype)})


def dense_conv(op: DeltaOp, total: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``conv(total)`` without the bias, by cuDNN in the model dtype ``dtype``."""
    return op.dense(dense_input(total, dtype), bias=False)


def dense_whole(op: DeltaOp, total: torch.Tensor | Callable[[], torch.Tensor],
                dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """:func:`dense_conv`, computed when called, from ``total`` (a state tensor: the
    input's sent values; or a callable that reads it from the state then): the plan's
    restorations, and its warm-ups (cuDNN's first call for the shape, made outside a
    capture). It holds ``total``, ``dtype`` and ``op`` weakly only: a closure over the
    frame's delta would keep that frame's tensors alive, and a strong reference to ``op``
    would close a cycle op → wrapper → plan → op."""
    ref = weakref.ref(op)
    fetch = total if callable(total) else (lambda: total)
    return lambda: dense_conv(ref(), fetch(), dtype)


def geometry_args(layer: str, conv: Any, d: Delta, g: Any) -> Args:
    """The conv kernels' first arguments: sizes and geometry (``g``: :func:`conv_geometry`
    of ``conv`` on ``d``), then the input's values and mask."""
    n, cin, h, w = d.shape
    cout, _, kh, kw = conv.weight.shape
    args_ = Args(layer).ints(n, cin, h, w, cout, g.oh, g.ow, kh, kw, g.sh, g.sw, g.top, g.left, g.dh,
                             g.dw, conv.groups)
    return args_.tensor(d.values, strides4(d.values)).mask(d.mask, d.shape)


def clean_values(d: Delta) -> torch.Tensor:
    """``δ ⊙ m``: the values of ``d`` zeroed outside its mask; as they are where ``d`` is
    clean already (``extras["clean"]``), else by torch."""
    return d.values if d.extras.get("clean") else torch.where(d.mask, d.values, 0)


def dense_zeros(op: DeltaOp, shape: Sequence[int], dtype: torch.dtype,
                device: torch.device) -> Callable[[], torch.Tensor]:
    """:func:`dense_conv` of zeros of the input ``shape``, computed when called: the
    warm-up of a dense delta (cuDNN's first call for the shape, outside a capture). It
    holds ``op`` weakly (see :func:`dense_whole`)."""
    ref = weakref.ref(op)
    return lambda: dense_conv(ref(), torch.zeros(tuple(shape), dtype=dtype, device=device), dtype)


def dense_input(total: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A dense layer's input: the producer's ``total`` in the model dtype, channels_last
    (cuDNN's fast 16-bit kernels; the state is NHWC already, a Sparsify's fp32 ``ref``
    is converted)."""
    return as_nhwc(total.to(dtype))
