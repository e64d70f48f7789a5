"""A wheel works without the checkout: it is built from a copy of the project, installed
into a fresh virtual environment outside the checkout, and its console script runs
``demo``, ``convert`` and ``info`` from a folder outside the checkout, with nothing of the
checkout on ``PYTHONPATH`` and an empty cache folder.

It fails if the wheel lacks the tuned thresholds (``deltaconvert.configs``), the kernel
sources (``deltaconvert.cuda_kernels``) or the benchmark package, or if the installed
package resolves any of them inside the checkout. About a minute on a small CPU machine.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_SHIPPED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".gpu-data", ".gpu-wheels", "out", "tests")
# What the installed package must report about itself (run with the venv's interpreter).
WHERE = """
import deltaconvert
from deltaconvert.backends.cuda.kernels import kernel_dir
from deltaconvert.bench.data import configs_dir
print(deltaconvert.__file__)
print(configs_dir())
print(kernel_dir())
"""


def run(*command: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(venv, a working folder, environment) with the freshly built wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "DELTACONVERT_DATA_DIR",
                          "DELTACONVERT_CUDA_KERNELS", "VIRTUAL_ENV")}
    env.update(HOME=str(tmp / "home"), XDG_CACHE_HOME=str(tmp / "cache"), OMP_NUM_THREADS="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SHIPPED)  # never stale build/ output
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", tmp / "dist", source, cwd=tmp, env=env)
    wheel, = (tmp / "dist").glob("deltaconvert-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("deltaconvert/configs/mobilenet_v2.yaml", "deltaconvert/cuda_kernels/common.cuh",
                    "deltaconvert/bench/matrix.py", "deltaconvert/bench/demo.py"):
        assert shipped in names, f"the wheel lacks {shipped}"
    environment = tmp / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(environment)
    python = environment / "bin" / "python"
    run(python, "-m", "pip", "install", "--no-deps", "-q", wheel, cwd=tmp, env=env)
    work = tmp / "work"
    work.mkdir()
    env["PATH"] = f"{environment / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return environment, work, env


def test_the_installed_package_finds_everything_outside_the_checkout(installed):
    environment, work, env = installed
    lines = run(environment / "bin" / "python", "-c", WHERE, cwd=work, env=env).stdout.split()
    package, configs, kernels = (Path(line).resolve() for line in lines)
    site = environment.resolve()
    for path in (package, configs, kernels):
        assert site in path.parents and ROOT not in path.parents, path
    assert (configs / "mobilenet_v2.yaml").is_file() and (kernels / "common.cuh").is_file()


def test_demo_runs_from_the_wheel(installed):
    environment, work, env = installed
    result = run(environment / "bin" / "deltaconvert", "demo", "--max-frames", "3",
                 "--input-size", "64x112", cwd=work, env=env)
    assert "speedup" in result.stdout and "Big Buck Bunny, 3 frames at 64x112" in result.stdout
    thresholds = next(line for line in result.stdout.splitlines() if line.startswith("thresholds"))
    assert str(environment.resolve()) in str(Path(thresholds.split()[1]).resolve()), thresholds


def test_convert_and_info_run_from_the_wheel(installed):
    environment, work, env = installed
    script = environment / "bin" / "deltaconvert"
    run(script, "convert", "resnet18", "--random-init", "--input-size", "64x64", "-o", "x.delta.pt",
        cwd=work, env=env)
    result = run(script, "info", "x.delta.pt", cwd=work, env=env)
    assert "architecture  resnet18" in result.stdout and "delta ops" in result.stdout
    assert "usage: deltaconvert bench" in run(script, "bench", "--help", cwd=work, env=env).stdout
