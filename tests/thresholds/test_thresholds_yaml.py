"""Threshold YAML files: round trips, application to converted models, and every
validation error (with file, line and closest names)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from deltaconvert import ConfigError, ThresholdConfig, load_thresholds
from deltaconvert.synthetic import synthetic_video
from deltaconvert.testing import converted_small_net


def write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


FULL = """\
format_version: 1
architecture: SmallNet
default: 0.01
input:
  threshold: 0.02
  dilation: 1
layers:
  stem.2: 0.05
  body.1: 1e-3
dense: [head]
metadata:
  budget: 0.02
  clip: synthetic
"""


def test_full_file_loads_with_every_field(tmp_path):
    config = ThresholdConfig.from_yaml(write(tmp_path, FULL))
    assert config == ThresholdConfig(default=0.01, input_threshold=0.02, input_dilation=1,
                                     layers={"stem.2": 0.05, "body.1": 0.001}, dense=["head"],
                                     architecture="SmallNet",
                                     metadata={"budget": 0.02, "clip": "synthetic"})


def test_yaml_round_trip_is_exact_and_stable(tmp_path):
    config = ThresholdConfig.from_yaml(write(tmp_path, FULL))
    config.layers["stem.2"] = 0.1 + 0.2  # a float without a short decimal form
    config.to_yaml(tmp_path / "a.yaml")
    again = ThresholdConfig.from_yaml(tmp_path / "a.yaml")
    assert again == config and again.layers["stem.2"] == 0.1 + 0.2
    again.to_yaml(tmp_path / "b.yaml")
    assert (tmp_path / "a.yaml").read_text() == (tmp_path / "b.yaml").read_text()
    assert list(again.to_dict()) == ["format_version", "architecture", "default", "input",
                                     "layers", "dense", "metadata"]


def test_convert_takes_a_yaml_path_and_applies_everything(tmp_path):
    model = converted_small_net(thresholds=str(write(tmp_path, FULL)))
    assert model.thresholds["stem.2"] == 0.05
    assert model.thresholds["body.1"] == 0.001
    assert model.thresholds["pool"] == 0.01  # the default
    (sparsify,) = model.input_sparsifiers().values()
    assert (sparsify.threshold, sparsify.dilation) == (0.02, 1)
    assert "head" in model.dense_islands and model.conversion["forced_dense"] == ["head"]


def test_edited_thresholds_save_back_and_reload(tmp_path):
    model = converted_small_net(thresholds=0.01)
    model.thresholds["pool"] = 0.25
    model.set_input_sparsify(threshold=0.03, dilation=2)
    config = ThresholdConfig.from_model(model, metadata={"note": "edited"})
    assert config.default == 0.01 and config.layers["pool"] == 0.25
    assert set(config.layers) == set(model.thresholds) - set(model.input_sparsifiers())
    config.to_yaml(tmp_path / "edited.yaml")
    reloaded = converted_small_net(thresholds=tmp_path / "edited.yaml")
    assert dict(reloaded.thresholds) == dict(model.thresholds)
    (sparsify,) = reloaded.input_sparsifiers().values()
    assert sparsify.dilation == 2
    assert ThresholdConfig.from_yaml(tmp_path / "edited.yaml").metadata == {"note": "edited"}


def test_thresholds_from_a_file_change_the_outputs(tmp_path):
    frames = synthetic_video(4, 24, 32)
    exact, truncated = converted_small_net(), converted_small_net(thresholds=write(tmp_path, FULL))
    outputs = [(exact(f), truncated(f)) for f in frames]
    assert not torch.equal(outputs[0][0], outputs[1][0])  # the model depends on its input
    assert all(torch.equal(a, b) for a, b in outputs[:1])  # frame 0 is dense: identical
    assert any(not torch.equal(a, b) for a, b in outputs[1:])


def test_load_thresholds_accepts_every_documented_spec(tmp_path):
    assert load_thresholds(None) == ThresholdConfig()
    assert load_thresholds(0.5).default == 0.5
    assert load_thresholds({"default": 0.1, "layers": {"a": 1}}).layers == {"a": 1.0}
    assert load_thresholds(write(tmp_path, FULL)).input_dilation == 1
    config = ThresholdConfig(default=0.2)
    assert load_thresholds(config) is config
    for bad in (True, [0.1], -1.0, float("nan")):
        with pytest.raises(ConfigError):
            load_thresholds(bad)


# -- errors -------------------------------------------------------------------------------
def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        ThresholdConfig.from_yaml(write(tmp_path, text))
    return str(caught.value)


def test_syntax_error_names_file_line_and_column(tmp_path):
    message = error_of(tmp_path, "default: 0.1\nlayers:\n  a: [1, 2\n  b: 3\n")
    assert f"{tmp_path / 't.yaml'}:4:" in message and "invalid YAML" in message


def test_unknown_top_level_key_names_line_and_closest_key(tmp_path):
    message = error_of(tmp_path, "default: 0.1\nlayer:\n  a: 0.1\n")
    assert message.startswith(f"{tmp_path / 't.yaml'}:2:")
    assert "unknown key 'layer'" in message and "Did you mean 'layers'?" in message


def test_unknown_input_key_names_its_line(tmp_path):
    message = error_of(tmp_path, "input:\n  threshold: 0.1\n  dilatation: 1\n")
    assert ":3:" in message and "'dilatation'" in message and "'dilation'" in message


@pytest.mark.parametrize("value, problem", [
    ("-0.5", "≥ 0"), (".nan", "finite"), (".inf", "finite"), ("abc", "must be a number"),
    ("true", "must be a number"), ("'0.1'", "must be a number"), ("", "must be a number"),
])
def test_bad_layer_values_name_layer_and_line(tmp_path, value, problem):
    message = error_of(tmp_path, f"default: 0.0\nlayers:\n  body.1: 0.1\n  stem.2: {value}\n")
    assert message.startswith(f"{tmp_path / 't.yaml'}:4:")
    assert "'stem.2'" in message and problem in message


@pytest.mark.parametrize("text, line, problem", [
    ("default: -1\n", 1, "≥ 0"),
    ("input:\n  threshold: .nan\n", 2, "finite"),
    ("input:\n  dilation: 1.5\n", 2, "integer"),
    ("input:\n  dilation: -1\n", 2, "integer"),
    ("format_version: 2\n", 1, "format_version 2 is not supported"),
    ("layers: [a, b]\n", 1, "must be a mapping"),
    ("dense: head\n", 1, "list of layer names"),
    ("dense: [head, 3]\n", 1, "layer names"),
    ("dense:\n- head\n- head\n", 3, "listed twice"),
    ("metadata: 3\n", 1, "must be a mapping"),
    ("architecture: [x]\n", 1, "must be a string"),
    ("layers:\n  a: 0.1\n  a: 0.2\n", 3, "duplicate key 'a' (first given on line 2)"),
])
def test_invalid_values_and_structure(tmp_path, text, line, problem):
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 't.yaml'}:{line}:") and problem in message


def test_top_level_must_be_a_mapping_and_missing_files_are_named(tmp_path):
    assert "expected a mapping" in error_of(tmp_path, "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="threshold file not found: .*nope.yaml"):
        ThresholdConfig.from_yaml(tmp_path / "nope.yaml")


def test_empty_file_is_the_default_configuration(tmp_path):
    assert ThresholdConfig.from_yaml(write(tmp_path, "# nothing\n")) == ThresholdConfig()


def test_unknown_layer_names_line_and_closest_layers(tmp_path):
    path = write(tmp_path, "default: 0.0\nlayers:\n  stem.2: 0.1\n  body.l: 0.1\n")
    with pytest.raises(ConfigError) as caught:
        converted_small_net(thresholds=path)
    message = str(caught.value)
    assert message.startswith(f"{path}:4:") and "unknown layer 'body.l'" in message
    assert "'body.1'" in message


def test_layer_entry_for_the_input_sparsify_is_rejected(tmp_path):
    model = converted_small_net()
    (name,) = model.input_sparsifiers()
    with pytest.raises(ConfigError, match="set input.threshold instead"):
        ThresholdConfig(layers={name: 0.1}).apply_to(model)


def test_forced_dense_errors(tmp_path):
    path = write(tmp_path, "dense: [body.0, haed]\n")
    with pytest.raises(ConfigError) as caught:
        converted_small_net(thresholds=path)
    assert str(caught.value).startswith(f"{path}:1:") and "'haed'" in str(caught.value)
    assert "Did you mean 'head'" in str(caught.value)
    model = converted_small_net()
    with pytest.raises(ConfigError, match="decided at conversion"):
        ThresholdConfig(dense=["head"]).apply_to(model)


def test_failed_apply_leaves_the_model_unchanged():
    model = converted_small_net(thresholds=0.1)
    before = dict(model.thresholds)
    with pytest.raises(ConfigError):
        ThresholdConfig(default=0.5, layers={"nope": 1.0}).apply_to(model)
    assert dict(model.thresholds) == before


def test_direct_construction_is_validated():
    with pytest.raises(ConfigError, match="'x'"):
        ThresholdConfig(layers={"x": -1})
    with pytest.raises(ConfigError, match="dilation"):
        ThresholdConfig(input_dilation=-2)
    assert math.isclose(ThresholdConfig(layers={"x": 1}).layers["x"], 1.0)


def test_unrepresentable_metadata_is_refused_and_nothing_is_written(tmp_path):
    config = ThresholdConfig(metadata={"clip": object()})
    with pytest.raises(ConfigError, match="metadata"):
        config.to_yaml(tmp_path / "out.yaml")
    assert list(tmp_path.iterdir()) == []
