"""The host side of a call is measured on an idle device: host_times synchronises before
every call (outside the timing), so no call waits for a launch queue that earlier calls
filled and reports device time as host time."""
from __future__ import annotations

import torch

from deltaconvert import timing


def test_host_times_starts_every_call_on_an_idle_device(monkeypatch):
    events = []
    monkeypatch.setattr(timing, "synchronize", lambda device: events.append("sync"))
    frames = [torch.zeros(1)] * 3
    times = timing.host_times(lambda x: events.append("call"), frames, torch.device("cuda", 0))
    assert events == ["sync", "call"] * 3
    assert len(times) == 3 and all(t >= 0 for t in times)
