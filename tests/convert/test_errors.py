"""Errors users can act on, raised before any work: each public entry point checks its
arguments and raises a DeltaConvertError subclass that says what was given, what was
expected and the fix; failures inside the converter never surface as raw internal
errors; commands that write files check the output path first."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

import deltaconvert
from deltaconvert.errors import ConversionError, InvalidArgument, UnknownLayer
from deltaconvert.testing import SmallNet, converted_small_net


@pytest.mark.parametrize("model,text", [
    ("resnet18", r"got str 'resnet18'.*build_architecture\('resnet18'\)"),
    (None, "expected a torch.nn.Module .*got None"),
    (torch.randn(1, 3, 8, 8), r"got Tensor of shape \(1, 3, 8, 8\)"),
])
def test_convert_rejects_what_is_not_a_model(model, text):
    with pytest.raises(InvalidArgument, match=text):
        deltaconvert.convert(model)


@pytest.mark.parametrize("kwargs,text", [
    ({"example_input": "frame.png"}, r"example_input=.*expected a tensor or a tuple of tensors"),
    ({"example_input": (torch.randn(1, 3, 8, 8), 3)}, "example_input"),
    ({"backend": "cdua"}, "backend=.*expected one of auto, reference, cuda, got str 'cdua'"),
    ({"cuda_graph": "yes"}, "cuda_graph=.*expected True or False"),
    ({"architecture": 18}, "architecture=.*expected a name"),
])
def test_convert_checks_its_arguments_first(kwargs, text):
    kwargs.setdefault("example_input", torch.randn(1, 3, 8, 8))
    with pytest.raises(InvalidArgument, match=text):
        deltaconvert.convert(SmallNet(), **kwargs)


def test_an_example_that_does_not_fit_is_a_conversion_error():
    with pytest.raises(ConversionError, match=r"(?s)expected input.*4 channels.*example_input="):
        deltaconvert.convert(SmallNet(), torch.randn(1, 4, 8, 8))


class ReadsItsOwnWeight(nn.Module):
    """A module both called and read from (``self.proj.weight.dtype``), as timm's
    edgenext positional encoding: once an internal name clash at installation."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.relu(self.proj(x.to(self.proj.weight.dtype)))


def test_a_module_called_and_read_from_converts():
    model = ReadsItsOwnWeight().eval()
    x = torch.randn(2, 3, 8, 8)
    delta = deltaconvert.convert(model, x)
    for t in range(3):
        torch.testing.assert_close(delta(x + 0.1 * t), model(x + 0.1 * t))


class ReducedIsland(nn.Module):
    """InstanceNorm2d (a dense island) whose max and std feed the delta region."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.norm(self.conv(x))
        return self.head(y) * y.max() + y.std()


def test_a_reduced_value_from_a_dense_island_runs_dense_and_is_named():
    model = ReducedIsland().eval()
    x = torch.randn(2, 3, 12, 12)
    with pytest.warns(deltaconvert.DenseFallbackWarning):
        delta = deltaconvert.convert(model, x)
    assert "reads max, a value of shape ()" in delta.dense_islands["mul"]
    assert "reads std" in delta.dense_islands["add"]
    with torch.no_grad():
        for t in range(3):
            torch.testing.assert_close(delta(x + 0.1 * t), model(x + 0.1 * t))


@pytest.mark.parametrize("frame,text", [
    ("frame.png", r"expected a torch.Tensor \(N, 3, H, W\), got str"),
    (np.zeros((1, 3, 24, 32), np.float32), "got ndarray .*torch.as_tensor"),
    (torch.randn(3, 24, 32), r"got shape \(3, 24, 32\); add the batch dim"),
    (torch.zeros(1, 3, 24, 32, dtype=torch.int64), "floating-point.*frame.float()"),
    (torch.randn(1, 4, 24, 32), r"expected 3 channels"),
])
def test_the_model_call_checks_frames(frame, text):
    delta = converted_small_net()
    with pytest.raises(InvalidArgument, match=text):
        delta(frame)


def test_threshold_mapping_errors():
    delta = converted_small_net()
    with pytest.raises(UnknownLayer, match="Did you mean 'stem.2'"):
        delta.thresholds["stem.2x"] = 0.1
    with pytest.raises(KeyError):  # still a mapping's error
        delta.thresholds["nope"]
    with pytest.raises(deltaconvert.ConfigError, match="must be finite and ≥ 0"):
        delta.thresholds["stem.2"] = -1


def test_save_checks_model_and_path_first(tmp_path):
    with pytest.raises(InvalidArgument, match="expects a converted model.*convert it first"):
        deltaconvert.save(SmallNet(), tmp_path / "x.delta.pt")
    delta = converted_small_net()
    with pytest.raises(InvalidArgument, match="directory .*missing does not exist"):
        deltaconvert.save(delta, tmp_path / "missing" / "x.delta.pt")
    with pytest.raises(InvalidArgument, match="is a directory"):
        deltaconvert.save(delta, tmp_path)
    with pytest.raises(InvalidArgument, match="expected a file path"):
        deltaconvert.save(delta, 42)
    assert list(tmp_path.iterdir()) == []


def test_load_checks_its_arguments(tmp_path):
    with pytest.raises(InvalidArgument, match="expected the path of a model file"):
        deltaconvert.load(None)
    path = tmp_path / "m.delta.pt"
    deltaconvert.save(converted_small_net(), path)
    with pytest.raises(InvalidArgument, match="device=.*'cdua'"):
        deltaconvert.load(path, device="cdua")
    with pytest.raises(deltaconvert.ModelFileError, match="not found"):
        deltaconvert.load(tmp_path / "none.delta.pt")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "deltaconvert.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_checks_output_paths_before_any_work(tmp_path):
    model = tmp_path / "m.delta.pt"
    deltaconvert.save(converted_small_net(), model)
    start = time.perf_counter()
    result = _cli("tune", str(model), str(tmp_path / "missing.mp4"), "-o",
                  str(tmp_path / "nodir" / "x.yaml"))
    assert result.returncode != 0
    assert "-o " in result.stderr and "nodir does not exist" in result.stderr
    assert ".tmp" not in result.stderr
    assert time.perf_counter() - start < 60
    result = _cli("convert", "squeezenet1_1", "--random-init", "-o", str(tmp_path))
    assert result.returncode != 0 and "is a directory" in result.stderr
    result = _cli("run", str(model), str(tmp_path / "missing.mp4"), "-o", str(model))
    assert result.returncode != 0 and "exists and is not a directory" in result.stderr


def test_atomic_write_errors_name_the_destination_not_the_temporary_file(tmp_path, monkeypatch):
    import tempfile

    from deltaconvert.files import write_text_atomic

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted", str(tmp_path / ".x.yaml.ab12.tmp"))
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(PermissionError) as error:
        write_text_atomic(tmp_path / "x.yaml", "a: 1\n")
    assert str(error.value) == f"cannot write {tmp_path / 'x.yaml'}: Operation not permitted"


class NamesLikeTheModel(nn.Module):
    """Submodules and top-level calls named like attributes of the converted model."""

    def __init__(self):
        super().__init__()
        self.backend = nn.Conv2d(3, 4, 1)
        self.stats = nn.ReLU()

    def forward(self, x):
        return self.stats(self.backend(x.float()))


def test_names_taken_by_the_converted_model_get_an_underscore():
    model = NamesLikeTheModel().eval()
    x = torch.randn(1, 3, 8, 8)
    delta = deltaconvert.convert(model, x)
    assert {"backend_", "stats_", "float_"} <= set(delta.delta_ops())
    assert delta.backend == "auto" and callable(delta.stats)
    torch.testing.assert_close(delta(x), model(x))
