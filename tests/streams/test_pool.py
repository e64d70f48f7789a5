"""StreamPool: admit, release, idle timeout and a full pool; a stream's outputs through
the pool equal its outputs run alone, and a slot handed to a new stream starts it with a
dense frame."""
from __future__ import annotations

import pytest
import torch

from deltaconvert.errors import ConfigError, PoolFull
from deltaconvert.streams import StreamPool

from .test_slots import FRAMES, make


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clips():
    from deltaconvert.synthetic import synthetic_video

    from .test_slots import HEIGHT, WIDTH
    return {name: synthetic_video(FRAMES, HEIGHT, WIDTH, batch=1, seed=s)
            for s, name in enumerate(["cam-a", "cam-b", "cam-c", "cam-d"], start=5)}


def alone(clip) -> list[torch.Tensor]:
    _, model = make()
    pool = StreamPool(model, slots=3)
    return [pool.step({"only": x})["only"] for x in clip]


def test_streams_through_a_pool_equal_each_stream_alone(clips):
    _, model = make()
    pool = StreamPool(model, slots=3)
    got = {name: [] for name in clips}
    for t in range(FRAMES):
        # cam-a every frame; cam-b on even frames; cam-c joins at 2, leaves after 4;
        # cam-d takes the freed slot at 5.
        frames = {"cam-a": clips["cam-a"][t]}
        if t % 2 == 0:
            frames["cam-b"] = clips["cam-b"][t // 2]
        if 2 <= t <= 4:
            frames["cam-c"] = clips["cam-c"][t - 2]
        if t >= 5:
            frames["cam-d"] = clips["cam-d"][t - 5]
        for name, out in pool.step(frames).items():
            got[name].append(out)
        if t == 4:
            pool.release("cam-c")
    for name, outs in got.items():
        for t, (a, b) in enumerate(zip(outs, alone(clips[name]))):
            assert torch.equal(a, b), f"{name} frame {t}"
    assert pool.streams["cam-d"] == 2  # cam-c's slot, restarted densely for cam-d


def test_full_pool_and_idle_timeout(clips):
    clock = Clock()
    _, model = make()
    pool = StreamPool(model, slots=2, idle_timeout=10.0, clock=clock)
    pool.step({"cam-a": clips["cam-a"][0], "cam-b": clips["cam-b"][0]})
    with pytest.raises(PoolFull, match="all 2 slots hold streams; cannot admit stream 'cam-c'"):
        pool.admit("cam-c")
    clock.now = 5.0
    pool.step({"cam-a": clips["cam-a"][1]})
    clock.now = 12.0  # cam-b silent for 12 s > 10 s, cam-a for 7 s
    assert pool.step({"cam-c": clips["cam-c"][0]})["cam-c"].shape[0] == 1
    assert pool.streams == {"cam-a": 0, "cam-c": 1}
    with pytest.raises(ConfigError, match="already admitted"):
        pool.admit("cam-a")
    with pytest.raises(KeyError, match="cam-b.* is not in the pool"):
        pool.release("cam-b")
    with pytest.raises(ValueError, match="one sample"):
        pool.step({"cam-a": torch.cat([clips["cam-a"][2]] * 2)})
    with pytest.raises(ConfigError, match="idle_timeout"):
        StreamPool(model, slots=2, idle_timeout=0)


def test_a_returning_stream_starts_again_densely(clips):
    net, model = make()
    pool = StreamPool(model, slots=2)
    clip = clips["cam-a"]
    for x in clip[:3]:
        pool.step({"cam-a": x})
    pool.release("cam-a")
    out = pool.step({"cam-a": clip[3]})["cam-a"]
    with torch.no_grad():
        torch.testing.assert_close(out, net(clip[3]), rtol=0, atol=1e-6)
