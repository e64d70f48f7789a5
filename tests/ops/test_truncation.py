"""Positive thresholds: fewer updates, and an error set by the thresholds, not by the
length of the sequence.

The sequence is a 100-frame static-camera clip played twice (200 frames): the second
pass shows the same content as the first, so any difference between the two passes'
errors comes from the length of the sequence, not from the content."""
import pytest
import torch

import deltaconvert
from deltaconvert.metrics import relative_error
from deltaconvert.synthetic import synthetic_video
from deltaconvert.weights import mobilenet_v2_embedder

FRAMES = 200


@pytest.fixture(scope="module")
def embedder():
    return mobilenet_v2_embedder()


@pytest.fixture(scope="module")
def clip():
    first_pass = synthetic_video(FRAMES // 2, 48, 64, seed=5)
    return first_pass + first_pass


def _run(model, clip, tau):
    delta = deltaconvert.convert(model, clip[0], thresholds=tau)
    delta.set_input_sparsify(threshold=tau)
    errors = []
    for frame in clip:
        with torch.no_grad():
            expected = model(frame)
        errors.append(relative_error(delta(frame), expected))
    stats = delta.stats()
    (input_name,) = delta.input_sparsifiers()
    return errors, stats["work_fraction_mean"], stats["layers"][input_name]["updated_mean"]


@pytest.fixture(scope="module")
def runs(embedder, clip):
    return {tau: _run(embedder, clip, tau) for tau in (0.0, 0.02, 0.1)}


def test_thresholds_reduce_the_updates(runs):
    work = {tau: run[1] for tau, run in runs.items()}
    inputs = {tau: run[2] for tau, run in runs.items()}
    assert work[0.0] > work[0.02] > work[0.1]
    assert inputs[0.0] > inputs[0.02] > inputs[0.1]
    assert work[0.1] < 0.75 * work[0.0]


def test_error_is_set_by_the_thresholds(runs):
    mean = {tau: sum(run[0][1:]) / (FRAMES - 1) for tau, run in runs.items()}
    assert mean[0.0] < 1e-4
    assert 0 < mean[0.02] < mean[0.1]


@pytest.mark.parametrize("tau", [0.0, 0.02, 0.1])
def test_error_does_not_grow_with_sequence_length(runs, tau):
    errors = runs[tau][0]
    half = FRAMES // 2
    first, second = errors[1:half], errors[half + 1:]
    assert max(second) <= 1.25 * max(first) + 1e-6, \
        f"worst error grew from {max(first):.3g} to {max(second):.3g}"
    assert sum(second) <= 1.25 * sum(first) + 1e-6, \
        f"mean error grew from {sum(first) / len(first):.3g} to {sum(second) / len(second):.3g}"
