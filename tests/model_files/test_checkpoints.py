"""torchvision architectures by name, checkpoint formats, mismatch reports and BatchNorm
calibration (deltaconvert.architectures)."""
from __future__ import annotations

import pytest
import torch
import torchvision

from deltaconvert import CheckpointError, UnknownArchitecture
from deltaconvert.architectures import (
    architecture_names,
    build_architecture,
    calibrate_batch_norm,
    model_from_checkpoint,
    read_checkpoint,
)
from deltaconvert.synthetic import synthetic_video

ARCH = "squeezenet1_1"


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return torchvision.models.get_model(ARCH, weights=None).state_dict()


def test_names_cover_classification_and_segmentation():
    names = architecture_names()
    assert {"resnet18", "mobilenet_v2", "lraspp_mobilenet_v3_large", "fcn_resnet50"} <= set(names)
    assert not [n for n in names if "rcnn" in n or "raft" in n]  # no detection / flow models


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(UnknownArchitecture, match="unknown architecture 'resnet181'.*resnet18"):
        build_architecture("resnet181")


@pytest.mark.parametrize("wrap", [
    lambda s: s,
    lambda s: {"state_dict": s, "epoch": 3},
    lambda s: {"model": {f"module.{k}": v for k, v in s.items()}, "optimizer": {}},
], ids=["state_dict", "training checkpoint", "DataParallel prefix"])
def test_checkpoint_formats(tmp_path, state, wrap):
    torch.save(wrap(state), tmp_path / "c.pth")
    model = model_from_checkpoint(ARCH, tmp_path / "c.pth")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not model.training


def test_whole_pickled_model(tmp_path):
    torch.manual_seed(1)
    whole = torchvision.models.get_model(ARCH, weights=None).eval()
    torch.save(whole, tmp_path / "whole.pth")
    assert isinstance(read_checkpoint(tmp_path / "whole.pth"), torch.nn.Module)
    model = model_from_checkpoint(ARCH, tmp_path / "whole.pth")
    frame = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(frame), whole(frame))


def test_segmentation_checkpoint_with_aux_head(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None,
                                                          aux_loss=True)
    torch.save(source.state_dict(), tmp_path / "fcn.pth")
    model = model_from_checkpoint("fcn_resnet50", tmp_path / "fcn.pth")
    assert model.aux_classifier is not None


def test_mismatches_are_listed(tmp_path, state):
    broken = dict(state)
    broken.pop("features.0.weight")
    broken["extra.weight"] = torch.zeros(1)
    broken["classifier.1.bias"] = torch.zeros(7)
    torch.save(broken, tmp_path / "c.pth")
    with pytest.raises(CheckpointError) as caught:
        model_from_checkpoint(ARCH, tmp_path / "c.pth")
    message = str(caught.value)
    assert "missing from the checkpoint (1): features.0.weight" in message
    assert f"not in {ARCH} (1): extra.weight" in message
    assert "classifier.1.bias (7,) vs (1000,)" in message and "--num-classes" in message


def test_num_classes(tmp_path):
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(ARCH, weights=None, num_classes=10).state_dict(),
               tmp_path / "c.pth")
    model = model_from_checkpoint(ARCH, tmp_path / "c.pth", num_classes=10)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("content, match", [
    (b"not a checkpoint", "is not a PyTorch checkpoint"),
    ({"epoch": 3, "lr": 0.1}, "holds a dict without a state dict: its keys are 'epoch', 'lr'"),
    ([1, 2, 3], "holds a list, not a state dict or model"),
])
def test_files_that_are_not_checkpoints(tmp_path, content, match):
    path = tmp_path / "c.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        read_checkpoint(tmp_path / "missing.pth")


def test_calibrated_batch_norm_makes_random_models_input_dependent():
    """Random-init DeepLabV3 with default BatchNorm statistics outputs (almost) the same
    map for every input; calibrated statistics make it depend on the input."""
    torch.manual_seed(0)
    model = build_architecture("deeplabv3_mobilenet_v3_large")
    frames = synthetic_video(3, 64, 64, seed=2)

    def spread(net):
        with torch.no_grad():
            outputs = [net(f)["out"] for f in frames]
        return float((outputs[0] - outputs[2]).norm() / outputs[0].norm())

    before = spread(model)
    calibrate_batch_norm(model, synthetic_video(4, 64, 64, seed=7))
    assert not model.training and all(not m.training for m in model.modules())
    after = spread(model)
    assert after > 1e-3 and after > 10 * before
