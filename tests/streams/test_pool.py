"""StreamPool: admit, release, idle timeout and a full pool (raising or waiting, from
several threads); a stream's outputs through the pool equal its outputs run alone, and a
slot handed to a new stream starts it with a dense frame."""
from __future__ import annotations

import threading
import time

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


def alone(clip, slots: int = 3) -> list[torch.Tensor]:
    _, model = make()
    pool = StreamPool(model, slots=slots)
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
    with pytest.raises(PoolFull, match="3 streams in one step, but the pool has 2 slots"):
        pool.step({name: clips[name][0] for name in ("cam-a", "cam-b", "cam-d")})
    assert pool.streams == {"cam-a": 0, "cam-c": 1}  # nothing admitted by the refused step
    with pytest.raises(ConfigError, match="idle_timeout"):
        StreamPool(model, slots=2, idle_timeout=0)


@pytest.mark.parametrize("kwargs,message", [
    ({"when_full": "block"}, "when_full must be 'error' .* or 'wait' .*, got 'block'"),
    ({"wait_timeout": 1.0}, "wait_timeout=1.0 applies only to a pool that waits: pass "
                            "when_full='wait'"),
    ({"when_full": "wait", "wait_timeout": -1}, "wait_timeout must be a number of seconds > 0"),
])
def test_wait_options_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        StreamPool(make()[1], slots=2, **kwargs)


def in_thread(call):
    """Start ``call`` in a thread; returns the thread and a dict that gets its result or
    error."""
    outcome = {}

    def target():
        try:
            outcome["result"] = call()
        except Exception as error:
            outcome["error"] = error
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_waiting_pool_admits_when_a_slot_is_released(clips):
    net, model = make()
    pool = StreamPool(model, slots=1, when_full="wait", wait_timeout=10)
    pool.step({"cam-a": clips["cam-a"][0]})
    thread, outcome = in_thread(lambda: pool.step({"cam-b": clips["cam-b"][0]}))
    wait_until(lambda: pool.waiting == 1)
    assert pool.streams == {"cam-a": 0}
    pool.release("cam-a")
    thread.join(timeout=10)
    assert not thread.is_alive() and "error" not in outcome
    assert pool.streams == {"cam-b": 0} and pool.waiting == 0
    with torch.no_grad():  # a's slot restarted densely for b
        torch.testing.assert_close(outcome["result"]["cam-b"], net(clips["cam-b"][0]),
                                   rtol=0, atol=1e-6)


def test_a_waiting_pool_admits_when_a_stream_goes_idle(clips):
    _, model = make()
    pool = StreamPool(model, slots=1, idle_timeout=0.2, when_full="wait", wait_timeout=10)
    pool.step({"cam-a": clips["cam-a"][0]})
    seen = pool._last_seen["cam-a"]
    assert pool.admit("cam-b") == 0  # nobody releases cam-a: it times out after 0.2 s
    assert time.monotonic() - seen >= 0.2
    assert pool.streams == {"cam-b": 0}


def test_a_waiting_pool_gives_up_after_wait_timeout(clips):
    _, model = make()
    pool = StreamPool(model, slots=1, when_full="wait", wait_timeout=0.05)
    pool.step({"cam-a": clips["cam-a"][0]})
    with pytest.raises(PoolFull, match=r"after waiting wait_timeout=0.05 s; cannot admit stream "
                                       r"'cam-b'.*raise wait_timeout"):
        pool.step({"cam-b": clips["cam-b"][0]})
    assert pool.streams == {"cam-a": 0} and pool.waiting == 0


def test_threads_sharing_a_waiting_pool_get_their_own_outputs(clips):
    """Four streams, each driven by its own thread, through two slots: each thread runs
    its whole clip then releases its stream; the others wait for the slot."""
    # Expected outputs first: converting traces with torch.fx, which patches
    # nn.Module.__call__ process-wide and would catch the threads' module calls.
    expected = {name: alone(clip, slots=2) for name, clip in clips.items()}
    _, model = make()
    pool = StreamPool(model, slots=2, when_full="wait", wait_timeout=30)

    def play(name):
        outs = [pool.step({name: x})[name] for x in clips[name]]
        pool.release(name)
        return outs
    threads = {name: in_thread(lambda name=name: play(name)) for name in clips}
    for name, (thread, outcome) in threads.items():
        thread.join(timeout=60)
        assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
        for t, (a, b) in enumerate(zip(outcome["result"], expected[name], strict=True)):
            assert torch.equal(a, b), f"{name} frame {t}"
    assert pool.streams == {} and pool.waiting == 0


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
