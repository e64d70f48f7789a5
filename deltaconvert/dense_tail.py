"""Dense tails: the last ops of a model run dense where that is measured to be faster.

Update fractions grow with depth: every convolution spreads an update over its
footprint, so the last layers of a network see most of their pixels change on most
frames of real video, and there a delta op costs more than the dense op it replaces.
A *dense tail* runs a suffix of the graph as one dense island (Densify, then the
original ops), chosen at conversion time through ``ThresholdConfig.dense``; the delta
ops before it keep their thresholds. A tail's ops compute what the original model
computes on the accumulated input, so their truncation error is gone; the clip error
still changes a little either way (rounding and truncation errors of the other ops no
longer cancel the same way), which is why every candidate's error is measured.

:func:`plan_dense_tail` chooses the tail by measurement, on the device, dtype and frame
size it will run at (the break-even is a property of the kernels, the GPU and the
clip, not of the architecture alone). The candidates are, for each ``p`` in
``fractions``, the longest suffix of the graph order whose ops hold at most the share
``p`` of the model's dense multiply-adds (0: no tail; 1: every op dense). Each is
converted, run over the calibration frames as one sequence — a dense first frame, then
delta frames, replayed as one CUDA graph from the third frame on when ``cuda_graph`` —
and scored by

* its time per frame: the median over frames 3… (CUDA events, or wall time on a CPU);
* its clip error: the mean over the delta frames of the relative L2 error of all outputs
  against the dense model in the same dtype (as :func:`deltaconvert.tune.tune` measures).

The plan picks the fastest candidate whose error is within ``error_budget`` (any
candidate when None). Candidates with the same suffix are measured once.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import statistics
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .convert import convert
from .errors import InvalidArgument
from .metrics import relative_error
from .model import DeltaGraphModule
from .ops.boundary import Densify, Sparsify
from .thresholds import ThresholdConfig, load_thresholds
from .timing import frame_times

DEFAULT_FRACTIONS = (0.0, 0.3, 0.5, 0.65, 0.8, 0.9, 1.0)
TIMED_FROM = 3  # frames 0 (dense), 1 (first delta, eager) and 2 (capture) are not timed


@dataclass(frozen=True)
class TailCandidate:
    """One measured tail: the ops forced dense (graph order), the share of the dense
    multiply-adds they hold, ms per frame, clip error and mean work fraction."""

    dense: tuple[str, ...]
    macs_share: float
    ms: float
    error: float
    work_fraction: float | None


@dataclass
class DenseTailPlan:
    """The measured candidates (fewest dense ops first) and the one chosen."""

    candidates: list[TailCandidate]
    chosen: TailCandidate
    config: ThresholdConfig  # the input configuration with the chosen tail forced dense
    error_budget: float | None

    def table(self) -> str:
        """The candidates as a markdown table, the chosen one marked."""
        lines = ["| dense ops | share of MACs | ms/frame | error | work fraction | |",
                 "|---|---|---|---|---|---|"]
        for c in self.candidates:
            work = "–" if c.work_fraction is None else f"{c.work_fraction:.3f}"
            mark = "chosen" if c is self.chosen else (
                "over budget" if self.error_budget is not None and c.error > self.error_budget else "")
            lines.append(f"| {len(c.dense)} | {c.macs_share:.2f} | {c.ms:.3f} | {c.error:.4f} | "
                         f"{work} | {mark} |")
        return "\n".join(lines)


def with_dense(config: ThresholdConfig, names: Sequence[str]) -> ThresholdConfig:
    """``config`` with ``names`` forced dense (added to its ``dense`` list) and their
    layer thresholds dropped (a dense op has none)."""
    return dataclasses.replace(
        config, dense=list(dict.fromkeys([*config.dense, *names])), metadata=dict(config.metadata),
        layers={name: value for name, value in config.layers.items() if name not in names})


def tail_suffixes(ops: Sequence[tuple[str, float]], fractions: Sequence[float]
                  ) -> list[tuple[tuple[str, ...], float]]:
    """For each fraction ``p`` (in the order given, duplicates dropped): the longest
    suffix of ``ops`` — ``(name, dense multiply-adds)`` in graph order — whose
    multiply-adds are at most ``p`` of the total, and the share it holds."""
    total = sum(macs for _, macs in ops) or 1.0
    suffixes: dict[tuple[str, ...], float] = {}
    for p in fractions:
        if not 0.0 <= p <= 1.0:
            raise InvalidArgument(f"tail fractions must lie in [0, 1], got {p}")
        held, names = 0.0, []
        for name, macs in reversed(ops):
            if held + macs > p * total * (1 + 1e-9):
                break
            held += macs
            names.append(name)
        suffixes.setdefault(tuple(reversed(names)), held / total)
    return list(suffixes.items())


def _prepare(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``model`` as deployed: on ``device``, in ``dtype``, 4-D weights channels_last."""
    return model.to(device=device, dtype=dtype, memory_format=torch.channels_last)


def _frames(frames: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """The frames as deployed: on ``device``, in ``dtype``, images channels_last."""
    return [f.to(device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last if f.dim() == 4 else torch.contiguous_format) for f in frames]


def _example(model: nn.Module, shape: torch.Size) -> torch.Tensor:
    """A tracing input of ``shape`` on the device and in the dtype of ``model``'s first
    parameter (or buffer; float32 on the CPU for a model with neither)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    if tensor is None:
        return torch.zeros(shape)
    return torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)


def _convert(model: nn.Module, example: torch.Tensor, config: ThresholdConfig, backend: str,
             cuda_graph: bool) -> DeltaGraphModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tail's island is the point, not news
        return convert(model, example, thresholds=config, backend=backend, cuda_graph=cuda_graph)


def op_macs(model: DeltaGraphModule, frame: torch.Tensor) -> list[tuple[str, float]]:
    """``(name, dense multiply-adds)`` of every delta op of ``model`` in graph order but
    the input Sparsify and output Densify ops, from one dense frame (the model is reset)."""
    model.reset()
    tracking = model.track_stats
    model.track_stats = True
    with torch.no_grad():
        model(frame)
    layers = model.stats()["layers"]
    model.track_stats = tracking
    model.reset()
    return [(name, float(layers.get(name, {}).get("dense_macs") or 0.0))
            for name, op in model.delta_ops().items() if not isinstance(op, (Sparsify, Densify))]


def measure(model: DeltaGraphModule, frames: Sequence[torch.Tensor], references: Sequence[Any]
            ) -> tuple[float, float, float | None]:
    """(ms per frame, clip error, mean work fraction) of one sequence over ``frames``."""
    device = frames[0].device
    model.reset()
    model.track_stats = True
    errors, work = [], []
    with torch.no_grad():
        for index, frame in enumerate(frames):
            out = model(frame)
            if index:
                errors.append(relative_error(out, references[index]))
                fraction = model.stats()["work_fraction_last"]
                if fraction is not None:
                    work.append(fraction)
        model.track_stats = False
        model.reset()
        times = frame_times(model, frames, device)
    model.reset()
    return (statistics.median(times[TIMED_FROM:]), statistics.fmean(errors),
            statistics.fmean(work) if work else None)


def plan_dense_tail(model: nn.Module, frames: Sequence[torch.Tensor],
                    thresholds: Any = None, *, error_budget: float | None = None,
                    fractions: Sequence[float] = DEFAULT_FRACTIONS, backend: str = "auto",
                    dtype: torch.dtype = torch.float32, cuda_graph: bool | None = None
                    ) -> DenseTailPlan:
    """Measure the candidate dense tails of ``model`` (see the module docstring) on
    ``frames`` — consecutive frames of a calibration clip, batch-first tensors on the
    device to plan for — and return the plan. ``thresholds``: the configuration of the
    delta ops (anything :func:`deltaconvert.convert` takes); ``cuda_graph``: replay delta
    frames as a CUDA graph (default: on a CUDA device). ``model`` is not modified."""
    if len(frames) < TIMED_FROM + 2:
        raise InvalidArgument(f"planning a dense tail needs at least {TIMED_FROM + 2} frames "
                              f"(the first {TIMED_FROM} are not timed), got {len(frames)}")
    device = frames[0].device
    if cuda_graph is None:
        cuda_graph = device.type == "cuda"
    config = load_thresholds(thresholds)
    xs = _frames(frames, device, dtype)
    example = _example(model, frames[0].shape)
    dense_model = _prepare(copy.deepcopy(model).eval(), device, dtype)
    with torch.no_grad():
        references = [dense_model(x) for x in xs]
    del dense_model
    untailed = _prepare(_convert(model, example, config, backend, cuda_graph), device, dtype)
    ops = [(name, macs) for name, macs in op_macs(untailed, xs[0]) if name not in config.dense]
    candidates = []
    for names, share in tail_suffixes(ops, sorted(fractions)):  # suffixes are distinct
        if names:
            candidate = _prepare(_convert(model, example, with_dense(config, names), backend,
                                          cuda_graph), device, dtype)
        else:  # no tail: the model converted above
            candidate, untailed = untailed, None
        ms, error, work = measure(candidate, xs, references)
        candidates.append(TailCandidate(names, share, ms, error, work))
        del candidate
        if device.type == "cuda":
            torch.cuda.empty_cache()
    allowed = [c for c in candidates if error_budget is None or c.error <= error_budget]
    if not allowed:
        best = min(candidates, key=lambda c: c.error)
        raise InvalidArgument(f"no dense tail keeps the clip error within {error_budget}: the "
                              f"smallest is {best.error:.4f} ({len(best.dense)} dense ops); "
                              "raise the budget or lower the thresholds")
    chosen = min(allowed, key=lambda c: c.ms)
    planned = with_dense(config, chosen.dense)
    planned.metadata["dense_tail"] = {
        "ops": len(chosen.dense), "macs_share": round(chosen.macs_share, 4),
        "ms": round(chosen.ms, 4), "error": round(chosen.error, 6),
        "frame": list(frames[0].shape), "dtype": str(dtype).removeprefix("torch."),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "error_budget": error_budget}
    return DenseTailPlan(candidates, chosen, planned, error_budget)
