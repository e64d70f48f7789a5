"""scripts/long_run.py on the CPU at a small size: the loop order, the windows, and the
checks, which say NOT RUN rather than pass where the run cannot tell."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "long_run.py"


@pytest.fixture(scope="module")
def long_run():
    spec = importlib.util.spec_from_file_location("long_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ping_pong_never_jumps(long_run):
    order = [long_run.ping_pong(i, 4) for i in range(10)]
    assert order == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert [long_run.ping_pong(i, 1) for i in range(3)] == [0, 0, 0]


def test_windows_and_checks(long_run):
    windows = [{"error_mean": e, "allocated_bytes": None} for e in (0.01, 0.02, 0.024)]
    checks = long_run.checks(windows, finite=True)
    assert checks["finite"]["passed"] and checks["flat"]["passed"]
    assert checks["flat"]["last_over_second"] == pytest.approx(1.2)
    assert checks["memory constant"]["passed"] is None  # no GPU: not a pass
    windows[-1]["error_mean"] = 0.03
    assert not long_run.checks(windows, finite=True)["flat"]["passed"]
    assert long_run.checks(windows[:2], finite=False)["flat"]["passed"] is None
    gpu = [{"error_mean": 0.01, "allocated_bytes": b} for b in (100, 100, 100 + (2 << 20))]
    assert not long_run.checks(gpu, finite=True)["memory constant"]["passed"]


def test_a_short_run_on_the_cpu(long_run, tmp_path, capsys):
    out = tmp_path / "long.json"
    code = long_run.main(["--frames", "7", "--window", "3", "--clip-frames", "3", "--resolution", "64x96",
                          "--device", "cpu", "--thresholds", "0.01", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert [w["frames"] for w in result["windows"]] == [[0, 2], [3, 5], [6, 6]]
    assert result["checks"]["finite"]["passed"] is True
    assert result["checks"]["flat"]["passed"] is not None
    assert all(0 <= w["error_mean"] < 0.5 for w in result["windows"])
    assert "finite: PASS" in capsys.readouterr().out
