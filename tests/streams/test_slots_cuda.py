"""Slots on a GPU: the CUDA backend and the reference math on CUDA tensors, eager and
under CUDA-graph replay. A slot's outputs are identical whether its neighbours are busy,
idle, restarted or replaced; restarts and idle frames after capture keep the captured
graph (state rows are written in place) and match eager mode."""
from __future__ import annotations

import warnings

import pytest
import torch

from deltaconvert.convert import DenseFallbackWarning, convert
from deltaconvert.synthetic import synthetic_video

from .test_slots import FRAMES, HEIGHT, SLOTS, WIDTH, Net, play_slot0

pytestmark = pytest.mark.cuda
DEVICE = torch.device("cuda", 0)


def make(backend: str, cuda_graph: bool, threshold: float = 0.02):
    torch.manual_seed(0)
    net = Net().eval().to(DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DenseFallbackWarning)
        model = convert(net, torch.randn(1, 3, HEIGHT, WIDTH, device=DEVICE), thresholds=threshold,
                        backend=backend, cuda_graph=cuda_graph)
    model.slots = SLOTS
    return net, model


@pytest.fixture(scope="module")
def clips():
    return [[f.to(DEVICE) for f in synthetic_video(FRAMES + 4, HEIGHT, WIDTH, batch=1, seed=s)]
            for s in (1, 2, 3)]


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("backend", ["cuda", "reference"])
@pytest.mark.parametrize("scenario", ["busy", "idle_then_busy", "reset", "replaced"])
def test_slot_outputs_do_not_depend_on_neighbours(runtime, clips, backend, cuda_graph, scenario):
    alone = play_slot0(make(backend, cuda_graph)[1], "alone", clips, FRAMES + 4)
    model = make(backend, cuda_graph)[1]
    other = play_slot0(model, scenario, clips, FRAMES + 4)
    for t, (a, b) in enumerate(zip(alone, other)):
        assert torch.equal(a, b), f"frame {t} differs by {(a - b).abs().max()}"
    if cuda_graph:
        assert model.graph_replay is not None and model.graph_replay.captured is not None


@pytest.mark.parametrize("backend", ["cuda", "reference"])
def test_graph_replay_keeps_its_capture_through_restarts(runtime, clips, backend):
    net, graphed = make(backend, True)
    _, eager = make(backend, False)
    captured = None
    for t in range(FRAMES + 4):
        if t in (5, 8):
            graphed.reset(slots=[2])
            eager.reset(slots=[2])
        rows = [0, 1, 2] if t % 3 else [2, 0]
        x = torch.cat([clips[r][t] for r in rows])
        got, want = graphed.run_slots(rows, x), eager.run_slots(rows, x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"frame {t}")
        if t in (5, 8):
            with torch.no_grad():
                dense = net(clips[2][t])
            torch.testing.assert_close(got[rows.index(2)][None], dense, rtol=1e-5, atol=1e-5)
        replay = graphed.graph_replay
        if replay is not None and replay.captured is not None:
            captured = captured or replay.captured
            assert replay.captured is captured, f"frame {t}: the graph was captured again"
    assert captured is not None
