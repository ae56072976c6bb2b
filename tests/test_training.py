"""Only the prompt trains; hard mode is straight-through PEZ; the Hugging Face Trainer works as with any adapter."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file

from peft_softhard import SoftHardConfig, nearest_tokens
from peft_softhard.testing import TASK_MODELS, build, random_batch, tiny_gpt2, tiny_llama


def make(base, mode="hard", n=4, task_type="CAUSAL_LM", **config):
    return get_peft_model(base, SoftHardConfig(task_type=task_type, num_virtual_tokens=n, mode=mode, **config))


@pytest.mark.parametrize("task_type", sorted(TASK_MODELS))
def test_only_the_prompt_and_task_head_train(task_type):
    model = make(build(TASK_MODELS[task_type][0]), task_type=task_type)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    prompt = {"prompt_encoder.default.embedding.weight"}
    if task_type in ("SEQ_CLS", "TOKEN_CLS"):  # peft trains and saves the new classifier head too
        assert prompt < trainable and all("classifier.modules_to_save" in n for n in trainable - prompt)
    else:
        assert trainable == prompt
    trainable_count, _ = model.get_nb_trainable_parameters()
    head = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n not in prompt)
    assert trainable_count == 4 * 32 + head


def test_straight_through_value_is_bitwise_the_token_embeddings():
    model = make(build(tiny_gpt2)).train()
    encoder = model.prompt_encoder["default"]
    with torch.no_grad():
        encoder.embedding.weight.add_(torch.randn_like(encoder.embedding.weight) * 0.01)  # P off the token rows
    seen = encoder.prompt_embeddings()
    assert seen.requires_grad
    assert torch.equal(seen, model.get_input_embeddings()(encoder.current_token_ids()))


def test_gradient_at_the_projected_point_reaches_the_continuous_prompt():
    """PEZ: d loss / d P equals the gradient the base model gives its input embeddings at the projected tokens."""
    base = build(tiny_llama)
    model = make(base).train()
    batch = random_batch()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    ids = model.prompt_encoder["default"].current_token_ids()

    embeds = base.get_input_embeddings()(torch.cat([ids.expand(2, -1), batch["input_ids"]], 1)).detach()
    embeds.requires_grad_(True)
    labels = torch.cat([torch.full((2, 4), -100), batch["input_ids"]], 1)
    base(inputs_embeds=embeds, attention_mask=torch.ones(2, 11), labels=labels).loss.backward()
    expected = embeds.grad[:, :4].sum(0)
    assert torch.allclose(model.prompt_encoder["default"].embedding.weight.grad, expected, atol=1e-7)


def test_after_a_step_the_continuous_copy_differs_from_its_projection():
    """The reference code's bug (overwriting P with its projection) would make these equal."""
    model = make(build(tiny_llama)).train()
    encoder = model.prompt_encoder["default"]
    optimizer = torch.optim.AdamW([encoder.embedding.weight], lr=1e-3)
    batch = random_batch()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    projected = model.get_input_embeddings()(encoder.current_token_ids())
    assert not torch.equal(encoder.embedding.weight.detach(), projected)


def test_soft_prompt_learns_a_planted_target():
    """A soft prompt alone (frozen model) must make the model predict a fixed continuation."""
    torch.manual_seed(0)
    model = make(build(lambda: tiny_llama(initializer_range=0.3)), "soft", n=4).train()
    batch = random_batch(batch=4, length=6)
    labels = batch["input_ids"].clone()
    labels[:, :-1] = -100
    labels[:, -1] = 42
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_hugging_face_trainer_trains_and_saves_a_hard_prompt(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    torch.manual_seed(0)
    model = make(build(tiny_llama), "hard")
    start = model.prompt_encoder["default"].embedding.weight.detach().clone()
    ids = random_batch(batch=16, length=6)["input_ids"]
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 6] * 16, "labels": ids.tolist()})
    arguments = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, learning_rate=0.05, save_steps=4,
        logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=data, data_collator=default_data_collator)
    trainer.train()

    encoder = model.prompt_encoder["default"]
    assert not torch.equal(start, encoder.embedding.weight.detach())
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    # whatever the optimiser (the Trainer's default is fused AdamW), the tokens in use are P's projection now
    fresh, _ = nearest_tokens(encoder.embedding.weight.detach(), model.get_input_embeddings(),
                              encoder.allowed_token_ids(), metric="cosine")
    assert torch.equal(encoder.current_token_ids(), fresh[:, 0])
    saved = load_file(tmp_path / "checkpoint-4" / "adapter_model.safetensors")
    assert torch.equal(saved["token_ids"], encoder.current_token_ids())
    assert torch.equal(saved["continuous_prompt"], encoder.embedding.weight.detach())
