"""deltaconvert.tune: thresholds found on a short synthetic clip keep the error within
the budget, the budget binds, results are deterministic, and bad inputs are refused."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from deltaconvert import ConfigError, DenseFallbackWarning, ThresholdConfig, convert
from deltaconvert.architectures import build_architecture
from deltaconvert.metrics import relative_error
from deltaconvert.synthetic import synthetic_video
from deltaconvert.testing import converted_small_net
from deltaconvert.tune import tune
from deltaconvert.weights import mobilenet_v2_embedder

BUDGET = 0.05


@pytest.fixture(scope="module")
def frames():
    return synthetic_video(6, 24, 32, seed=3)


@pytest.fixture(scope="module")
def tuned(frames):
    return tune(converted_small_net(), frames, BUDGET, clip="synthetic test clip", progress=False)


def clip_errors(config: ThresholdConfig, frames, metric=relative_error) -> list[float]:
    """Per-delta-frame errors of a freshly converted model with ``config`` applied."""
    references = [converted_small_net()(frame) for frame in frames]  # dense first frames
    model = converted_small_net(thresholds=config)
    model(frames[0])
    return [metric(model(f), r) for f, r in zip(frames[1:], references[1:])]


def test_tuned_thresholds_keep_the_error_within_a_binding_budget(tuned, frames):
    errors = clip_errors(tuned, frames)
    mean_error = sum(errors) / len(errors)
    assert 0 < mean_error <= BUDGET
    assert math.isclose(mean_error, tuned.metadata["error"], rel_tol=1e-6)
    assert mean_error > BUDGET / 4  # the budget binds: thresholds used a real share of it
    assert any(value > 0 for value in tuned.layers.values())
    assert tuned.metadata["work_fraction"] < tuned.metadata["work_fraction_at_zero"]


def test_metadata_records_budget_clip_and_resolution(tuned):
    meta = tuned.metadata
    assert meta["budget"] == BUDGET and meta["clip"] == "synthetic test clip"
    assert meta["frames"] == 6 and meta["resolution"] == [24, 32]
    assert meta["metric"] == "relative_error" and meta["aggregate"] == "mean"
    assert 0 <= meta["error_at_zero"] < 1e-5


def test_tuning_is_deterministic_and_restores_the_model(tuned, frames):
    model = converted_small_net(thresholds=0.125)
    before = dict(model.thresholds)
    again = tune(model, frames, BUDGET, clip="synthetic test clip", progress=False)
    assert again == tuned and again.to_dict() == tuned.to_dict()
    assert dict(model.thresholds) == before


def test_tuned_config_survives_yaml(tuned, tmp_path):
    tuned.to_yaml(tmp_path / "tuned.yaml")
    assert ThresholdConfig.from_yaml(tmp_path / "tuned.yaml") == tuned


def test_user_metric_and_max_aggregate(frames):
    def max_abs_error(output, reference):
        return float((output - reference).abs().max())

    budget = 0.2
    config = tune(converted_small_net(), frames, budget, metric=max_abs_error, aggregate="max",
                  progress=False)
    errors = clip_errors(config, frames, max_abs_error)
    assert 0 < max(errors) <= budget
    assert config.metadata["metric"] == "max_abs_error" and config.metadata["aggregate"] == "max"


def test_a_given_reference_puts_the_gap_to_it_in_the_budget(frames):
    """Against another reference (here the dense output scaled by 1.01, standing for a
    higher precision) the error at threshold 0 is the gap to it, and the thresholds
    spend only the rest of the budget."""
    dense = converted_small_net()

    def reference(frame):
        dense.reset()
        return dense(frame) * 1.01

    config = tune(converted_small_net(), frames, BUDGET, reference=reference, progress=False)
    gap = 0.01 / 1.01
    assert config.metadata["reference"] == "given"
    assert config.metadata["error_at_zero"] == pytest.approx(gap, rel=1e-4)
    model = converted_small_net(thresholds=config)
    model(frames[0])
    errors = [relative_error(model(f), reference(f)) for f in frames[1:]]
    assert gap < sum(errors) / len(errors) <= BUDGET
    assert math.isclose(sum(errors) / len(errors), config.metadata["error"], rel_tol=1e-6)
    own = tune(converted_small_net(), frames, BUDGET, progress=False)
    assert own.metadata["reference"] == "dense first frame"
    assert config.metadata["work_fraction"] >= own.metadata["work_fraction"]  # less budget left


def test_progress_bar_goes_to_stderr(frames, capsys):
    tune(converted_small_net(), frames[:3], BUDGET, progress=True)
    captured = capsys.readouterr()
    assert "tuning" in captured.err and captured.out == ""


@pytest.mark.parametrize("kwargs, error, match", [
    ({"budget": 0}, ValueError, "budget"),
    ({"budget": float("nan")}, ValueError, "budget"),
    ({"aggregate": "median"}, ValueError, "aggregate"),
    ({"min_exponent": 2}, ValueError, "min_exponent"),
    ({"metric": lambda output, reference: 1.0}, ConfigError, "below the error with every threshold at 0"),
])
def test_bad_arguments(frames, kwargs, error, match):
    arguments = {"budget": BUDGET, **kwargs}
    with pytest.raises(error, match=match):
        tune(converted_small_net(), frames, progress=False, **arguments)


def test_clip_needs_two_frames(frames):
    with pytest.raises(ValueError, match="at least 2 frames"):
        tune(converted_small_net(), frames[:1], BUDGET, progress=False)


def test_forced_dense_layers_and_dilation_are_kept(frames):
    model = converted_small_net(thresholds={"dense": ["head"], "input": {"dilation": 1}})
    config = tune(model, frames[:3], BUDGET, progress=False)
    assert config.dense == ["head"] and config.input_dilation == 1
    assert torch.equal(converted_small_net(thresholds=config)(frames[0]), model(frames[0]))


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))  # the checkout's (tests/bench/test_wheel.py checks the installed copy)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_fit_their_models(path):
    """Every file in configs/ names real layers of its model and records how it was tuned;
    its name is the architecture's, or that and a variant (``mobilenet_v2_fp16``)."""
    config = ThresholdConfig.from_yaml(path)
    meta = config.metadata
    assert path.stem == config.architecture or path.stem.startswith(f"{config.architecture}_")
    assert {"budget", "clip", "frames", "resolution", "weights", "error"} <= set(meta)
    assert 0 < meta["error"] <= meta["budget"]
    model = (mobilenet_v2_embedder() if config.architecture == "mobilenet_v2"
             else build_architecture(config.architecture))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DenseFallbackWarning)
        delta = convert(model, torch.randn(1, 3, 64, 64), thresholds=path)
    assert {name: delta.thresholds[name] for name in config.layers} == config.layers
