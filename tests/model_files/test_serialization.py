"""deltaconvert.save / deltaconvert.load: round trips, no sequence state, no need for the
original class, clear errors, and atomic writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
import zipfile

import pytest
import torch
import torchvision

import deltaconvert
from deltaconvert import ModelFileError
from deltaconvert.files import atomic_writer, write_text_atomic
from deltaconvert.serialization import HEADER_NAME, read_header
from deltaconvert.synthetic import synthetic_video
from deltaconvert.testing import SmallNet, converted_small_net


def run_frames(model, frames):
    return [model(frame) for frame in frames]


def assert_same_outputs(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_round_trip_reproduces_outputs_thresholds_and_metadata(tmp_path):
    model = converted_small_net(thresholds={"default": 0.05, "input": {"threshold": 0.02,
                                                                     "dilation": 1},
                                          "dense": ["head"]})
    model.thresholds["pool"] = 0.3
    deltaconvert.save(model, tmp_path / "m.delta.pt")
    loaded = deltaconvert.load(tmp_path / "m.delta.pt")
    assert isinstance(loaded, deltaconvert.DeltaGraphModule)
    assert type(loaded).__name__ == type(model).__name__
    assert dict(loaded.thresholds) == dict(model.thresholds)
    assert loaded.conversion == model.conversion and "head" in loaded.dense_islands
    assert [op.dilation for op in loaded.input_sparsifiers().values()] == [1]
    frames = synthetic_video(5, 24, 32)
    expected = run_frames(model, frames)
    assert not torch.equal(expected[0], expected[1])  # the model depends on its input
    assert_same_outputs(run_frames(loaded, frames), expected)


def test_torchvision_model_round_trip(tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = deltaconvert.convert(torchvision.models.squeezenet1_1(weights=None).eval(),
                                     torch.randn(1, 3, 48, 64), thresholds=0.02)
    deltaconvert.save(model, tmp_path / "s.delta.pt")
    loaded = deltaconvert.load(tmp_path / "s.delta.pt")
    frames = synthetic_video(4, 48, 64)
    assert_same_outputs(run_frames(loaded, frames), run_frames(model, frames))


def test_sequence_state_is_neither_saved_nor_disturbed(tmp_path):
    frames = synthetic_video(4, 24, 32)
    reference = run_frames(converted_small_net(thresholds=0.05), frames)
    model = converted_small_net(thresholds=0.05)
    run_frames(model, frames[:2])
    deltaconvert.save(model, tmp_path / "m.delta.pt")
    # the saved model continues its sequence as if nothing happened …
    assert_same_outputs(run_frames(model, frames[2:]), reference[2:])
    # … and the loaded one starts a new sequence: its first frame is dense
    loaded = deltaconvert.load(tmp_path / "m.delta.pt")
    assert all(not op._state or set(op._state) == {"stats"} for op in loaded.delta_ops().values())
    assert torch.equal(loaded(frames[2]), converted_small_net()(frames[2]))


def test_loaded_model_is_independent_of_the_original(tmp_path):
    model = converted_small_net()
    deltaconvert.save(model, tmp_path / "m.delta.pt")
    loaded = deltaconvert.load(tmp_path / "m.delta.pt")
    loaded.thresholds["pool"] = 0.5
    with torch.no_grad():
        next(loaded.parameters()).add_(1)
    assert model.thresholds["pool"] == 0.0
    assert not torch.equal(next(loaded.parameters()), next(model.parameters()))


class UnimportableNet(SmallNet):
    """Defined in this test module, which a fresh interpreter cannot import."""


def test_load_needs_no_original_class(tmp_path):
    torch.manual_seed(0)
    model = deltaconvert.convert(UnimportableNet().eval(), torch.randn(1, 3, 24, 32),
                                 thresholds=0.05)
    deltaconvert.save(model, tmp_path / "m.delta.pt")
    frame = synthetic_video(1, 24, 32)[0]
    torch.save(frame, tmp_path / "frame.pt")
    code = ("import sys, torch, deltaconvert; m = deltaconvert.load(sys.argv[1]); "
            "torch.save(m(torch.load(sys.argv[2])), sys.argv[3])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.delta.pt"),
                    str(tmp_path / "frame.pt"), str(tmp_path / "out.pt")], check=True, cwd=tmp_path)
    assert torch.equal(torch.load(tmp_path / "out.pt"), model(frame))


def test_header_is_plain_json_with_versions(tmp_path):
    model = converted_small_net(thresholds=0.1)
    deltaconvert.save(model, tmp_path / "m.delta.pt")
    header = read_header(tmp_path / "m.delta.pt")
    assert header["format"] == "deltaconvert-model" and header["format_version"] == 1
    assert header["deltaconvert_version"] == deltaconvert.__version__
    assert header["thresholds"]["default"] == 0.1
    with zipfile.ZipFile(tmp_path / "m.delta.pt") as archive:
        assert "def forward" in archive.read("forward.py").decode()


# -- errors -------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="model file not found: .*nope.delta.pt"):
        deltaconvert.load(tmp_path / "nope.delta.pt")


def test_not_a_deltaconvert_file(tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelFileError, match="is not a deltaconvert model file"):
        deltaconvert.load(tmp_path / "text.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "ckpt.pt")
    with pytest.raises(ModelFileError, match="torch.save checkpoint.*deltaconvert convert"):
        deltaconvert.load(tmp_path / "ckpt.pt")


def rewrite_header(path, **changes):
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    header = json.loads(entries[HEADER_NAME])
    header.update(changes)
    entries[HEADER_NAME] = json.dumps(header).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def test_version_mismatch_names_both_versions(tmp_path):
    path = tmp_path / "m.delta.pt"
    deltaconvert.save(converted_small_net(), path)
    rewrite_header(path, format_version=99, deltaconvert_version="9.0")
    with pytest.raises(ModelFileError, match=r"format version 99 .*deltaconvert 9\.0.*reads version 1"):
        deltaconvert.load(path)
    rewrite_header(path, format="something-else", format_version=1)
    with pytest.raises(ModelFileError, match="not a deltaconvert model file"):
        deltaconvert.load(path)


def test_save_rejects_models_that_are_not_converted(tmp_path):
    with pytest.raises(TypeError, match="converted model"):
        deltaconvert.save(torch.nn.Conv2d(1, 1, 1), tmp_path / "m.delta.pt")


# -- atomic writes --------------------------------------------------------------------------
def test_failed_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.delta.pt"
    deltaconvert.save(converted_small_net(), path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(zipfile.ZipFile, "writestr", fail)
    with pytest.raises(OSError, match="disk full"):
        deltaconvert.save(converted_small_net(thresholds=0.5), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.delta.pt"]


def test_atomic_writer(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_writer(tmp_path / "a.txt", "w") as handle:
            handle.write("partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    write_text_atomic(tmp_path / "a.txt", "done")
    assert (tmp_path / "a.txt").read_text() == "done"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_text_atomic(tmp_path / "missing" / "a.txt", "x")
