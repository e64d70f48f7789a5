"""The converter: what the graph looks like after conversion, and its errors."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.feature_extraction import get_graph_node_names

import deltaconvert
from deltaconvert.metrics import relative_error
from deltaconvert.ops.base import DeltaOp
from deltaconvert.ops.boundary import Densify, Sparsify
from deltaconvert.ops.conv import ChannelScale, Conv2d
from deltaconvert.synthetic import synthetic_video


def _ops_of(model, cls):
    return {name: op for name, op in model.delta_ops().items() if isinstance(op, cls)}


def _frames(n=4, h=33, w=41, batch=1):
    return synthetic_video(n, h, w, batch=batch, seed=3)


def _assert_matches(model, delta, frames, tolerance=1e-5):
    for t, frame in enumerate(frames):
        with torch.no_grad():
            expected = model(frame)
        assert relative_error(delta(frame), expected) <= tolerance, f"frame {t}"


# -- structure ---------------------------------------------------------------------------------
def test_batch_norm_folded_where_possible_and_a_scale_elsewhere():
    resnet = torchvision.models.resnet18().eval()
    delta = deltaconvert.convert(resnet, torch.randn(1, 3, 64, 64))
    assert not _ops_of(delta, ChannelScale)
    assert len(_ops_of(delta, Conv2d)) == 20

    densenet = torchvision.models.densenet121().eval()
    delta = deltaconvert.convert(densenet, torch.randn(1, 3, 64, 64))
    scales = _ops_of(delta, ChannelScale)
    # DenseNet's pre-activation BNs follow a concat, not a conv: they stay as scales;
    # only features.norm0 (after conv0) is folded.
    assert "features.norm0" not in scales
    assert "features.denseblock1.denselayer1.norm1" in scales


def test_one_sparsify_per_input_and_one_densify_per_output():
    class TwoInTwoOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x, y):
            s = F.relu(self.a(x)) + self.b(y)
            return {"sum": s, "pair": (s.mean(dim=1, keepdim=True), F.relu(s))}

    model = TwoInTwoOut().eval()
    x, y = torch.randn(2, 3, 9, 10), torch.randn(2, 3, 9, 10)
    delta = deltaconvert.convert(model, (x, y))
    sparsifiers = _ops_of(delta, Sparsify)
    assert sorted(sparsifiers) == ["x_sparsify", "y_sparsify"]
    assert len(_ops_of(delta, Densify)) == 3
    for step in range(3):
        x2, y2 = x + 0.1 * step * torch.randn_like(x), y.clone()
        with torch.no_grad():
            expected = model(x2, y2)
        actual = delta(x2, y2)
        assert relative_error(actual["sum"], expected["sum"]) < 1e-5
        for a, e in zip(actual["pair"], expected["pair"]):
            assert relative_error(a, e) < 1e-5


def test_stable_names_follow_torchvision():
    model = torchvision.models.resnet18().eval()
    delta = deltaconvert.convert(model, torch.randn(1, 3, 64, 64))
    _, torchvision_names = get_graph_node_names(model)
    ops = [n for n, op in delta.delta_ops().items() if not isinstance(op, (Sparsify, Densify))]
    assert set(ops) <= set(torchvision_names)
    assert {"layer1.0.relu", "layer1.0.relu_1", "layer1.0.add", "fc"} <= set(ops)
    # one op per call site: the BasicBlock's shared ReLU became two ops with their own state
    assert delta.get_submodule("layer1.0.relu") is not delta.get_submodule("layer1.0.relu_1")


def test_caller_model_is_not_modified():
    model = torchvision.models.mobilenet_v3_small().train()
    model.features[1].block[0][1].running_mean.normal_()
    before = copy.deepcopy(model.state_dict())
    modules_before = [type(m) for m in model.modules()]
    inplace_before = [getattr(m, "inplace", None) for m in model.modules()]
    delta = deltaconvert.convert(model, torch.randn(1, 3, 64, 64))
    delta(torch.randn(1, 3, 64, 64))
    assert model.training
    assert [type(m) for m in model.modules()] == modules_before
    assert [getattr(m, "inplace", None) for m in model.modules()] == inplace_before
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p is q for p in model.parameters() for q in delta.parameters())


def test_inplace_ops_keep_their_data_flow():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.conv(x)
            z = y * 2
            y.add_(1.0)          # mutates y: later uses of y see the sum
            return self.act(y) + z + y

    model = InPlace().eval()
    delta = deltaconvert.convert(model, torch.randn(1, 3, 8, 8))
    _assert_matches(model, delta, _frames(4, 8, 8))


def test_dense_island_is_named_in_the_warning_and_still_exact():
    class WithGroupNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.GroupNorm(2, 8)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(F.relu(self.norm(self.conv(x))))

    model = WithGroupNorm().eval()
    with pytest.warns(deltaconvert.DenseFallbackWarning, match=r"norm: GroupNorm") as record:
        delta = deltaconvert.convert(model, torch.randn(1, 3, 16, 16))
    assert len([w for w in record if issubclass(w.category, deltaconvert.DenseFallbackWarning)]) == 1
    assert list(delta.dense_islands) == ["norm"]
    assert "norm_sparsify" in delta.delta_ops() and "conv_densify" in delta.delta_ops()
    _assert_matches(model, delta, _frames(5, 16, 16))


def test_untraceable_model_names_module_line_and_fix():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.gate = DataDependent()

        def forward(self, x):
            return self.gate(self.conv(x))

    with pytest.raises(deltaconvert.TraceFailure) as info:
        deltaconvert.convert(Net(), torch.randn(1, 3, 8, 8))
    message = str(info.value)
    assert "module 'gate' (DataDependent)" in message
    assert "test_converter.py" in message and "if x.sum() > 0" in message
    assert "register_leaf_module(DataDependent)" in message

    # the suggested fix works: the module becomes a dense island
    deltaconvert.register_leaf_module(DataDependent)
    model = Net().eval()
    with pytest.warns(deltaconvert.DenseFallbackWarning, match="gate"):
        delta = deltaconvert.convert(model, torch.randn(1, 3, 8, 8))
    _assert_matches(model, delta, _frames(3, 8, 8))


@pytest.mark.parametrize("change,message", [
    (lambda x: torch.cat([x, x]), "batch size 1 → 2"),
    (lambda x: x[..., :-1], r"shape \(3, 33, 41\) → \(3, 33, 40\)"),
    (lambda x: x.double(), "dtype torch.float32 → torch.float64"),
    (lambda x: x.to("meta"), "device cpu → meta"),
])
def test_sequence_changes_are_errors_until_reset(change, message):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    frames = _frames(2)
    delta = deltaconvert.convert(model, frames[0])
    delta(frames[0])
    (input_name,) = delta.input_sparsifiers()
    with pytest.raises(deltaconvert.SequenceMismatch, match=message) as info:
        delta(change(frames[1]))
    assert input_name in str(info.value) and "reset()" in str(info.value)
    delta.reset()
    new = change(frames[1])
    if new.device.type == "cpu" and new.dtype == torch.float32:
        with torch.no_grad():
            assert relative_error(delta(new), model(new)) < 1e-6


def test_any_memory_format_is_accepted():
    model = torchvision.models.resnet18().eval()
    frames = [f.to(memory_format=torch.channels_last) if i % 2 else f
              for i, f in enumerate(_frames(4, 40, 48))]
    delta = deltaconvert.convert(model, frames[0])
    _assert_matches(model, delta, frames)


def test_functional_forms_become_modules_with_delta_forms():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)

        def forward(self, x):
            y = F.max_pool2d(torch.relu(self.conv(x)), 2, ceil_mode=True)
            y = F.adaptive_avg_pool2d(torch.sigmoid(y), (3, 4)) + y.mean([2, 3], keepdim=True)
            return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False).relu()

    model = Functional().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", deltaconvert.DenseFallbackWarning)
        delta = deltaconvert.convert(model, torch.randn(2, 3, 15, 17))
    _assert_matches(model, delta, _frames(4, 15, 17, batch=2))


def test_thresholds_by_name_with_validation():
    model = torchvision.models.resnet18().eval()
    delta = deltaconvert.convert(model, torch.randn(1, 3, 64, 64))
    names = list(delta.thresholds)
    assert "x_sparsify" in names and "layer1.0.relu_1" in names and "maxpool" in names
    assert "layer1.0.conv1" not in names  # linear ops do not truncate
    delta.thresholds["layer1.0.relu_1"] = 0.25
    assert delta.thresholds["layer1.0.relu_1"] == 0.25
    assert delta.get_submodule("layer1.0.relu_1").threshold == 0.25
    with pytest.raises(KeyError, match="Did you mean 'layer1.0.relu'"):
        delta.thresholds["layer1.0.rleu"] = 0.1
    for bad in (-0.1, float("nan"), "0.1", True):
        with pytest.raises(deltaconvert.ConfigError):
            delta.thresholds["layer1.0.relu"] = bad


def test_thresholds_belong_to_the_model_instance():
    model = torchvision.models.resnet18().eval()
    first = deltaconvert.convert(model, torch.randn(1, 3, 32, 32), thresholds=0.3)
    second = deltaconvert.convert(model, torch.randn(1, 3, 32, 32))
    layers = [name for name in first.thresholds if name != "x_sparsify"]
    assert {first.thresholds[name] for name in layers} == {0.3}
    assert set(second.thresholds.values()) == {0.0}


def test_stats_report_update_fractions_and_work():
    model = torchvision.models.resnet18().eval()
    frames = _frames(3, 64, 64)
    still = [frames[0], frames[0].clone()]
    delta = deltaconvert.convert(model, frames[0])
    for f in still:
        delta(f)
    stats = delta.stats()
    assert stats["delta_frames"] == 1
    assert stats["work_fraction_last"] == 0.0
    assert stats["layers"]["layer1.0.conv1"]["dense_macs"] == 64 * 64 * 9 * 16 * 16
    moved = frames[0].clone()
    moved[..., 10:20, 10:20] += 1.0
    delta(moved)
    stats = delta.stats()
    assert 0.0 < stats["layers"]["x_sparsify"]["updated_last"] < 0.05
    assert 0.0 < stats["work_fraction_last"] < 1.0
    assert stats["work_fraction_mean"] == pytest.approx(stats["work_fraction_last"] / 2)


def test_moving_the_model_resets_the_sequence():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    frames = _frames(3)
    delta = deltaconvert.convert(model, frames[0])
    delta(frames[0])
    delta.double()
    with torch.no_grad():
        out = delta(frames[1].double())
        assert relative_error(out, model.double()(frames[1].double())) < 1e-12


def test_default_example_input_is_a_224_image():
    model = torchvision.models.mobilenet_v3_small().eval()
    delta = deltaconvert.convert(model)
    _assert_matches(model, delta, _frames(3, 50, 70))


def test_registering_a_new_delta_op():
    class Scale3(nn.Module):
        def forward(self, x):
            return x * 3

    deltaconvert.register_leaf_module(Scale3)

    @deltaconvert.register_delta_op(Scale3)
    def _scale3(site):
        from deltaconvert.ops.footprint import Footprint
        from deltaconvert.ops.linear import LinearCall
        return LinearCall(site.fn, Footprint.POINTWISE)

    model = nn.Sequential(nn.Conv2d(3, 3, 3), Scale3(), nn.ReLU()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", deltaconvert.DenseFallbackWarning)
        delta = deltaconvert.convert(model, torch.randn(1, 3, 10, 10))
    assert isinstance(delta.get_submodule("1"), DeltaOp)
    _assert_matches(model, delta, _frames(3, 10, 10))


def test_deep_copy_is_an_independent_model_with_a_new_sequence():
    model = torchvision.models.resnet18().eval()
    frames = _frames(3, 32, 32)
    delta = deltaconvert.convert(model, frames[0], thresholds=0.1, architecture="resnet18")
    delta(frames[0])
    clone = copy.deepcopy(delta)
    assert isinstance(clone, deltaconvert.DeltaGraphModule)
    assert clone.conversion == delta.conversion and dict(clone.thresholds) == dict(delta.thresholds)
    clone.thresholds["layer1.0.relu"] = 0.5
    assert delta.thresholds["layer1.0.relu"] == 0.1
    with torch.no_grad():  # the clone starts with a dense frame: exact
        assert relative_error(clone(frames[1]), model(frames[1])) < 1e-5
