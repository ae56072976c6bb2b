"""Test setup: offline hub, the tiny models of peft_softhard.testing, and the shared data the tests read."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import transformers  # noqa: E402

import peft_softhard  # noqa: E402,F401  (registers SOFTHARD)
from peft_softhard.testing import TASK_MODELS, build  # noqa: E402

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
