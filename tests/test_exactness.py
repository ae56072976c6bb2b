"""The hard-mode contract: the model sees exactly the prompt's tokens, on every architecture and task type.

A hard-mode model's outputs must equal the base model's outputs with the same token ids literally
prepended (bit for bit, or within 1e-6).
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from peft_softhard import SoftHardConfig
from peft_softhard.testing import CAUSAL_MODELS, TASK_MODELS, build, random_batch

TOLERANCE = 1e-6


def hard_model(base, task_type: str, num_virtual_tokens: int = 4, **config):
    config = SoftHardConfig(task_type=task_type, num_virtual_tokens=num_virtual_tokens, mode="hard", **config)
    return get_peft_model(base, config).eval()


def prepend(batch: dict[str, torch.Tensor], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    rows = batch["input_ids"].shape[0]
    input_ids = torch.cat([ids.expand(rows, -1), batch["input_ids"]], dim=1)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


@pytest.mark.parametrize("arch", sorted(CAUSAL_MODELS))
def test_causal_lm_logits_equal_base_with_ids_prepended(arch):
    base = build(CAUSAL_MODELS[arch])
    model = hard_model(base, "CAUSAL_LM")
    batch = random_batch()
    ids = model.prompt_encoder["default"].current_token_ids()
    with torch.no_grad():
        ours = model(**batch).logits
        reference = base(**prepend(batch, ids)).logits
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() <= TOLERANCE


def test_exact_in_bfloat16_with_scaled_embeddings():
    """Gemma3 scales inside its embedding module; in bf16 any re-derivation of the rows would show."""
    from peft_softhard.testing import tiny_gemma3

    base = build(tiny_gemma3).to(torch.bfloat16)
    model = hard_model(base, "CAUSAL_LM")
    batch = random_batch()
    encoder = model.prompt_encoder["default"]
    ids = encoder.current_token_ids()
    assert torch.equal(encoder.prompt_embeddings(), base.get_input_embeddings()(ids))
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base(**prepend(batch, ids)).logits)


@pytest.mark.parametrize("arch", sorted(CAUSAL_MODELS))
def test_causal_lm_generation_equals_base_generation_with_ids_prepended(arch):
    base = build(CAUSAL_MODELS[arch])
    model = hard_model(base, "CAUSAL_LM")
    batch = random_batch(batch=1)
    ids = model.prompt_encoder["default"].current_token_ids()
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    ours = model.generate(**batch, **settings)
    reference = base.generate(**prepend(batch, ids), **settings)
    # peft returns the user's input ids plus the new tokens; the base model returns the prompt ids too.
    assert torch.equal(ours, reference[:, ids.numel() :])


def test_seq2seq_logits_and_generation_equal_base_with_ids_prepended():
    base = build(TASK_MODELS["SEQ_2_SEQ_LM"][0])
    model = hard_model(base, "SEQ_2_SEQ_LM")
    batch = random_batch()
    decoder_input_ids = torch.tensor([[0, 5, 6], [0, 7, 8]])
    ids = model.prompt_encoder["default"].current_token_ids()
    with torch.no_grad():
        ours = model(**batch, decoder_input_ids=decoder_input_ids).logits
        reference = base(**prepend(batch, ids), decoder_input_ids=decoder_input_ids).logits
    assert (ours - reference).abs().max().item() <= TOLERANCE
    settings = {"max_new_tokens": 5, "do_sample": False}
    assert torch.equal(model.generate(**batch, **settings), base.generate(**prepend(batch, ids), **settings))


@pytest.mark.parametrize("task_type", ["SEQ_CLS", "TOKEN_CLS", "FEATURE_EXTRACTION"])
def test_encoder_task_outputs_equal_base_with_ids_prepended(task_type):
    base = build(TASK_MODELS[task_type][0])
    model = hard_model(base, task_type)
    batch = random_batch()
    ids = model.prompt_encoder["default"].current_token_ids()
    with torch.no_grad():
        ours, reference = model(**batch), base(**prepend(batch, ids))
    field = "last_hidden_state" if task_type == "FEATURE_EXTRACTION" else "logits"
    assert getattr(ours, field).shape == getattr(reference, field).shape
    assert (getattr(ours, field) - getattr(reference, field)).abs().max().item() <= TOLERANCE



def test_right_padded_batch_gives_each_row_what_it_gives_alone():
    model = hard_model(build(CAUSAL_MODELS["llama"]), "CAUSAL_LM")
    rows = [[5, 6, 7], [8, 9, 10, 11, 12]]
    padded = torch.tensor([rows[0] + [0, 0], rows[1]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        together = model(input_ids=padded, attention_mask=mask).logits
        for index, row in enumerate(rows):
            alone = model(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row))).logits[0]
            assert (together[index, : alone.shape[0]] - alone).abs().max().item() <= 1e-5
