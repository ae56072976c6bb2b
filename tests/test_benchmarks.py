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
