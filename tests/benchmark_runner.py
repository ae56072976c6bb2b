"""Runs benchmark scripts one after another in one Python process, as `python benchmarks/NAME.py ARGS` would.

The suite's smoke runs of the benchmarks go through here: one interpreter start and one import of torch and
transformers (about ten CPU seconds) instead of one per script. A script that fails leaves its traceback in
its error file, and the next script still runs.

    python tests/benchmark_runner.py RUNS.json   # RUNS.json: [[script, [arguments...], error_file], ...]
"""

from __future__ import annotations

import json
import runpy
import sys
import traceback
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def main() -> None:
    runs = json.loads(Path(sys.argv[1]).read_text())
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their neighbours (subjects, reporting)
    for script, arguments, error_file in runs:
        sys.argv = [str(BENCHMARKS / f"{script}.py"), *arguments]
        try:
            with torch.enable_grad():  # a script that switches gradients off globally does not pass it on
                runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as stop:
            if stop.code not in (0, None):
                Path(error_file).write_text(f"{script} exited with {stop.code}\n{traceback.format_exc()}")
        except Exception:
            Path(error_file).write_text(traceback.format_exc())


if __name__ == "__main__":
    main()
