"""Per-pixel ops on the CUDA backend (kernels: ``cuda_kernels/pointwise.cu``).

* :class:`LinearPointwise` — add, sub, neg (constants dropped: they live in frame 0),
  multiplication by a constant tensor, batch-norm as a channel scale:
  ``δy = s[c] · Σ kᵢ δᵢ`` on the union of the masks. When the op's only consumer is a
  :class:`Truncating` op it writes no values and hands the sum to the consumer
  (:class:`~.base.Fused`), which adds it into its accumulator in the same kernel.
* :class:`Truncating` — element-wise activations and the layer norm over channels:
  ``a += δ; v = f(a); δy = v − o``, emitted where ``max_c |δy| > τ``. In a dense
  restart (see ``ops/boundary.py``) an element-wise activation writes ``a ← x`` and
  ``o ← f(x)`` in one kernel and hands ``o`` on as its output (``pw_restart``).
* :class:`Product` — ``x · y`` of two varying tensors (squeeze-excite gates): both
  operands are accumulated, then ``v = a_x · a_y`` is truncated like an activation.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ...delta import Delta, mask_shape, tensor_leaves
from ...layers import ChannelLayerNorm
from ...ops import reference as ref
from ...ops.base import DeltaOp
from ...ops.conv import ChannelScale
from ...ops.footprint import Footprint
from ...ops.linear import LinearCall
from ...ops.nonlinear import Nonlinear
from .arena import FrameArena, zeroed_mask
from .base import Accelerated, Consumer, Fused
from .constants import (
    BLOCK,
    RESIDENT_BLOCKS,
    TRUNC_WHOLE_ITEMS,
    Activation,
    PixelFunction,
    TruncateInput,
)
from .dense_layers import (ConvKind, accumulator_of, allocated_accumulator, assigned_restoration,
                           deferred)
from .device import DeviceRuntime
from .kernels import SUPPORTED_DTYPES, Args, kernel
from .output_lists import NO_TARGETS, mark_outputs
from .registry import accelerates
from .tensors import (
    CHANNELS_PER_LANE,
    VECTOR_CHANNELS,
    as_nhwc,
    channel_vectors,
    channel_width,
    flat_nhwc,
    fp32_vector,
    full_mask,
    lanes_for,
    list_grid,
    new_mask,
    new_values,
    placeholder,
    shape4,
    strides4,
)
from .worklist import PixelList, list_args, list_extras, new_list

ADD_FNS = (operator.add, torch.add, torch.Tensor.add)
SUB_FNS = (operator.sub, torch.sub, torch.Tensor.sub)
NEG_FNS = (operator.neg, torch.neg, torch.Tensor.neg)
MUL_FNS = (operator.mul, torch.mul, torch.Tensor.mul)



@dataclass(frozen=True)
class KernelFunction:
    """A function the truncation kernel evaluates: its code (an :class:`Activation` or
    :class:`PixelFunction`) and parameters."""

    code: int
    p0: float = 0.0
    p1: float = 0.0
    norm: ChannelLayerNorm | None = None  # weight/bias source of PixelFunction.LAYER_NORM


_SIMPLE = {nn.ReLU: Activation.RELU, nn.Sigmoid: Activation.SIGMOID, nn.SiLU: Activation.SILU,
           nn.Hardswish: Activation.HARDSWISH, nn.Hardsigmoid: Activation.HARDSIGMOID,
           nn.Tanh: Activation.TANH}


def pixel_function(fn: Any) -> KernelFunction | None:
    """The kernel form of a Nonlinear op's ``fn``, or None if the kernels lack it."""
    kind = type(fn)
    if kind in _SIMPLE:
        return KernelFunction(_SIMPLE[kind])
    if kind in (nn.Hardtanh, nn.ReLU6):
        return KernelFunction(Activation.HARDTANH, float(fn.min_val), float(fn.max_val))
    if kind is nn.LeakyReLU:
        return KernelFunction(Activation.LEAKY_RELU, float(fn.negative_slope))
    if kind is nn.ELU:
        return KernelFunction(Activation.ELU, float(fn.alpha))
    if kind is nn.GELU:
        return KernelFunction(Activation.GELU_TANH if fn.approximate == "tanh" else Activation.GELU)
    if kind is ChannelLayerNorm:
        return KernelFunction(PixelFunction.LAYER_NORM, float(fn.eps), norm=fn)
    return None


def one_wave(blocks: int, multiprocessors: int) -> int:
    """``blocks``, at most one wave of them (``RESIDENT_BLOCKS`` per multiprocessor, what
    the kernels' ``__launch_bounds__`` keep resident): the grid of a kernel whose blocks
    loop over the rest of its work."""
    return min(blocks, RESIDENT_BLOCKS * multiprocessors)


def add_operand(args: Args, d: Delta | None, coef: float, out_shape: Sequence[int]) -> Args:
    """A pointwise.cu operand: values and mask broadcast to ``out_shape``, coefficient."""
    if d is None:
        return args.tensor(None).mask(None, out_shape).floats(0.0)
    return args.tensor(d.values, strides4(d.values, out_shape)).mask(d.mask, out_shape).floats(coef)


def linear(runtime: DeviceRuntime, op: DeltaOp, operands: Sequence[Delta], coefs: Sequence[float],
           scale: torch.Tensor | None, out_shape: Sequence[int],
           list_count: torch.Tensor | None = None, clean: bool = False,
           totals: tuple[torch.Tensor, torch.Tensor] | None = None) -> Delta:
    """``δy = scale[c] · Σ coefs[i] · operands[i]`` on the union of their masks (the
    output of ``op``, whose update counter the kernel adds to), its pixels listed when
    ``list_count`` is a list-count slot (:mod:`.worklist`); with ``clean``, zero at
    every other pixel, and the output says so (``extras["clean"]``). With ``totals``
    (``sum``: fp32, ``total``: the model dtype, one layout, the output's shape) the kernel
    adds the sent ``δy`` to ``sum`` and stores ``total = round(sum)``, which the output
    hands on as ``extras["total"]`` (for a dense layer downstream, :mod:`.dense_layers`)."""
    dtype, device = operands[0].dtype, runtime.device
    n, c, h, w = shape4(out_shape)
    out, om = new_values(out_shape, dtype, device), new_mask(out_shape, device)
    # Channels per load: 8 or 4 where every tensor allows (linear_channels in pointwise.cu),
    # each lane two such vectors per pixel round (as the truncation's lanes).
    vec = channel_width(out_shape, out, *(d.values for d in operands),
                        *(totals if totals is not None else ()))
    lanes = lanes_for(c, 2 * vec) if vec > 1 else lanes_for(c)
    grid, block, span = list_grid(n * h * w, lanes)
    args = Args(op.node_name).ints(n, c, h, w, lanes, span, len(operands))
    for i in range(2):
        add_operand(args, operands[i] if i < len(operands) else None,
                    coefs[i] if i < len(coefs) else 0.0, out_shape)
    args.ptr(scale).ints(int(scale is not None and scale.numel() > 1))
    counter = op.counter_for_kernel()
    listed = new_list(n * h * w, list_count)
    args.tensor(out, strides4(out)).ptr(om).ptr(counter).extend(list_args(op.node_name, listed))
    args.ints(int(clean))
    if totals is None:
        args.tensor(None).ptr(None)
    else:
        args.tensor(totals[0], strides4(totals[0])).ptr(totals[1])
    kernel(runtime, "pointwise", "pw_linear", dtype)(grid, block, args.ints(vec))
    extras = {**op.counted_extras(counter), **list_extras(listed)}
    if clean:
        extras["clean"] = True
    if totals is not None:
        extras["total"] = totals[1]
    return Delta(out, om, extras)


def accumulate(runtime: DeviceRuntime, layer: str, d: Delta, acc: torch.Tensor) -> None:
    """``acc += δ`` where updated (``acc``: fp32, the shape of ``d``): flat over the
    elements (``pw_accumulate_flat``) where ``acc`` and the values share one gap-free
    layout and the mask is the pixels' own, contiguous; else per pixel, scanning the
    mask (``pw_accumulate``)."""
    if tuple(acc.shape) != tuple(d.shape):
        raise RuntimeError(f"{layer}: state of shape {tuple(acc.shape)} does not match the "
                           f"delta {tuple(d.shape)}")
    n, c, h, w = shape4(d.shape)
    values, count = d.values, acc.numel()
    if (acc.stride() == values.stride() and _gap_free(acc) and count < 2**31
            and flat_nhwc(d.mask, mask_shape(tuple(d.shape)))):
        nhwc = int(not acc.is_contiguous())  # else NCHW (both where C or H·W is 1)
        vec = int(count % 4 == 0 and (c if nhwc else h * w) % 4 == 0
                  and acc.data_ptr() % 16 == 0 and values.data_ptr() % (4 * values.element_size()) == 0)
        per_thread = 4 if vec else 1
        blocks = one_wave(-(-count // (BLOCK * per_thread)), runtime.multiprocessors)
        args = Args(layer).ints(count, c, h * w, nhwc).ptr(values).ptr(d.mask).ptr(acc).ints(4 * vec)
        kernel(runtime, "pointwise", "pw_accumulate_flat", d.dtype)((max(blocks, 1), 1, 1),
                                                                    (BLOCK, 1, 1), args)
        return
    lanes = lanes_for(c)
    grid, block, span = list_grid(n * h * w, lanes)
    args = add_operand(Args(layer).ints(n, c, h, w, lanes, span), d, 1.0, d.shape)
    args.tensor(acc, strides4(acc))
    kernel(runtime, "pointwise", "pw_accumulate", d.dtype)(grid, block, args)


def truncate(runtime: DeviceRuntime, op: DeltaOp, dtype: torch.dtype, out_shape: Sequence[int],
             fn: KernelFunction, work: Fused, acc: Sequence[torch.Tensor], sent: torch.Tensor,
             norm: tuple[torch.Tensor, torch.Tensor] | tuple[None, None],
             list_count: torch.Tensor | None = None, arena: FrameArena | None = None,
             targets: Sequence[tuple[DeltaOp, Accelerated]] = (), clean: bool = False,
             delta: bool = True) -> Delta:
    """One launch of ``pw_truncate`` (see pointwise.cu) for ``op``'s pixels of
    ``out_shape``; it counts ``op``'s updates and those of a fused linear producer
    (``work.counter``), lists the emitted pixels when ``list_count`` is a list-count
    slot (:mod:`.worklist`), and marks the outputs of the ``targets`` convs
    (:mod:`.output_lists`: the ``…_marking`` kernels, over channel vectors only), which
    its output hands on as ``extras["output_lists"]``. With ``clean``, a whole-map
    kernel writes zeros where it emits nothing, and the output says so
    (``extras["clean"]``: zero outside its mask, for a dense delta downstream). Without
    ``delta`` (and ``clean``) the kernel stores no δ: the output's values are a
    placeholder, its mask, list and total as always (every reader reads the total).
    Over listed candidates, and over whole maps (:func:`whole_grid`), it runs a persistent
    grid of at most one wave. Over listed candidates its output mask starts clear: the
    candidates' own when it owns them, else a region of ``arena`` (zeroed at the frame's
    start; without an arena, a memset here). A deferred accumulator
    (:class:`~.dense_layers.DeferredAccumulator`) takes only a dense layer's work that
    does not keep it; the whole-map kernel leaves it unallocated, the scanning one
    allocates it and assigns every element."""
    n, c, h, w = shape4(out_shape)
    a = acc[0]
    if deferred(a):
        if not work.assign or work.keep:
            raise RuntimeError(f"{op.node_name}: its accumulator was never allocated (its conv "
                               "was to run as a dense layer), but this frame would add to it; "
                               "keep shapes, dtypes and dense-layer settings within a sequence "
                               "(model.reset() between), or set DELTACONVERT_CUDA_DENSE_KEEP_ACC=1")
        a = None
    out = new_values(out_shape, dtype, runtime.device) if delta or clean else None
    candidates = listed_candidates(work, out_shape)
    if candidates is None:
        om = new_mask(out_shape, runtime.device)
    elif work.owns_masks:
        # The kernel visits only the listed candidates; the rest of their mask is clear,
        # and no other op reads it: it becomes the output mask.
        om = work.operands[0].mask
    else:
        om = zeroed_mask(arena, op.node_name, out_shape, runtime.device)
    width = whole_width(work, fn, out_shape, sent, out, a if work.keep else None)
    if targets and not work.assign:
        width = 0  # no masked whole-map kernel marks its consumers' outputs
    whole = whole_span(c, width)
    if a is None and not whole:
        a = allocated_accumulator(op)
    product = fn.code == PixelFunction.PRODUCT
    vec = channel_vectors(out_shape, out, sent, a, acc[1] if product else None,
                          *(d.values for d in work.operands if work.lin))
    lanes = lanes_for(c, 2 * VECTOR_CHANNELS if vec else CHANNELS_PER_LANE)
    grid, block, span = list_grid(n * h * w, lanes)
    if whole:
        grid, span = (whole_grid(n * h * w, whole, runtime.multiprocessors), 1, 1), whole
    else:
        width = VECTOR_CHANNELS if vec else 1
        if candidates is not None:
            # A persistent grid of at most one wave loops over the list's windows.
            grid = (one_wave(grid[0], runtime.multiprocessors), 1, 1)
    marked = mark_outputs(targets, out_shape, dtype, arena) if width >= VECTOR_CHANNELS else NO_TARGETS
    args = Args(op.node_name).blob(marked.argument)
    args.ints(n, c, h, w, lanes, span, len(work.operands), int(work.input_mode))
    for i in range(2):
        add_operand(args, work.operands[i] if i < len(work.operands) else None,
                    work.coefs[i] if i < len(work.coefs) else 0.0, out_shape)
    args.ptr(work.scale).ints(int(work.scale is not None and work.scale.numel() > 1))
    args.ptr(work.shift).ints(fn.code).floats(fn.p0, fn.p1)
    # Only the whole-map kernel may leave the accumulator unwritten (Fused.keep).
    args.tensor(a if work.keep or not whole else None, strides4(a, out_shape) if a is not None
                else (0, 0, 0, 0))
    args.tensor(acc[1] if len(acc) > 1 else None,
                strides4(acc[1], out_shape) if len(acc) > 1 else (0, 0, 0, 0))
    args.ptr(norm[0]).ptr(norm[1])
    args.tensor(sent, strides4(sent)).floats(op.threshold)
    counter = op.counter_for_kernel()
    listed = new_list(n * h * w, list_count)
    args.tensor(out, strides4(out) if out is not None else (0, 0, 0, 0))
    args.ptr(om).ptr(counter).ptr(work.counter)
    args.extend(list_args(op.node_name, listed)).extend(list_args(op.node_name, candidates))
    args.ints(width)
    if whole:
        args.ints(int(clean))
    name = ((WHOLE_KERNELS[work.input_mode] if whole else "pw_truncate")
            + ("_marking" if marked.outputs else ""))
    kernel(runtime, "pointwise", name, dtype)(grid, block, args)
    # ``total``: the whole tensor this delta updates (the values sent so far), which a
    # dense layer downstream recomputes from (:mod:`.dense_layers`).
    extras = {**op.counted_extras(counter), **list_extras(listed), "total": sent}
    if clean and whole:
        extras["clean"] = True
    if marked.outputs:
        extras["output_lists"] = marked.outputs
    return Delta(out if out is not None else placeholder(out_shape, dtype, runtime.device), om, extras)


# The whole-map truncation kernel of each input mode (truncate_whole in pointwise.cu).
WHOLE_KERNELS = {TruncateInput.ASSIGN: "pw_truncate_whole",
                 TruncateInput.ACCUMULATED: "pw_truncate_whole_masked",
                 TruncateInput.ADD: "pw_truncate_whole_added"}


def whole_width(work: Fused, fn: KernelFunction, out_shape: Sequence[int],
                *tensors: torch.Tensor | None) -> int:
    """The channels per vector load of the whole-map truncations (:data:`WHOLE_KERNELS`,
    ``truncate_whole`` in pointwise.cu: threads flat over a whole map's elements), or 0
    where none applies. Whole maps are, with an element-wise function: the assigning work
    of dense layers (every operand mask full, :mod:`.dense_layers`;
    ``pw_truncate_whole``), and accumulated or added work (a conv's epilogue added into
    the accumulator, ``…_masked``; one operand to add, a dense delta's, ``…_added``)
    whose candidates are the pixels of one operand's mask, itself flat (N, 1, H, W); over
    flat NHWC tensors (:func:`~.tensors.flat_nhwc`: the assigned or added operands'
    values and ``tensors``, None for absent ones, the accumulator among them where the
    kernel reads it) of fewer than 2³¹ elements. The width is the widest of one 16-byte
    vector, 4 channels and 1 that divides C and aligns every tensor."""
    if fn.code >= PixelFunction.PRODUCT:
        return 0
    given = [t for t in tensors if t is not None]
    if work.assign:
        present = [d.values for d in work.operands] + given
    elif len(work.operands) == 1 and flat_nhwc(work.operands[0].mask, mask_shape(tuple(out_shape))):
        present = given + ([work.operands[0].values] if work.lin else [])
    else:
        return 0
    if math.prod(out_shape) >= 2**31 or not all(flat_nhwc(t, out_shape) for t in present):
        return 0
    channels = shape4(out_shape)[1]
    for width in sorted({16 // present[0].element_size(), VECTOR_CHANNELS, 1}, reverse=True):
        if channels % width == 0 and all(t.data_ptr() % min(16, width * t.element_size()) == 0
                                         for t in present):
            return width
    return 0


def whole_span(channels: int, width: int) -> int:
    """Pixels per block round of ``pw_truncate_whole`` over ``channels`` in vectors of
    ``width`` (:func:`whole_width`; 0: ``pw_truncate``, which scans or lists its
    candidates): up to ``TRUNC_WHOLE_ITEMS · BLOCK`` vectors per round and ``BLOCK``
    pixels, so each thread holds at most ``TRUNC_WHOLE_ITEMS`` vectors; 0 for wider
    pixels."""
    vectors = channels // width if width else 0
    if not vectors or vectors > TRUNC_WHOLE_ITEMS * BLOCK:
        return 0
    return min(BLOCK, TRUNC_WHOLE_ITEMS * BLOCK // vectors)


def whole_grid(pixels: int, span: int, multiprocessors: int) -> int:
    """Blocks of a whole-map truncation over ``pixels`` in rounds of ``span``: a
    persistent grid of at most one wave (``RESIDENT_BLOCKS`` per multiprocessor), whose
    blocks take rounds ``blockIdx.x``, ``blockIdx.x + gridDim.x``, … (``truncate_whole`` in
    pointwise.cu). A block per round took 15.4 µs for a 144-channel 180×320 dense
    layer's truncation against 14.7, and mobilenet_v2 at τ=0.01 0.891–0.898 ms against
    0.874–0.879 (PERF_NOTES §52 b): each block's fixed steps — its barriers, the
    statistics counters' atomics — are paid once per wave instead of once per round."""
    return one_wave(-(-pixels // span), multiprocessors)


TAGGED_PIXELS = 2**29  # pw_truncate tags a listed pixel as pixel << 2 | flags (int32)


def listed_candidates(work: Fused, out_shape: Sequence[int]) -> PixelList | None:
    """The pixel list ``pw_truncate`` may take its candidates from instead of scanning:
    that of a single operand whose mask is the output's own (no broadcast)."""
    if len(work.operands) != 1:
        return None
    d = work.operands[0]
    listed = d.extras.get("pixels")
    n, _, h, w = shape4(out_shape)
    if (listed is None or n * h * w >= TAGGED_PIXELS
            or tuple(d.mask.shape) != tuple(mask_shape(tuple(out_shape)))):
        return None
    return listed


def nhwc_state(op: DeltaOp) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A Nonlinear op's accumulators and sent values, moved to channels_last once (a
    deferred accumulator stays as it is)."""
    state = op.state
    state["acc"] = [a if deferred(a) else as_nhwc(a) for a in state["acc"]]
    state["sent"] = as_nhwc(state["sent"])
    return state["acc"], state["sent"]


class VectorCache:
    """fp32 device copies of parameter vectors, refreshed when the parameter changes."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._copies: dict[int, tuple[tuple[int, int], torch.Tensor]] = {}

    def get(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        key = (t.data_ptr(), t._version)
        found = self._copies.get(id(t))
        if found is None or found[0] != key:
            found = self._copies[id(t)] = (key, fp32_vector(t, self.device))
        return found[1]


def _is(fn: object, group: tuple) -> bool:
    return any(fn is g for g in group)


def _pointwise(op: DeltaOp, varying: tuple[bool, ...]) -> bool:
    return (isinstance(op, Nonlinear) and op.footprint is Footprint.POINTWISE
            and op.varying == varying)


@accelerates(Nonlinear, when=lambda op: _pointwise(op, (True,)) and pixel_function(op.fn) is not None)
class Truncating(Accelerated):
    """A Nonlinear op with one varying input and a kernel-supported ``fn``.

    ``conv_targets``: the convs (op, wrapper) reading its output whose output masks and
    lists it writes (:mod:`.output_lists`; set at bind time). Its output is clean where
    :attr:`writes_clean` and the whole-map kernels run. ``total_readers``: the conv
    wrappers reading its output, where nothing else does (set at bind time); it stores
    no delta while each reads only the total (:attr:`writes_delta`).
    """

    conv_targets: Sequence[tuple[DeltaOp, Accelerated]] = ()
    total_readers: Sequence[Any] = ()
    total_state = "sent"

    def __init__(self, runtime: DeviceRuntime, op: DeltaOp, consumer: Consumer | None = None) -> None:
        super().__init__(runtime, op, consumer)
        self.function = pixel_function(op.fn)
        self.vectors = VectorCache(runtime.device)

    @property
    def takes_deferred(self) -> bool:
        """Whether a fused conv may defer this op's accumulator
        (:meth:`~.conv.ConvKernel.dense_in_place`): its dense frame then keeps ``o``
        alone (:meth:`dense_in_place`); not for a layer norm."""
        return self.function.norm is None

    @property
    def writes_delta(self) -> bool:
        """Whether this op's output delta is read this sequence: unless every reader is a
        conv that reads only the total (a dense layer, decided per sequence, so the
        choice is fixed in a capture)."""
        return not (self.total_readers and all(r.reads_total_only for r in self.total_readers))

    def accepts(self, op: DeltaOp, shape: Sequence[int], dtype: torch.dtype) -> bool:
        """Whether a producer may hand this op its work (:class:`Fused`) for an output of
        ``shape`` and ``dtype``."""
        acc, sent = op.state.get("acc"), op.state.get("sent")
        return (acc is not None and dtype in SUPPORTED_DTYPES and len(shape) in (2, 4)
                and tuple(acc[0].shape) == tuple(shape) and acc[0].device == self.runtime.device
                and self.nonlinear_state(acc[:1], sent, dtype))

    def run(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        if len(args) != 1 or kwargs or not isinstance(args[0], Delta):
            return NotImplemented
        d = args[0]
        work = d.extras.get("fused")
        if work is None or work.consumer is not op:
            if not self.usable(d) or not self.accepts(op, d.shape, d.dtype):
                return NotImplemented
            work = Fused(op, [d], [1.0], lin=True)
        acc, sent = nhwc_state(op)
        norm = self.function.norm
        vectors = ((self.vectors.get(norm.weight), self.vectors.get(norm.bias))
                   if norm is not None else (None, None))
        return truncate(self.runtime, op, d.dtype, d.shape, self.function, work, acc, sent,
                        vectors, self.list_count, self.arena, self.conv_targets,
                        self.writes_clean, self.writes_delta)

    def fallback(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        """The reference math, which cannot add to a deferred accumulator: refused."""
        if deferred((op.state.get("acc") or [None])[0]):
            raise RuntimeError(f"{op.node_name}: the kernels declined this call, and the "
                               "reference math would add to an accumulator never allocated "
                               "(its conv was to run as a dense layer); set "
                               "DELTACONVERT_CUDA_DENSE_KEEP_ACC=1 to keep accumulators")
        return super().fallback(op, *args, **kwargs)

    def dense_in_place(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        """A dense restart of a running sequence: ``a ← x`` and ``o ← f(x)`` from one read
        of ``x``, and ``o`` (the state buffer, read-only downstream) as the output;
        NotImplemented (the op's own dense path) for a first frame, a layer norm, or
        tensors that do not share one gap-free layout. Where the accumulator is deferred
        (:attr:`takes_deferred`), first frame or restart, ``o ← f(x)`` alone (torch)."""
        if len(args) != 1 or kwargs or self.function.norm is not None:
            return NotImplemented
        x, acc, sent = args[0], op.state.get("acc"), op.state.get("sent")
        if acc is not None and deferred(acc[0]):
            if tuple(acc[0].shape) != tuple(x.shape):
                raise RuntimeError(f"{op.node_name}: input {tuple(x.shape)} does not match the "
                                   f"deferred accumulator {tuple(acc[0].shape)}")
            out = op.fn(x)
            return op._keep("sent", out, ref.sent_dtype(out.dtype, out.device))
        if acc is None or not isinstance(x, torch.Tensor) or not self.usable(x):
            return NotImplemented
        a = acc[0]
        if (a.shape != x.shape or not self.nonlinear_state(acc[:1], sent, x.dtype)
                or not a.stride() == sent.stride() == x.stride() or not _gap_free(x)
                or x.numel() >= 2**31):
            return NotImplemented
        count = x.numel()
        vec = int(count % 4 == 0 and all(t.data_ptr() % 16 == 0 for t in (x, a, sent)))
        per_thread = 4 if vec else 1
        blocks = one_wave(-(-count // (BLOCK * per_thread)), self.runtime.multiprocessors)
        f = self.function
        args_ = Args(op.node_name).ints(count, int(f.code)).floats(f.p0, f.p1).ptr(x).ptr(a).ptr(sent)
        kernel(self.runtime, "pointwise", "pw_restart", x.dtype)((max(blocks, 1), 1, 1), (BLOCK, 1, 1),
                                                                 args_.ints(vec))
        return sent


def _gap_free(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill its storage span without gaps (any dense layout)."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


@accelerates(Nonlinear, when=lambda op: _pointwise(op, (True, True)) and _is(op.fn, MUL_FNS))
class Product(Accelerated):
    """``x · y`` of two varying tensors (non-linear: both operands accumulated)."""

    def run(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        if len(args) != 2 or kwargs or not all(isinstance(a, Delta) for a in args):
            return NotImplemented
        x, y = args
        if not self.usable(x, y) or x.dim() != y.dim():
            return NotImplemented
        try:
            out_shape = torch.broadcast_shapes(x.shape, y.shape)
        except RuntimeError:
            return NotImplemented
        if x.shape[0] != y.shape[0] or not self.nonlinear_state(op.state["acc"], op.state["sent"],
                                                                x.dtype):
            return NotImplemented
        acc, sent = nhwc_state(op)
        accumulate(self.runtime, op.node_name, x, acc[0])
        accumulate(self.runtime, op.node_name, y, acc[1])
        return truncate(self.runtime, op, x.dtype, out_shape,
                        KernelFunction(PixelFunction.PRODUCT), Fused(op, [x, y], [1.0, 1.0], lin=False),
                        acc, sent, (None, None), self.list_count, self.arena)


@accelerates(ChannelScale, LinearCall, fuses=True, when=lambda op: isinstance(op, ChannelScale)
             or _is(op.fn, (*ADD_FNS, *SUB_FNS, *NEG_FNS, *MUL_FNS)))
class LinearPointwise(Accelerated):
    """add / sub / neg, multiplication by a constant, and ChannelScale.

    ``consumer``: the op (and its wrapper) this one hands its work to, if the fusion
    plan found one. ``whole_readers`` (set at bind time, unfused ops only): the convs
    fused into an activation that read the output, each of which may run as a dense
    layer (:mod:`.dense_layers`) over the output's whole value; while one may
    (:attr:`keeps_total`) the op keeps its output's running total as state — ``sum``
    (fp32) and ``total`` (its model-dtype rounding), set from the dense frame's output
    and updated by ``pw_linear`` with every ``δy`` sent — and hands ``total`` on as
    ``extras["total"]``. MobileNetV2's residual adds: the expansion after one reads the
    residual stream, whose whole value no other op keeps.
    """

    # Dense adds (:mod:`.dense_layers`): the plan (None: never dense), this add's decision,
    # and the kind it decides as (``add_kind`` of its conv sources, set at bind time). Its
    # conv sources know it (``ConvKernel.feeds``); it does not know them.
    plan: Any = None
    dense: bool | None = None
    kind: ConvKind = "conv"
    whole_readers: Sequence[Any] = ()
    total_state = "total"

    @property
    def keeps_total(self) -> bool:
        """Whether the op keeps its output's total: one of its :attr:`whole_readers` is
        undecided or a dense layer, allowed now or not (decided per sequence, so fixed in
        a capture; the first delta frame, which samples, keeps it)."""
        return any(r.dense is None or r.dense_layer for r in self.whole_readers)

    def __init__(self, runtime: DeviceRuntime, op: DeltaOp, consumer: Consumer | None = None) -> None:
        super().__init__(runtime, op, consumer)
        self.vectors = VectorCache(runtime.device)
        self._shifts: dict[tuple, torch.Tensor] = {}

    def terms(self, op: DeltaOp, args: tuple, kwargs: dict
              ) -> tuple[list[Delta], list[float], torch.Tensor | None, torch.Size] | None:
        """(operands, coefficients, channel scale, output shape), or None if unsupported."""
        if hasattr(op, "scale") and hasattr(op, "shift"):  # ChannelScale
            (d,) = args
            return [d], [1.0], self.vectors.get(op.scale), d.shape
        fn = op.fn
        leaves = list(tensor_leaves((args, kwargs)))
        deltas = [leaf for leaf in leaves if isinstance(leaf, Delta)]
        try:
            out_shape = torch.broadcast_shapes(*(leaf.shape for leaf in leaves))
        except RuntimeError:
            return None
        if any(not isinstance(leaf, Delta) and leaf.dtype != deltas[0].dtype for leaf in leaves):
            return None
        if fn in NEG_FNS and len(args) == 1 and not kwargs:
            return [args[0]], [-1.0], None, out_shape
        if (fn in ADD_FNS or fn in SUB_FNS) and len(args) == 2 and set(kwargs) <= {"alpha"}:
            alpha = float(kwargs.get("alpha", 1))
            coefs = [1.0, (-alpha if fn in SUB_FNS else alpha)]
            pairs = [(a, k) for a, k in zip(args, coefs) if isinstance(a, Delta)]
            return [a for a, _ in pairs], [k for _, k in pairs], None, out_shape
        if fn in MUL_FNS and len(args) == 2 and not kwargs and len(deltas) == 1:
            d = deltas[0]
            const = args[1] if args[0] is d else args[0]
            if not isinstance(const, torch.Tensor) or tuple(out_shape) != tuple(d.shape):
                return None
            if not _per_channel(const, d.shape):
                return None
            return [d], [1.0], self.vectors.get(const), out_shape
        return None

    def run(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        parsed = self.terms(op, args, kwargs)
        if parsed is None:
            return NotImplemented
        operands, coefs, scale, out_shape = parsed
        if not operands or not self.usable(*operands) or len(out_shape) != operands[0].dim():
            return NotImplemented
        dtype = operands[0].dtype
        fused = self.consumer is not None and self.consumer[1].accepts(self.consumer[0], out_shape,
                                                                        dtype)
        _, _, h, w = shape4(out_shape)
        if fused and self.dense and scale is None and self.plan.allows(dtype, h * w, self.kind):
            return self.assign_wholes(op, operands, coefs, out_shape)
        if self.plan is not None:
            self.plan.require_current(op.node_name)  # deltas go to its consumer's accumulator
        if fused:
            mask = operands[0].mask
            for other in operands[1:]:
                mask = mask | other.mask
            mask = mask.expand(mask_shape(tuple(out_shape)))
            counter = op.counter_for_kernel()  # counted by the consumer's kernel
            extras = {"fused": Fused(self.consumer[0], operands, coefs, True, scale, counter),
                      **op.counted_extras(counter)}
            if (self.plan is not None and self.dense is None and scale is None
                    and self.plan.allows(dtype, h * w, self.kind)):
                self.plan.sample(self, mask, lambda: None, self.kind)  # its conv sources add theirs
                # The dense add's sum of biases, made in this eager frame rather than in a
                # capture, which would replay its kernels every frame.
                self.shift([(d.extras.get("bias"), k) for d, k in zip(operands, coefs)])
            return Delta(placeholder(out_shape, dtype, self.runtime.device), mask, extras)
        return linear(self.runtime, op, operands, coefs, scale, out_shape, self.list_count,
                      self.writes_clean, self.totals(op, out_shape, dtype))

    def dense_in_place(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        """A dense frame: the op's own output; where the op keeps its total, that output
        also becomes the state ``sum`` (fp32) and ``total`` (in place where they exist:
        a restart of a running sequence, whose buffers a captured graph reads)."""
        if not self.keeps_total:
            return NotImplemented
        out = op.dense(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.dtype in SUPPORTED_DTYPES:
            op._keep("sum", out, torch.float32)
            op._keep("total", out, out.dtype)
        return out

    def totals(self, op: DeltaOp, shape: Sequence[int], dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The state ``(sum, total)`` ``pw_linear`` updates (moved to channels_last
        once), or None: the op keeps no total, or its dense frame left none of this
        output's shape, dtype and device."""
        state = op.state
        if not self.keeps_total or "sum" not in state:
            return None
        total = state["total"]
        if (tuple(total.shape) != tuple(shape) or total.dtype != dtype
                or total.device != self.runtime.device):
            return None
        state["sum"], state["total"] = as_nhwc(state["sum"]), as_nhwc(total)
        return state["sum"], state["total"]

    def assign_wholes(self, op: DeltaOp, operands: Sequence[Delta], coefs: Sequence[float],
                      out_shape: Sequence[int]) -> Delta:
        """A dense add (:mod:`.dense_layers`): its operands' whole values — a conv source's
        ``conv(total)`` (``extras["whole"]``, its bias in ``extras["bias"]``) or a
        truncation's or Sparsify's ``total`` — handed to the consumer, which assigns
        ``Σ kᵢ·wholeᵢ + Σ kᵢ·biasᵢ`` to its accumulator; every pixel is a candidate.
        Unless the plan keeps accumulators, the consumer does not write it, and the plan
        holds its restoration (a conv source's whole recomputed, ``extras["recompute"]``;
        a total is state)."""
        wholes = [d.extras.get("whole", d.extras.get("total")) for d in operands]
        if any(w is None for w in wholes) or any(w.shape != d.shape for w, d in zip(wholes, operands)):
            raise RuntimeError(f"{op.node_name}: a dense add received an operand without its "
                               "whole value; its producers and it disagree on the plan")
        dtype = operands[0].dtype
        mask = full_mask(out_shape, self.runtime.device)
        counter = op.counter_for_kernel()  # counted by the consumer's kernel
        shift = self.shift([(d.extras.get("bias"), k) for d, k in zip(operands, coefs)])
        keep = self.plan.keeps_accumulators
        work = Fused(self.consumer[0], [Delta(w.to(dtype), mask) for w in wholes], list(coefs),
                     lin=True, counter=counter, assign=True, shift=shift, keep=keep)
        if not keep:
            terms = [(k, d.extras.get("recompute") or (lambda w=w: w))
                     for d, k, w in zip(operands, coefs, wholes)]
            self.plan.leave_stale(op.node_name, assigned_restoration(
                accumulator_of(self.consumer[0]), terms, shift, dtype))
        return Delta(placeholder(out_shape, dtype, self.runtime.device), mask,
                     {**op.counted_extras(counter), "fused": work})

    def shift(self, biases: Sequence[tuple[torch.Tensor | None, float]]) -> torch.Tensor | None:
        """``Σ kᵢ·biasᵢ`` (fp32) of the operands that carry a bias, kept while the biases
        are the same tensors (None: no bias)."""
        present = [(b, k) for b, k in biases if b is not None]
        if not present:
            return None
        if len(present) == 1 and present[0][1] == 1.0:
            return present[0][0]
        key = tuple((b.data_ptr(), b._version, k) for b, k in present)
        if key not in self._shifts:
            self._shifts = {key: sum(k * b for b, k in present)}
        return self._shifts[key]


def _per_channel(const: torch.Tensor, shape: Sequence[int]) -> bool:
    """Whether ``const`` broadcasts over ``shape`` as one value or one value per channel."""
    if const.numel() == 1:
        return True
    dims = (1,) * (len(shape) - const.dim()) + tuple(const.shape)
    return (len(dims) == len(shape) and const.numel() == shape[1]
            and all(s == 1 for i, s in enumerate(dims) if i != 1))
