"""SOFTHARD is a real peft method: peft's tables, version check, fresh-process loading, other methods untouched."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

import peft_softhard
from peft_softhard import SoftHardConfig, SoftHardPromptEncoder
from peft_softhard.peft_boundary import patches
from peft_softhard.testing import build, random_batch, tiny_llama

from conftest import REPO


def test_peft_tables_know_softhard():
    assert PeftType("SOFTHARD") is PeftType.SOFTHARD
    assert "SOFTHARD" in list(PeftType)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.SOFTHARD] is SoftHardConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.SOFTHARD] is SoftHardPromptEncoder


def test_register_is_idempotent():
    peft_softhard.register()
    peft_softhard.register()
    assert list(PeftType).count(PeftType.SOFTHARD) == 1


def test_missing_peft_symbol_names_the_supported_versions(monkeypatch):
    from peft import PeftModelForSeq2SeqLM

    monkeypatch.delattr(PeftModelForSeq2SeqLM, "generate")
    with pytest.raises(ImportError, match=r"supports peft >=0\.21,<0\.22.*PeftModelForSeq2SeqLM\.generate"):
        patches.check_supported_peft()


def test_other_peft_methods_are_untouched():
    batch = random_batch()
    plain = get_peft_model(build(tiny_llama), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    assert plain(**batch).logits.shape == (2, 10, 1000)
    lora = get_peft_model(build(tiny_llama), LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"]))
    assert lora(**batch).logits.shape == (2, 7, 1000)


def _run_fresh_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environment, cwd=REPO.parent,
        timeout=300,
    )


def test_fresh_process_loads_a_saved_adapter_without_importing_the_plugin(tmp_path, saved_models):
    base = tiny_llama().from_pretrained(saved_models["CAUSAL_LM"]).eval()
    model = get_peft_model(base, SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, mode="hard"))
    model.save_pretrained(tmp_path / "adapter")
    expected = model.prompt_encoder["default"].current_token_ids().tolist()

    code = f"""
        import sys
        from peft import AutoPeftModelForCausalLM, PeftConfig
        config = PeftConfig.from_pretrained({str(tmp_path / "adapter")!r})
        model = AutoPeftModelForCausalLM.from_pretrained({str(tmp_path / "adapter")!r})
        print(type(config).__name__, model.prompt_encoder["default"].current_token_ids().tolist())
    """
    result = _run_fresh_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == f"SoftHardConfig {expected}"

    disabled = _run_fresh_python(code, PEFT_SOFTHARD_AUTOLOAD="0")
    assert disabled.returncode != 0 and "SOFTHARD" in disabled.stderr  # so the hook is what made it work


def test_peft_model_from_pretrained_uses_saved_adapter(tmp_path):
    base = build(tiny_llama)
    model = get_peft_model(base, SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, mode="soft"))
    model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(build(tiny_llama), tmp_path)
    batch = random_batch()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)


def test_natural_adapter_names_raise_no_prefix_warning(recwarn):
    model = get_peft_model(build(tiny_llama), SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    for name in ("soft", "hard", "sst2"):
        model.add_adapter(name, SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert not [w for w in recwarn if "should not be contained in the prefix" in str(w.message)]
