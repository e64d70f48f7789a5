"""The host side of a call is measured on an idle device: host_times synchronises before
every call (outside the timing), so no call waits for a launch queue that earlier calls
filled and reports device time as host time; a profile leaves CUPTI detached, so it
does not slow the launches timed after it; device_time times calls queued up front, so
the host's launch cost is not counted."""
from __future__ import annotations

import os

import pytest
import torch

from deltaconvert import timing


def test_host_times_starts_every_call_on_an_idle_device(monkeypatch):
    events = []
    monkeypatch.setattr(timing, "synchronize", lambda device: events.append("sync"))
    frames = [torch.zeros(1)] * 3
    times = timing.host_times(lambda x: events.append("call"), frames, torch.device("cuda", 0))
    assert events == ["sync", "call"] * 3
    assert len(times) == 3 and all(t >= 0 for t in times)


@pytest.mark.parametrize("cuda,preset,expected", [
    ("13.0", None, "1"),     # CUPTI detached after the session
    ("12.6", None, "1"),
    ("12.4", None, None),    # before 12.6, a detach could crash later CUDA-graph profiles
    (None, None, None),      # a CPU build: nothing to detach
    ("13.0", "0", "0"),      # the environment's own choice is kept
])
def test_profiled_asks_kineto_to_detach_cupti_from_cuda_12_6(monkeypatch, cuda, preset, expected):
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setenv("TEARDOWN_CUPTI", "unset")  # restored after the test, whatever profiled() sets
    if preset is None:
        monkeypatch.delenv("TEARDOWN_CUPTI")
    else:
        monkeypatch.setenv("TEARDOWN_CUPTI", preset)
    with timing.profiled() as prof:
        torch.ones(4).sum()
    assert os.environ.get("TEARDOWN_CUPTI") == expected
    assert any("sum" in event.name for event in prof.events())  # host activity recorded


def test_device_time_on_a_cpu_is_wall_time_per_call_after_one_untimed_call():
    calls = []
    ms = timing.device_time(lambda: calls.append(1), torch.device("cpu"), calls=4)
    assert len(calls) == 5 and ms >= 0


@pytest.mark.cuda
def test_device_time_follows_the_bytes_a_copy_moves_not_its_launch(runtime):
    """A copy of 4× the bytes takes ~4× the device time (launched back to back behind the
    device sleep: a 64 MiB copy's ~30 µs is near its launch cost on the host), and the
    events record on the current stream."""
    device = torch.device("cuda", 0)
    small, large = (torch.empty(n, dtype=torch.uint8, device=device) for n in (64 << 20, 256 << 20))
    copies = [torch.empty_like(small), torch.empty_like(large)]
    ratios = []
    for _ in range(3):
        t_small = timing.device_time(lambda: copies[0].copy_(small), device, calls=5)
        t_large = timing.device_time(lambda: copies[1].copy_(large), device, calls=5)
        ratios.append(t_large / t_small)
    assert 2.5 < sorted(ratios)[1] < 6, ratios
