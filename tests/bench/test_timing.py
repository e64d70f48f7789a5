"""The host side of a call is measured on an idle device: host_times synchronises before
every call (outside the timing), so no call waits for a launch queue that earlier calls
filled and reports device time as host time; a profile leaves CUPTI detached, so it
does not slow the launches timed after it."""
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
