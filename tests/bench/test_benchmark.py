"""The benchmark runs end to end (tiny, on the CPU), the static clip generator is
deterministic and its clip is generated once into the data folder, and the data, configs
and timing helpers behave as documented. Nothing here is timed: these only check that the
tools work and that their output is consistent."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from deltaconvert import timing
from deltaconvert.bench import data
from deltaconvert.bench.timing import GraphReplay
from deltaconvert.errors import DeltaConvertError


def load_clip_generator():
    pytest.importorskip("av")
    pytest.importorskip("skimage")
    from deltaconvert.bench import static_clip
    return static_clip


def test_static_clip_is_deterministic(tmp_path):
    clip = load_clip_generator()
    first = clip.write_clip(tmp_path / "a" / "clip.mp4", height=48, width=64, frames=4)
    second = clip.write_clip(tmp_path / "b" / "clip.mp4", height=48, width=64, frames=4)
    assert first.read_bytes() == second.read_bytes()
    assert clip.count_decoded(first) == (4, 48, 64)
    assert [p.name for p in first.parent.iterdir()] == ["clip.mp4"]  # no temporary left behind


def test_static_clip_has_motion_and_static_background():
    clip = load_clip_generator()
    frames = list(clip.render_frames(72, 128, frames=3, noise=0.0))
    changed = (frames[1] != frames[0]).any(axis=-1)
    assert 0 < changed.mean() < 0.6  # the cutout moves, most of the photograph does not


@pytest.fixture(scope="module")
def bench_result(tmp_path_factory):
    import torch

    from deltaconvert.bench.matrix import main

    tmp = tmp_path_factory.mktemp("bench")
    load_clip_generator().write_clip(tmp / "data" / "static_clip.mp4", height=48, width=64, frames=6)
    (tmp / "configs").mkdir()
    (tmp / "configs" / "mnv2_static.yaml").write_text(
        "format_version: 1\narchitecture: mobilenet_v2\ndefault: 0.05\ninput: {threshold: 0.02}\n")
    out = tmp / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a busy CI machine
    try:
        code = main(["--device", "cpu", "--backend", "reference", "--data-dir", str(tmp / "data"),
                     "--models", "mobilenet_v2", "--clips", "static,scenecut", "--resolutions", "32x48",
                     "--frames", "5", "--warmup", "1", "--sweep", "0.1", "--delta-precisions", "fp32",
                     "--streams", "1,2", "--unchanged-calls", "2",
                     "--configs-dir", str(tmp / "configs"), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return json.loads((out / "bench.json").read_text()), out


def test_benchmark_json_is_complete_and_sane(bench_result):
    results, _ = bench_result
    assert results["meta"]["device"] and results["meta"]["date"]
    assert [(c["clip"], c["streams"]) for c in results["cases"]] == [
        ("static", 1), ("static", 2), ("scenecut", 1), ("scenecut", 2)]
    cases = {case["clip"]: case for case in results["cases"] if case["streams"] == 1}
    for case in results["cases"]:
        assert case["resolution"] == [32, 48] and case["frames"] == 5
        names = {r["name"] for r in case["runners"]}
        assert {"dense fp32 eager", "delta fp32 τ=0"} <= names
        for runner in case["runners"]:
            assert runner["status"] == "ok", runner
            assert runner["ms_median"] > 0 and all(ms > 0 for ms in runner["ms_per_frame"])
            assert len(runner["ms_per_frame"]) == 5 and runner["timed_frames"] == [2, 5]
            for key in ("err_output_mean", "err_output_max", "err_pooled_mean", "err_pooled_max"):
                assert math.isfinite(runner[key]) and runner[key] >= 0
            for baseline, ratio in runner["speedup"].items():
                baseline_ms = next(r["ms_median"] for r in case["runners"] if r["name"] == baseline)
                assert ratio == pytest.approx(baseline_ms / runner["ms_median"])
        base_ms = next(r["ms_median"] for r in case["runners"] if r["name"] == case["efficiency_baseline"])
        for runner in (r for r in case["runners"] if r["kind"] == "delta"):
            assert runner["backend"] == "reference"
            assert 0 < runner["work_fraction"] <= 1
            assert runner["efficiency"] == pytest.approx(
                runner["ms_median"] / (base_ms * runner["work_fraction"]))
            assert runner["layers"] and runner["state_bytes"] > 0
            assert runner["state_bytes_per_stream"] == runner["state_bytes"] / case["streams"]
    exact = next(r for r in cases["static"]["runners"] if r["name"] == "delta fp32 τ=0")
    assert exact["err_output_max"] < 1e-4  # threshold 0 reproduces the dense model
    for name in ("delta fp32 τ=0.1", "delta fp32 tuned:mnv2_static"):
        truncated = next(r for r in cases["static"]["runners"] if r["name"] == name)
        assert truncated["work_fraction"] < exact["work_fraction"]
    cut = next(r for r in cases["scenecut"]["runners"] if r["name"] == "delta fp32 τ=0")
    assert {r["name"] for r in cases["scenecut"]["runners"] if r["kind"] == "delta"} == {"delta fp32 τ=0"}
    assert cut["work_fraction"] == pytest.approx(1.0)  # every pixel changes at every frame


def test_benchmark_streams_unchanged_frame_fit_criterion_and_verdict(bench_result):
    results, _ = bench_result
    static, two, cut, _ = results["cases"]
    single = next(r for r in static["runners"] if r["name"] == "delta fp32 τ=0")
    double = next(r for r in two["runners"] if r["name"] == "delta fp32 τ=0")
    assert double["state_bytes"] == 2 * single["state_bytes"]  # state per stream, two streams
    assert double["frames_per_s"] == pytest.approx(2e3 / double["ms_median"])
    # at two streams: the settings the criterion selected at batch 1, and the tuned file
    selected = static["criterion"]["selected_thresholds"]["fp32"]
    assert static["criterion"]["bound"] == 0.02 and selected is not None
    assert {r["thresholds"] for r in two["runners"] if r["kind"] == "delta"} == {selected, "tuned:mnv2_static"}
    entry = static["unchanged"]["delta fp32"]
    for label in ("statistics on", "statistics off"):
        assert entry[label]["calls"] == 2 and entry[label]["wall_ms"] > 0 and entry[label]["frame_ms"] > 0
    assert entry["statistics on"]["work_fraction"] == 0  # nothing changed
    assert not two["unchanged"] and not cut["unchanged"] and not cut["fits"]
    fit = static["fits"]["delta fp32"]
    assert fit["points"] == 3  # τ=0, tuned and τ=0.1 (not the unchanged frame)
    # a CPU run has no dense fp16 graph nor a 720p case: nothing passes
    assert {row["verdict"] for row in results["verdict"]} == {"NOT RUN"}


def test_benchmark_writes_tables_and_plots(bench_result):
    _, out = bench_result
    table = (out / "bench.md").read_text()
    assert "| delta fp32 τ=0 | reference |" in table and "mobilenet_v2 · scenecut · 32×48" in table
    for title in ("### Streams", "### Unchanged frame", "### Cost per frame"):
        assert title in table
    assert table.rstrip().splitlines()[-1].endswith("| NOT RUN |")  # the verdict comes last
    assert "### Verdict" in table.split("### Cost per frame")[1]
    if importlib.util.find_spec("matplotlib") is not None:
        assert len(list(out.glob("*.png"))) == 8


def test_default_cases_are_the_matrix():
    from deltaconvert.bench.matrix import parse_args

    args = parse_args([])
    at_720 = [(m, c, (720, 1280), 1) for c in ("static", "bigbuckbunny", "scenecut")
              for m in ("mobilenet_v2", "resnet18", "resnet50", "lraspp_mobilenet_v3_large")]
    extra = [("mobilenet_v2", c, size, 1) for size in ((1080, 1920), (224, None))
             for c in ("static", "bigbuckbunny")]
    assert args.cases == at_720 + extra
    assert args.compile and args.frames == 40 and args.delta_precisions == ["fp32", "fp16"]
    assert len(args.baselines) == 6 and args.unchanged_calls == 50
    explicit = parse_args(["--models", "resnet18", "--resolutions", "224,720x1280", "--no-compile",
                           "--streams", "8,1"])
    assert explicit.cases == [("resnet18", c, size, n) for n in (1, 8) for size in ((224, None), (720, 1280))
                              for c in ("static", "bigbuckbunny", "scenecut")]
    assert not explicit.compile
    quick = parse_args(["--quick"])
    assert not quick.compile and {m for m, _, _, _ in quick.cases} == {"mobilenet_v2"}


def test_the_issue11_suite_runs_what_the_verdict_needs(capsys):
    from deltaconvert.bench.matrix import dense_baselines, group_cases, parse_args
    from deltaconvert.bench.verdict import TARGETS

    args = parse_args(["--suite", "issue11", "--device", "cuda", "--frames", "30"])
    assert args.frames == 30 and args.delta_precisions == ["fp16"] and args.baselines == ["fp16-graph"]
    for target in TARGETS:  # every target has its case
        assert any(target.applies_to({"model": m, "clip": c, "resolution": list(r), "streams": n})
                   for m, c, r, n in args.cases), target.name
    assert dense_baselines(args, "mobilenet_v2", 1) == [("fp16", "graph"), ("fp16", "compile")]
    assert dense_baselines(args, "mobilenet_v2", 32) == [("fp16", "graph")]
    assert dense_baselines(args, "resnet50", 1) == [("fp16", "graph")]
    static = group_cases(args.cases)[("static", (720, 1280))]
    assert static[0] == ("mobilenet_v2", 1) and static[-2:] == [("mobilenet_v2", 8), ("mobilenet_v2", 32)]
    for clash in (["--quick"], ["--models", "resnet18"], ["--streams", "8"]):
        with pytest.raises(SystemExit):
            parse_args(["--suite", "issue11", *clash])
        assert "--suite selects the cases" in capsys.readouterr().err


def test_defaults_name_the_installed_configs_and_the_user_cache(monkeypatch, tmp_path):
    from deltaconvert.bench.matrix import parse_args

    shipped = data.configs_dir()
    assert {"mobilenet_v2.yaml", "resnet18.yaml"} <= {p.name for p in shipped.glob("*.yaml")}
    assert parse_args(["--quick"]).configs_dir == shipped
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.default_data_dir() == tmp_path / "cache" / "deltaconvert"
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "staged"))
    assert data.default_data_dir() == tmp_path / "staged"
    assert parse_args(["--quick"]).data_dir == tmp_path / "staged"


def test_static_clip_is_generated_once_into_the_data_folder(monkeypatch, tmp_path):
    generator = load_clip_generator()
    write_clip, calls = generator.write_clip, []

    def small_clip(path: Path) -> Path:
        calls.append(path)
        return write_clip(path, height=48, width=64, frames=4)
    monkeypatch.setattr(generator, "write_clip", small_clip)
    folder = tmp_path / "not" / "yet"
    first = data.clip_path("static", folder)
    assert first == folder / data.STATIC_CLIP and calls == [first]
    assert generator.count_decoded(first) == (4, 48, 64)
    assert data.clip_path("static", folder) == first and len(calls) == 1  # cached
    assert [p.name for p in folder.iterdir()] == [data.STATIC_CLIP]


def test_static_clip_without_the_bench_extra_names_it(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "skimage" else real_find_spec(name, *a))
    with pytest.raises(DeltaConvertError, match=r"scikit-image.*deltaconvert\[bench\]"):
        data.static_clip(tmp_path)
    assert not any(tmp_path.iterdir())


def test_frame_times_and_timed_on_the_cpu():
    calls = []
    times = timing.frame_times(calls.append, [1, 2, 3], torch.device("cpu"))
    assert calls == [1, 2, 3] and len(times) == 3 and all(t >= 0 for t in times)
    out, ms = timing.timed(torch.device("cpu"), lambda a, b: a + b, 2, 3)
    assert out == 5 and ms >= 0
    with pytest.raises(RuntimeError, match="CUDA graph needs a CUDA tensor"):
        GraphReplay(lambda x: x, torch.zeros(1))


def test_only_the_command_line_imports_the_bench_package():
    """The benchmark sits above the library: no library module imports it (any import,
    at any depth, counts), only deltaconvert/cli.py."""
    import ast

    import deltaconvert

    package = Path(deltaconvert.__file__).parent
    importers = set()
    for path in package.rglob("*.py"):
        if "bench" in path.relative_to(package).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{'.' * node.level}{node.module or ''}"] + [a.name for a in node.names]
                     if isinstance(node, ast.ImportFrom) else [])
            if any(name.lstrip(".").split(".")[0] == "bench" or name.startswith("deltaconvert.bench")
                   for name in names):
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"cli.py"}
