"""Dense layers (``backends/cuda/dense_layers.py``): a conv fused into its activation,
whose input is a truncating op's output or an input Sparsify's, recomputes its
pre-activation with cuDNN from that input's sent values, and the activation assigns it
to its accumulator and truncates as always.

* The decision: made once per sequence from the first delta frame's candidate counts
  (every eligible conv at fraction 0, none above 1), before the capture in graph mode.
* Outputs: within fp16 rounding of the same model running the delta kernels, and of
  the original model, on every frame, eagerly and under CUDA-graph replay, with new
  kernel outputs poisoned; the dense path really runs (cuDNN called each frame).
* The accumulator stays valid: a sequence whose dense layers are switched back to the
  delta kernels mid-way goes on matching the original model (threshold 0).
* Accumulators are not allocated while no delta kernel needs them: a conv that will run
  as a dense layer defers its activation's from the first frame; one that then turns out
  delta, or meets a READY gate (even right after the first frame), has it restored from
  its input producer's state.
* Statistics count every output pixel of a dense layer as updated.
* Slot mode: with a READY gate no layer runs dense (its candidates would be every row):
  the delta kernels take over from the accumulators the dense frames assigned, and idle
  slots keep their state exactly.
* Dense deltas: 1×1 convs that cannot be dense layers (inputs without a total, no
  activation) run cuDNN over their whole delta map zeroed outside its mask; outputs as
  above, the added work truncated by ``pw_truncate_whole_added``, statistics counted as
  the delta kernels count them.
"""
from __future__ import annotations

import copy
import gc
import warnings
import weakref

import pytest
import torch
from torch import nn

from deltaconvert.convert import convert
from deltaconvert.delta import tensor_leaves
from deltaconvert.metrics import relative_error
from deltaconvert.ops.conv import Conv2d
from deltaconvert.synthetic import synthetic_video

pytestmark = [pytest.mark.cuda, pytest.mark.dense_layers]
DEVICE = torch.device("cuda", 0)
FRAMES = 12


def chain() -> nn.Module:
    """Stem conv (input: the Sparsify) and a 1×1 conv (input: an activation), each fused
    into its activation, are eligible; a depthwise conv (stays delta) and a last conv
    with no activation are not."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU6(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                         nn.Conv2d(16, 32, 1), nn.SiLU(),
                         nn.Conv2d(32, 8, 1)).to(DEVICE).eval()


ELIGIBLE = ["0", "4"]  # the convs fused into an activation, not depthwise


def delta_model(net: nn.Module, x: torch.Tensor, graph: bool, threshold: float = 0.02):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert(net, x.float(), backend="cuda", cuda_graph=graph, thresholds=threshold)
    model.set_input_sparsify(threshold=0.01)
    return model.to(dtype=torch.float16)


def conv_wrappers(model) -> dict[str, object]:
    return {name: op.accelerated for name, op in model.delta_ops().items()
            if isinstance(op, Conv2d)}


def counting_dense_calls(model) -> dict[str, int]:
    """Count each conv op's cuDNN calls (``op.dense``) from now on."""
    calls: dict[str, int] = {}
    for name, op in model.delta_ops().items():
        if isinstance(op, Conv2d):
            dense = op.dense
            op.dense = (lambda x, bias=True, name=name, dense=dense:
                        calls.__setitem__(name, calls.get(name, 0) + 1) or dense(x, bias))
    return calls


def run(model, frames) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(x).clone() for x in frames]


def clip() -> list[torch.Tensor]:
    return [f.to(DEVICE).half() for f in synthetic_video(FRAMES, 40, 56, batch=2, seed=5)]


def set_dense_from(monkeypatch, fraction: float, deltas: float = 2.0) -> None:
    """The fraction from which convs other than depthwise ones turn dense, narrow stems
    included; depthwise convs stay delta (see the ``depthwise`` cases); 1×1 convs that
    cannot be dense layers run dense deltas from ``deltas`` (default: never)."""
    from deltaconvert.backends.cuda import dense_layers
    monkeypatch.setattr(dense_layers, "DENSE_FROM", fraction)
    monkeypatch.setattr(dense_layers, "DENSE_SPATIAL_FROM", fraction)
    monkeypatch.setattr(dense_layers, "DENSE_NARROW_FROM", fraction)
    monkeypatch.setattr(dense_layers, "DENSE_DEPTHWISE_FROM", 2.0)
    monkeypatch.setattr(dense_layers, "DENSE_DELTA_FROM", deltas)


def reference_and_model(monkeypatch, net: nn.Module, frames, graph: bool, fraction: float = 0.0,
                        deltas: float = 2.0):
    """The outputs on ``frames`` of ``net``'s delta model running the delta kernels
    alone, and a fresh delta model (not run yet) whose convs turn dense from
    ``fraction`` and run dense deltas from ``deltas`` (:func:`set_dense_from`)."""
    set_dense_from(monkeypatch, 2.0)
    reference = run(delta_model(net, frames[0], graph), frames)
    set_dense_from(monkeypatch, fraction, deltas)
    return reference, delta_model(net, frames[0], graph)


def assert_matches(got, reference, net: nn.Module, frames) -> None:
    """Every frame finite, within fp16 rounding of the delta kernels' outputs
    ``reference`` and of the original model ``net``."""
    with torch.no_grad():
        original = [net(x.float()) for x in frames]
    for t, (a, b, o) in enumerate(zip(got, reference, original)):
        assert torch.isfinite(a).all(), f"frame {t}"
        assert relative_error(a, b) < 2e-2, f"frame {t}: {relative_error(a, b):.3g} vs delta kernels"
        assert relative_error(a, o) < 3e-2, f"frame {t}: {relative_error(a, o):.3g} vs original"


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_dense_layers_match_the_delta_kernels_and_the_original(poisoned, monkeypatch, graph):
    frames = clip()
    net = chain()
    reference, model = reference_and_model(monkeypatch, net, frames, graph)
    calls = counting_dense_calls(model)
    got = run(model, frames)
    decided = {name: w.dense for name, w in conv_wrappers(model).items()}
    assert [name for name, dense in decided.items() if dense] == ELIGIBLE
    assert decided["2"] is None and decided["6"] is None  # depthwise; no activation
    # frame 0 dense; frame 1 runs dense layers and samples, then the plan warms the dense
    # ones up; frame 2 on runs dense layers (in graph mode: frame 2 eagerly on the settled
    # plan, the capture, then replays that call no Python)
    expected_calls = 1 + 2 + (2 if graph else FRAMES - 2)
    assert all(calls[name] == expected_calls for name in ELIGIBLE), calls
    # The ReLU before conv 4 feeds that dense layer alone: it stores no delta (conv 4
    # reads its total); the SiLU after conv 4 feeds conv 6, which reads its delta.
    relu, silu = (model.delta_ops()[name].accelerated for name in ("3", "5"))
    assert not relu.writes_delta and silu.writes_delta
    assert_matches(got, reference, net, frames)


def exact_model(net: nn.Module, x: torch.Tensor, graph: bool):
    """The delta model at threshold 0, input threshold 0 included."""
    model = delta_model(net, x, graph, threshold=0.0)
    model.set_input_sparsify(threshold=0.0)
    return model


def assert_follows(got: torch.Tensor, x: torch.Tensor, net: nn.Module, where: str) -> None:
    """``got`` is within fp16 rounding (5× the dense fp16 model's own error, at least
    5e-3) of the original model ``net`` (fp32) on ``x``."""
    expected = net(x.float())
    e16 = relative_error(copy.deepcopy(net).half()(x), expected)
    assert relative_error(got, expected) <= max(5e-3, 5 * e16), where


def follow_switching(model, frames, net: nn.Module, switch_at: int | None, switch) -> None:
    """Every frame's output :func:`assert_follows` the original; before frame
    ``switch_at`` (None: never), ``switch(conv wrappers by name)``."""
    with torch.no_grad():
        for t, x in enumerate(frames):
            if t == switch_at:
                switch(conv_wrappers(model))
            assert_follows(model(x), x, net, f"frame {t}")


@pytest.mark.parametrize("make,graph,switch_at,copies", [
    ("chain", True, None, None), ("chain", False, FRAMES // 2, None), ("residual", True, None, None),
    ("chain-depthwise", True, None, float("inf")), ("chain-depthwise", True, None, 0.0)],
    ids=["graph", "eager-switching-back", "dense-adds", "depthwise", "depthwise-timed-out"])
def test_at_threshold_zero_dense_layers_follow_the_original(poisoned, monkeypatch, make, graph,
                                                            switch_at, copies):
    """Every frame within fp16 rounding of the original; with ``switch_at``, the dense
    layers are switched back to the delta kernels at that frame: a dense layer assigns
    its accumulator every frame, so they take over from a valid state. ``depthwise``:
    depthwise convs turn dense too (``DENSE_DEPTHWISE_FROM``), after cuDNN's conv was
    timed against a copy of its input: within any number of copies it turns dense,
    within none (``DEPTHWISE_COPY_RATIO`` 0) it stays delta."""
    from deltaconvert.backends.cuda import dense_layers
    frames = clip()
    net = Residual().to(DEVICE).eval() if make == "residual" else chain()
    set_dense_from(monkeypatch, 0.0)
    if make == "chain-depthwise":
        monkeypatch.setattr(dense_layers, "DENSE_DEPTHWISE_FROM", 0.0)
        monkeypatch.setattr(dense_layers, "DEPTHWISE_COPY_RATIO", copies)
        timed = []
        memory_bound = dense_layers.memory_bound
        monkeypatch.setattr(dense_layers, "memory_bound",
                            lambda *a: timed.append(a) or memory_bound(*a))
    model = exact_model(net, frames[0], graph=graph)

    def switch_back(wrappers):
        assert all(wrappers[name].dense for name in ELIGIBLE)
        wrappers["0"].plan.restore()  # the accumulators dense layers did not keep
        for w in wrappers.values():
            w.dense = False

    follow_switching(model, frames, net, switch_at, switch_back)
    if make == "chain-depthwise":
        decided = {name: w.dense for name, w in conv_wrappers(model).items()}
        assert decided["2"] == (copies > 0), "the depthwise conv's timing was not followed"
        assert decided["0"] and decided["4"]  # timed: the depthwise conv alone
        assert len(timed) == 1


def test_no_conv_is_dense_above_one_and_undecided_convs_stay_delta(poisoned, monkeypatch):
    frames = clip()
    set_dense_from(monkeypatch, 2.0)
    model = delta_model(chain(), frames[0], graph=False)
    run(model, frames[:4])
    assert all(w.dense is None for w in conv_wrappers(model).values())


def test_a_dense_layer_counts_every_pixel_as_updated(poisoned, monkeypatch):
    frames = clip()
    set_dense_from(monkeypatch, 0.0)
    model = delta_model(chain(), frames[0], graph=False)
    run(model, frames[:4])
    layers = model.stats()["layers"]
    for name in ELIGIBLE:
        assert layers[name]["updated_last"] == 1.0, layers[name]


@pytest.mark.parametrize("whole_frames", [4, 1], ids=["planned", "first-frame-only"])
def test_gated_frames_run_the_delta_kernels_and_idle_slots_keep_their_state(poisoned, monkeypatch,
                                                                            whole_frames):
    """Dense layers planned on whole-batch frames (or only the first, dense frame run,
    whose deferred accumulators were never allocated); a slot restart then installs the
    READY gate: the convs run the delta kernels on the accumulators the dense frames
    assigned or the gate's installation restored (the busy slot follows the original
    model) and the idle slot's state stays as it was."""
    frames = clip()
    net = chain()
    set_dense_from(monkeypatch, 0.0)
    model = exact_model(net, frames[0], graph=True)
    with torch.no_grad():
        for x in frames[:whole_frames]:
            model(x)
        wrappers = conv_wrappers(model)
        assert all(wrappers[name].dense is (True if whole_frames > 1 else None) for name in ELIGIBLE)
        model.reset(slots=[1])
        model(frames[4])  # slot 1 restarts densely, slot 0 runs a gated delta frame
        assert not any(deferred_accumulators(model))

        def idle_rows():
            return [t[1].clone() for op in model.delta_ops().values()
                    for t in tensor_leaves(op.state) if isinstance(t, torch.Tensor) and t.dim() == 4]

        held = idle_rows()
        for t, x in enumerate(frames[5:], start=5):
            assert_follows(model.run_slots([0], x[:1]), x[:1], net, f"frame {t}")
    assert all(torch.equal(a, b) for a, b in zip(held, idle_rows()))


def deferred_accumulators(model) -> list[str]:
    """The ops whose accumulator is deferred (not allocated)."""
    from deltaconvert.backends.cuda.dense_layers import deferred
    return [name for name, op in model.delta_ops().items()
            if any(deferred(a) for a in op.state.get("acc") or [])]


@pytest.mark.parametrize("fraction", [0.0, 1.0], ids=["dense", "decided-delta"])
def test_accumulators_are_allocated_only_where_the_delta_kernels_add_to_them(poisoned, monkeypatch,
                                                                           fraction):
    """From the first frame, the activations of the convs that will run as dense layers
    hold a deferred accumulator (less state than with kept accumulators). Decided dense
    (fraction 0), they keep it deferred; decided delta (fraction 1: no conv has every
    output pixel a candidate), the plan restores them before the delta kernels add to
    them. Either way every frame follows the original model at threshold 0 (on a clip
    without noise, so that moving sprites leave most pixels unchanged)."""
    from deltaconvert.backends.cuda import dense_layers
    frames = [f.to(DEVICE).half() for f in synthetic_video(FRAMES, 40, 56, batch=2, seed=5, noise=0.0)]
    net = chain()
    set_dense_from(monkeypatch, 0.0)
    monkeypatch.setattr(dense_layers, "KEEP_ACCUMULATORS", True)
    kept = exact_model(net, frames[0], graph=False)
    run(kept, frames[:1])
    set_dense_from(monkeypatch, fraction)
    monkeypatch.setattr(dense_layers, "KEEP_ACCUMULATORS", False)
    model = exact_model(net, frames[0], graph=False)
    with torch.no_grad():
        for t, x in enumerate(frames):
            got = model(x)
            if t == 0:
                assert deferred_accumulators(model) == ["1", "5"]  # after convs 0 and 4
                assert model.state_bytes() < kept.state_bytes()
            assert_follows(got, x, net, f"frame {t}")
    decided = [conv_wrappers(model)[name].dense for name in ELIGIBLE]
    assert decided == [fraction == 0.0] * 2, decided
    assert deferred_accumulators(model) == (["1", "5"] if fraction == 0.0 else [])


class Residual(nn.Module):
    """ResNet's shape: a stem, ReLU and max pool, then two residual adds fused into ReLUs:
    an identity skip (a conv source and the max pool's output, which hands on its sent
    values as its total) and a projected one (two conv sources)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.relu0 = nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)  # keeps the map above DENSE_MIN_PIXELS
        self.conv1, self.relu1 = nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
        self.conv3, self.down, self.relu3 = nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(16, 32, 1), nn.ReLU()
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu0(self.stem(x)))
        y = self.relu2(self.conv2(self.relu1(self.conv1(x))) + x)
        return self.head(self.relu3(self.conv3(y) + self.down(y)))


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_dense_adds_match_the_delta_kernels_and_the_original(poisoned, monkeypatch, graph):
    frames = clip()
    net = Residual().to(DEVICE).eval()
    reference, model = reference_and_model(monkeypatch, net, frames, graph)
    got = run(model, frames)
    adds = {name: op.accelerated.dense for name, op in model.delta_ops().items()
            if name.startswith("add")}
    assert adds and all(adds.values()), adds
    assert conv_wrappers(model)["conv1"].dense  # it reads the max pool's total
    assert_matches(got, reference, net, frames)


class Inverted(nn.Module):
    """MobileNetV2's shape: a stem and ReLU6, an inverted residual block (1×1 expansion,
    depthwise conv, 1×1 projection without activation, skip add), another expansion
    reading the add (which keeps its running total for it) and a 1×1 head without
    activation. With dense layers off, the four 1×1 convs may run dense deltas: two fused
    into their ReLU6 (added work), two not (their output is the delta)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.relu0 = nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU6()
        self.expand, self.relu1 = nn.Conv2d(16, 48, 1), nn.ReLU6()
        self.dw, self.relu2 = nn.Conv2d(48, 48, 3, padding=1, groups=48), nn.ReLU6()
        self.project = nn.Conv2d(48, 16, 1)
        self.expand2, self.relu3 = nn.Conv2d(16, 32, 1), nn.ReLU6()
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu0(self.stem(x))
        y = x + self.project(self.relu2(self.dw(self.relu1(self.expand(x)))))
        return self.head(self.relu3(self.expand2(y)))


DENSE_DELTAS = ["expand", "project", "expand2", "head"]


@pytest.mark.parametrize("whole", [True, False], ids=["whole-maps", "scanning"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_dense_deltas_match_the_delta_kernels_and_the_original(poisoned, monkeypatch, graph,
                                                               whole):
    """The 1×1 convs without a dense-layer path run cuDNN on their delta every frame from
    the second delta frame on (new kernel outputs poisoned: the zeroing outside the mask
    is what keeps NaNs out), and the fused ones hand it to ``pw_truncate_whole_added``.
    Their inputs come clean from the whole-map truncations and the add's ``pw_linear``;
    with the whole-map kernels off (``scanning``) torch zeroes the truncations' outputs."""
    from deltaconvert.backends.cuda import conv as conv_module
    from deltaconvert.backends.cuda import pointwise
    from deltaconvert.backends.cuda.kernels import recorded_launches
    if not whole:
        monkeypatch.setattr(pointwise, "whole_span", lambda *a: 0)
    inputs = []
    clean_values = conv_module.clean_values
    monkeypatch.setattr(conv_module, "clean_values",
                        lambda d: inputs.append(bool(d.extras.get("clean"))) or clean_values(d))
    frames = clip()
    net = Inverted().to(DEVICE).eval()
    reference, model = reference_and_model(monkeypatch, net, frames, graph, 2.0, deltas=0.0)
    calls = counting_dense_calls(model)
    with torch.no_grad():
        got = [model(x).clone() for x in frames[:2]]
        inputs.clear()
        with recorded_launches() as launches:
            got.append(model(frames[2]).clone())
        frame_inputs = list(inputs)
        got += [model(x).clone() for x in frames[3:]]
    decided = {name: w.dense for name, w in conv_wrappers(model).items()}
    assert [name for name, dense in decided.items() if dense] == DENSE_DELTAS
    assert decided["stem"] is None and decided["dw"] is None
    # as for dense layers, above, but the sampling frame runs the delta kernels
    expected_calls = 1 + 1 + (2 if graph else FRAMES - 2)
    assert all(calls[name] == expected_calls for name in DENSE_DELTAS), calls
    assert not [(layer, name) for layer, name, _ in launches
                if layer in DENSE_DELTAS and name.startswith("conv_")], launches
    assert ("pw_truncate_whole_added" in {name for _, name, _ in launches}) is whole
    assert sorted(frame_inputs) == ([True] * 4 if whole else [False] * 3 + [True]), frame_inputs
    assert_matches(got, reference, net, frames)


@pytest.mark.parametrize("graph,switch_at", [(True, None), (False, FRAMES // 2)],
                         ids=["graph", "eager-switching-back"])
def test_at_threshold_zero_dense_deltas_follow_the_original(poisoned, monkeypatch, graph, switch_at):
    """Dense deltas add to the accumulators as the delta kernels do, so the delta kernels
    may take over at any frame (``switch_at``) without a restoration."""
    frames = clip()
    net = Inverted().to(DEVICE).eval()
    set_dense_from(monkeypatch, 2.0, deltas=0.0)
    model = exact_model(net, frames[0], graph=graph)

    def switch_back(wrappers):
        assert all(wrappers[name].dense for name in DENSE_DELTAS)
        for name in DENSE_DELTAS:
            wrappers[name].dense = False

    follow_switching(model, frames, net, switch_at, switch_back)


DENSE_AFTER_ADD = ["stem", "expand", "expand2"]  # the convs fused into an activation, not depthwise


def the_add(model):
    """The wrapper of ``Inverted``'s skip add."""
    (add,) = [op.accelerated for op in model.delta_ops().values()
              if type(op.accelerated).__name__ == "LinearPointwise"]
    return add


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_an_expansion_after_a_skip_add_is_a_dense_layer_over_the_adds_total(poisoned, monkeypatch,
                                                                           graph):
    """The skip add keeps its output's running total (``pw_linear`` adds each δ it sends
    to an fp32 sum and stores its rounding), so the expansion reading it may be a dense
    layer: cuDNN on that total every frame from the second delta frame on, within fp16
    rounding of the delta kernels and of the original; the add's output need not be
    clean (no dense delta reads it)."""
    frames = clip()
    net = Inverted().to(DEVICE).eval()
    reference, model = reference_and_model(monkeypatch, net, frames, graph)
    calls = counting_dense_calls(model)
    got = run(model, frames)
    wrappers = conv_wrappers(model)
    assert [name for name, w in wrappers.items() if w.dense] == DENSE_AFTER_ADD
    assert wrappers["expand2"].layer_call is not None and not wrappers["expand2"].runs_dense_delta
    add = the_add(model)
    assert add.keeps_total and not add.writes_clean
    expected_calls = 1 + 2 + (2 if graph else FRAMES - 2)  # as for dense layers, above
    assert calls["expand2"] == expected_calls, calls
    assert_matches(got, reference, net, frames)


@pytest.mark.parametrize("graph,switch_at", [(True, None), (False, FRAMES // 2)],
                         ids=["graph", "eager-switching-back"])
def test_at_threshold_zero_a_dense_layer_over_an_adds_total_follows_the_original(
        poisoned, monkeypatch, graph, switch_at):
    """The add's total is the sum of every δ it sent: at threshold 0 the dense layer over
    it follows the original on every frame, and switched back to the delta kernels
    (``switch_at``) the expansion's accumulator is restored from that total."""
    frames = clip()
    net = Inverted().to(DEVICE).eval()
    set_dense_from(monkeypatch, 0.0)
    model = exact_model(net, frames[0], graph=graph)

    def switch_back(wrappers):
        assert all(wrappers[name].dense for name in DENSE_AFTER_ADD)
        wrappers["expand2"].plan.restore()
        for w in wrappers.values():
            w.dense = False

    follow_switching(model, frames, net, switch_at, switch_back)


def test_dense_deltas_count_what_the_delta_kernels_count(poisoned, monkeypatch):
    """A dense delta's updated pixels are its input's candidates, as for the delta
    kernels: the first one (whose input no dense delta touched) counts exactly theirs."""
    frames = clip()
    net = Inverted().to(DEVICE).eval()
    layers = {}
    for deltas in (2.0, 0.0):
        set_dense_from(monkeypatch, 2.0, deltas=deltas)
        model = delta_model(net, frames[0], graph=False)
        run(model, frames[:5])
        layers[deltas] = model.stats()["layers"]
    assert layers[0.0]["expand"]["updated_last"] == layers[2.0]["expand"]["updated_last"]
    for name in DENSE_DELTAS:
        assert 0.0 < layers[0.0][name]["updated_last"] <= 1.0, (name, layers[0.0][name])


def model_state(model) -> list[torch.Tensor]:
    return [t.clone() for op in model.delta_ops().values()
            for t in tensor_leaves(op.state) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("blocks", [None, 3], ids=["one-wave", "three-blocks"])
@pytest.mark.parametrize("make,channels", [("chain", 6), ("chain", 20), ("chain", 144),
                                           ("residual", 16)])
def test_the_whole_map_truncation_computes_what_the_scanning_one_does(poisoned, monkeypatch,
                                                                      make, channels, blocks):
    """A dense layer's truncation lays its threads flat over pixels × channel vectors
    (``pointwise.whole_width``: C = 6 loads single channels, 20 vectors of 4, 144 of 8, over
    spans that split no warp evenly); the scanning kernel it replaces computes the same
    rounded values in the same order, so outputs and every op's state agree bit for bit
    on every frame. Its blocks take rounds of a persistent grid (``pointwise.whole_grid``):
    ``three-blocks`` caps the grid at 3, so that each block takes many rounds."""
    from deltaconvert.backends.cuda import dense_layers, pointwise

    rounds = []
    if blocks is not None:
        shipped_grid = pointwise.whole_grid
        monkeypatch.setattr(pointwise, "whole_grid", lambda pixels, span, sms: rounds.append(
            -(-pixels // span)) or min(blocks, shipped_grid(pixels, span, sms)))

    frames = clip()
    if make == "chain":
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU6(),
                            nn.Conv2d(channels, channels, 1), nn.Hardswish(),
                            nn.Conv2d(channels, 8, 1)).to(DEVICE).eval()
    else:
        net = Residual().to(DEVICE).eval()
    set_dense_from(monkeypatch, 0.0)
    monkeypatch.setattr(dense_layers, "KEEP_ACCUMULATORS", True)  # the state is compared below
    spans = []
    shipped = pointwise.whole_span
    monkeypatch.setattr(pointwise, "whole_span", lambda *a: spans.append(shipped(*a)) or spans[-1])
    model = delta_model(net, frames[0], graph=False)
    whole = run(model, frames), model_state(model)
    assert any(spans), "no truncation ran over a whole map"
    assert blocks is None or max(rounds) > 2 * blocks, rounds
    monkeypatch.setattr(pointwise, "whole_span", lambda *a: 0)
    model = delta_model(net, frames[0], graph=False)
    scanning = run(model, frames), model_state(model)
    for t, (a, b) in enumerate(zip(whole[0], scanning[0])):
        assert torch.equal(a, b), f"frame {t}"
    assert len(whole[1]) == len(scanning[1])
    assert all(torch.equal(a, b) for a, b in zip(*(s[1] for s in (whole, scanning))))


class SkipAdds(nn.Module):
    """MobileNetV2's shape: two inverted residual blocks whose skip adds (no activation
    after them: ``pw_linear``) keep their totals for the dense expansion after them."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        c, e = channels, 4 * channels
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, stride=2, padding=1), nn.ReLU6())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, e, 1), nn.ReLU6(), nn.Conv2d(e, e, 3, padding=1, groups=e),
                          nn.ReLU6(), nn.Conv2d(e, c, 1)) for _ in range(2))
        self.head = nn.Conv2d(c, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


@pytest.mark.parametrize("channels,width", [(16, 8), (12, 4), (6, 1)])
def test_the_linear_kernel_computes_the_same_in_channel_vectors(poisoned, monkeypatch, channels, width):
    """``pw_linear`` loads 8 or 4 channels at once where every tensor allows
    (``pointwise.channel_width``): the same rounded sums, sent values and totals as one
    channel at a time, so outputs and every op's state agree bit for bit on every frame."""
    from deltaconvert.backends.cuda import dense_layers, pointwise

    frames = clip()
    net = SkipAdds(channels).to(DEVICE).eval()
    set_dense_from(monkeypatch, 0.0)  # the expansions after the adds read their totals
    monkeypatch.setattr(dense_layers, "KEEP_ACCUMULATORS", True)  # the state is compared below
    widths = []
    shipped = pointwise.channel_width
    monkeypatch.setattr(pointwise, "channel_width",
                        lambda *a, **k: widths.append(shipped(*a, **k)) or widths[-1])
    model = delta_model(net, frames[0], graph=False)
    vectors = run(model, frames), model_state(model)
    assert width in widths, widths
    monkeypatch.setattr(pointwise, "channel_width", lambda *a, **k: 1)
    model = delta_model(net, frames[0], graph=False)
    single = run(model, frames), model_state(model)
    for t, (a, b) in enumerate(zip(vectors[0], single[0])):
        assert torch.equal(a, b), f"frame {t}"
    assert len(vectors[1]) == len(single[1])
    assert all(torch.equal(a, b) for a, b in zip(vectors[1], single[1]))


def test_sampling_keeps_no_frame_delta_alive(poisoned, monkeypatch):
    """On the first delta frame every dense-add candidate samples, and its conv sources
    hand the plan their dense conv's warm-up: what that holds is state (the input's sent
    values), not the frame's deltas, so each delta those convs received is freed with the
    frame."""
    from deltaconvert.delta import Delta

    frames = clip()
    set_dense_from(monkeypatch, 0.0)
    model = delta_model(Residual().to(DEVICE).eval(), frames[0], graph=False)
    received = []
    with torch.no_grad():
        model(frames[0])  # dense first frame: binds the wrappers, no deltas
    sources = [op for op in model.delta_ops().values()
               if isinstance(op, Conv2d) and op.accelerated.feeds is not None]
    assert sources
    # Both adds have a 3×3 conv source: bound to decide as spatial convs.
    assert {op.accelerated.feeds.kind for op in sources} == {"spatial"}
    for op in sources:
        op.register_forward_pre_hook(lambda module, args: received.extend(
            weakref.ref(a.values) for a in args if isinstance(a, Delta)))
    with torch.no_grad():
        model(frames[1])  # the sampling frame
    gc.collect()
    assert received and all(ref() is None for ref in received)


def test_no_parameter_copy_is_made_inside_a_capture(poisoned, monkeypatch):
    """The dense paths' fp32 biases and a dense add's sum of biases are cached parameter
    copies; one first made inside the CUDA-graph capture would be a kernel that every
    replay runs again (PERF_NOTES §41). They are made on the eager sampling frame."""
    from deltaconvert.backends.cuda import pointwise
    from deltaconvert.backends.cuda.pointwise import LinearPointwise

    made = []
    shipped = pointwise.fp32_vector
    monkeypatch.setattr(pointwise, "fp32_vector", lambda t, device: made.append(
        torch.cuda.is_current_stream_capturing()) or shipped(t, device))
    frames = clip()
    set_dense_from(monkeypatch, 0.0)
    model = delta_model(Residual().to(DEVICE).eval(), frames[0], graph=True)
    with torch.no_grad():
        for x in frames[:2]:  # dense, sampling
            model(x)
        adds = [op.accelerated for op in model.delta_ops().values()
                if isinstance(op.accelerated, LinearPointwise) and op.accelerated.plan is not None]
        sums = [w._shifts for w in adds]
        for x in frames[2:5]:  # the capture, then replays
            model(x)
    assert adds and all(w.dense for w in adds)
    assert made and not any(made), "an fp32 bias was first copied inside the capture"
    assert all(w._shifts is before for w, before in zip(adds, sums)), \
        "a dense add's sum of biases was first made inside the capture"


def test_a_new_sequence_frees_the_last_ones_wrappers_without_a_collector_pass(poisoned,
                                                                              monkeypatch):
    """Every sequence binds new wrappers; the last sequence's conv and add wrappers, with
    their packed weights and parameter copies, go with their last reference instead of
    waiting for a garbage-collector pass, which a benchmark loop rarely makes (links from
    each add to its conv sources and back were a cycle: over six sequences of one resnet50
    the peak memory grew from 1.75 to 3.13 GB)."""
    from deltaconvert.backends.cuda.conv import ConvKernel
    from deltaconvert.backends.cuda.pointwise import LinearPointwise

    frames = clip()
    set_dense_from(monkeypatch, 0.0)
    model = delta_model(Residual().to(DEVICE).eval(), frames[0], graph=False)
    with torch.no_grad():
        for x in frames[:3]:  # dense, sampling, planned
            model(x)
    wrappers = [op.accelerated for op in model.delta_ops().values()
                if isinstance(op.accelerated, (ConvKernel, LinearPointwise))]
    assert any(getattr(w, "feeds", None) is not None for w in wrappers)
    last = [weakref.ref(w) for w in wrappers]
    del wrappers
    gc.collect()
    gc.disable()
    try:
        model.reset()
        with torch.no_grad():
            model(frames[3])  # binds the next sequence's wrappers
        alive = [type(ref()).__name__ for ref in last if ref() is not None]
    finally:
        gc.enable()
    assert not alive, f"kept by a reference cycle: {alive}"


@pytest.mark.parametrize("make", ["chain", "residual"])
def test_dense_layers_that_keep_no_accumulator_compute_the_same(poisoned, monkeypatch, make):
    """Dense layers never read their accumulators, so by default they do not write them
    (``KEEP_ACCUMULATORS``) and the plan restores them where the delta kernels take over.
    Against dense layers that write them: the same outputs bit for bit; after
    ``restore()`` the same state bit for bit; and switched back to the delta kernels,
    the same outputs again. Switching back without the restoration is refused, naming
    the layer."""
    from deltaconvert.backends.cuda import dense_layers

    frames = clip()
    net = Residual().to(DEVICE).eval() if make == "residual" else chain()
    set_dense_from(monkeypatch, 0.0)
    half = FRAMES // 2
    runs = {}
    for keep in (True, False):
        monkeypatch.setattr(dense_layers, "KEEP_ACCUMULATORS", keep)
        model = delta_model(net, frames[0], graph=False)
        outs = run(model, frames[:half])
        wrappers = [op.accelerated for op in model.delta_ops().values()
                    if getattr(op.accelerated, "dense", None)]
        assert wrappers
        wrappers[0].plan.restore()
        state = model_state(model)
        for w in wrappers:
            w.dense = False
        runs[keep] = outs + run(model, frames[half:]), state
    for t, (a, b) in enumerate(zip(runs[True][0], runs[False][0])):
        assert torch.equal(a, b), f"frame {t}"
    assert all(torch.equal(a, b) for a, b in zip(runs[True][1], runs[False][1]))

    model = delta_model(net, frames[0], graph=False)
    run(model, frames[:3])
    for op in model.delta_ops().values():
        if getattr(op.accelerated, "dense", None):
            op.accelerated.dense = False
    with pytest.raises(RuntimeError, match="stopped within a sequence"):
        run(model, frames[3:4])
