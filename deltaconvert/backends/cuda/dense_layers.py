"""Dense layers: a convolution that would update most of its output recomputes it with
cuDNN instead of running the delta kernels.

**Math.** A conv fused into a truncating activation (``conv → f``, see :mod:`.fusion`)
whose input is the output of a truncating op (an activation, a max pool), of an input
Sparsify or of a linear op that keeps its total (``LinearPointwise.keeps_total``) has
that input's whole value at hand: the producer's sent values ``o_in`` (the Sparsify's
``ref``; the linear op's running sum of the deltas it sent, rounded to the model dtype),
which is the sum of every delta the conv has received.
The activation's accumulator is therefore ``a = conv(o_in) + b`` (exact in real
arithmetic: the conv is linear, DESIGN.md §1). A *dense layer* computes that with cuDNN
every frame and hands it to the activation, whose kernel assigns ``a ← round(conv(o_in) + b)`` instead of adding a
delta (:attr:`~.constants.TruncateInput.ASSIGN`, the bias as its ``shift``), then
truncates against ``o`` as always: ``v = f(a)``, ``δy = v − o`` emitted where
``max_c |δy| > τ``. Downstream stays sparse.

**Accumulators.** A dense layer never reads ``a``, so unless
``DELTACONVERT_CUDA_DENSE_KEEP_ACC=1`` it does not write it either (the whole-map kernel
moves 4 bytes per element instead of 8); it leaves the plan a restoration instead, which
recomputes ``a`` from the state (:meth:`DenseLayerPlan.restore`, run where the delta
kernels take over between frames: the READY gate's installation). A dense layer that
stops within a sequence without it is refused (:meth:`DenseLayerPlan.require_current`).
Nor is ``a`` allocated while no delta kernel needs it: a conv that may be a dense layer
(``ConvKernel.deferred_shape``: its input hands on a total that its producer keeps as
state, fp16, and the plan allows it) leaves its activation a
:class:`DeferredAccumulator` on the sequence's first, dense frame, with a restoration
that computes ``a`` from the producer's state; the restoration allocates it where the
conv turns out delta (:meth:`DenseLayerPlan.resolve`) or the READY gate is installed.
MobileNetV2 at 720p, fp16, threshold 0.01 (its stem, depthwise convs and the expansions
after skip adds dense): 757 → 469 MiB allocated at batch 1 (PERF_NOTES §47).

**Dense adds.** An add (or sub) fused into a truncating activation whose operands are
truncation, max-pool or Sparsify outputs (which hand on their totals) and convs used by
it alone (whose own input hands on its total) — ResNet's ``conv → add(skip) → ReLU`` —
may do the same for the sum: each conv source hands on ``conv(total)`` instead of a delta
(``extras["whole"]``, its bias in ``extras["bias"]``), and the activation assigns
``Σ kᵢ·wholeᵢ + Σ kᵢ·bᵢ`` (the biases as the kernel's per-channel ``shift``). The add
decides like a conv, from its candidates on the first delta frame, and its conv sources
follow its decision (``binding.dense_add_sources`` finds them at bind time).

**Dense deltas.** A 1×1 conv at stride 1 without padding (``conv.keeps_pixels``) that
cannot be a dense layer — its input is another conv's output or an add's that keeps no
total, or it feeds no activation (MobileNetV2's projections) — may
instead run cuDNN over its whole delta map: ``δy = conv(δ ⊙ m)`` (the input's values
zeroed outside its mask ``m``; a 1×1 conv of that is zero outside ``m`` too, so the output
mask is the input's, and its pixel list goes on with it). Fused into an activation, the
activation adds ``round(δy)`` at its candidates as from a fused linear op
(:attr:`~.constants.TruncateInput.ADD`); else ``δy`` is the output. The accumulators stay
current (nothing to restore), and the result is the delta kernels' up to the order of the
fp32 sums: both add ``round(Σ w·δ)`` in fp32. It decides like a dense layer, from the
fraction :data:`DENSE_DELTA_FROM` (``DELTACONVERT_CUDA_DENSE_DELTA_FROM``; kind
``"delta"``), since cuDNN's cost is the whole map's whatever the candidates.

**Why.** At full density a delta conv and its truncation cost 2–6× cuDNN's dense conv
(PERF_NOTES §27 b, §35): the candidate pixels of a layer decide the delta cost, and
where most output pixels are candidates the dense conv is cheaper.

**Plan.** Each sequence decides once, on its first delta frame (always eager): every
eligible conv runs as a dense layer and counts the candidate output pixels the delta
kernels would have (its output mask, a device sum), and before the next
frame or capture (:meth:`DenseLayerPlan.resolve`: one host read for all of them) a conv
whose candidates are at least its kind's fraction of its output pixels
(:func:`dense_from`) becomes dense for the rest of the sequence. cuDNN's first call for
each dense layer's shape is made then, outside any capture. The fractions, by
:func:`conv_kind`: :data:`DENSE_FROM` for 1×1 convs (``DELTACONVERT_CUDA_DENSE_FROM``,
default 0.15); :data:`DENSE_SPATIAL_FROM` for convs with more taps
(``…_SPATIAL_FROM``, 0.04), and adds with such a conv source (:func:`add_kind`);
:data:`DENSE_NARROW_FROM` for convs over 2 to :data:`NARROW_CHANNELS` − 1 input channels
per group, RGB stems (``…_NARROW_FROM``, 0.15); :data:`DENSE_DEPTHWISE_FROM` for convs
over one input channel per group (``…_DEPTHWISE_FROM``, 0.15). 0: every
eligible conv of that kind dense; above 1: none. A depthwise conv is memory-bound, and
cuDNN runs some shapes (dilated ones) many times slower than their bytes allow: one that
would turn dense is timed then against a copy of its input (:func:`memory_bound`), and
stays delta where cuDNN takes more than :data:`DEPTHWISE_COPY_RATIO` copies.

**Eligible** calls: fp16 (an fp32 conv through cuDNN would use TF32); fused into a
truncating consumer; an input that carries its ``total`` (``Delta.extras``); output maps
of at least :data:`DENSE_MIN_PIXELS` pixels; and no READY gate on the
model's Sparsify ops (slot mode: a dense layer's candidates are every pixel of every
row, so idle slots would emit their deferred updates; gated frames run the delta kernels
on the accumulators restored when the gate was installed).
"""
from __future__ import annotations

import os
import weakref
from typing import Any, Callable, Iterable, Literal, Sequence

import torch

from ...ops.boundary import Sparsify
from ...timing import device_time
from .device import DeviceRuntime

# A 1×1 conv turns dense from 15 % candidates (PERF_NOTES §40: then for every GEMM conv;
# resnet18 at τ=0.1 took 0.668 ms at 0.15 against 0.711 at 0.3, resnet50 −2 to −4 %;
# MobileNetV2's expansions after skip adds at 0.15, 0.3 and 0.5 within ±0.5 %, §47 a).
# Spatial convs have their own fraction, DENSE_SPATIAL_FROM.
DENSE_FROM = float(os.environ.get("DELTACONVERT_CUDA_DENSE_FROM", "0.15"))
DENSE_DTYPES = (torch.float16,)  # fp32 convs through cuDNN would use TF32 (not exact)
# Smaller maps stay delta: a cuDNN call on a few pixels (squeeze-excite convs on 1×1
# maps) is a launch-bound few µs that the delta kernels match.
DENSE_MIN_PIXELS = 256
# Depthwise convs turn dense from 15 % too, since the whole-map truncation moves its
# bytes at 2–3.5 TB/s (PERF_NOTES §42): MobileNetV2's block-3 layer (144 channels at
# 180×320) costs 40–45 µs as a dense layer against the delta kernels' 86 µs at 30–100 %
# of its pixels, and mobilenet_v2 at τ=0.01 took 1.177 ms against 1.317 (§43). Not
# where cuDNN is slow for the shape: see DEPTHWISE_COPY_RATIO.
DENSE_DEPTHWISE_FROM = float(os.environ.get("DELTACONVERT_CUDA_DENSE_DEPTHWISE_FROM", "0.15"))
# A depthwise conv moves its input and output once and does a few multiply-adds per
# byte: cuDNN's kernels for it took 1–3 times as long as a copy of the input where they
# are good (144 channels at 180×320: 25 µs), but lraspp's 5×5 depthwise convs dilated by
# 2 at 45×80 took 189–285 µs (a layout transform, an implicit GEMM, another transform)
# where the delta kernels take 35–48 µs; dense, they made lraspp 24 % slower (§43). So a
# depthwise conv that would turn dense stays delta where cuDNN takes more than this many
# copies of its input.
DEPTHWISE_COPY_RATIO = 5.0
# Convs with a spatial kernel (3×3 and larger, over NARROW_CHANNELS or more input channels
# per group: ResNet's) turn dense from 4 % of their output pixels, as does an add whose
# conv sources include one: the listed GEMM over gathered taps costs per candidate about
# four times what cuDNN costs per pixel, and the marking truncation after it costs what
# the whole-map one does (PERF_NOTES §48: resnet18's 13 listed 3×3 GEMMs at 28 % work took
# 219 µs against cuDNN's 172 µs for the whole maps). resnet18 at τ=0.1 took 0.630 ms
# from 0.15, 0.555 from 0.08 and 0.559 from 0.04; at τ=0.2 0.666 / 0.603 / 0.556.
DENSE_SPATIAL_FROM = float(os.environ.get("DELTACONVERT_CUDA_DENSE_SPATIAL_FROM", "0.04"))
# Convs over a few input channels (an RGB stem) turn dense earlier: the delta GEMM
# gathers a few channels per tap, so its cost per candidate is far above cuDNN's per
# pixel. ResNet's 7×7 stem took 114 µs at 24 % candidates where cuDNN takes 31 µs for
# the whole map and the whole-map truncation ~40 (PERF_NOTES §38): break-even ≈ 15 %.
NARROW_CHANNELS = 8
DENSE_NARROW_FROM = float(os.environ.get("DELTACONVERT_CUDA_DENSE_NARROW_FROM", "0.15"))

# A 1×1 conv with no dense-layer path runs cuDNN over its whole delta map (dense deltas,
# above) from this candidate fraction: cuDNN's 1×1 conv costs the whole map, the listed
# GEMM's cost follows the candidates at 2–3× cuDNN's per pixel. mobilenet_v2 τ=0.01 took
# 0.921 ms at 0.3 and 0.926 at 0.5 against 1.084 without, τ=0.02 0.903 / 0.956 / 0.962;
# lraspp τ=0.02 2.092 / 2.057 / 2.203 (PERF_NOTES §44).
DENSE_DELTA_FROM = float(os.environ.get("DELTACONVERT_CUDA_DENSE_DELTA_FROM", "0.3"))

ConvKind = Literal["conv", "spatial", "narrow", "depthwise", "delta"]


# Whether dense layers write their accumulator every frame. They never read it, so by
# default they do not (4 of the whole-map truncation's 8 bytes per element): each leaves
# the plan a restoration, run before the delta kernels take over that accumulator
# (DenseLayerPlan.restore).
KEEP_ACCUMULATORS = os.environ.get("DELTACONVERT_CUDA_DENSE_KEEP_ACC", "0") == "1"


def conv_kind(in_per_group: int, taps: int = 1) -> ConvKind:
    """A conv's kind for :func:`dense_from`, from its input channels per group and its
    kernel taps (KH·KW), as the delta kernels choose (``conv.py``): depthwise (one input
    channel per group, any channel multiplier: the depthwise kernel), narrow (fewer than
    :data:`NARROW_CHANNELS`: an RGB stem), spatial (more than one tap: the GEMM gathers
    each tap's pixels), or a 1×1 conv."""
    if in_per_group == 1:
        return "depthwise"
    if in_per_group < NARROW_CHANNELS:
        return "narrow"
    return "spatial" if taps > 1 else "conv"


def conv_kind_of(conv: Any) -> ConvKind:
    """:func:`conv_kind` of ``conv`` (an ``nn.Conv2d``: weight ``(Cout, Cin_g, KH, KW)``)."""
    _, in_per_group, kh, kw = conv.weight.shape
    return conv_kind(in_per_group, kh * kw)


def add_kind(source_kinds: Iterable[ConvKind]) -> ConvKind:
    """The kind a dense add decides as: that of its spatial conv sources if it has one
    (its decision is theirs: ResNet's basic block), else a 1×1 conv's."""
    return "spatial" if "spatial" in source_kinds else "conv"


def dense_from(kind: ConvKind = "conv") -> float:
    """The candidate fraction from which a conv of this kind turns dense (above 1: never);
    an add decides as :func:`add_kind` says, a dense delta as ``"delta"``."""
    return {"conv": DENSE_FROM, "spatial": DENSE_SPATIAL_FROM, "narrow": DENSE_NARROW_FROM,
            "depthwise": DENSE_DEPTHWISE_FROM, "delta": DENSE_DELTA_FROM}[kind]


def memory_bound(conv: Callable[[], Any], source: torch.Tensor) -> bool:
    """Whether the dense conv ``conv()`` takes at most :data:`DEPTHWISE_COPY_RATIO` times
    the device time of a copy of its input ``source`` (the whole value it reads)."""
    copy = torch.empty_like(source)
    conv_ms = device_time(conv, source.device)
    copy_ms = device_time(lambda: copy.copy_(source), source.device)
    return conv_ms <= DEPTHWISE_COPY_RATIO * copy_ms


class DeferredAccumulator:
    """Stands in, in a Nonlinear op's state (``state["acc"][0]``), for the fp32
    accumulator of a conv that starts as a dense layer (see the module docstring): the
    tensor's shape, dtype and device, and no memory. Only the dense layer's assigning
    truncation accepts it; :func:`allocated_accumulator` replaces it by the tensor."""

    dtype = torch.float32

    def __init__(self, shape: Sequence[int], device: torch.device) -> None:
        self.shape = torch.Size(shape)
        self.device = device

    def __repr__(self) -> str:
        return f"DeferredAccumulator({tuple(self.shape)}, {self.device})"


def deferred(acc: Any) -> bool:
    """Whether the accumulator ``acc`` (a state entry) is a :class:`DeferredAccumulator`."""
    return isinstance(acc, DeferredAccumulator)


def allocated_accumulator(op: Any) -> torch.Tensor:
    """The accumulator of the Nonlinear op ``op``, allocated (channels_last, contents
    undefined) into its state where it was deferred: for a restoration, or a truncation
    that assigns every element of it."""
    accs = op.state["acc"]
    if deferred(accs[0]):
        accs[0] = torch.empty(tuple(accs[0].shape), dtype=torch.float32, device=accs[0].device,
                              memory_format=torch.channels_last)
    return accs[0]


def accumulator_of(op: Any) -> Callable[[], torch.Tensor]:
    """:func:`allocated_accumulator` of ``op`` when called; holds ``op`` weakly (a
    restoration the plan keeps must not close a cycle op → wrapper → plan → op)."""
    ref = weakref.ref(op)
    return lambda: allocated_accumulator(ref())


def assigned_restoration(acc: Callable[[], torch.Tensor],
                         terms: Sequence[tuple[float, Callable[[], torch.Tensor]]],
                         shift: torch.Tensor | None, dtype: torch.dtype) -> Callable[[], None]:
    """What restores the accumulator ``acc()`` (:func:`accumulator_of`: allocated if it
    was deferred) of a dense layer or add that does not write it:
    ``a = round(Σ kᵢ·wholeᵢ + shift)``, as ``pw_truncate_whole`` assigns it (the
    wholes in the model dtype ``dtype``, the sum and the fp32 per-channel ``shift`` in
    fp32, rounded to ``dtype``). ``terms``: ``(kᵢ, wholeᵢ)``, each whole a callable that
    computes it from the state (which the dense frames have kept up to date)."""
    def restore() -> None:
        total = None
        for k, whole in terms:
            term = k * whole().to(dtype).float()
            total = term if total is None else total + term
        if shift is not None:
            total = total + shift.view(1, -1, 1, 1)
        acc().copy_(total.to(dtype).float())
    return restore


class DenseLayerPlan:
    """The per-sequence decision of which convs run dense (see the module docstring).

    A fused conv wrapper asks :meth:`allows` about each call; while its decision
    ``wrapper.dense`` is None it runs the delta kernels and adds its candidate count
    with :meth:`sample`; then it runs dense where ``wrapper.dense`` is True.
    ``sparsifiers``: the model's Sparsify ops, whose READY gate rules dense layers out.
    """

    def __init__(self, runtime: DeviceRuntime, sparsifiers: Sequence[Sparsify]) -> None:
        self.runtime = runtime
        self.sparsifiers = list(sparsifiers)
        # (wrapper, its candidate count, the count from which it turns dense, warm-up, the
        # input to time a memory-bound conv against or None, the op whose accumulator its
        # sampling frame may have left stale or None), and more warm-ups to run if their
        # wrapper turns dense (a dense add's conv sources). Both are emptied by resolve():
        # while they hold wrappers, wrappers and plan form a cycle, which only a
        # garbage-collector pass would free.
        self._samples: list[tuple[Any, torch.Tensor, float, Callable[[], Any],
                                  torch.Tensor | None, str | None]] = []
        self._also: list[tuple[Any, Callable[[], Any]]] = []
        # Op name → how to restore the accumulator a dense layer left stale (closures that
        # hold state tensors and weak references to ops, never wrappers: no cycle).
        self._stale: dict[str, Callable[[], None]] = {}

    @property
    def keeps_accumulators(self) -> bool:
        """Whether dense layers write their accumulators (:data:`KEEP_ACCUMULATORS`)."""
        return KEEP_ACCUMULATORS

    def leave_stale(self, name: str, restore: Callable[[], None]) -> None:
        """The dense layer of op ``name`` did not write its accumulator; ``restore()``
        writes what it would hold (the value the dense layer assigns, from the state)."""
        self._stale[name] = restore

    def restore(self) -> None:
        """Bring every accumulator a dense layer left stale up to date from the state, so
        that the delta kernels may add to it. Between frames only (the READY gate's
        installation, ``Runtime.restore_state``): within a frame the inputs' state already
        holds that frame's deltas, which the delta kernels would then add a second time.
        No dense frame may follow without its Python running (a captured graph with dense
        layers must be dropped, as the READY gate's installation does): it would leave the
        accumulators stale again unrecorded."""
        stale, self._stale = self._stale, {}
        if stale:
            with self.runtime.frame(), torch.no_grad():
                for restore in stale.values():
                    restore()

    def require_current(self, name: str) -> None:
        """Refuse to let the delta kernels add to the accumulator that the dense layer of
        op ``name`` left stale (its settings changed within a sequence)."""
        if name in self._stale:
            raise RuntimeError(
                f"{name}: this dense layer stopped within a sequence, and the delta kernels "
                "would add to an accumulator it did not keep; change dense-layer settings "
                "between sequences (model.reset()), or set DELTACONVERT_CUDA_DENSE_KEEP_ACC=1")

    def allows(self, dtype: torch.dtype, out_pixels: int, kind: ConvKind = "conv") -> bool:
        """Whether a call in ``dtype`` writing ``out_pixels`` pixels per sample may run
        dense (:func:`dense_from` at most 1, fp16, at least :data:`DENSE_MIN_PIXELS`, no
        READY gate); the wrapper checks the rest (see the module docstring)."""
        return (dense_from(kind) <= 1 and dtype in DENSE_DTYPES
                and out_pixels >= DENSE_MIN_PIXELS and all(op.ready is None for op in self.sparsifiers))

    def sample(self, wrapper: Any, mask: torch.Tensor, warm_up: Callable[[], Any],
               kind: ConvKind = "conv", source: torch.Tensor | None = None,
               name: str | None = None) -> None:
        """``wrapper``'s conv (of that kind) has the candidate output ``mask`` this
        frame; ``warm_up()`` runs its dense conv once (on the state: it only reads it).
        A depthwise conv passes ``source``, the state tensor its dense conv reads, to be
        timed against (:func:`memory_bound`). ``name``: the op under which the conv,
        running as a dense layer this frame, left its accumulator stale: restored when
        the conv is decided delta."""
        count = mask.sum(dtype=torch.int32)
        timed = source if kind == "depthwise" else None
        self._samples.append((wrapper, count, dense_from(kind) * mask.numel(), warm_up, timed, name))

    def also_warm(self, wrapper: Any, warm_up: Callable[[], Any]) -> None:
        """Run ``warm_up()`` too if the sampled ``wrapper`` turns dense (a conv source of a
        dense add: its dense conv's first call)."""
        self._also.append((wrapper, warm_up))

    def resolve(self) -> bool:
        """Decide every sampled conv (one host read), and make cuDNN's first call of
        each new dense layer now; a depthwise one stays delta unless
        :func:`memory_bound` (one more host wait each). A conv decided delta gets the
        accumulator its sampling frame left stale (and perhaps unallocated) restored
        now, between frames, before the delta kernels add to it. Call outside any
        capture; a no-op when nothing waits. Returns whether it decided anything: no
        frame has run on those decisions yet.
        Warm-ups for adds that did not sample (an add whose consumer declined its work)
        are dropped, so that none accumulate frame after frame."""
        if not self._samples:
            self._also = []
            return False
        if self._samples[0][1].is_cuda and torch.cuda.is_current_stream_capturing():
            return False
        samples, self._samples = self._samples, []
        also, self._also = self._also, []
        counts = torch.stack([sample[1] for sample in samples]).tolist()
        with self.runtime.frame(), torch.no_grad():
            for (wrapper, _, needed, warm, source, _), count in zip(samples, counts):
                wrapper.dense = count >= needed
                if wrapper.dense:
                    warm()
                    if source is not None:
                        wrapper.dense = memory_bound(warm, source)
            for wrapper, warm in also:
                if wrapper.dense:
                    warm()
            for wrapper, *_, name in samples:
                if not wrapper.dense and name in self._stale:
                    self._stale.pop(name)()
        return True
