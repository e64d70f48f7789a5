"""CUDA-graph mode: capture after the eager frames, replay, recapture on threshold
changes, reset, and input checks."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from deltaconvert.convert import convert
from deltaconvert.errors import SequenceMismatch
from deltaconvert.synthetic import synthetic_video

pytestmark = pytest.mark.cuda
DEVICE = torch.device("cuda", 0)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Hardswish(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).to(DEVICE).eval()


@pytest.fixture
def frames():
    return [f.to(DEVICE) for f in synthetic_video(8, 21, 27, batch=2, seed=3)]


def make(net, frames, backend="cuda"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(net, frames[0], backend=backend, cuda_graph=True)


@pytest.mark.parametrize("backend", ["cuda", "reference"])
def test_replay_matches_eager(runtime, frames, backend):
    net = small_net()
    graphed, eager = make(net, frames, backend), make(net, frames, backend)
    eager.cuda_graph = False
    for t, x in enumerate(frames):
        got, want = graphed(x), eager(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"frame {t}")
        state = graphed.graph_replay
        assert (state is not None and state.captured is not None) == (t >= 2)


def test_threshold_change_recaptures_and_reset_drops(runtime, frames):
    net = small_net()
    graphed, eager = make(net, frames), make(net, frames)
    eager.cuda_graph = False
    for x in frames[:4]:
        graphed(x), eager(x)
    first = graphed.graph_replay.captured
    name = next(iter(graphed.thresholds))
    graphed.thresholds[name] = eager.thresholds[name] = 0.2
    for x in frames[4:]:
        torch.testing.assert_close(graphed(x), eager(x), rtol=1e-5, atol=1e-6)
    assert graphed.graph_replay.captured is not first
    graphed.reset()
    assert graphed.graph_replay is None
    eager.reset()
    for x in frames:
        torch.testing.assert_close(graphed(x), eager(x), rtol=1e-5, atol=1e-6)


def test_replay_rejects_a_new_shape(runtime, frames):
    graphed = make(small_net(), frames)
    for x in frames[:4]:
        graphed(x)
    with pytest.raises(SequenceMismatch):
        graphed(frames[0][:1])


def _relu_with_kernels(runtime):
    from deltaconvert.backends.cuda.binding import wrapper_for
    from deltaconvert.backends.cuda.kernels import load_all
    from deltaconvert.delta import Delta
    from deltaconvert.ops.footprint import Footprint
    from deltaconvert.ops.nonlinear import Nonlinear

    op = Nonlinear(nn.ReLU(), Footprint.POINTWISE, (True,), 0.0)
    op.node_name = "features.relu"
    op(torch.randn(2, 4, 5, 6, device=DEVICE))
    op.accelerated = wrapper_for(op, runtime)
    load_all(runtime, torch.float32)  # no module load inside the capture tested below
    return op, Delta(torch.randn(2, 4, 5, 6, device=DEVICE),
                     torch.ones(2, 1, 5, 6, dtype=torch.bool, device=DEVICE))


def test_launch_outside_the_frame_is_refused(runtime):
    op, d = _relu_with_kernels(runtime)
    with pytest.raises(RuntimeError, match="features.relu: .*outside the model's frame"):
        op(d)


def test_launch_escaping_the_capture_stream_is_refused(runtime):
    op, d = _relu_with_kernels(runtime)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="features.relu: a CUDA graph is being captured"):
        with torch.cuda.graph(graph, stream=torch.cuda.Stream()):
            op(d)


@pytest.mark.parametrize("backend", ["cuda", "reference"])
def test_calls_from_two_streams_run_in_call_order(runtime, frames, backend):
    """Frames given alternately from two CUDA streams, the odd ones queued behind a long
    sleep on theirs, so that without ordering each even frame would run before the odd
    frame called before it: every call must still see the state of the call before it
    (deltaconvert.stream_order), so the outputs equal those of the same frames from one
    stream (to the global pool's atomic-sum rounding), and so do the statistics read
    from a third stream."""
    net = small_net()
    one, two = make(net, frames, backend), make(net, frames, backend)
    want = [one(x).clone() for x in frames]
    streams = (torch.cuda.Stream(DEVICE), torch.cuda.Stream(DEVICE))
    torch.cuda.synchronize()
    got = []
    for t, x in enumerate(frames):
        with torch.cuda.stream(streams[t % 2]):
            if t % 2:
                torch.cuda._sleep(20_000_000)  # ~10 ms: the next frame's stream is idle
            got.append(two(x))
    with torch.cuda.stream(streams[1]):
        torch.cuda._sleep(20_000_000)
        two(frames[-1])  # the statistics read next, from the default stream, include it
    one(frames[-1])
    assert two.stats() == one.stats()
    torch.cuda.synchronize()
    assert two.graph_replay.captured is not None
    for t, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"frame {t}")
