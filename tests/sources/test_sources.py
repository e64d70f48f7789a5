"""Sources, preprocessing, sinks and deltaconvert.stream() on small synthetic clips."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")  # decoding and encoding clips needs PyAV

import deltaconvert
from deltaconvert.errors import VideoError
from deltaconvert.sinks import FrameRows, HeatmapVideo, new_run_folder
from deltaconvert.sources import FrameReader, Preprocess, Source, expand_sources
from deltaconvert.testing import converted_small_net
from deltaconvert.video import to_model_input

FRAMES, HEIGHT, WIDTH = 7, 24, 32


def write_clip(path: Path, seed: int, frames: int = FRAMES) -> list[np.ndarray]:
    """A lossless clip (so decoded frames equal the written ones); returns the frames."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    images = [np.roll(base, t, axis=1) for t in range(frames)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "rgb24"
        stream.options = {"qp": "0"}
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return images


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    images = {name: write_clip(folder / f"{name}.mp4", seed) for seed, name in enumerate("abc")}
    (folder / "notes.txt").write_text("not a video")
    return folder, images


def test_specs_resolve_in_order_with_unique_names(clips):
    folder, _ = clips
    sources = expand_sources([str(folder), str(folder / "a*.mp4"), "0",
                              "rtsp://cam.local:554/live/1?user=x"])
    assert [s.name for s in sources] == ["a", "b", "c", "a_2", "webcam0", "cam.local:554_live_1"]
    assert sources[4].url in ("/dev/video0", "0") and sources[4].format in ("v4l2", "avfoundation")
    assert sources[5].url == "rtsp://cam.local:554/live/1?user=x"
    with pytest.raises(VideoError, match="video file not found: nope.mp4"):
        expand_sources(["nope.mp4"])
    with pytest.raises(VideoError, match="matches no file"):
        expand_sources([str(folder / "z*.mp4")])
    empty = folder / "empty"
    empty.mkdir(exist_ok=True)
    with pytest.raises(VideoError, match="holds no video file"):
        expand_sources([str(empty)])


@pytest.mark.parametrize("stride,start,end,want", [(1, 0, None, list(range(FRAMES))),
                                                   (2, 1, None, [1, 3, 5]), (3, 0, 5, [0, 3])])
def test_reader_keeps_the_asked_frames_exactly(clips, stride, start, end, want):
    folder, images = clips
    with FrameReader(Source("a", str(folder / "a.mp4")), stride, start, end, buffer=2) as reader:
        got = list(reader)
    assert [i for i, _ in got] == want
    for index, rgb in got:
        assert np.array_equal(rgb, images["a"][index])


def test_reader_stops_early_and_reports_bad_files(clips, tmp_path):
    folder, _ = clips
    reader = FrameReader(Source("a", str(folder / "a.mp4")), buffer=1)
    next(iter(reader))
    reader.close()
    assert not reader._thread.is_alive()
    (tmp_path / "junk.mp4").write_bytes(b"\x00junk" * 64)
    with pytest.raises(VideoError, match="cannot decode video file"):
        FrameReader(Source("junk", str(tmp_path / "junk.mp4")))


def test_preprocess_matches_the_cpu_normalisation_and_letterboxes():
    rgb = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    x = Preprocess()(rgb, torch.device("cpu"))
    torch.testing.assert_close(x, to_model_input(rgb), rtol=0, atol=1e-6)
    boxed = Preprocess(size=(32, 32), letterbox=True, mean=(0, 0, 0), std=(1, 1, 1))(
        rgb, torch.device("cpu"))
    assert boxed.shape == (1, 3, 32, 32)
    # 24×32 fits 32×32 as 24×32: 4 grey rows above and below.
    torch.testing.assert_close(boxed[..., :4, :], torch.full((1, 3, 4, 32), 114 / 255))
    torch.testing.assert_close(boxed[..., -4:, :], torch.full((1, 3, 4, 32), 114 / 255))
    model = converted_small_net()
    model.conversion["data_config"] = {"mean": [0.5] * 3, "std": [0.25] * 3,
                                       "input_size": [3, 16, 20]}
    chosen = Preprocess.for_model(model, size=(8, 8))
    assert chosen.mean == (0.5,) * 3 and chosen.std == (0.25,) * 3 and chosen.size == (8, 8)
    with pytest.raises(ValueError, match="letterbox needs a size"):
        Preprocess(letterbox=True)


def test_stream_yields_each_sources_frames_like_running_it_alone(clips):
    folder, images = clips
    model = converted_small_net(thresholds=0.01)
    results = list(deltaconvert.stream(model, [str(folder / "a.mp4"), str(folder / "b.mp4")],
                                       heatmap=True))
    assert [(r.stream, r.frame) for r in results] == [(s, t) for t in range(FRAMES) for s in "ab"]
    alone = converted_small_net(thresholds=0.01)
    single = [r for r in deltaconvert.stream(alone, str(folder / "b.mp4"))]
    for r in results:
        assert r.dense == (r.frame == 0)
        assert r.heat.shape == (HEIGHT, WIDTH) and 0 <= r.work_fraction <= 1
        assert np.array_equal(r.rgb, images[r.stream][r.frame])
    with torch.no_grad():
        first = converted_small_net()(Preprocess()(images["b"][0], torch.device("cpu")))
    torch.testing.assert_close(results[1].output, first, rtol=0, atol=1e-5)
    for r, s in zip([r for r in results if r.stream == "b"], single):
        torch.testing.assert_close(r.output, s.output, rtol=1e-6, atol=1e-6)


def test_run_folders_are_numbered_never_mixed(tmp_path):
    assert new_run_folder(tmp_path / "runs" / "predict") == tmp_path / "runs" / "predict"
    (tmp_path / "runs" / "predict" / "x").write_text("earlier run")
    assert new_run_folder(tmp_path / "runs" / "predict") == tmp_path / "runs" / "predict2"
    (tmp_path / "runs" / "predict2" / "x").write_text("earlier run")
    assert new_run_folder(tmp_path / "runs" / "predict") == tmp_path / "runs" / "predict3"


def test_rows_and_heatmap_video(tmp_path):
    rows = FrameRows(tmp_path)
    rows.write({"stream": "cam", "frame": 3, "dense": False}, torch.randn(1, 4, 5, 6))
    rows.close()
    row = json.loads((tmp_path / "frames.jsonl").read_text())
    assert row["output"] == "outputs/cam/000003.pt"
    assert torch.load(tmp_path / row["output"]).dtype == torch.uint8  # a map's argmax
    video = HeatmapVideo(tmp_path / "cam.mp4", fps=10)
    rgb = np.zeros((HEIGHT - 1, WIDTH - 1, 3), dtype=np.uint8)  # odd sizes are padded
    for t in range(3):
        video.write(rgb, torch.rand(6, 8), f"work {t}")
    assert not (tmp_path / "cam.mp4").exists()  # only the .partial file, until closed
    video.close()
    assert not (tmp_path / "cam.mp4.partial").exists()
    with av.open(str(tmp_path / "cam.mp4")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 3 and frames[0].height == HEIGHT + 24
