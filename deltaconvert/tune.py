"""Automatic threshold tuning against an error budget.

Algorithm (:func:`tune`), deterministic for the same model, frames and settings:

1. **Reference.** Each calibration frame is run alone after ``reset()``: a dense first
   frame, i.e. exactly the original model's output in the model's precision — or, given
   ``reference``, that function's output for the frame (e.g. the original model in fp32,
   so that a 16-bit model's budget covers its own rounding too). The same pass measures
   each truncating op's *scale*, the mean absolute value of its output on the first frame.
2. **Baseline.** The clip runs as one sequence with every threshold at 0; its error
   ``e0`` (float re-association only, plus the precision gap to a given reference) is
   where the budget starts.
3. **Budget shares.** Truncating ops are visited front to back in graph order, all
   input Sparsify ops first as one knob (``input.threshold``). Op ``i`` may bring the
   clip's error up to ``e0 + (budget − e0)·c_i``, where ``c_i`` is the cumulative share
   ``Σ_{j≤i} w_j / Σ_j w_j`` and ``w_j`` the dense multiply-adds downstream of op
   ``j``: early layers, whose updates spread into everything after them, get more of the
   budget; the last op's limit is the whole budget.
4. **Search.** For op ``i``, with earlier ops fixed at their chosen thresholds and later
   ones at 0, a binary search over the candidates ``scale_i · 2^k`` (``k`` from
   ``max_exponent`` down to ``min_exponent``; scale rounded to two significant digits)
   finds the largest threshold whose clip error is within the op's limit. Each probe
   runs the whole clip as a sequence; a probe stops early once its error can no longer
   fit. Since threshold 0 is always within the limit (the error so far fits the previous,
   smaller limit), every accepted setting was measured within the budget.

The clip error is the mean (or max) over the delta frames (all but the first) of
``metric(output, reference)``; by default :func:`relative_error`, the relative L2 error
of all output tensors against the dense model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .delta import map_tensor_leaves
from .errors import ConfigError
from .metrics import relative_error
from .model import DeltaGraphModule
from .thresholds import ThresholdConfig
from .version import __version__

Metric = Callable[[Any, Any], float]
INPUT_KNOB = "input"
AGGREGATES = ("mean", "max")


@dataclass
class _Knob:
    """One tuned quantity: a layer's threshold, or the input threshold of every input."""

    name: str
    scale: float
    downstream_macs: float

    def set(self, model: DeltaGraphModule, value: float) -> None:
        if self.name == INPUT_KNOB:
            model.set_input_sparsify(threshold=value)
        else:
            model.thresholds[self.name] = value


def _two_significant_digits(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    return float(f"{value:.2g}")


class _Clip:
    """Runs the calibration clip as a sequence and measures its error."""

    def __init__(self, model: DeltaGraphModule, frames: Sequence[torch.Tensor], metric: Metric,
                 aggregate: str, reference: Callable[[torch.Tensor], Any] | None) -> None:
        self.model, self.frames, self.metric, self.aggregate = model, frames, metric, aggregate
        self.references = []
        for frame in frames:
            model.reset()
            with torch.no_grad():
                out = model(frame) if reference is None else reference(frame)
            self.references.append(map_tensor_leaves(out, lambda t: t.detach().clone()))
        model.reset()

    def error(self, limit: float = math.inf) -> tuple[float, float | None]:
        """(clip error, mean work fraction); stops early with ``inf`` once the error is
        certain to exceed ``limit``."""
        self.model.reset()
        self.model(self.frames[0])
        delta_frames = len(self.frames) - 1
        total = worst = 0.0
        for frame, reference in zip(self.frames[1:], self.references[1:]):
            value = self.metric(self.model(frame), reference)
            total, worst = total + value, max(worst, value)
            bound = worst if self.aggregate == "max" else total / delta_frames
            if bound > limit:
                return math.inf, None
        error = worst if self.aggregate == "max" else total / delta_frames
        return error, self.model.stats()["work_fraction_mean"]


def _knobs(model: DeltaGraphModule, frame: torch.Tensor) -> list[_Knob]:
    """Truncating ops front to back (inputs first) with their scale and downstream MACs."""
    inputs = model.input_sparsifiers()
    ops = model.delta_ops()
    scales: dict[str, float] = {}

    def record_scale(module: torch.nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            scales.setdefault(module.node_name, float(out.detach().abs().float().mean()))

    hooks = [op.register_forward_hook(record_scale)
             for name, op in ops.items() if name in model.thresholds]
    try:
        model.reset()
        model(frame)
    finally:
        for hook in hooks:
            hook.remove()
    macs = {name: entry["dense_macs"] for name, entry in model.stats()["layers"].items()}
    order = list(ops)

    def downstream(name: str) -> float:
        return sum(macs[later] for later in order[order.index(name) + 1:])

    knobs = []
    if inputs:
        first = min(inputs, key=order.index)
        knobs.append(_Knob(INPUT_KNOB, _two_significant_digits(
            sum(scales.get(n, 0.0) for n in inputs) / len(inputs)), downstream(first)))
    for name in model.thresholds:
        if name not in inputs:
            knobs.append(_Knob(name, _two_significant_digits(scales.get(name, 0.0)),
                               downstream(name)))
    return knobs


def tune(model: DeltaGraphModule, frames: Sequence[torch.Tensor], budget: float, *,
         metric: Metric = relative_error, aggregate: str = "mean", min_exponent: int = -6,
         max_exponent: int = 1, clip: str | None = None, metadata: dict[str, Any] | None = None,
         progress: bool = True, reference: Callable[[torch.Tensor], Any] | None = None
         ) -> ThresholdConfig:
    """Per-layer thresholds keeping the clip's error within ``budget`` (module docstring).

    Args:
        model: a converted model; its thresholds are restored and its sequence reset on
            return. Forced-dense layers and the input mask dilation are kept as they are.
        frames: the calibration clip, at least 2 frames, on the model's device.
        budget: the allowed clip error (e.g. ``0.02``: 2 % relative error).
        metric: ``metric(output, dense_output) -> float`` per frame.
        aggregate: ``"mean"`` or ``"max"`` over the delta frames.
        clip: a description of the clip, recorded in the metadata.
        metadata: extra entries for the returned configuration's metadata.
        progress: show a progress bar (tqdm, on stderr).
        reference: ``reference(frame)`` is what the model's output on ``frame`` is judged
            against (default: the model's own dense first frame of it). The budget then
            covers everything between the two, e.g. a 16-bit model's rounding when the
            reference is the fp32 original.

    Returns:
        The tuned :class:`ThresholdConfig`; its metadata records the budget, metric,
        clip, frames, resolution, the achieved error and work fraction, and those at 0.
    """
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise ValueError(f"budget must be a finite number > 0, got {budget!r}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if len(frames) < 2:
        raise ValueError(f"tuning needs a clip of at least 2 frames, got {len(frames)}")
    if min_exponent > max_exponent:
        raise ValueError(f"min_exponent {min_exponent} > max_exponent {max_exponent}")
    from tqdm import tqdm

    saved = dict(model.thresholds)
    try:
        for name in saved:
            model.thresholds[name] = 0.0
        knobs = _knobs(model, frames[0])
        measure = _Clip(model, frames, metric, aggregate, reference)
        error_at_zero, work_at_zero = measure.error()
        if error_at_zero > budget:
            raise ConfigError(f"the budget {budget} is below the error with every threshold at 0 "
                             f"({error_at_zero:.3g}): raise the budget")
        total_weight = sum(k.downstream_macs for k in knobs) or 1.0
        error, work, cumulative = error_at_zero, work_at_zero, 0.0
        chosen: dict[str, float] = {}
        bar = tqdm(knobs, desc="tuning", unit="layer", disable=not progress)
        for knob in bar:
            cumulative += knob.downstream_macs
            limit = error_at_zero + (budget - error_at_zero) * min(1.0, cumulative / total_weight)
            candidates = [knob.scale * 2.0 ** k for k in range(min_exponent, max_exponent + 1)]
            best, low, high = 0.0, -1, len(candidates)
            while high - low > 1:
                middle = (low + high) // 2
                knob.set(model, candidates[middle])
                probe_error, probe_work = measure.error(limit)
                if probe_error <= limit:
                    best, error, work, low = candidates[middle], probe_error, probe_work, middle
                else:
                    high = middle
            knob.set(model, best)
            chosen[knob.name] = best
            bar.set_postfix_str(f"{knob.name}={best:.3g} error={error:.4f}")
        bar.close()
        first = frames[0]
        dense = list(model.conversion.get("forced_dense", []))
        inputs = model.input_sparsifiers()
        dilation = next(iter(inputs.values())).dilation if inputs else 0
        record = {
            "tuned_with": f"deltaconvert {__version__} tune",
            "budget": float(budget),
            "metric": getattr(metric, "__name__", type(metric).__name__),
            "reference": "dense first frame" if reference is None else "given",
            "aggregate": aggregate,
            "clip": clip or "frames passed to deltaconvert.tune",
            "frames": len(frames),
            "resolution": list(first.shape[-2:]),
            "error": float(error),
            "error_at_zero": float(error_at_zero),
            "work_fraction": None if work is None else float(work),
            "work_fraction_at_zero": None if work_at_zero is None else float(work_at_zero),
            **(metadata or {}),
        }
        return ThresholdConfig(
            default=0.0, input_threshold=chosen.get(INPUT_KNOB, 0.0), input_dilation=dilation,
            layers={k.name: chosen[k.name] for k in knobs if k.name != INPUT_KNOB},
            dense=dense, architecture=model.conversion.get("architecture"), metadata=record)
    finally:
        for name, value in saved.items():
            model.thresholds[name] = value
        model.reset()
