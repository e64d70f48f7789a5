"""scripts/long_run.py on the CPU at a small size: the loop order, the windows, and the
checks, which say NOT RUN rather than pass where the run cannot tell."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .scripts import load_script


@pytest.fixture(scope="module")
def long_run():
    return load_script("long_run")


def test_ping_pong_never_jumps(long_run):
    order = [long_run.ping_pong(i, 4) for i in range(10)]
    assert order == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert [long_run.ping_pong(i, 1) for i in range(3)] == [0, 0, 0]
    assert [long_run.ping_pong(i, 2) for i in range(4)] == [0, 1, 0, 1]


def test_checks_compare_whole_loop_periods(long_run):
    period = 4  # a clip of 3 frames: 0 1 2 1 | 0 1 2 1 | …
    content = [0.01, 0.02, 0.04, 0.02]  # the error follows the content within a period
    errors = content * 3 + [0.5]  # + one frame of a 4th period, left out of the comparison
    windows = [{"error_mean": 0.0, "allocated_bytes": None}]
    checks = long_run.checks(errors, period, windows, finite=True)
    assert checks["finite"]["passed"] and checks["flat"]["passed"]
    assert checks["flat"]["last_period_over_second"] == pytest.approx(1.0)
    assert checks["memory constant"]["passed"] is None  # no GPU: not a pass
    drifting = content + content + [e * 1.3 for e in content]
    assert not long_run.checks(drifting, period, windows, finite=True)["flat"]["passed"]
    short = long_run.checks(errors[:11], period, windows, finite=False)
    assert short["flat"]["passed"] is None and not short["finite"]["passed"]
    gpu = [{"error_mean": 0.01, "allocated_bytes": b} for b in (100, 100, 100 + (2 << 20))]
    assert not long_run.checks(errors, period, gpu, finite=True)["memory constant"]["passed"]
    assert long_run.loop_period(3) == 4 and long_run.loop_period(1) == 1


def test_a_short_run_on_the_cpu(long_run, tmp_path, capsys):
    out = tmp_path / "long.json"
    code = long_run.main(["--frames", "13", "--window", "1", "--clip-frames", "3", "--resolution", "64x96",
                          "--device", "cpu", "--dtype", "fp32", "--thresholds", "0.01", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    windows = result["windows"]
    assert [w["frames"] for w in windows] == [[i, i] for i in range(13)]
    assert windows[0]["error_mean"] < 1e-5  # the dense first frame: the original model
    assert windows[0]["work_mean"] is None  # and no delta frame to count work on
    assert all(0 < w["work_mean"] <= 1 for w in windows[1:])
    assert result["checks"]["finite"]["passed"] is True
    assert result["checks"]["flat"]["period_frames"] == 4  # 3 periods of 0 1 2 1, then one frame
    assert result["checks"]["flat"]["passed"] is not None
    assert all(0 <= w["error_mean"] < 0.5 for w in windows)
    assert "finite: PASS" in capsys.readouterr().out


def test_tuned_means_the_file_named_after_the_model(long_run):
    configs = Path(__file__).resolve().parents[2] / "configs"  # two files for mobilenet_v2
    assert long_run.threshold_setting("tuned", "mobilenet_v2", configs).label == "tuned:mobilenet_v2"
    variant = long_run.threshold_setting("tuned:mobilenet_v2_fp16", "mobilenet_v2", configs)
    assert variant.label == "tuned:mobilenet_v2_fp16"
    with pytest.raises(SystemExit, match="no threshold file resnet18.yaml for mobilenet_v2"):
        long_run.threshold_setting("tuned:resnet18", "mobilenet_v2", configs)
    assert long_run.threshold_setting("0.02", "mobilenet_v2", configs).label == "τ=0.02"
