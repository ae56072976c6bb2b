"""Files that cannot be trusted: corrupted weights, configs with wrong types, NaN prompts, empty data.

Each gives a clear error that names the problem, and nothing on disk is changed by a failed load.
(Other bad inputs are tested beside their features: config values in test_config, vocabulary constraints
in test_projection, label words in test_discovery, other models in test_save_load, KoboldAI files and bad
data files in test_cli.)
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from peft_softhard import SoftHardConfig
from peft_softhard.app.tasks import custom_task
from peft_softhard.testing import build, tiny_llama


@pytest.fixture
def saved(tmp_path):
    model = get_peft_model(build(tiny_llama), SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, mode="hard"))
    model.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_weights_name_the_file_and_the_fix(saved, damage):
    weights = saved / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file" * 3)
    damaged = weights.read_bytes()
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors is truncated or corrupted.*Save the adapter"):
        PeftModel.from_pretrained(build(tiny_llama), saved)
    assert weights.read_bytes() == damaged  # a failed load writes nothing


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_virtual_tokens", "3", "num_virtual_tokens must be a positive integer"),
        ("mode", 5, "Unknown mode 5"),
        ("metric", None, "Unknown metric None"),
        ("allowed_token_ids", "1,2", "allowed_token_ids must be a list"),
        ("ascii_only", "false", "ascii_only must be true or false"),
    ],
)
def test_adapter_config_with_wrong_types_is_refused(saved, field, value, message):
    path = saved / "adapter_config.json"
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(build(tiny_llama), saved)


@pytest.mark.parametrize("key", ["continuous_prompt", "prompt_embeddings"])
def test_nan_in_the_weights_is_refused(saved, key):
    state = load_file(saved / "adapter_model.safetensors")
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, saved / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="NaN/Inf"):
        PeftModel.from_pretrained(build(tiny_llama), saved)


def test_missing_hard_state_is_refused(saved):
    state = load_file(saved / "adapter_model.safetensors")
    del state["token_ids"]
    save_file(state, saved / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"lack \['token_ids'\].*not a complete hard-mode"):
        PeftModel.from_pretrained(build(tiny_llama), saved)


def test_empty_data_is_refused(tmp_path):
    (tmp_path / "empty.csv").write_text("text,label\n")
    task = custom_task(eval=str(tmp_path / "empty.csv"), label_words=[" no", " yes"])
    with pytest.raises(ValueError, match="is empty"):
        task.load("eval")
