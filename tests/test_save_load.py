"""Saving, loading, resuming, several adapters, refusing the wrong model, and export to plain PROMPT_TUNING."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import (
    AutoPeftModelForCausalLM,
    AutoPeftModelForFeatureExtraction,
    AutoPeftModelForSeq2SeqLM,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
    PeftModel,
    get_peft_model,
)
from safetensors.torch import load_file

from peft_softhard import SoftHardConfig, export_prompt_tuning, load_for_training
from peft_softhard.testing import TASK_MODELS, build, random_batch, tiny_gpt2, tiny_llama

from conftest import REPO

AUTO_PEFT = {
    "CAUSAL_LM": AutoPeftModelForCausalLM,
    "SEQ_2_SEQ_LM": AutoPeftModelForSeq2SeqLM,
    "SEQ_CLS": AutoPeftModelForSequenceClassification,
    "TOKEN_CLS": AutoPeftModelForTokenClassification,
    "FEATURE_EXTRACTION": AutoPeftModelForFeatureExtraction,
}


def outputs(model, batch, task_type="CAUSAL_LM"):
    extra = {}
    if task_type == "SEQ_2_SEQ_LM":
        extra["decoder_input_ids"] = torch.tensor([[0, 5]] * batch["input_ids"].shape[0])
    with torch.no_grad():
        result = model(**batch, **extra)
    return result.last_hidden_state if task_type == "FEATURE_EXTRACTION" else result.logits


def make(base, mode="hard", n=4, task_type="CAUSAL_LM", **config):
    return get_peft_model(base, SoftHardConfig(task_type=task_type, num_virtual_tokens=n, mode=mode, **config))


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_safetensors_holds_what_the_model_sees_and_the_hard_state(tmp_path, mode):
    base = build(tiny_llama)
    model = make(base, mode)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    state = load_file(tmp_path / "adapter_model.safetensors")
    encoder = model.prompt_encoder["default"]
    assert torch.equal(state["prompt_embeddings"], encoder.prompt_embeddings().detach())
    if mode == "hard":
        ids = encoder.current_token_ids()
        assert torch.equal(state["token_ids"], ids)
        assert torch.equal(state["prompt_embeddings"], base.get_input_embeddings()(ids))
        assert torch.equal(state["continuous_prompt"], encoder.embedding.weight.detach())
        assert state["allowed_token_mask"].shape == (1000,)
    else:
        assert "token_ids" not in state and "continuous_prompt" not in state


@pytest.mark.parametrize("task_type", sorted(TASK_MODELS))
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_round_trip_through_auto_peft_model_for_every_task_type(tmp_path, saved_models, task_type, mode):
    factory, auto_class = TASK_MODELS[task_type]
    base = auto_class.from_pretrained(saved_models[task_type]).eval()
    model = make(base, mode, task_type=task_type).eval()
    model.save_pretrained(tmp_path)
    again = AUTO_PEFT[task_type].from_pretrained(tmp_path).eval()
    assert type(again.peft_config["default"]) is SoftHardConfig
    batch = random_batch()
    assert torch.equal(outputs(model, batch, task_type), outputs(again, batch, task_type))


def test_resume_continues_from_exactly_the_saved_state(tmp_path):
    torch.manual_seed(0)
    model = make(build(tiny_llama), "hard").train()
    batch = random_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    model.save_pretrained(tmp_path)

    with pytest.raises(ValueError, match="Cannot set a prompt learning adapter to trainable"):
        PeftModel.from_pretrained(build(tiny_llama), tmp_path, is_trainable=True)  # peft's refusal
    resumed = load_for_training(build(tiny_llama), tmp_path)
    trainable = [name for name, p in resumed.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_encoder.default.embedding.weight"]

    def one_step(peft_model):
        optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0)
        optimizer.zero_grad()
        peft_model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        encoder = peft_model.prompt_encoder["default"]
        return encoder.embedding.weight.detach().clone(), encoder.current_token_ids().clone()

    continued_p, continued_ids = one_step(model)
    resumed_p, resumed_ids = one_step(resumed)
    assert torch.equal(continued_p, resumed_p) and torch.equal(continued_ids, resumed_ids)


def test_several_adapters_in_one_model(tmp_path):
    base = build(tiny_llama)
    model = make(base, "hard", n=4)
    model.add_adapter("soft6", SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=6, mode="soft"))
    batch = random_batch()
    with torch.no_grad():
        hard_logits = model(**batch).logits
        model.set_adapter("soft6")
        soft_logits = model(**batch).logits
    assert hard_logits.shape[1] == 4 + 7 and soft_logits.shape[1] == 6 + 7
    model.save_pretrained(tmp_path)

    again = PeftModel.from_pretrained(build(tiny_llama), tmp_path)
    again.load_adapter(tmp_path / "soft6", adapter_name="soft6")
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, hard_logits)
        again.set_adapter("soft6")
        assert torch.equal(again(**batch).logits, soft_logits)


def test_adapter_for_another_hidden_size_is_refused(tmp_path):
    make(build(lambda: tiny_gpt2(hidden=32))).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="hidden size 32.*size 16"):
        PeftModel.from_pretrained(build(lambda: tiny_gpt2(hidden=16)), tmp_path)


def test_adapter_for_another_vocabulary_is_refused(tmp_path):
    make(build(lambda: tiny_llama(vocab=1000))).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="vocabulary of 1000 tokens; this model has 800"):
        PeftModel.from_pretrained(build(lambda: tiny_llama(vocab=800)), tmp_path)


def test_weights_of_the_wrong_shape_are_refused(tmp_path):
    from safetensors.torch import save_file

    make(build(tiny_llama), "soft").save_pretrained(tmp_path)
    save_file({"prompt_embeddings": torch.zeros(4, 48)}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="hidden size 48"):
        PeftModel.from_pretrained(build(tiny_llama), tmp_path)


@pytest.mark.parametrize("task_type", ["CAUSAL_LM", "SEQ_CLS"])
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_export_to_prompt_tuning_loads_in_stock_peft_without_the_plugin(tmp_path, saved_models, mode, task_type):
    base = TASK_MODELS[task_type][1].from_pretrained(saved_models[task_type]).eval()
    model = make(base, mode, task_type=task_type).eval()
    if task_type == "SEQ_CLS":  # a trained head must travel with the prompt
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "modules_to_save" in name:
                    parameter.add_(0.5)
    export_prompt_tuning(model, tmp_path / "plain")
    batch = random_batch()
    expected = outputs(model, batch)
    torch.save(batch, tmp_path / "batch.pt")

    code = f"""
        import sys, torch
        from peft import {AUTO_PEFT[task_type].__name__} as AutoPeft
        model = AutoPeft.from_pretrained({str(tmp_path / "plain")!r}).eval()
        assert "peft_softhard" not in sys.modules
        assert model.peft_config["default"].peft_type == "PROMPT_TUNING"
        batch = torch.load({str(tmp_path / "batch.pt")!r})
        with torch.no_grad():
            torch.save(model(**batch).logits, {str(tmp_path / "logits.pt")!r})
    """
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PEFT_SOFTHARD_AUTOLOAD": "0"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environment,
        cwd=REPO.parent, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)


def test_a_model_without_input_embeddings_is_refused():
    class NoEmbeddings(torch.nn.Module):
        config = tiny_llama().config

        def get_input_embeddings(self):
            return None

    with pytest.raises(ValueError, match="exposes no input-embedding module"):
        make(NoEmbeddings())
