"""Slots on the reference math (CPU): a slot's outputs are identical whether its
neighbours are busy, idle, restarted or replaced by another stream; an idle slot does no
work and keeps its state exactly; a restarted slot's next frame is the original model's
output while the other slots continue as delta frames."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from deltaconvert.convert import DenseFallbackWarning, convert
from deltaconvert.errors import ConfigError, SequenceMismatch
from deltaconvert.ops.boundary import Sparsify
from deltaconvert.synthetic import synthetic_video

SLOTS, FRAMES, HEIGHT, WIDTH = 3, 7, 20, 24


class Net(nn.Module):
    """Conv, ReLU (truncating), max pool, a dense island (softmax over a spatial dim has no delta
    form, so a re-entry Sparsify follows it), a residual add and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Hardswish())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.softmax(x, dim=3)
        return self.head(x + self.body(x))


def make(threshold: float = 0.02):
    torch.manual_seed(0)
    net = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DenseFallbackWarning)
        model = convert(net, torch.randn(1, 3, HEIGHT, WIDTH), thresholds=threshold)
    model.slots = SLOTS
    return net, model


@pytest.fixture(scope="module")
def clips():
    """Three different clips of one sample each."""
    return [synthetic_video(FRAMES, HEIGHT, WIDTH, batch=1, seed=s) for s in (1, 2, 3)]


def play_slot0(model, scenario: str, clips, frames: int) -> list[torch.Tensor]:
    """Slot 0 of ``model`` plays clip 0 from frame 0 for ``frames`` frames; its neighbours
    do what ``scenario`` says. Returns slot 0's outputs (shared with the GPU tests)."""
    outs = []
    for t in range(frames):
        mine = clips[0][t]
        if scenario == "alone":
            outs.append(model.run_slots([0], mine))
            continue
        if scenario == "busy":
            out = model(torch.cat([mine, clips[1][t], clips[2][t]]))
        elif scenario == "idle_then_busy":  # neighbours silent on odd frames
            rows = [0, 1, 2] if t % 2 == 0 else [0]
            out = model.run_slots(rows, torch.cat([mine, clips[1][t], clips[2][t]][:len(rows)]))
        elif scenario == "reset":  # neighbours restart every other frame
            if t % 2:
                model.reset(slots=[1, 2])
            out = model(torch.cat([mine, clips[1][t], clips[2][t]]))
        elif scenario == "replaced":  # slot 1 gets a new stream (clip 2) at frame 3
            other = clips[1][t] if t < 3 else clips[2][t - 3]
            if t == 3:
                model.reset(slots=[1])
            out = model.run_slots([1, 0], torch.cat([other, mine]))[1:]
        else:
            raise AssertionError(scenario)
        outs.append(out[:1])
    return outs


@pytest.mark.parametrize("scenario", ["busy", "idle_then_busy", "reset", "replaced"])
def test_slot_outputs_do_not_depend_on_neighbours(clips, scenario):
    alone = play_slot0(make()[1], "alone", clips, FRAMES)
    other = play_slot0(make()[1], scenario, clips, FRAMES)
    for t, (a, b) in enumerate(zip(alone, other)):
        assert torch.equal(a, b), f"{scenario}: frame {t} differs by {(a - b).abs().max()}"


def test_restarted_slot_is_dense_and_others_continue(clips):
    net, model = make()
    _, never_reset = make()
    batch = [torch.cat([c[t] for c in clips]) for t in range(FRAMES)]
    for t in range(3):
        model(batch[t]), never_reset(batch[t])
    model.reset(slots=[1])
    got, want = model(batch[3]), never_reset(batch[3])
    with torch.no_grad():
        dense = net(batch[3][1:2])
    torch.testing.assert_close(got[1:2], dense, rtol=0, atol=1e-6)
    assert torch.equal(got[[0, 2]], want[[0, 2]])
    # Later frames of the restarted slot are delta frames against its new dense frame.
    for t in range(4, FRAMES):
        got, want = model(batch[t]), never_reset(batch[t])
        assert torch.equal(got[[0, 2]], want[[0, 2]])


def state_rows(model, row: int) -> dict[str, torch.Tensor]:
    rows = {}
    for name, op in model.delta_ops().items():
        for key, value in op.state.items():
            for i, t in enumerate(value if isinstance(value, list) else [value]):
                if isinstance(t, torch.Tensor):
                    rows[f"{name}.{key}.{i}"] = t[row].clone()
    return rows


def test_idle_slot_does_no_work_and_keeps_its_state(clips):
    _, model = make(threshold=0.0)
    batch = [torch.cat([c[t] for c in clips]) for t in range(FRAMES)]
    model(batch[0]), model(batch[1])
    before = state_rows(model, 2)
    masks = {}
    hooks = [op.register_forward_hook(lambda m, a, out, name=name: masks.__setitem__(name, out.mask))
             for name, op in model.delta_ops().items() if isinstance(op, Sparsify)]
    model.run_slots([0, 1], batch[2][:2])
    for hook in hooks:
        hook.remove()
    assert len(masks) == 2  # the input Sparsify and the re-entry after the dense island
    for name, mask in masks.items():
        assert not mask[2].any(), f"{name}: the idle slot's mask row is not empty"
        assert mask[0].any()
    after = state_rows(model, 2)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_first_frame_with_a_subset_restarts_the_others_later(clips):
    net, model = make()
    out = model.run_slots([2], clips[2][0])
    with torch.no_grad():
        torch.testing.assert_close(out, net(clips[2][0]), rtol=0, atol=1e-6)
        later = model.run_slots([0, 2], torch.cat([clips[0][1], clips[2][1]]))
        torch.testing.assert_close(later[:1], net(clips[0][1]), rtol=0, atol=1e-6)


def test_threshold_zero_slots_equal_the_dense_model(clips):
    net, model = make(threshold=0.0)
    for t in range(FRAMES):
        rows = [0, 2] if t % 3 else [1, 0]
        x = torch.cat([clips[r][t] for r in rows])
        with torch.no_grad():
            torch.testing.assert_close(model.run_slots(rows, x), net(x), rtol=1e-5, atol=1e-5)


def test_slot_errors(clips):
    _, model = make()
    model.slots = None
    with pytest.raises(ConfigError, match="model.slots"):
        model.run_slots([0], clips[0][0])
    model.slots = SLOTS
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        model.run_slots([3], clips[0][0])
    with pytest.raises(ConfigError, match="distinct"):
        model.run_slots([1, 1], torch.cat([clips[0][0]] * 2))
    with pytest.raises(SequenceMismatch, match="expected inputs with 2 samples"):
        model.run_slots([0, 1], clips[0][0])
    with pytest.raises(SequenceMismatch, match="expected inputs with 3 samples"):
        model(clips[0][0])
    with pytest.raises(ConfigError, match="model.slots"):
        model.slots = 0
    model.run_slots([0], clips[0][0])
    with pytest.raises(SequenceMismatch, match="per-sample shape"):
        model.run_slots([1], clips[0][0][..., :-2])


def test_copies_and_full_reset_forget_the_gate(clips):
    _, model = make()
    model.run_slots([0], clips[0][0])
    model.run_slots([1], clips[1][0])
    clone = copy.deepcopy(model)
    assert clone.slots == SLOTS
    assert all(op.ready is None for op in clone.delta_ops().values() if isinstance(op, Sparsify))
    model.reset()
    assert all(op.ready is None for op in model.delta_ops().values() if isinstance(op, Sparsify))
    out = model(torch.cat([c[0] for c in clips]))
    assert out.shape[0] == SLOTS


def test_ready_gate_is_written_only_when_the_ready_slots_change(clips):
    """The READY buffer (read on the device by every Sparsify) is rewritten when the set of
    slots with a frame changes, not every frame; outputs follow the pattern either way."""
    _, model = make()
    _, fresh_each_frame = make()
    x = [torch.cat([c[t] for c in clips]) for t in range(FRAMES)]
    # (rows, READY slots afterwards, whether the buffer is rewritten)
    plan = [([0, 2], None, None),  # first frame: dense for 0 and 2, READY not yet used
            ([0, 2], [True, False, True], True), ([2, 0], [True, False, True], False),
            ([0, 2], [True, False, True], False), ([1], [True, False, True], False),  # dense
            ([0, 1], [True, True, False], True), ([2, 0], [True, False, True], True)]
    for t, (rows, ready, written) in enumerate(plan):
        before = None if model._ready is None else model._ready._version
        out = model.run_slots(rows, x[t][rows])
        if ready is not None:
            assert model._ready.tolist() == ready, t
            assert (model._ready._version != before) == written, t
        # The same frames with READY rebuilt from scratch: the same outputs.
        fresh_each_frame._ready_rows = None
        assert torch.equal(out, fresh_each_frame.run_slots(rows, x[t][rows])), t
