"""Integration on the real SmolLM2-135M (Llama architecture, tied embeddings, 49,152 tokens) from PyPI."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model

from peft_softhard import SoftHardConfig, project_prompt
from peft_softhard.app.models import SMOLLM2_GGUF, load_smollm2, smollm2_folder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


def test_hard_prompt_is_exact_and_survives_save_and_load(smollm2, tmp_path):
    base, tokenizer = smollm2
    config = SoftHardConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=5, mode="hard", init="text", init_text=" Review sentiment:",
        tokenizer_name_or_path=str(smollm2_folder()), tokenizer_kwargs={"gguf_file": SMOLLM2_GGUF},
    )
    model = get_peft_model(base, config).eval()
    rows = [tokenizer(text).input_ids[:5] for text in ("a gripping , funny film", "dull and far too long")]
    batch = {"input_ids": torch.tensor(rows), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    encoder = model.prompt_encoder["default"]
    ids = encoder.current_token_ids()
    assert ids.tolist() == (tokenizer(" Review sentiment:", add_special_tokens=False).input_ids * 5)[:5]

    prepended = torch.cat([ids.expand(2, -1), batch["input_ids"]], dim=1)
    with torch.no_grad():
        ours = model(**batch).logits
        reference = base(input_ids=prepended, attention_mask=torch.ones_like(prepended)).logits
    assert (ours - reference).abs().max().item() <= 1e-6
    assert project_prompt(model, tokenizer).text == tokenizer.decode(ids)

    model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(base, tmp_path)  # a prompt method leaves the base model unchanged
    assert torch.equal(again.prompt_encoder["default"].current_token_ids(), ids)
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, ours)


def test_the_serving_example_runs(tmp_path):
    """docs/examples/serving.py on the real SmolLM2 (a few dev rows): mixed batch, generate, ensemble, reload."""
    import os
    import subprocess
    import sys

    from conftest import REPO, SHARED

    environment = {**os.environ, "SERVING_DEV_ROWS": "8", "PEFT_SOFTHARD_SHARED": str(SHARED)}
    result = subprocess.run([sys.executable, str(REPO / "docs" / "examples" / "serving.py")], capture_output=True,
                            text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr
    assert "[ __base__] 'The capital of France is' -> next ' Paris'" in result.stdout
    assert "ensemble mean" in result.stdout
    assert "reloaded adapters ['news', 'sentiment', 'soft']; same logits: True" in result.stdout


def test_a_missing_gguf_package_is_named_with_the_command_that_installs_it(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'gguf>=0.10'"):
        load_smollm2()
