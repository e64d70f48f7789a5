"""The deltaconvert command line, through subprocesses: every command, and every error
path with its message, exit status and no half-written output."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torchvision

from deltaconvert import ThresholdConfig
from deltaconvert.synthetic import synthetic_video
from deltaconvert.video import to_rgb_image

ARCH = "squeezenet1_1"  # the fastest torchvision model to convert
SIZE = "48x64"
FRAMES = 8
COMMANDS = ("convert", "run", "tune", "bench", "serve", "info", "demo")


# Tiny inputs run fastest on one thread, and CI machines are small.
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deltaconvert.cli", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=600, env=ENVIRONMENT)


def write_clip(path: Path, frames: int = FRAMES, rate: int = 10) -> None:
    """A short H.264 clip of the synthetic static-camera video at ``rate`` frames/s."""
    import av
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "10"}
        for frame in synthetic_video(frames, 48, 64, seed=5):
            image = to_rgb_image(frame[0]).permute(1, 2, 0).numpy()
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A directory with a checkpoint, a clip, junk files, and a converted model."""
    directory = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(ARCH, weights=None).state_dict(), directory / "ckpt.pth")
    write_clip(directory / "clip.mp4")
    (directory / "junk.bin").write_bytes(b"\x00junk" * 64)
    result = cli("convert", ARCH, "--checkpoint", "ckpt.pth", "--input-size", SIZE,
                 "-o", "model.delta.pt", cwd=directory)
    assert result.returncode == 0, result.stderr
    assert f"converted {ARCH}" in result.stdout
    return directory


@pytest.fixture(scope="module")
def tuned(work) -> Path:
    result = cli("tune", "model.delta.pt", "clip.mp4", "--budget", "0.05", "--frames", "4",
                 "-o", "tuned.yaml", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "tuned" in result.stdout and "wrote tuned.yaml" in result.stdout
    assert "tuning" in result.stderr  # the progress bar
    return work / "tuned.yaml"


# -- commands -------------------------------------------------------------------------------
def test_help_lists_every_command(tmp_path):
    result = cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in COMMANDS:
        assert f"    {command} " in result.stdout


def test_console_script_is_installed(tmp_path):
    script = shutil.which("deltaconvert")
    if script is None:
        pytest.skip("deltaconvert is not installed as a console script here")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, cwd=tmp_path,
                            env=ENVIRONMENT)
    assert result.returncode == 0 and "convert" in result.stdout


def test_info_shows_layers_thresholds_islands_and_memory(work):
    result = cli("info", "model.delta.pt", cwd=work)
    assert result.returncode == 0, result.stderr
    for text in (f"architecture  {ARCH}", "weights       ckpt.pth", "dense islands 0",
                 "buffers", "MiB of sequence state at 1x3x48x64", "x_sparsify", "threshold"):
        assert text in result.stdout


def test_info_reports_state_per_stream_at_a_size_and_batch(work):
    def state(*args: str) -> tuple[str, float, float]:
        """(shape, MiB in all, MiB per stream) of the buffers line."""
        result = cli("info", "model.delta.pt", *args, cwd=work)
        assert result.returncode == 0, result.stderr
        found = re.search(r"^buffers +([\d.]+) MiB of sequence state at (\S+) \(([\d.]+) MiB per stream\)$",
                          result.stdout, re.MULTILINE)
        assert found, result.stdout
        return found[2], float(found[1]), float(found[3])
    shape, total, per_stream = state("--input-size", "96x128")
    assert shape == "1x3x96x128" and total == per_stream
    shape, total3, per_stream3 = state("--input-size", "96x128", "--batch", "3")
    assert shape == "3x3x96x128" and per_stream3 == pytest.approx(per_stream, abs=0.01)
    assert total3 == pytest.approx(3 * total, abs=0.02)
    assert state()[2] < per_stream  # the conversion size, 48x64



def test_output_into_a_closed_pipe_ends_quietly(work):
    """`deltaconvert info m | head`: the reader is gone before anything is written."""
    proc = subprocess.Popen([sys.executable, "-m", "deltaconvert.cli", "info", "model.delta.pt"],
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENVIRONMENT)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 1
    assert stderr == ""


def test_convert_with_random_weights(work):
    result = cli("convert", ARCH, "--random-init", "--input-size", SIZE, "-o", "random.delta.pt",
                 cwd=work)
    assert result.returncode == 0, result.stderr
    assert "weights       random init" in cli("info", "random.delta.pt", cwd=work).stdout


def test_tune_writes_a_valid_config_within_budget(tuned):
    config = ThresholdConfig.from_yaml(tuned)
    meta = config.metadata
    assert meta["budget"] == 0.05 and meta["clip"] == "clip.mp4, first 4 frames"
    assert 0 < meta["error"] <= 0.05 and meta["resolution"] == [48, 64]
    assert meta["weights"] == "ckpt.pth" and config.architecture == ARCH


def test_convert_with_a_measured_dense_tail(work, tuned):
    result = cli("convert", ARCH, "--checkpoint", "ckpt.pth", "--thresholds", tuned,
                 "--input-size", SIZE, "--dense-tail", "clip.mp4", "--tail-frames", "6",
                 "--tail-dtype", "fp32", "--device", "cpu", "-o", "tail.delta.pt", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "dense tails measured on clip.mp4 (6 frames 48x64, float32, cpu)" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "ms" not in line]
    assert len(rows) >= 3 and sum("chosen" in row for row in rows) == 1
    from deltaconvert.serialization import read_header
    conversion = read_header(work / "tail.delta.pt")["conversion"]
    chosen = conversion["dense_tail"]
    assert chosen["frame"] == [1, 3, 48, 64] and chosen["dtype"] == "float32"
    assert len(conversion["forced_dense"]) == chosen["ops"]
    too_short = cli("convert", ARCH, "--random-init", "--dense-tail", "clip.mp4", "--tail-frames",
                    "3", "--device", "cpu", "-o", "short.delta.pt", cwd=work)
    assert too_short.returncode != 0 and "at least 5 frames" in too_short.stderr
    assert not (work / "short.delta.pt").exists()


def test_convert_with_thresholds_then_run(work, tuned):
    result = cli("convert", ARCH, "--checkpoint", "ckpt.pth", "--thresholds", tuned,
                 "--input-size", SIZE, "-o", "tuned.delta.pt", cwd=work)
    assert result.returncode == 0, result.stderr
    info = cli("info", "tuned.delta.pt", cwd=work)
    layer, value = next((k, v) for k, v in ThresholdConfig.from_yaml(tuned).layers.items() if v > 0)
    assert any(line.split()[0] == layer and f"{value:g}" in line for line in
               info.stdout.splitlines() if line.strip())
    result = cli("run", "tuned.delta.pt", "clip.mp4", "-o", "out", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "fps on delta frames" in result.stdout and "run" in result.stderr
    summary = json.loads((work / "out" / "summary.json").read_text())
    stream = summary["streams"]["clip"]
    assert stream["frames"] == FRAMES and stream["delta_frames"] == FRAMES - 1
    assert stream["delta_fps"] > 0 and 0 < stream["work_fraction_mean"] <= 1
    assert not summary["interrupted"]
    rows = [json.loads(line) for line in (work / "out" / "frames.jsonl").read_text().splitlines()]
    assert [(r["frame"], r["dense"]) for r in rows] == [(i, i == 0) for i in range(FRAMES)]
    outputs = [torch.load(work / "out" / r["output"]) for r in rows]
    assert outputs[0].shape == (1, 1000)
    assert not torch.equal(outputs[0], outputs[-1])  # the model depends on its input
    import av
    with av.open(str(work / "out" / "clip.mp4")) as video:
        stream = video.streams.video[0]
        assert stream.average_rate == 10  # the source's rate
        frames = list(video.decode(stream))
        assert len(frames) == FRAMES and frames[0].width == 64 and frames[0].height >= 48 + 24
    assert not [p for p in (work / "out").rglob(".*.tmp")] + list((work / "out").rglob("*.partial"))
    # A second run into the same folder goes to out2: nothing is mixed.
    again = cli("run", "tuned.delta.pt", "clip.mp4", "-o", "out", "--no-heatmap", "--max-frames",
                "1", cwd=work)
    assert again.returncode == 0, again.stderr
    assert "in out2" in again.stdout
    assert "no delta frame ran, so no delta-frame speed was measured" in again.stdout
    assert len((work / "out" / "frames.jsonl").read_text().splitlines()) == FRAMES


def test_run_several_sources_stride_and_compare_dense(work, tuned):
    (work / "clips").mkdir(exist_ok=True)
    shutil.copy(work / "clip.mp4", work / "clips" / "a.mp4")
    shutil.copy(work / "clip.mp4", work / "clips" / "b.mp4")
    result = cli("run", "model.delta.pt", "clips", "clip.mp4", "-o", "multi", "--thresholds", tuned,
                 "--stride", "2", "--start", "1", "--no-heatmap", "--resize", "32x48",
                 "--compare-dense", cwd=work)
    assert result.returncode == 0, result.stderr
    summary = json.loads((work / "multi" / "summary.json").read_text())
    assert sorted(summary["streams"]) == ["a", "b", "clip"]
    rows = [json.loads(line) for line in (work / "multi" / "frames.jsonl").read_text().splitlines()]
    assert sorted({r["frame"] for r in rows}) == [1, 3, 5, 7]
    for name, stream in summary["streams"].items():
        assert stream["frames"] == 4 and stream["error_vs_dense_max"] < 0.2
        assert stream["dense_baseline_ms_median"] > 0
    assert "relative error vs dense" in result.stdout
    output = torch.load(work / "multi" / rows[0]["output"])
    assert output.shape == (1, 1000)
    # Identical clips in different slots give identical outputs.
    by_stream = {(r["stream"], r["frame"]): r["output"] for r in rows}
    for frame in (1, 3, 5, 7):
        assert torch.equal(torch.load(work / "multi" / by_stream[("a", frame)]),
                           torch.load(work / "multi" / by_stream[("clip", frame)]))


def test_run_sources_of_different_lengths_and_rates(work):
    """A short 20 fps clip beside the 8-frame 10 fps one: each stream keeps its own frames,
    outputs and heatmap video at its own rate divided by --stride; --fps overrides it."""
    import av
    write_clip(work / "short.mp4", frames=3, rate=20)
    result = cli("run", "model.delta.pt", "clip.mp4", "short.mp4", "-o", "uneven", "--stride", "2",
                 cwd=work)
    assert result.returncode == 0, result.stderr
    summary = json.loads((work / "uneven" / "summary.json").read_text())
    assert {name: s["frames"] for name, s in summary["streams"].items()} == {"clip": 4, "short": 2}
    assert re.search(r"^short: 2 frames;", result.stdout, re.M), result.stdout
    rows = [json.loads(line) for line in (work / "uneven" / "frames.jsonl").read_text().splitlines()]
    for name, frames in (("clip", [0, 2, 4, 6]), ("short", [0, 2])):
        mine = [r for r in rows if r["stream"] == name]
        assert [(r["frame"], r["dense"]) for r in mine] == [(f, f == 0) for f in frames]
        assert all(r["output"].startswith(f"outputs/{name}/") for r in mine)
    for name, rate, count in (("clip", 5, 4), ("short", 10, 2)):
        with av.open(str(work / "uneven" / f"{name}.mp4")) as video:
            assert video.streams.video[0].average_rate == rate, name
            assert len(list(video.decode(video=0))) == count, name
    result = cli("run", "model.delta.pt", "short.mp4", "-o", "fixed", "--fps", "12.5", "--no-outputs",
                 cwd=work)
    assert result.returncode == 0, result.stderr
    with av.open(str(work / "fixed" / "short.mp4")) as video:
        assert video.streams.video[0].average_rate == 12.5


def test_run_goes_on_when_a_source_fails_midway(work):
    """A source that fails while decoding stops alone: the other stream runs to its end,
    the summary names the error, and the exit status is 1."""
    from deltaconvert.testing import write_breaking_clip
    write_breaking_clip(work / "dropout.mp4", (48, 64))
    result = cli("run", "model.delta.pt", "dropout.mp4", "clip.mp4", "-o", "dropout", "--no-outputs",
                 "--no-heatmap", cwd=work)
    assert result.returncode == 1, result.stderr
    assert "source dropout stopped early" in result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads((work / "dropout" / "summary.json").read_text())
    assert summary["streams"]["clip"]["frames"] == FRAMES
    assert summary["streams"]["clip"]["source_error"] is None
    assert 0 < summary["streams"]["dropout"]["frames"] <= 8  # at most the intact frames
    assert "dropout.mp4" in summary["streams"]["dropout"]["source_error"]
    assert re.search(r"^dropout: .*STOPPED EARLY", result.stdout, re.M), result.stdout


def test_bench_delegates_to_the_benchmark(tmp_path):
    result = cli("bench", "--help", cwd=tmp_path)
    if "not part of this installation" in result.stderr:
        pytest.skip("deltaconvert.bench is not installed")
    assert result.returncode == 0 and "usage: deltaconvert bench" in result.stdout


def test_bench_without_the_benchmark_module_says_so(tmp_path):
    code = ("import sys; sys.modules['deltaconvert.bench.matrix'] = None; "
            "from deltaconvert.cli import main; sys.exit(main(['bench']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env=ENVIRONMENT)
    assert result.returncode == 1
    assert "the benchmark is not part of this installation" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_runs_without_arguments(tmp_path):
    result = cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for text in ("mobilenet_v2", "Big Buck Bunny", "dense", "delta", "ms/frame", "speedup",
                 "error      relative L2 of the embedding vs dense"):
        assert text in result.stdout


# -- error paths -----------------------------------------------------------------------------
ERRORS = [
    # (arguments, exit status, texts in stderr, file that must not exist afterwards)
    (["convert", "squeezenet1_l", "--checkpoint", "ckpt.pth", "-o", "x.delta.pt"], 1,
     ["unknown architecture 'squeezenet1_l'", "squeezenet1_1"], "x.delta.pt"),
    (["convert", ARCH, "--checkpoint", "nope.pth", "-o", "x.delta.pt"], 1,
     ["checkpoint file not found: nope.pth"], "x.delta.pt"),
    (["convert", "squeezenet1_0", "--checkpoint", "ckpt.pth", "-o", "x.delta.pt"], 1,
     ["ckpt.pth does not fit squeezenet1_0", "different shapes", "features.0.weight"], "x.delta.pt"),
    (["convert", ARCH, "--checkpoint", "ckpt.pth", "--num-classes", "10", "-o", "x.delta.pt"], 1,
     ["classifier.1.weight (1000, 512, 1, 1) vs (10, 512, 1, 1)", "--num-classes"], "x.delta.pt"),
    (["convert", ARCH, "--checkpoint", "junk.bin", "-o", "x.delta.pt"], 1,
     ["junk.bin is not a PyTorch checkpoint"], "x.delta.pt"),
    (["convert", ARCH, "--checkpoint", "ckpt.pth", "--thresholds", "none.yaml", "-o", "x.delta.pt"],
     1, ["threshold file not found: none.yaml"], "x.delta.pt"),
    (["convert", ARCH, "--checkpoint", "ckpt.pth", "--thresholds", "bad.yaml", "--input-size", SIZE,
      "-o", "x.delta.pt"], 1, ["bad.yaml:3: unknown layer 'features.1.relu'"], "x.delta.pt"),
    (["convert", ARCH, "--checkpoint", "ckpt.pth", "--input-size", SIZE, "-o", "no/dir/x.delta.pt"],
     1, ["directory no/dir does not exist"], None),
    (["convert", ARCH, "--checkpoint", "ckpt.pth", "--input-size", "48", "-o", "x.delta.pt"], 2,
     ["expected HEIGHTxWIDTH"], "x.delta.pt"),
    (["convert", ARCH, "-o", "x.delta.pt"], 2,
     ["one of the arguments --checkpoint --random-init is required"], "x.delta.pt"),
    (["run", "none.delta.pt", "clip.mp4", "-o", "o"], 1, ["model file not found: none.delta.pt"], "o"),
    (["run", "ckpt.pth", "clip.mp4", "-o", "o"], 1,
     ["not a deltaconvert model file", "torch.save checkpoint"], "o"),
    (["run", "model.delta.pt", "none.mp4", "-o", "o"], 1, ["video file not found: none.mp4"], "o"),
    (["run", "model.delta.pt", "junk.bin", "-o", "o"], 1, ["cannot decode video file junk.bin"], "o"),
    (["run", "model.delta.pt", "clip.mp4", "-o", "junk.bin"], 1, ["junk.bin: exists and is not a directory"], None),
    (["run", "model.delta.pt", "clip.mp4", "-o", "o", "--thresholds", "bad.yaml"], 1,
     ["bad.yaml:3: unknown layer"], "o"),
    (["run", "model.delta.pt", "nothing/*.mp4", "-o", "o"], 1, ["glob 'nothing/*.mp4' matches no file"], "o"),
    (["run", "model.delta.pt", "clip.mp4", "-o", "o", "--letterbox"], 1,
     ["letterbox needs a size"], "o"),
    (["run", "model.delta.pt", "clip.mp4", "-o", "o", "--start", "-1"], 2,
     ["expected an integer ≥ 0"], "o"),
    (["run", "model.delta.pt", "clip.mp4", "-o", "o", "--fps", "0"], 2,
     ["argument --fps: expected a finite number > 0"], "o"),
    (["tune", "model.delta.pt", "clip.mp4", "-o", "t.yaml", "--budget", "-1"], 2,
     ["expected a finite number > 0"], "t.yaml"),
    (["tune", "model.delta.pt", "none.mp4", "-o", "t.yaml"], 1, ["video file not found"], "t.yaml"),
    (["tune", "junk.bin", "clip.mp4", "-o", "t.yaml"], 1, ["not a deltaconvert model file"], "t.yaml"),
    (["info", "junk.bin"], 1, ["junk.bin is not a deltaconvert model file"], None),
    (["info", "old.delta.pt"], 1, ["format version 0", "reads version 1"], None),
    ([], 2, ["required: COMMAND"], None),
    (["frobnicate"], 2, ["invalid choice: 'frobnicate'"], None),
]


def write_error_inputs(work: Path) -> None:
    """A threshold file naming an unknown layer, and a model file of another format version."""
    (work / "bad.yaml").write_text("default: 0.0\nlayers:\n  features.1.relu: 0.1\n")
    with zipfile.ZipFile(work / "model.delta.pt") as source, \
            zipfile.ZipFile(work / "old.delta.pt", "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "deltaconvert.json":
                data = json.dumps({**json.loads(data), "format_version": 0}).encode()
            target.writestr(name, data)


@pytest.fixture(scope="module")
def error_results(work) -> dict[int, subprocess.CompletedProcess]:
    """Every error-path command, run concurrently (each pays the interpreter start-up)."""
    write_error_inputs(work)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {index: pool.submit(cli, *case[0], cwd=work) for index, case in enumerate(ERRORS)}
    return {index: future.result() for index, future in futures.items()}


@pytest.mark.parametrize("index", range(len(ERRORS)),
                         ids=[" ".join(case[0][:2]) + f" #{i}" for i, case in enumerate(ERRORS)])
def test_error_paths(work, error_results, index):
    args, status, texts, absent = ERRORS[index]
    result = error_results[index]
    assert result.returncode == status, result.stderr
    for text in texts:
        assert text in result.stderr
    assert "Traceback" not in result.stderr
    if status == 1:  # one message (after any progress bar), no traceback
        lines = result.stderr.splitlines()
        assert [line for line in lines if line.startswith(f"deltaconvert {args[0]}: error: ")]
    if absent is not None:
        assert not (work / absent).exists()
    assert not list(work.glob(".*.tmp"))
