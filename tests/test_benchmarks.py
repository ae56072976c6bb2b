"""Smoke runs of the benchmark scripts on tiny models (the full runs are documented, not part of the suite)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_exactness_benchmark_runs_and_reports_zero_difference_on_tiny_models(tmp_path):
    output = tmp_path / "exactness.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "exactness.py"), "--tiny-only", "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(output.read_text())["rows"]
    assert len(rows) == 8 and all(row["max_abs_difference"] <= 1e-6 for row in rows)


def test_planted_benchmark_quick_run(tmp_path):
    output = tmp_path / "planted.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "planted.py"), "--quick", "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(output.read_text())["summary"]
    assert summary["pez"]["solved"] == "2/2" and summary["gcg"]["solved"] == "2/2"


def test_projection_benchmark_quick_run(tmp_path):
    output = tmp_path / "projection.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "projection.py"), "--quick", "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(output.read_text())["rows"]
    assert row["same_ids"] and row["chunked"]["seconds"] > 0
