"""Data parallelism: 2 CPU processes (gloo) under torchrun or accelerate give the 1-process result; only rank 0
writes. (On a machine without GPUs, accelerate's multi-process launcher is `--multi_gpu`; it runs torchrun.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import CLI_RUNS as RUNS
from conftest import task_args

LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node={n}"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes={n}",
                   "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"],
}


def launch(files, run: str, output, processes: int, launcher_name: str | None = "torchrun") -> None:
    """The run under a launcher with `processes` processes, or (launcher None) as one plain process."""
    arguments = [*RUNS[run], "--model", str(files / "tiny-gpt2"), *task_args(files), "--steps", "12",
                 "--batch-size", "4", "--eval-interval", "4", "--output-dir", str(output), "--json"]
    launcher = [part.format(n=processes) for part in LAUNCHERS[launcher_name]] if launcher_name else [sys.executable]
    result = subprocess.run([*launcher, "-m", "peft_softhard.app.cli", *arguments], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


CASES = [(run, "torchrun") for run in sorted(RUNS)] + [("discover-pez", "accelerate")]


@pytest.fixture(scope="module")
def one_process(files, tmp_path_factory):
    """Each run's plain one-process result, run once for every launcher that is compared with it."""
    done = {}

    def result(run: str):
        if run not in done:
            done[run] = tmp_path_factory.mktemp(f"one-{run}")
            launch(files, run, done[run], 1, launcher_name=None)
        return done[run]

    return result


@pytest.mark.parametrize("run, launcher", CASES)
def test_two_processes_give_the_one_process_result(files, one_process, tmp_path, run, launcher):
    one_dir = one_process(run)
    launch(files, run, tmp_path / "two", 2, launcher)  # each run checks its ranks hold identical prompts at the end
    leftovers = [p.name for p in (tmp_path / "two").rglob(".*")]
    assert not leftovers, leftovers  # no half-written or duplicate files from a second writer
    if run.startswith("train"):
        one = load_file(one_dir / "n3" / "adapter" / "adapter_model.safetensors")
        two = load_file(tmp_path / "two" / "n3" / "adapter" / "adapter_model.safetensors")
        for key in one:
            assert torch.allclose(one[key].float(), two[key].float(), atol=1e-5), key
        if run == "train-hard":
            assert torch.equal(one["token_ids"], two["token_ids"])
    else:
        one = json.loads((one_dir / "result.json").read_text())
        two = json.loads((tmp_path / "two" / "result.json").read_text())
        assert one["token_ids"] == two["token_ids"] and one["validation_accuracy"] == two["validation_accuracy"]
