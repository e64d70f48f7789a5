"""StreamEngine without Ray: a batch of requests from several streams gives each stream
exactly its outputs run alone; a stream continues only from its own previous frame on
this engine, else restarts densely; a bad request fails alone."""
from __future__ import annotations

import pytest
import torch

from deltaconvert.errors import PoolFull, SequenceMismatch
from deltaconvert.serving import FrameReply, FrameRequest, StreamEngine
from deltaconvert.streams import StreamPool
from deltaconvert.synthetic import synthetic_video
from deltaconvert.testing import converted_small_net

FRAMES = 5


@pytest.fixture(scope="module")
def clips():
    return {f"cam{s}": synthetic_video(FRAMES, 24, 32, batch=1, seed=s) for s in range(3)}


def engine(slots=3):
    return StreamEngine(converted_small_net(thresholds=0.02), slots)


def alone(clip, restarts=()):
    pool = StreamPool(converted_small_net(thresholds=0.02), 3)
    outs = []
    for t, x in enumerate(clip):
        if t in restarts:
            pool.release("s")
        outs.append(pool.step({"s": x})["s"])
    return outs


def test_a_batch_of_streams_equals_each_stream_alone(clips):
    e = engine()
    replies = {name: [] for name in clips}
    for t in range(FRAMES):
        # Two frames of cam0 in one batch: answered in order, in two rounds.
        if t % 2:
            continue
        requests = [FrameRequest(n, f, clips[n][f]) for f in (t, t + 1) if f < FRAMES
                    for n in clips]
        for request, reply in zip(requests, e.run(requests)):
            assert isinstance(reply, FrameReply) and reply.frame == request.frame
            replies[request.stream].append(reply)
    for name, got in replies.items():
        assert [r.dense for r in got] == [True] + [False] * (FRAMES - 1)
        for t, (a, b) in enumerate(zip(got, alone(clips[name]))):
            assert torch.equal(a.output, b), f"{name} frame {t}"


def test_gaps_repeats_and_returns_restart_densely(clips):
    e = engine()
    clip = clips["cam1"]
    frames = [0, 1, 3, 4, 0]  # a gap at 3, a client restart at the end
    got = [e.run([FrameRequest("s", f, clip[i])])[0] for i, f in enumerate(frames)]
    assert [r.dense for r in got] == [True, False, True, False, True]
    for t, (a, b) in enumerate(zip(got, alone(clip, restarts=(2, 4)))):
        assert torch.equal(a.output, b), f"frame {t}"


def test_errors_stay_with_their_stream(clips):
    e = engine(slots=2)
    x = clips["cam0"][0]
    replies = e.run([FrameRequest("a", 0, x), FrameRequest("b", 0, x), FrameRequest("c", 0, x),
                     FrameRequest("d", 0, x[..., :-4])])
    assert isinstance(replies[0], FrameReply) and isinstance(replies[1], FrameReply)
    assert isinstance(replies[2], PoolFull)
    assert isinstance(replies[3], SequenceMismatch) and "resize frames" in str(replies[3])
    e.forget("a")
    assert e.run([FrameRequest("c", 0, x)])[0].dense
