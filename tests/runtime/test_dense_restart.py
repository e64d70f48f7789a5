"""The model's dense restart (``DeltaGraphModule._restart_frame``), on the reference
backend: the CUDA backend captures it as the branch a replay takes on a scene cut
(``backends/cuda/frame_skip.py``; its GPU tests are in ``test_frame_skip.py`` and
``tests/convert/test_architectures_cuda.py``).

* Its output is the original model's, every state buffer is rewritten in place (the
  same tensors: a captured graph keeps reading them), and the sequence then goes on
  exactly as one reset at that frame.
* With statistics on, the restart counts as every pixel updated and as one restart.
* Models with dense islands restart after them too, and held-out models restart in
  channels_last (as on CUDA) to the original model's outputs.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from deltaconvert.convert import convert
from deltaconvert.delta import tensor_leaves
from deltaconvert.ops.base import kept
from deltaconvert.synthetic import synthetic_video

from .test_frame_skip import Island, small_net


def converted(net: nn.Module, x: torch.Tensor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(net, x, backend="reference", thresholds=0.02)


def buffers(model) -> dict[str, list[torch.Tensor]]:
    return {name: [t for t in tensor_leaves(op.state) if isinstance(t, torch.Tensor)]
            for name, op in model.delta_ops().items()}


def test_a_restart_is_a_first_frame_written_into_the_same_buffers():
    video = synthetic_video(8, 21, 27, batch=2, seed=3)
    net = small_net(torch.device("cpu"))
    model = converted(net, video[0])
    for x in video[:3]:
        model(x)
    before = buffers(model)
    with torch.no_grad():
        out = model._restart_frame(video[3])
        torch.testing.assert_close(out, net(video[3]), rtol=1e-6, atol=1e-6)
    after = buffers(model)
    assert sum(len(v) for v in before.values()) > 0
    for name, tensors in before.items():
        assert [t.data_ptr() for t in after[name]] == [t.data_ptr() for t in tensors], name
    fresh = converted(net, video[0])
    fresh(video[3])  # a first frame at the restart
    for t, x in enumerate(video[4:]):
        assert torch.equal(model(x), fresh(x)), f"frame {t + 4} after the restart"


def test_a_restart_counts_every_pixel_and_one_restart():
    video = synthetic_video(4, 21, 27, batch=2, seed=3)
    model = converted(small_net(torch.device("cpu")), video[0])
    for x in video[:3]:
        model(x)
    assert model.stats()["dense_restarts"] == 0
    model._eager_restart(video[3])  # as before a capture: it notes the mask sizes
    stats = model.stats()
    assert stats["dense_restarts"] == 1
    assert stats["work_fraction_last"] == 1.0
    assert all(layer["updated_last"] == 1.0 for layer in stats["layers"].values()
               if "updated_last" in layer)


def test_kept_writes_in_place_only_into_a_matching_buffer():
    held = torch.zeros(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    value = torch.randn(2, 3, 4, 5, dtype=torch.float16)
    out = kept(held, value, torch.float32)
    assert out is held and torch.equal(out, value.float())
    assert out.is_contiguous(memory_format=torch.channels_last)
    fresh = kept(held, value, torch.float64)
    assert fresh is not held and fresh.dtype == torch.float64
    assert kept(None, value, torch.float32) is not value
    assert kept(held, value[:1], torch.float32) is not held



class IslandThenReLU(Island):
    """A truncating op (state that a restart must rewrite) after the re-entry Sparsify."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def test_a_restart_restarts_the_ops_after_a_dense_island_too():
    video = synthetic_video(6, 21, 27, batch=2, seed=3)
    net = IslandThenReLU().eval()
    model = converted(net, video[0])
    assert model.dense_islands
    for x in video[:3]:
        model(x)
    with torch.no_grad():
        torch.testing.assert_close(model._restart_frame(video[3]), net(video[3]), rtol=1e-6, atol=1e-6)
    fresh = converted(net, video[0])
    fresh(video[3])
    for t, x in enumerate(video[4:]):
        assert torch.equal(model(x), fresh(x)), f"frame {t + 4} after the restart"


def _held_out(source: str, name: str) -> nn.Module:
    if source == "torchvision":
        from deltaconvert.architectures import build_architecture
        return build_architecture(name)
    if source == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(name)
    ultralytics = pytest.importorskip("ultralytics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ultralytics.YOLO(name).model


@pytest.mark.parametrize("source,name", [("torchvision", "mobilenet_v3_small"),
                                         ("torchvision", "shufflenet_v2_x1_0"),
                                         ("timm", "skresnet18"), ("ultralytics", "yolov8n.yaml"),
                                         ("ultralytics", "yolo11n.yaml")])
def test_restarts_in_channels_last_match_the_original(source, name, monkeypatch):
    """On CUDA a restart's input is channels_last (see Sparsify); here, on the CPU, it is
    forced so, and models with channel shuffles, split attention, detection heads and
    dense islands (yolo11n's attention) restart to the original model's outputs."""
    from deltaconvert.architectures import calibrate_batch_norm
    from deltaconvert.metrics import relative_error
    from deltaconvert.ops.boundary import Sparsify

    dense = Sparsify.dense

    def channels_last(self, x):
        out = dense(self, x)
        return out.contiguous(memory_format=torch.channels_last) if self.restarting else out

    monkeypatch.setattr(Sparsify, "dense", channels_last)
    frames = synthetic_video(4, 64, 64, batch=1, seed=1)
    torch.manual_seed(0)
    net = calibrate_batch_norm(_held_out(source, name).eval(), frames[:2]).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert(net, frames[0], backend="reference")
    with torch.no_grad():
        model(frames[0]), model(frames[1])
        for x, out in ((frames[2], model._restart_frame(frames[2])), (frames[3], model(frames[3]))):
            got = list(tensor_leaves(out))
            want = list(tensor_leaves(net(x)))
            assert len(got) == len(want)
            assert max(relative_error(a, b) for a, b in zip(got, want)) < 1e-4
