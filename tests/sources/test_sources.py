"""Sources, preprocessing, sinks and deltaconvert.stream() on small synthetic clips."""
from __future__ import annotations

import json
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")  # decoding and encoding clips needs PyAV

import deltaconvert
import deltaconvert.predict
from deltaconvert.errors import InvalidArgument, VideoError
from deltaconvert.sinks import DEFAULT_FPS, FrameRows, HeatmapVideo, new_run_folder
from deltaconvert.sources import FrameReader, Preprocess, Source, expand_sources
from deltaconvert.testing import converted_small_net, write_breaking_clip
from deltaconvert.video import to_model_input

FRAMES, HEIGHT, WIDTH = 7, 24, 32


def write_clip(path: Path, seed: int, frames: int = FRAMES,
               rate: int | Fraction = 10) -> list[np.ndarray]:
    """A lossless clip (so decoded frames equal the written ones) at ``rate`` frames per
    second; returns the frames."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    images = [np.roll(base, t, axis=1) for t in range(frames)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=rate)
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


def test_reader_reports_the_rate_of_kept_frames(clips, tmp_path):
    folder, _ = clips
    ntsc = Fraction(30000, 1001)
    write_clip(tmp_path / "ntsc.mp4", seed=9, frames=3, rate=ntsc)
    for path, stride, want in [(folder / "a.mp4", 1, 10), (folder / "a.mp4", 3, Fraction(10, 3)),
                               (tmp_path / "ntsc.mp4", 2, ntsc / 2)]:
        with FrameReader(Source(path.stem, str(path)), stride) as reader:
            assert reader.fps == want, (path.name, stride)


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
    for name in "ab":  # each stream in its own order (streams advance independently)
        assert [r.frame for r in results if r.stream == name] == list(range(FRAMES))
    assert len(results) == 2 * FRAMES
    alone = converted_small_net(thresholds=0.01)
    single = [r for r in deltaconvert.stream(alone, str(folder / "b.mp4"))]
    for r in results:
        assert r.dense == (r.frame == 0) and r.fps == 10
        assert r.heat.shape == (HEIGHT, WIDTH) and 0 <= r.work_fraction <= 1
        assert np.array_equal(r.rgb, images[r.stream][r.frame])
    with torch.no_grad():
        first = converted_small_net()(Preprocess()(images["b"][0], torch.device("cpu")))
    b_first = next(r for r in results if r.stream == "b")
    torch.testing.assert_close(b_first.output, first, rtol=0, atol=1e-5)
    for r, s in zip([r for r in results if r.stream == "b"], single):
        torch.testing.assert_close(r.output, s.output, rtol=1e-6, atol=1e-6)


def test_sources_of_different_lengths_and_rates_do_not_hold_each_other_back(
        clips, tmp_path, monkeypatch):
    """'slow' (3 frames) delivers frame 0 at once and its later frames only after the
    consumer has every frame of 'fast' (7 frames): 'fast' must not wait for it, 'slow'
    must continue from its state (delta frames) after its pause, and each stream's
    outputs must equal running it alone."""
    folder, _ = clips
    write_clip(tmp_path / "slow.mp4", seed=7, frames=3, rate=5)
    write_clip(tmp_path / "fast.mp4", seed=8, frames=FRAMES, rate=20)
    gate = threading.Event()

    class HeldReader(FrameReader):
        def _put(self, item):
            if self.source.name == "slow" and isinstance(item, tuple) and item[0] > 0:
                if not gate.wait(timeout=5):  # lockstep would wait here: give up once
                    gate.set()
            return super()._put(item)

    monkeypatch.setattr(deltaconvert.predict, "FrameReader", HeldReader)
    results = []
    for r in deltaconvert.stream(converted_small_net(thresholds=0.01),
                                 [str(tmp_path / "slow.mp4"), str(tmp_path / "fast.mp4")]):
        results.append(r)
        if sum(x.stream == "fast" for x in results) == FRAMES:
            gate.set()
    order = [(r.stream, r.frame) for r in results]
    assert order.index(("fast", FRAMES - 1)) < order.index(("slow", 1)), order
    assert sorted(order) == sorted([("fast", t) for t in range(FRAMES)]
                                   + [("slow", t) for t in range(3)])
    monkeypatch.undo()
    for name, rate in (("slow", 5), ("fast", 20)):
        alone = list(deltaconvert.stream(converted_small_net(thresholds=0.01),
                                         str(tmp_path / f"{name}.mp4")))
        mine = [r for r in results if r.stream == name]
        assert [r.dense for r in mine] == [t == 0 for t in range(len(mine))]
        assert all(r.fps == rate for r in mine)
        for r, a in zip(mine, alone, strict=True):
            torch.testing.assert_close(r.output, a.output, rtol=1e-6, atol=1e-6)


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
        assert container.streams.video[0].average_rate == 10
        frames = list(container.decode(video=0))
    assert len(frames) == 3 and frames[0].height == HEIGHT + 24


@pytest.mark.parametrize("fps,want", [(Fraction(30000, 1001) / 3, Fraction(10000, 1001)),
                                      (12.5, Fraction(25, 2)), (None, DEFAULT_FPS)])
def test_heatmap_video_plays_at_the_given_rate(tmp_path, fps, want):
    video = HeatmapVideo(tmp_path / "cam.mp4", fps=fps)
    for t in range(2):
        video.write(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8), torch.rand(6, 8), f"{t}")
    video.close()
    with av.open(str(tmp_path / "cam.mp4")) as container:
        assert container.streams.video[0].average_rate == want


def test_heatmap_video_refuses_a_rate_that_is_not_positive(tmp_path):
    for fps in (0, -5, float("nan")):
        with pytest.raises(InvalidArgument, match="fps of cam.mp4 must be a finite number > 0"):
            HeatmapVideo(tmp_path / "cam.mp4", fps=fps)


def test_a_failing_source_raises_or_ends_alone(clips, tmp_path):
    """Without on_error a decoding error stops the generator; with it, only the failing
    stream ends (its slot released, the handler told once) and the other stream runs to
    its end with the outputs it has when run alone."""
    folder, _ = clips
    write_breaking_clip(tmp_path / "broken.mp4", (HEIGHT, WIDTH), seed=3)
    sources = [str(tmp_path / "broken.mp4"), str(folder / "a.mp4")]
    with pytest.raises(VideoError, match="broken.mp4"):
        list(deltaconvert.stream(converted_small_net(thresholds=0.01), sources))
    failures = []
    results = list(deltaconvert.stream(converted_small_net(thresholds=0.01), sources,
                                       on_error=lambda name, error: failures.append((name, error))))
    assert [name for name, _ in failures] == ["broken"]
    assert isinstance(failures[0][1], VideoError)
    broken = [r.frame for r in results if r.stream == "broken"]
    assert broken and broken == list(range(len(broken))) and len(broken) <= 8  # intact ones
    alone = list(deltaconvert.stream(converted_small_net(thresholds=0.01), str(folder / "a.mp4")))
    mine = [r for r in results if r.stream == "a"]
    assert [r.frame for r in mine] == list(range(FRAMES))
    for r, a in zip(mine, alone, strict=True):
        torch.testing.assert_close(r.output, a.output, rtol=1e-6, atol=1e-6)
