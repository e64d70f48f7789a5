"""The frame skip (``backends/cuda/frame_skip.py``): a replayed frame in which no input
pixel changed skips everything after the input Sparsify ops.

* The plan (CPU): the input Sparsify ops in graph order; none when an input is read
  other than through them (a dense op on the raw input), shape queries allowed.
* On a GPU, graph mode, over sequences that repeat frames: outputs equal those with the
  skip off on every frame — the frame right after the capture (nothing replayed has
  written the outputs yet), a changed frame after skipped ones, thresholds that leave
  sub-threshold changes, and slot restarts, whose state is written outside the graph.
* An unchanged frame does skip: an output buffer poisoned after a replay stays poisoned
  through a replay of an unchanged frame, and a changed frame rewrites it; an eager frame
  in between (``cuda_graph`` switched off and on) makes the next replay run the body.
* A scene cut (most input pixels changed) takes the dense restart branch: outputs equal
  the dense model's on every frame, delta frames after it run on the restarted state,
  and slot mode never restarts the whole batch.
"""
from __future__ import annotations

import gc
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deltaconvert.backends.cuda.frame_skip import skip_plan
from deltaconvert.convert import convert
from deltaconvert.synthetic import synthetic_video

DEVICE = torch.device("cuda", 0)


class Resized(nn.Module):
    """Reads its input's shape besides the input Sparsify (a shape query)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return F.interpolate(torch.relu(self.conv(x)), size=x.shape[-2:])


class RawInputOp(Resized):
    """Runs a dense op on the raw input before its Sparsify."""

    def forward(self, x):
        return torch.relu(self.conv(torch.cumsum(x, dim=1)))


class Island(Resized):
    """A dense island (an op without a delta form) between two convs: a re-entry Sparsify."""

    def __init__(self) -> None:
        super().__init__()
        self.after = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.after(torch.cumsum(torch.relu(self.conv(x)), dim=1))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)

    def forward(self, x, y):
        return torch.relu(self.a(x)) + self.b(y)


def converted(net: nn.Module, *example, backend: str = "reference", **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(net.eval(), example if len(example) > 1 else example[0], backend=backend,
                       **kwargs)


def test_the_plan_is_the_input_sparsify_ops_in_graph_order():
    x = torch.randn(1, 3, 16, 16)
    assert skip_plan(converted(Resized(), x)) == ["x_sparsify"]
    model = converted(TwoInputs(), x, x)
    assert skip_plan(model) == list(model.input_sparsifiers()) and len(skip_plan(model)) == 2
    assert skip_plan(converted(RawInputOp(), x)) is None
    island = converted(Island(), x)
    assert len([op for op in island.delta_ops().values() if type(op).__name__ == "Sparsify"]) == 2
    assert skip_plan(island) is None


# -- GPU ---------------------------------------------------------------------------------
def small_net(device: torch.device = DEVICE) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Hardswish(),
                         nn.Conv2d(8, 6, 1)).to(device).eval()


def repeating_clip() -> list[torch.Tensor]:
    """Frames 0–2 differ, 3–5 repeat 2, 6 differs, 7–8 repeat it, 9 differs by less than
    the input threshold (a sub-threshold change: no input pixel emits)."""
    video = [f.to(DEVICE) for f in synthetic_video(5, 21, 27, batch=2, seed=3)]
    frames = video[:3] + [video[2]] * 3 + [video[3]] * 3
    return frames + [frames[-1] + 1e-4]


def outputs(frames, skip: bool, monkeypatch, script=None) -> list[torch.Tensor]:
    from deltaconvert.backends.cuda import frame_skip
    monkeypatch.setattr(frame_skip, "ENABLED", skip)
    model = converted(small_net(), frames[0], backend="cuda", cuda_graph=True, thresholds=0.02)
    model.set_input_sparsify(threshold=0.01)
    got = []
    for t, x in enumerate(frames):
        if script is not None:
            script(model, t)
        got.append(model(x).clone())
    captured = model.graph_replay.captured
    assert (type(captured.body).__name__ == "CapturedBody") is skip
    if skip:
        assert captured.body.opened, "the capture did not open the skippable body"
    return got


@pytest.mark.cuda
def test_skipping_changes_no_output(runtime, monkeypatch):
    frames = repeating_clip()
    on, off = outputs(frames, True, monkeypatch), outputs(frames, False, monkeypatch)
    for t, (a, b) in enumerate(zip(on, off)):
        assert torch.equal(a, b), f"frame {t}"


@pytest.mark.cuda
def test_slot_restarts_run_the_next_frame(runtime, monkeypatch):
    frames = repeating_clip()

    def script(model, t):
        if t == 0:
            model.slots = 2
        if t in (4, 7):  # restart slot 1 on an unchanged frame: its state is rewritten
            model.reset(slots=[1])

    on = outputs(frames, True, monkeypatch, script)
    off = outputs(frames, False, monkeypatch, script)
    for t, (a, b) in enumerate(zip(on, off)):
        assert torch.equal(a, b), f"frame {t}"


@pytest.mark.cuda
def test_an_unchanged_frame_skips_the_body(runtime, monkeypatch):
    from deltaconvert.backends.cuda import frame_skip
    monkeypatch.setattr(frame_skip, "ENABLED", True)
    video = [f.to(DEVICE) for f in synthetic_video(4, 21, 27, batch=2, seed=3)]
    model = converted(small_net(), video[0], backend="cuda", cuda_graph=True)
    # An input threshold above fp32's rounding of ref += δ (at 0, the first repeat of a
    # frame still sends a remainder of an ulp).
    model.set_input_sparsify(threshold=1e-3)
    for x in video[:3]:  # dense, eager delta, captured
        expected = model(x)
    buffer = model.graph_replay.captured.outputs
    buffer.fill_(float("nan"))
    assert torch.isnan(model(video[2])).all(), "an unchanged frame rewrote the output"
    changed = model(video[3])
    assert not torch.isnan(changed).any() and not torch.equal(changed, expected)
    buffer.fill_(float("nan"))
    model.cuda_graph = False
    eager = model(video[1])  # a changed frame, run eagerly: state changes outside the graph
    model.cuda_graph = True
    again = model(video[1])  # unchanged since the eager frame: the graph must still run it
    assert torch.equal(again, eager), "a replay after an eager frame returned a stale output"



@pytest.mark.cuda
def test_recaptures_release_the_body_memory(runtime, monkeypatch):
    """The body's allocations live in the graph's pool and die with the graph: a model
    captured anew six times (a settings change each time) holds no more memory after
    than before (a pool kept alive per capture would hold at least a 2 MiB segment)."""
    from deltaconvert.backends.cuda import frame_skip
    monkeypatch.setattr(frame_skip, "ENABLED", True)
    frames = repeating_clip()
    model = converted(small_net(), frames[0], backend="cuda", cuda_graph=True, thresholds=0.02)
    for x in frames[:4]:
        model(x)
    assert model.graph_replay.captured.body.opened

    def reserved() -> int:
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return torch.cuda.memory_reserved()

    before = reserved()
    for t in range(6):
        model.set_input_sparsify(threshold=0.01 * (t + 2))  # the next frame is captured anew
        model(frames[t % 3])
        assert model.graph_replay.captured.body.opened
    assert reserved() - before < 6 * 2**20, "recaptured graphs left their memory reserved"


def cut_clip() -> list[torch.Tensor]:
    """Without sensor noise: frames 1, 2 and 4 move the sprites (a minority of the
    pixels), frames 3 and 5 are scene cuts (every pixel changes)."""
    video = [f.to(DEVICE) for f in synthetic_video(4, 21, 27, batch=2, seed=3, noise=0.0)]
    return [video[0], video[1], video[2], video[2] + 0.5, video[3] + 0.5, video[3]]


@pytest.mark.cuda
@pytest.mark.dense_restart
def test_scene_cuts_restart_densely_and_the_sequence_goes_on(runtime, monkeypatch):
    from deltaconvert.backends.cuda.pointwise import Truncating
    by_kernel = []
    original = Truncating.dense_in_place

    def spy(self, op, *args, **kwargs):
        out = original(self, op, *args, **kwargs)
        by_kernel.append((op.node_name, out is not NotImplemented))
        return out

    monkeypatch.setattr(Truncating, "dense_in_place", spy)
    frames = cut_clip()
    net = small_net()
    model = converted(net, frames[0], backend="cuda", cuda_graph=True)
    model.set_input_sparsify(threshold=1e-3)
    restarts = []
    with torch.no_grad():
        for t, x in enumerate(frames):
            got = model(x)
            restarts.append(model.stats()["dense_restarts"])
            torch.testing.assert_close(got, net(x), rtol=1e-4, atol=1e-5, msg=f"frame {t}")
    body = model.graph_replay.captured.body
    assert body.restart_captured and body.restart_pixels > 0
    # 0 dense, 1 eager delta, 2 captured (the model restarts eagerly before the
    # capture), 3 cut, 4 delta on the restarted state, 5 cut
    assert restarts == [0, 0, 1, 2, 2, 3]
    assert model.stats()["work_fraction_last"] == pytest.approx(1.0)
    # the restart's activations ran pw_restart (eagerly before the capture, then captured);
    # the first frame's did not (no state yet)
    assert {name for name, kernel in by_kernel if kernel} == {"1", "4"}
    assert any(not kernel for _, kernel in by_kernel)


@pytest.mark.cuda
@pytest.mark.dense_restart
def test_slot_mode_never_restarts_the_whole_batch(runtime):
    """Idle slots keep their state exactly, so with a READY gate there is no restart."""
    frames = cut_clip()
    model = converted(small_net(), frames[0], backend="cuda", cuda_graph=True)
    model.slots = 2
    for x in frames:
        model(x)
    body = model.graph_replay.captured.body
    assert body.restart_pixels == 0 and not body.restart_captured
    assert model.stats()["dense_restarts"] == 0
