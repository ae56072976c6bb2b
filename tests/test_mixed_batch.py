"""Mixed-task batches: every row with its own prompt adapter (`adapter_names=`) computes what it computes alone;
ensembles; adding, training and deleting adapters leaves the others alone."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from peft import LoraConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

from peft_softhard import SoftHardConfig
from peft_softhard.objectives import ClassificationObjective, SequenceClassificationObjective, TargetTextObjective
from peft_softhard.optimization.training import TrainConfig, train_prompt
from peft_softhard.peft_boundary import prompted_calls
from peft_softhard.prompt_layout import length_groups
from peft_softhard.serving import load_adapters
from peft_softhard.serving.ensemble import combine_log_probs, score_ensemble
from peft_softhard.testing import (
    ARCHITECTURES,
    build,
    padded_batch,
    random_rows,
    tiny_llama,
)

from conftest import NEGATIVE, POSITIVE

TOLERANCE = 1e-5


@pytest.fixture
def padding_tokenizer(gpt2_tokenizer):
    """GPT-2's tokenizer with a padding token (as `load_model` sets one), for batches of texts."""
    tokenizer = copy.deepcopy(gpt2_tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


NAMES = ["soft", "hard", "__base__", "long", "hard"]


def model_with_adapters(task: str, factory):
    """Three SOFTHARD adapters (soft and hard, 3, 5 and 8 tokens), each with its own random head if any."""
    model = get_peft_model(build(factory), SoftHardConfig(task_type=task, num_virtual_tokens=3, init="random"),
                           adapter_name="soft")
    model.add_adapter("hard", SoftHardConfig(task_type=task, num_virtual_tokens=5, mode="hard"))
    model.add_adapter("long", SoftHardConfig(task_type=task, num_virtual_tokens=8, mode="hard", init="random"))
    return randomise_heads(model, seed=1)


def randomise_heads(model, seed: int):
    """Distinct per-adapter heads, so a row given another adapter's head would show it; in eval mode."""
    torch.manual_seed(seed)
    for name, parameter in model.named_parameters():
        if "modules_to_save" in name:
            torch.nn.init.normal_(parameter)
    return model.eval()


def padded_rows(lengths: list[int], side: str, seed: int = 0) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    rows = random_rows(lengths, seed=seed)
    return rows, padded_batch(rows, side)


def run_alone(model, reference, name: str, row: torch.Tensor, **kwargs):
    """One row, no padding, its adapter active ("__base__": the untouched base model)."""
    if name == "__base__":
        return reference(input_ids=row[None], **kwargs)
    model.set_adapter(name)
    return model(input_ids=row[None], **kwargs)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("case", list(ARCHITECTURES))
@torch.no_grad()
def test_every_row_equals_running_it_alone(case, side):
    task, factory = ARCHITECTURES[case]
    model, reference = model_with_adapters(task, factory), build(factory)
    rows, batch = padded_rows([6, 4, 5, 6, 2], side)
    decoder = {"decoder_input_ids": torch.tensor([[0, 5, 9]])} if task == "SEQ_2_SEQ_LM" else {}
    mixed_decoder = {k: v.expand(len(rows), -1) for k, v in decoder.items()}
    output = model(**batch, **mixed_decoder, adapter_names=NAMES)
    key = "last_hidden_state" if task == "FEATURE_EXTRACTION" else "logits"
    width = batch["input_ids"].shape[1]
    worst = 0.0
    for i, (name, row) in enumerate(zip(NAMES, rows, strict=True)):
        alone = run_alone(model, reference, name, row, **decoder)[key][0]
        mixed = output[key][i]
        if task in ("CAUSAL_LM", "TOKEN_CLS", "FEATURE_EXTRACTION"):
            # the input's columns are the last `width`; the row's real tokens sit where the padding leaves them
            real = batch["attention_mask"][i].bool()
            prompt = alone.shape[0] - len(row)
            assert torch.allclose(mixed[-width:][real], alone[prompt:], atol=TOLERANCE, rtol=0)
            if prompt:  # the prompt's own positions too, right-aligned before the input columns
                assert torch.allclose(mixed[-width - prompt : -width], alone[:prompt], atol=TOLERANCE, rtol=0)
            worst = max(worst, (mixed[-width:][real] - alone[prompt:]).abs().max().item())
        else:
            assert torch.allclose(mixed, alone, atol=TOLERANCE, rtol=0)
            worst = max(worst, (mixed - alone).abs().max().item())
    print(f"{case} ({side} padding): max |mixed - alone| = {worst:.2e}")


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", ["gpt2", "llama", "gemma3", "t5"])
@torch.no_grad()
def test_generated_text_equals_the_one_row_generation(case, side):
    task, factory = ARCHITECTURES[case]
    model, reference = model_with_adapters(task, factory), build(factory)
    rows, batch = padded_rows([6, 3, 4, 5, 2], side, seed=2)
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    generated = model.generate(**batch, adapter_names=NAMES, **settings)
    for i, (name, row) in enumerate(zip(NAMES, rows, strict=True)):
        if name == "__base__":
            alone = reference.generate(input_ids=row[None], **settings)[0]
        else:
            model.set_adapter(name)
            alone = model.generate(input_ids=row[None], **settings)[0]
        if task == "CAUSAL_LM":  # input ids (as given, padding included) then new tokens, as peft returns them
            assert torch.equal(generated[i, : batch["input_ids"].shape[1]], batch["input_ids"][i])
            assert generated[i, batch["input_ids"].shape[1] :].tolist() == alone[len(row) :].tolist()
        else:
            assert generated[i].tolist() == alone.tolist()


@torch.no_grad()
def test_mixed_batch_loss_with_labels_is_the_mean_of_the_rows_losses():
    model = model_with_adapters("CAUSAL_LM", ARCHITECTURES["llama"][1])
    rows, batch = padded_rows([5, 5, 5], "right", seed=3)
    names = ["soft", "long", "hard"]
    loss = model(**batch, labels=batch["input_ids"], adapter_names=names).loss
    alone = []
    for name, row in zip(names, rows, strict=True):
        model.set_adapter(name)
        alone.append(model(input_ids=row[None], labels=row[None]).loss)
    assert torch.allclose(loss, torch.stack(alone).mean(), atol=TOLERANCE)


@pytest.mark.parametrize("config", [PromptTuningConfig, PromptEncoderConfig])
@torch.no_grad()
def test_stock_prompt_tuning_adapters_mix_too(config):
    model = get_peft_model(build(tiny_llama), config(task_type="CAUSAL_LM", num_virtual_tokens=2), adapter_name="a")
    model.add_adapter("b", config(task_type="CAUSAL_LM", num_virtual_tokens=6))
    model.eval()
    rows, batch = padded_rows([4, 4], "right")
    mixed = model(**batch, adapter_names=["b", "a"]).logits
    for i, name in enumerate(["b", "a"]):
        model.set_adapter(name)
        alone = model(input_ids=rows[i][None]).logits[0]
        assert torch.allclose(mixed[i, -len(alone) :], alone, atol=TOLERANCE, rtol=0)


@torch.no_grad()
def test_lora_adapter_names_still_go_to_peft():
    model = get_peft_model(build(tiny_llama), LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"],
                                                         init_lora_weights=False)).eval()
    batch = padded_rows([4, 4], "right")[1]
    mixed = model(**batch, adapter_names=["default", "__base__"]).logits
    assert torch.allclose(mixed[0], model(**batch).logits[0])
    with model.disable_adapter():
        assert torch.allclose(mixed[1], model(**batch).logits[1])


@pytest.mark.parametrize(("names", "message"), [
    (["soft"], "one adapter name per row"),
    ("soft", "one adapter name per row"),
    (["soft", "nope"], "Unknown adapters ['nope']"),
])
def test_bad_adapter_names_are_refused(names, message):
    model = model_with_adapters("CAUSAL_LM", tiny_llama)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model(**padded_rows([3, 3], "right")[1], adapter_names=names)


# ---------------------------------------------------------------------------------------------- continual use
def _snapshot(model, names: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every parameter of the named adapters, and their outputs on a fixed mixed batch."""
    parameters = {k: v.detach().clone() for k, v in model.named_parameters()
                  if any(f".{name}." in k for name in names)}
    with torch.no_grad():
        logits = model(**padded_rows([5] * len(names), "right", seed=7)[1], adapter_names=names).logits
    return parameters, logits


def _assert_same(before, after):
    assert before[0].keys() == after[0].keys()
    for key in before[0]:
        assert torch.equal(before[0][key], after[0][key]), key
    assert torch.equal(before[1], after[1])


@pytest.mark.parametrize("task", ["CAUSAL_LM", "SEQ_CLS"])
def test_adding_training_deleting_an_adapter_leaves_the_others_unchanged(task, files, padding_tokenizer, tmp_path):
    if task == "SEQ_CLS":
        base = lambda: transformers.AutoModelForSequenceClassification.from_pretrained(files / "tiny-bert")  # noqa: E731
        objective = SequenceClassificationObjective(padding_tokenizer, POSITIVE + NEGATIVE, [1] * 6 + [0] * 6,
                                                    num_labels=2)
    else:
        base = lambda: build(lambda: tiny_llama(initializer_range=0.3))  # noqa: E731
        objective = TargetTextObjective(None, target=[5, 6, 7], prefixes=[[10, 11], [12]])
    model = get_peft_model(base(), SoftHardConfig(task_type=task, num_virtual_tokens=3, init="random"), "a").eval()
    model.add_adapter("b", SoftHardConfig(task_type=task, num_virtual_tokens=4, mode="hard"))
    before = _snapshot(model, ["a", "b"])

    model.add_adapter("c", SoftHardConfig(task_type=task, num_virtual_tokens=2, init="random"))
    _assert_same(before, _snapshot(model, ["a", "b"]))
    model.set_adapter("c")
    trained_from = model.prompt_encoder["c"].embedding.weight.detach().clone()
    config = TrainConfig(steps=3, lr=0.1, batch_size=2, show_progress=False, load_best_at_end=False)  # the last step
    train_prompt(model, objective, config, tmp_path / "c")
    assert not torch.equal(model.prompt_encoder["c"].embedding.weight, trained_from)  # c did train
    _assert_same(before, _snapshot(model, ["a", "b"]))
    with_c = _snapshot(model, ["a", "c", "b"])

    model.save_pretrained(tmp_path / "all")
    reloaded = load_adapters(base(), tmp_path / "all").eval()
    assert sorted(reloaded.peft_config) == ["a", "b", "c"]
    _assert_same(with_c, _snapshot(reloaded, ["a", "c", "b"]))

    model.delete_adapter("c")
    _assert_same(before, _snapshot(model, ["a", "b"]))


def test_load_adapters_says_when_there_are_none(tmp_path):
    with pytest.raises(ValueError, match="No adapters in"):
        load_adapters(build(tiny_llama), tmp_path)


# ---------------------------------------------------------------------------------------------- ensembles
def test_combining_by_mean_and_by_vote():
    log_probs = torch.tensor([  # 3 members, 2 examples, 2 classes
        [[-0.1, -2.4], [-0.6, -0.8]],
        [[-0.2, -1.7], [-3.0, -0.05]],
        [[-3.0, -0.05], [-0.6, -0.8]],
    ])
    assert combine_log_probs(log_probs, "mean").tolist() == [0, 1]  # example 1: one confident member wins
    assert combine_log_probs(log_probs, "vote").tolist() == [0, 0]  # example 1: two members against one
    tie = torch.tensor([[[-0.1, -2.4]], [[-1.0, -0.5]]])  # one vote each: the higher mean log-probability decides
    assert combine_log_probs(tie, "vote").tolist() == [0]
    assert combine_log_probs(tie[:, :, [1, 0]], "vote").tolist() == [1]
    with pytest.raises(ValueError, match="choose one of mean, vote"):
        combine_log_probs(log_probs, "median")


def test_ensemble_members_score_as_they_do_alone(files, gpt2_tokenizer):
    base = transformers.AutoModelForCausalLM.from_pretrained(files / "tiny-gpt2").eval()
    objective = ClassificationObjective(gpt2_tokenizer, POSITIVE, [1] * 6, template=" {text}. It was",
                                        label_words=[" bad", " good"], held_out_texts=POSITIVE + NEGATIVE,
                                        held_out_labels=[1] * 6 + [0] * 6)
    model = get_peft_model(base, SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, init="random"), "a")
    model.add_adapter("b", SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, mode="hard"))
    model.eval()
    scores = score_ensemble(model, objective, ["a", "b", "__base__"])
    assert scores.log_probs.shape == (3, 12, 2)
    for i, (name, predictions) in enumerate(scores.member_predictions().items()):
        if name == "__base__":
            prompt = torch.zeros(0, dtype=torch.long)
        else:
            prompt = model.prompt_encoder[name].prompt_embeddings().detach()
        alone = objective._candidate_class_log_probs(base, prompt[None], objective.held_out[0], 64)[0]
        assert torch.allclose(scores.log_probs[i], alone.log_softmax(-1), atol=TOLERANCE)
        assert predictions == objective.predictions(base, prompt)
    assert scores.predictions("mean") == combine_log_probs(scores.log_probs, "mean").tolist()


def test_sequence_classification_ensemble_uses_each_adapters_head(files, padding_tokenizer):
    base = transformers.AutoModelForSequenceClassification.from_pretrained(files / "tiny-bert").eval()
    objective = SequenceClassificationObjective(padding_tokenizer, POSITIVE, [1] * 6, num_labels=2,
                                                held_out_texts=POSITIVE + NEGATIVE, held_out_labels=[1] * 6 + [0] * 6)
    model = model_with_heads(base)
    scores = score_ensemble(model, objective, ["a", "b"])
    for i, name in enumerate(["a", "b"]):
        model.set_adapter(name)
        batch = padding_tokenizer(POSITIVE + NEGATIVE, return_tensors="pt", padding=True)
        with torch.no_grad():
            alone = model(**batch).logits.log_softmax(-1)
        assert torch.allclose(scores.log_probs[i], alone, atol=TOLERANCE)


def model_with_heads(base):
    model = get_peft_model(base, SoftHardConfig(task_type="SEQ_CLS", num_virtual_tokens=2, init="random"), "a")
    model.add_adapter("b", SoftHardConfig(task_type="SEQ_CLS", num_virtual_tokens=3, mode="hard"))
    return randomise_heads(model, seed=0)


# ---------------------------------------------------------------------------------------------- grouping by length
def test_length_groups_balance_padding_against_the_cost_of_a_forward():
    totals = [3, 10, 4, 11]
    assert length_groups(totals, overhead=100) == [[0, 2, 1, 3]]
    assert length_groups(totals, overhead=5) == [[0, 2], [1, 3]]
    assert length_groups(totals, overhead=0) == [[0], [2], [1], [3]]


@pytest.mark.parametrize("case", ["llama", "gpt2-seq-cls", "bert-token-cls", "bert"])
@torch.no_grad()
def test_a_mixed_batch_run_in_length_groups_gives_what_one_forward_gives(case, monkeypatch):
    task, factory = ARCHITECTURES[case]
    model = model_with_adapters(task, factory)
    rows, batch = padded_rows([6, 1, 5, 6, 2], "left")
    forwards = []
    model.base_model.register_forward_hook(lambda *_: forwards.append(1))
    monkeypatch.setattr(prompted_calls, "GROUP_OVERHEAD_TOKENS", 10**6)
    one = model(**batch, adapter_names=NAMES)
    monkeypatch.setattr(prompted_calls, "GROUP_OVERHEAD_TOKENS", 0)
    grouped = model(**batch, adapter_names=NAMES)
    assert len(forwards) > 2  # one, then several
    key = "last_hidden_state" if task == "FEATURE_EXTRACTION" else "logits"
    assert grouped[key].shape == one[key].shape
    if one[key].dim() == 3:  # compare where rows have tokens: their prompts' and their inputs' columns
        width, longest = batch["input_ids"].shape[1], max(model.prompt_encoder[n].embedding.weight.shape[0]
                                                            for n in set(NAMES) - {"__base__"})
        for i, name in enumerate(NAMES):
            prompt = 0 if name == "__base__" else model.prompt_encoder[name].embedding.weight.shape[0]
            used = torch.cat([torch.arange(longest - prompt, longest),
                              longest + batch["attention_mask"][i].nonzero().flatten()])
            assert used.max() < longest + width
            torch.testing.assert_close(grouped[key][i, used], one[key][i, used], atol=TOLERANCE, rtol=0)
    else:
        torch.testing.assert_close(grouped[key], one[key], atol=TOLERANCE, rtol=0)
