"""Test setup: offline hub, the tiny models of peft_softhard.testing, and the shared data the tests read."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The suite runs in pytest-xdist workers (pyproject's addopts: `-n 2`). Each worker, and the programs its tests
# start, gets its share of the cores: two processes that each use every core slow each other several times over.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import peft_softhard  # noqa: E402,F401  (registers SOFTHARD)
from peft_softhard.testing import TASK_MODELS, build, tiny_gpt2  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PEFT_SOFTHARD_SHARED", REPO.parent / "shared"))
GPT2_TOKENIZER = SHARED / "models" / "gpt2-tokenizer"


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    if not GPT2_TOKENIZER.is_dir():
        pytest.fail(f"No GPT-2 tokenizer at {GPT2_TOKENIZER}; set PEFT_SOFTHARD_SHARED to the shared folder.")
    return transformers.AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER))


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory) -> dict[str, Path]:
    """Each task type's tiny model saved to disk, so hub-style loading (AutoPeftModel) has a path to read."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for task, (factory, _) in TASK_MODELS.items():
        paths[task] = root / task
        build(factory).save_pretrained(paths[task])
    return paths


POSITIVE = ["a good film", "great fun", "fine acting", "nice story", "a lovely movie", "good and warm"]
NEGATIVE = ["a bad film", "awful fun", "poor acting", "dull story", "a boring movie", "bad and cold"]


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """A tiny GPT-2 and a tiny BERT saved with the real GPT-2 tokenizer, and a small CSV task."""
    root = tmp_path_factory.mktemp("cli")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER))
    causal = root / "tiny-gpt2"
    build(lambda: tiny_gpt2(initializer_range=0.3)).save_pretrained(causal)
    tokenizer.save_pretrained(causal)
    encoder = root / "tiny-bert"
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=50257, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        num_labels=2,
    )).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    rows = [(t, 1) for t in POSITIVE] + [(t, 0) for t in NEGATIVE]
    for name in ("train.csv", "eval.csv"):
        (root / name).write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    return root


def task_args(files) -> list[str]:
    return ["--train-file", str(files / "train.csv"), "--eval-file", str(files / "eval.csv"),
            "--template", " {text}. It was", "--label-word", " bad", "--label-word", " good"]


# The long-running CLI jobs the kill/resume and multi-process tests compare against uninterrupted,
# single-process runs (with the tiny model and task of `files`). Soft training is not among them: it is hard
# training's loop, checkpoints and gradient averaging without the projection (its in-process resume is in
# test_resume.py), and each of these subprocess tests costs half a minute.
CLI_RUNS = {
    "train-hard": ["train", "--mode", "hard", "--num-virtual-tokens", "3", "--lr", "0.05"],
    "discover-pez": ["discover", "--method", "pez", "--num-virtual-tokens", "3", "--lr", "0.05"],
}


def softhard(capsys, *argv: str) -> dict:
    """Run the CLI in-process with --json; returns what it printed, parsed (the command must succeed)."""
    from peft_softhard.app.cli import main

    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


# The demo's budgets, as small as they go (a tiny model or a smoke run): the soft prompt and the hard search.
TINY_DEMO = ["--soft-steps", "1", "--soft-batch-size", "4", "--steps", "1", "--label-steps", "1", "--edit-steps", "1",
             "--batch-size", "4", "--eval-interval", "1", "--pool-size", "2", "--race-steps", "1", "--edit-beam", "1",
             "--edit-candidates", "1"]
