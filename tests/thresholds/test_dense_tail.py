"""deltaconvert.dense_tail: candidate tails are the suffixes holding a share of the
multiply-adds, each is measured as converted, the plan picks the fastest within the
error budget, and the model is left as it was."""
from __future__ import annotations

import copy

import pytest
import torch

from deltaconvert import ThresholdConfig, plan_dense_tail
from deltaconvert.dense_tail import tail_suffixes, with_dense
from deltaconvert.errors import InvalidArgument
from deltaconvert.synthetic import synthetic_video
from deltaconvert.testing import SmallNet, converted_small_net

FRACTIONS = (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def frames():
    return synthetic_video(6, 24, 32, seed=3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SmallNet().eval()


@pytest.fixture(scope="module")
def plan(model, frames):
    return plan_dense_tail(model, frames, 0.1, fractions=FRACTIONS)


def test_tail_suffixes_hold_at_most_their_share_of_the_macs():
    ops = [("a", 10.0), ("b", 20.0), ("c", 30.0), ("d", 40.0)]
    assert tail_suffixes(ops, (0.0, 0.4, 0.5, 0.7, 1.0)) == [
        ((), 0.0), (("d",), 0.4), (("c", "d"), 0.7), (("a", "b", "c", "d"), 1.0)]
    assert tail_suffixes(ops, (0.39,)) == [((), 0.0)]
    with pytest.raises(InvalidArgument, match=r"\[0, 1\]"):
        tail_suffixes(ops, (1.5,))


def test_with_dense_drops_the_thresholds_of_dense_layers_only():
    config = ThresholdConfig(default=0.1, input_threshold=0.05, layers={"a": 0.2, "b": 0.3},
                             dense=["x"], metadata={"k": 1})
    tailed = with_dense(config, ["b", "c"])
    assert tailed.layers == {"a": 0.2} and tailed.dense == ["x", "b", "c"]
    assert (tailed.default, tailed.input_threshold, tailed.metadata) == (0.1, 0.05, {"k": 1})
    assert config.layers == {"a": 0.2, "b": 0.3} and config.dense == ["x"]  # not modified


def test_every_candidate_is_measured_and_the_fastest_is_chosen(plan):
    shares = [c.macs_share for c in plan.candidates]
    assert shares == sorted(shares) and shares[0] == 0.0 and shares[-1] == 1.0
    assert len(plan.candidates) == 3 and not plan.candidates[0].dense
    assert all(c.ms > 0 for c in plan.candidates)
    # Truncation error without a tail; every op dense computes the dense model exactly.
    assert plan.candidates[0].error > 1e-3 and plan.candidates[0].work_fraction < 1
    assert plan.candidates[-1].error < 1e-6 and plan.candidates[-1].work_fraction is None
    assert plan.chosen is min(plan.candidates, key=lambda c: c.ms)
    assert plan.config.dense == list(plan.chosen.dense)
    assert plan.config.metadata["dense_tail"]["ops"] == len(plan.chosen.dense)
    assert "chosen" in plan.table()


def test_the_budget_excludes_tails_with_more_error(model, frames, plan):
    budget = plan.candidates[0].error / 2  # only tails with less error than no tail
    bound = plan_dense_tail(model, frames, 0.1, fractions=FRACTIONS, error_budget=budget)
    assert bound.chosen.error <= budget and bound.chosen.dense
    assert "over budget" in bound.table()
    with pytest.raises(InvalidArgument, match="no dense tail keeps the clip error within"):
        plan_dense_tail(model, frames, 0.1, fractions=(0.0,), error_budget=1e-9)


def test_the_planned_configuration_converts_with_its_tail_dense(plan, frames):
    converted = converted_small_net(thresholds=plan.config)
    assert converted.conversion["forced_dense"] == sorted(plan.chosen.dense)
    assert not set(plan.chosen.dense) & set(converted.delta_ops())


def test_planning_leaves_the_model_unchanged(model, frames):
    before = copy.deepcopy(model.state_dict())
    plan = plan_dense_tail(model, frames[:5], 0.0, fractions=(1.0, 0.0))  # any order
    assert [bool(c.dense) for c in plan.candidates] == [False, True]
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_too_few_frames_are_refused(model, frames):
    with pytest.raises(InvalidArgument, match="at least 5 frames"):
        plan_dense_tail(model, frames[:4], 0.1)


def test_a_float64_model_is_traced_in_its_own_dtype(frames):
    torch.manual_seed(0)
    model = SmallNet().eval().double()
    plan = plan_dense_tail(model, [f.double() for f in frames], 0.1, fractions=(0.0, 1.0),
                           dtype=torch.float64)
    assert plan.candidates[-1].error < 1e-12  # every op dense: the model itself
