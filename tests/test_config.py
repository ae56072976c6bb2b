"""SoftHardConfig: fields, validation, and the round trip through adapter_config.json."""

from __future__ import annotations

import json

import pytest
from peft import PeftConfig

from peft_softhard import SoftHardConfig


def test_defaults_and_peft_type():
    config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=10)
    assert config.peft_type == "SOFTHARD" and config.is_prompt_learning
    assert (config.mode, config.init, config.metric) == ("soft", "vocab", "cosine")
    assert config.exclude_special_tokens and not config.ascii_only and not config.word_start_only
    assert config.num_transformer_submodules == 1


def test_values_are_normalised_to_lower_case():
    config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, mode="HARD", metric="L2", init="Random")
    assert (config.mode, config.metric, config.init) == ("hard", "l2", "random")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_virtual_tokens": 0}, "num_virtual_tokens must be a positive integer"),
        ({"num_virtual_tokens": -3}, "num_virtual_tokens must be a positive integer"),
        ({"num_virtual_tokens": None}, "num_virtual_tokens is required"),
        ({"num_virtual_tokens": "10"}, "num_virtual_tokens must be a positive integer"),
        ({"num_virtual_tokens": True}, "num_virtual_tokens must be a positive integer"),
        ({"mode": "medium"}, "Unknown mode 'medium'"),
        ({"metric": "manhattan"}, "Unknown metric 'manhattan'"),
        ({"init": "zeros"}, "Unknown init 'zeros'"),
        ({"init": "text"}, "init='text' needs a non-empty init_text"),
        ({"init": "text", "init_text": "   "}, "init='text' needs a non-empty init_text"),
        ({"init": "token_ids"}, "init='token_ids' needs init_token_ids"),
        ({"init": "token_ids", "init_token_ids": [1, 2, 3, 4, 5, 6]}, "init_token_ids has 6 ids"),
        ({"init": "token_ids", "init_token_ids": [1, -2]}, "non-negative integer token ids"),
        ({"allowed_token_ids": []}, "allowed_token_ids is empty"),
        ({"denied_token_ids": ["a"]}, "non-negative integer token ids"),
        ({"ascii_only": "yes"}, "ascii_only must be true or false"),
        ({"num_transformer_submodules": 2}, "num_transformer_submodules must be 1"),
        ({"projection_chunk_size": 0}, "projection_chunk_size must be a positive integer"),
        ({"task_type": "TRANSLATION"}, "Invalid task type"),
    ],
)
def test_invalid_values_raise_a_clear_value_error(kwargs, message):
    arguments = {"task_type": "CAUSAL_LM", "num_virtual_tokens": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        SoftHardConfig(**arguments)


def test_round_trip_through_adapter_config_json(tmp_path):
    config = SoftHardConfig(
        task_type="SEQ_CLS", num_virtual_tokens=7, mode="hard", init="token_ids", init_token_ids=[5, 6],
        metric="dot", ascii_only=True, word_start_only=True, allowed_token_ids=[5, 6, 7, 8], denied_token_ids=[8],
        tokenizer_name_or_path="some/tokenizer", projection_chunk_size=128,
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "SOFTHARD" and saved["mode"] == "hard"
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SoftHardConfig)
    assert loaded.to_dict() == config.to_dict()


def test_remote_code_is_never_enabled_by_a_config():
    config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, tokenizer_kwargs={"trust_remote_code": True})
    assert config.tokenizer_kwargs == {}
