"""Prompts anywhere: a hard prompt at a row's slot mark gives the base model's outputs and generations with its ids
literally at that place — every architecture, left and right padding, KV cache, mixed batches, the Trainer's
batches — and the text side (`tokenize_with_prompt`) marks the slot of a template, a chat's system turn and the
end of its last user turn."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, DataCollatorForSeq2Seq

from peft_softhard import (
    PROMPT_SLOT_ID,
    ClassificationObjective,
    PairsObjective,
    SoftHardConfig,
    export_prompt_tuning,
    placed_template,
    placed_text,
    tokenize_with_prompt,
)
from peft_softhard.app.cli import main
from peft_softhard.files import export_kobold
from peft_softhard.objectives.templates import text_ids
from peft_softhard.prompt_layout import insert_prompts
from peft_softhard.testing import ARCHITECTURES, build, padded_batch, random_rows

from conftest import GPT2_TOKENIZER, NEGATIVE, POSITIVE, softhard

TOLERANCE = 1e-5
PAD = 0
LENGTHS, OFFSETS = [7, 2, 5], [3, 0, 5]  # a slot inside, in front of and after a row
DECODER_INPUTS = torch.tensor([[0, 5, 9]])
GENERATING = ["gpt2", "llama", "gemma3", "t5"]
SLOT = {"placement": "slot", "template": "{text}{prompt}"}


@pytest.fixture
def tokenizer():
    """The real GPT-2 tokenizer, a copy of its own (tests change its padding and chat template)."""
    tokenizer = AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER))
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def slot_model(case: str, num_virtual_tokens: int = 3, mode: str = "hard", **placement):
    task, factory = ARCHITECTURES[case]
    config = SoftHardConfig(task_type=task, num_virtual_tokens=num_virtual_tokens, mode=mode, init="random",
                            **(placement or SLOT))
    return get_peft_model(build(factory), config).eval(), build(factory)


def marked(row: torch.Tensor, offset: int) -> torch.Tensor:
    return torch.cat([row[:offset], torch.tensor([PROMPT_SLOT_ID]), row[offset:]])


def output_of(task: str, output) -> torch.Tensor:
    return output.last_hidden_state if task == "FEATURE_EXTRACTION" else output.logits


def literal(reference, task: str, ids: torch.Tensor, row: torch.Tensor, offset: int) -> torch.Tensor:
    """The base model's output with the prompt's ids literally at the slot (no padding, a batch of one)."""
    extra = {"decoder_input_ids": DECODER_INPUTS} if task == "SEQ_2_SEQ_LM" else {}
    return output_of(task, reference(input_ids=torch.cat([row[:offset], ids, row[offset:]])[None], **extra))[0]


def assert_row_matches(task, batched, mask, ids_row, alone, prompt: int, offset: int):
    """`batched` [n + L, ...] (the prompt's n columns, then the L input columns as given, the mark's column
    unspecified) or a row's pooled output, against the row with the ids literally at its slot."""
    atol = TOLERANCE * max(1.0, alone.abs().max().item())
    if task not in ("CAUSAL_LM", "TOKEN_CLS", "FEATURE_EXTRACTION"):
        torch.testing.assert_close(batched, alone, atol=atol, rtol=0)
        return
    real = mask.bool() & (ids_row != PROMPT_SLOT_ID)
    inputs = batched[prompt:][real]
    assert batched.shape[0] == prompt + mask.shape[0]
    torch.testing.assert_close(inputs[:offset], alone[:offset], atol=atol, rtol=0)
    torch.testing.assert_close(batched[:prompt], alone[offset : offset + prompt], atol=atol, rtol=0)
    torch.testing.assert_close(inputs[offset:], alone[offset + prompt :], atol=atol, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", list(ARCHITECTURES))
@torch.no_grad()
def test_every_row_equals_the_base_model_with_the_ids_at_its_slot(case, side):
    task = ARCHITECTURES[case][0]
    model, reference = slot_model(case)
    ids = model.prompt_encoder["default"].current_token_ids()
    rows = random_rows(LENGTHS)
    batch = padded_batch([marked(r, o) for r, o in zip(rows, OFFSETS, strict=True)], side)
    extra = {"decoder_input_ids": DECODER_INPUTS.expand(len(rows), -1)} if task == "SEQ_2_SEQ_LM" else {}
    out = output_of(task, model(**batch, **extra))
    for i, (row, offset) in enumerate(zip(rows, OFFSETS, strict=True)):
        assert_row_matches(task, out[i], batch["attention_mask"][i], batch["input_ids"][i],
                           literal(reference, task, ids, row, offset), len(ids), offset)


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", GENERATING)
@torch.no_grad()
def test_generation_equals_the_base_model_with_the_ids_at_the_slot(case, side, cache):
    task = ARCHITECTURES[case][0]
    model, reference = slot_model(case)
    ids = model.prompt_encoder["default"].current_token_ids()
    rows, offsets = random_rows([6, 3, 5], seed=2), [2, 3, 0]
    batch = padded_batch([marked(r, o) for r, o in zip(rows, offsets, strict=True)], side)
    settings_ = {"max_new_tokens": 6, "pad_token_id": PAD, "use_cache": cache, "do_sample": False}
    generated = model.generate(**batch, **settings_)
    given = batch["input_ids"].shape[1]
    if task == "CAUSAL_LM":
        assert torch.equal(generated[:, :given], batch["input_ids"])  # the input as given, mark included
    for i, (row, offset) in enumerate(zip(rows, offsets, strict=True)):
        with_ids = torch.cat([row[:offset], ids, row[offset:]])[None]
        expected = reference.generate(input_ids=with_ids, **settings_)[0]
        expected = expected[with_ids.shape[1]:] if task == "CAUSAL_LM" else expected
        ours = generated[i, given:] if task == "CAUSAL_LM" else generated[i]
        assert ours[: len(expected)].tolist() == expected.tolist()


@settings(max_examples=25, deadline=None)
@given(
    case=st.sampled_from(["llama", "gpt2", "bert-token-cls"]),
    rows_and_offsets=st.lists(st.integers(1, 8).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))),
                              min_size=1, max_size=4),
    side=st.sampled_from(["left", "right"]),
    prompt_length=st.integers(1, 5),
    extra_padding=st.integers(0, 2),
    seed=st.integers(0, 1000),
)
@torch.no_grad()
def test_any_slot_offset_row_length_and_padding_equals_the_literal_row(case, rows_and_offsets, side, prompt_length,
                                                                       extra_padding, seed):
    task = ARCHITECTURES[case][0]
    model, reference = slot_model(case, num_virtual_tokens=prompt_length)
    ids = model.prompt_encoder["default"].current_token_ids()
    lengths, offsets = zip(*rows_and_offsets, strict=True)
    rows = random_rows(list(lengths), seed=seed)
    batch = padded_batch([marked(r, o) for r, o in zip(rows, offsets, strict=True)], side,
                         width=max(lengths) + 1 + extra_padding)
    out = output_of(task, model(**batch))
    for i, (row, offset) in enumerate(zip(rows, offsets, strict=True)):
        assert_row_matches(task, out[i], batch["attention_mask"][i], batch["input_ids"][i],
                           literal(reference, task, ids, row, offset), len(ids), offset)


@torch.no_grad()
def test_a_mixed_batch_puts_each_rows_prompt_at_its_own_place():
    """A prefix adapter, a slot adapter and no prompt in one batch: each row as the base model with its own
    adapter's ids where they belong."""
    task, factory = ARCHITECTURES["llama"]
    reference = build(factory)
    model = get_peft_model(build(factory), SoftHardConfig(task_type=task, num_virtual_tokens=2, mode="hard",
                                                          init="random"), adapter_name="front")
    model.add_adapter("slot", SoftHardConfig(task_type=task, num_virtual_tokens=4, mode="hard", init="random",
                                             **SLOT))
    model.eval()
    rows = random_rows([5, 6, 4], seed=7)
    given = [rows[0], marked(rows[1], 2), marked(rows[2], 1)]  # the base row's mark is ignored: no prompt
    batch = padded_batch(given, "left")
    out = model(**batch, adapter_names=["front", "slot", "__base__"]).logits
    front = model.prompt_encoder["front"].current_token_ids()
    slot = model.prompt_encoder["slot"].current_token_ids()
    width = out.shape[1] - batch["input_ids"].shape[1]
    expected = [(literal(reference, task, front, rows[0], 0), len(front), 0),
                (literal(reference, task, slot, rows[1], 2), len(slot), 2),
                (literal(reference, task, slot[:0], rows[2], 1), 0, 1)]
    for i, (alone, prompt, offset) in enumerate(expected):
        row_out = out[i, width - prompt:]  # this row's prompt is right-aligned in the prompt columns
        assert_row_matches(task, row_out, batch["attention_mask"][i], batch["input_ids"][i], alone, prompt, offset)


def test_the_loss_of_a_collated_batch_is_the_base_models_with_the_ids_at_the_slot(tokenizer):
    """A Trainer's batch: rows from `tokenize_with_prompt` with targets, padded by a stock collator (labels
    given, or copied from the input ids with the mark in them); the loss is the base model's with the prompt's
    ids written in and the same targets."""
    model, reference = slot_model("gpt2", placement="slot", template="Review: {text}\n{prompt}Sentiment:")
    config = model.peft_config["default"]
    ids = model.prompt_encoder["default"].current_token_ids().tolist()
    texts, targets = ["a fine film", "dull"], [" positive", " negative"]
    rows = tokenize_with_prompt(tokenizer, config, texts, targets=targets)
    features = [{key: rows[key][i] for key in rows} for i in range(len(texts))]
    batch = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)(features)
    literal_rows = [[ids if t == PROMPT_SLOT_ID else [t] for t in row] for row in rows["input_ids"]]
    literal_rows = [[t for part in row for t in part] for row in literal_rows]
    literal_labels = [[-100] * (len(row) - 1) + [label[-1]] for row, label in zip(literal_rows, rows["labels"],
                                                                                   strict=True)]
    with torch.no_grad():
        ours = model(**batch).loss
        theirs = torch.stack([reference(input_ids=torch.tensor([row]), labels=torch.tensor([labels])).loss
                              for row, labels in zip(literal_rows, literal_labels, strict=True)]).mean()
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
        # a language-modelling collator copies the ids (mark included) into the labels: the mark is not a target
        lm = DataCollatorForLanguageModeling(tokenizer, mlm=False)([{"input_ids": rows["input_ids"][0]}])
        mark = rows["input_ids"][0].index(PROMPT_SLOT_ID)
        labels = list(literal_rows[0])
        labels[mark : mark + len(ids)] = [-100] * len(ids)  # the prompt's own tokens are not targets
        expected = reference(input_ids=torch.tensor([literal_rows[0]]), labels=torch.tensor([labels])).loss
        torch.testing.assert_close(model(**lm).loss, expected, atol=1e-5, rtol=0)


def test_the_placement_survives_save_and_load(tmp_path):
    model, reference = slot_model("llama", placement="slot", template="Q: {text}{prompt} A:")
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(reference, tmp_path).eval()
    config = loaded.peft_config["default"]
    assert (config.placement, config.template) == ("slot", "Q: {text}{prompt} A:")
    batch = padded_batch([marked(r, o) for r, o in zip(random_rows([4, 6]), [1, 6], strict=True)], "left")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)


def test_rows_without_their_slot_mark_are_refused_with_the_fix():
    model, _ = slot_model("llama")
    with pytest.raises(ValueError, match="marks no slot.*tokenize_with_prompt"):
        model(**padded_batch(random_rows([4, 3]), "left"))
    twice = torch.cat([marked(random_rows([4])[0], 1), torch.tensor([PROMPT_SLOT_ID])])[None]
    with pytest.raises(ValueError, match="more than one prompt slot"):
        model(input_ids=twice)


@pytest.mark.parametrize(("settings_", "message"), [
    ({"placement": "slot"}, "needs a template with {text} and {prompt}"),
    ({"placement": "slot", "template": "{text} no slot"}, "needs a template"),
    ({"placement": "system", "template": "{text}{prompt}"}, "marks a {prompt} slot but placement is 'system'"),
    ({"placement": "prefix", "template": "no text"}, "must contain {text} once"),
    ({"placement": "middle"}, "Unknown placement 'middle'"),
])
def test_a_bad_placement_is_refused_with_the_fix(settings_, message):
    with pytest.raises(ValueError, match=message):
        SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, **settings_)


# ------------------------------------------------------------------------------------------------------ chat
CHATML = ("{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
          "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
          "{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
          "{% endif %}")


@pytest.fixture
def chat_tokenizer(tokenizer):
    tokenizer.chat_template = CHATML
    return tokenizer


def texts_around_the_mark(tokenizer, placement: str, messages) -> tuple[str, str]:
    config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, placement=placement)
    row = tokenize_with_prompt(tokenizer, config, messages=[messages])["input_ids"][0]
    mark = row.index(PROMPT_SLOT_ID)
    return tokenizer.decode(row[:mark]), tokenizer.decode(row[mark + 1 :])


def test_the_system_placement_is_the_system_turn(chat_tokenizer):
    user = [{"role": "user", "content": "Hi"}]
    before, after = texts_around_the_mark(chat_tokenizer, "system", user)
    assert before == "<|im_start|>system\n"  # the template's default system text is replaced
    assert after == "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    own = [{"role": "system", "content": " Be brief."}, *user]
    before, after = texts_around_the_mark(chat_tokenizer, "system", own)
    assert (before, after.split("<|im_end|>")[0]) == ("<|im_start|>system\n", " Be brief.")  # the prompt, then it


def test_the_suffix_placement_ends_the_last_user_message(chat_tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"}]
    before, after = texts_around_the_mark(chat_tokenizer, "suffix", messages)
    assert before.endswith("<|im_start|>user\nBye") and "Hi<|im_end|>" in before
    assert after == "<|im_end|>\n<|im_start|>assistant\n"


@torch.no_grad()
def test_a_system_prompt_generates_what_the_base_model_does_with_its_ids_in_the_system_turn(chat_tokenizer):
    model, reference = slot_model("gpt2", placement="system")
    config = model.peft_config["default"]
    chats = [[{"role": "user", "content": "Hi there"}], [{"role": "user", "content": "Tell me a story"}]]
    chat_tokenizer.padding_side = "left"
    batch = tokenize_with_prompt(chat_tokenizer, config, messages=chats, return_tensors="pt")
    settings_ = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": chat_tokenizer.pad_token_id}
    ours = model.generate(**batch, **settings_)[:, batch["input_ids"].shape[1]:]
    ids = model.prompt_encoder["default"].current_token_ids().tolist()
    for i, row in enumerate(tokenize_with_prompt(chat_tokenizer, config, messages=chats)["input_ids"]):
        mark = row.index(PROMPT_SLOT_ID)
        with_ids = torch.tensor([row[:mark] + ids + row[mark + 1 :]])
        assert ours[i].tolist() == reference.generate(input_ids=with_ids, **settings_)[0, with_ids.shape[1]:].tolist()


def test_a_text_for_a_chat_placement_is_the_user_message_in_the_adapters_template(chat_tokenizer):
    system = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, placement="system",
                            template="Review: {text}")
    as_text = tokenize_with_prompt(chat_tokenizer, system, texts=["a fine film"])
    as_chat = tokenize_with_prompt(chat_tokenizer, system, messages=[[{"role": "user",
                                                                       "content": "Review: a fine film"}]])
    assert as_text["input_ids"] == as_chat["input_ids"]
    assert PROMPT_SLOT_ID in as_text["input_ids"][0]
    assert placed_template(chat_tokenizer, "Review: {text}", "system") == (
        "<|im_start|>system\n{prompt}<|im_end|>\n<|im_start|>user\nReview: {text}<|im_end|>\n<|im_start|>assistant\n")


def test_chats_for_a_slot_and_chat_placements_without_a_chat_template_are_refused(chat_tokenizer):
    slot = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, **SLOT)
    with pytest.raises(ValueError, match="give texts=, not messages"):
        tokenize_with_prompt(chat_tokenizer, slot, messages=[[{"role": "user", "content": "Hi"}]])
    system = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, placement="system")
    chat_tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_with_prompt(chat_tokenizer, system, messages=[[{"role": "user", "content": "Hi"}]])
    with pytest.raises(ValueError, match="has none"):
        tokenize_with_prompt(chat_tokenizer, system, texts=["Hi"])


# ------------------------------------------------------------------------------------------------ the CLI
def placed_args(files, template: str) -> list[str]:
    return ["--train-file", str(files / "train.csv"), "--eval-file", str(files / "eval.csv"), "--template", template,
            "--label-word", " bad", "--label-word", " good"]


def trained(capsys, model: Path, tmp_path: Path, *extra: str) -> dict:
    return softhard(capsys, "train", "--model", str(model), *extra, "--num-virtual-tokens", "2", "--mode", "hard",
                    "--steps", "2", "--eval-interval", "1", "--batch-size", "4", "--output-dir", str(tmp_path),
                    "--device", "cpu")


def test_train_at_the_templates_slot_saves_it_and_peft_answers_as_the_objective_scored(capsys, files, tmp_path):
    """An adapter trained at `{prompt}` keeps its placement; `eval --adapter` scores it there again, and the peft
    model on `tokenize_with_prompt` rows gives the classes the objective gave."""
    template = " {text}. It{prompt} was"
    run = trained(capsys, files / "tiny-gpt2", tmp_path, *placed_args(files, template))["runs"][0]
    config = PeftConfig.from_pretrained(run["adapter"])
    assert (config.placement, config.template) == ("slot", template)
    scored = softhard(capsys, "eval", "--model", str(files / "tiny-gpt2"), *placed_args(files, template),
                      "--adapter", run["adapter"])
    assert scored["accuracy"] == run["eval"]["accuracy"]

    tokenizer = AutoTokenizer.from_pretrained(str(files / "tiny-gpt2"))
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(files / "tiny-gpt2"), run["adapter"]).eval()
    texts = POSITIVE + NEGATIVE
    batch = tokenize_with_prompt(tokenizer, model.peft_config["default"], texts, return_tensors="pt")
    words = [tokenizer(" bad")["input_ids"][0], tokenizer(" good")["input_ids"][0]]
    with torch.no_grad():
        ours = model(**batch).logits[:, -1, words].argmax(-1).tolist()
    objective = ClassificationObjective(tokenizer, texts, [0] * len(texts), template=template,
                                        label_words=[" bad", " good"], held_out_texts=texts,
                                        held_out_labels=[0] * len(texts))
    prompt = model.prompt_encoder["default"].current_token_ids()
    assert ours == objective.predictions(model.get_base_model(), prompt)


def test_train_in_the_system_turn_of_the_chat_template(capsys, files, tmp_path):
    chat_model = tmp_path / "tiny-gpt2-chat"
    shutil.copytree(files / "tiny-gpt2", chat_model)
    tokenizer = AutoTokenizer.from_pretrained(str(chat_model))
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(chat_model)
    template = " {text}. It was"
    run = trained(capsys, chat_model, tmp_path / "out", *placed_args(files, template), "--placement", "system")
    run = run["runs"][0]
    config = PeftConfig.from_pretrained(run["adapter"])
    assert (config.placement, config.template) == ("system", template)
    scored = softhard(capsys, "eval", "--model", str(chat_model), *placed_args(files, template),
                      "--adapter", run["adapter"])
    assert scored["accuracy"] == run["eval"]["accuracy"]


@pytest.mark.parametrize(("arguments", "message"), [
    (["--placement", "slot"], "exactly when the placement is 'slot'"),
    (["--placement", "system"], "this tokenizer has none"),
    (["--chat"], "this tokenizer has none"),
    (["--task-type", "SEQ_CLS", "--placement", "system"], "a corpus and a SEQ_CLS head take it in front"),
])
def test_a_placement_the_model_or_task_cannot_take_is_refused(capsys, files, tmp_path, arguments, message):
    code = main(["train", "--model", str(files / "tiny-gpt2"), *placed_args(files, " {text}. It was"), *arguments,
                 "--steps", "1", "--output-dir", str(tmp_path)])
    assert code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ exports
def slot_adapter(tokenizer, words: list[str]):
    """A tiny GPT-2's hard adapter at the slot of a template, its tokens the first ids of `words`."""
    ids = [tokenizer(word)["input_ids"][0] for word in words]
    config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=len(ids), mode="hard", init="token_ids",
                            init_token_ids=ids, placement="slot", template="Review: {text}\n{prompt}Overall:")
    return get_peft_model(build(ARCHITECTURES["gpt2"][1]), config).eval()


def test_the_text_export_is_the_template_with_the_prompt_in_place_and_says_if_it_round_trips(tokenizer):
    placed = placed_text(slot_adapter(tokenizer, [" great", " film"]), tokenizer)
    assert (placed.placement, placed.text, placed.round_trips) == ("slot", "Review: {text}\n great filmOverall:", True)
    # " ." then " " pasted before "Overall" tokenizes as " ." + " Overall": not the ids that were scored
    placed = placed_text(slot_adapter(tokenizer, [" .", " \n"]), tokenizer)
    assert (placed.text, placed.round_trips) == ("Review: {text}\n . Overall:", False)


def test_the_system_prompts_text_is_the_system_message(chat_tokenizer):
    ids = [chat_tokenizer(word)["input_ids"][0] for word in [" Answer", " briefly"]]
    config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, mode="hard", init="token_ids",
                            init_token_ids=ids, placement="system")
    placed = placed_text(get_peft_model(build(ARCHITECTURES["gpt2"][1]), config), chat_tokenizer)
    assert (placed.placement, placed.text, placed.round_trips) == ("system", " Answer briefly", True)


def test_prefix_only_formats_refuse_a_prompt_placed_elsewhere(tokenizer, tmp_path):
    model = slot_adapter(tokenizer, [" great"])
    with pytest.raises(ValueError, match="KoboldAI soft prompt puts a prompt in front.*placement='slot'"):
        export_kobold(model, tmp_path / "prompt.zip")
    with pytest.raises(ValueError, match="PROMPT_TUNING puts a prompt in front.*export --to text"):
        export_prompt_tuning(model, tmp_path / "plain")
    assert not (tmp_path / "prompt.zip").exists() and not (tmp_path / "plain").exists()


# ------------------------------------------------------------------------------------------------ pairs
PAIRS = [("Hi there", " Hello!"), ("Tell me a story", " Once upon a time"), ("Bye", " Goodbye!"),
         ("How are you?", " Fine, thanks.")]


@torch.no_grad()
def test_the_pairs_loss_is_the_base_models_with_the_ids_in_the_system_turn(chat_tokenizer):
    template = placed_template(chat_tokenizer, "{text}", "system")
    objective = PairsObjective(chat_tokenizer, PAIRS, template=template)
    reference = build(ARCHITECTURES["gpt2"][1])
    ids = [chat_tokenizer(" Be", add_special_tokens=False)["input_ids"][0]] * 2
    losses = []
    for message, target in PAIRS:
        before, after = template.replace("{text}", message).split("{prompt}")
        row = [*text_ids(chat_tokenizer, before), *ids, *text_ids(chat_tokenizer, after)]
        target_ids = text_ids(chat_tokenizer, target)
        labels = [-100] * len(row) + target_ids
        losses.append(reference(input_ids=torch.tensor([row + target_ids]), labels=torch.tensor([labels])).loss)
    prompt = reference.get_input_embeddings()(torch.tensor(ids))
    torch.testing.assert_close(objective.loss(reference, prompt, range(len(PAIRS))), torch.stack(losses).mean(),
                               atol=1e-5, rtol=0)


@torch.no_grad()
def test_a_pair_succeeds_exactly_when_greedy_decoding_gives_its_whole_target(chat_tokenizer):
    model = build(ARCHITECTURES["gpt2"][1])
    template = placed_template(chat_tokenizer, "{text}", "suffix")
    prompt = torch.tensor(chat_tokenizer(" please", add_special_tokens=False)["input_ids"])
    rows = []
    for message, _ in PAIRS[:2]:
        before, after = template.replace("{text}", message).split("{prompt}")
        rows.append(torch.tensor(text_ids(chat_tokenizer, before) + prompt.tolist() + text_ids(chat_tokenizer, after)))
    greedy = [model.generate(input_ids=row[None], max_new_tokens=3, do_sample=False,
                             pad_token_id=0)[0, len(row):].tolist() for row in rows]
    pairs = [(PAIRS[0][0], chat_tokenizer.decode(greedy[0])), (PAIRS[1][0], chat_tokenizer.decode(greedy[1][:2]) + "x")]
    objective = PairsObjective(chat_tokenizer, pairs, template=template, held_out_pairs=pairs)
    assert objective.successes(model, prompt) == [True, False]
    assert objective.score(model, prompt) == 0.5


def test_train_discover_and_eval_a_system_prompt_on_pairs(capsys, files, tmp_path):
    """--pairs: a system prompt trained (soft) and discovered (hard) for (message, target) pairs; eval scores the
    held-out pairs with the adapter where it puts its prompt, and with none."""
    chat_model = tmp_path / "tiny-gpt2-chat"
    shutil.copytree(files / "tiny-gpt2", chat_model)
    tokenizer = AutoTokenizer.from_pretrained(str(chat_model))
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(chat_model)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"message": f"Say hi {i}", "target": " Hi!"}) + "\n" for i in range(10)))
    common = ["--model", str(chat_model), "--pairs", str(pairs), "--placement", "system", "--num-virtual-tokens", "2",
              "--batch-size", "4", "--eval-interval", "1", "--device", "cpu", "--validation-share", "0.2",
              "--report-share", "0.2"]
    run = softhard(capsys, "train", *common, "--steps", "2", "--output-dir", str(tmp_path / "train"))["runs"][0]
    config = PeftConfig.from_pretrained(run["adapter"])
    assert (config.placement, config.template) == ("system", "{text}")
    assert run["eval"]["examples"] == 2 and run["validation_success_rate"] == max(s for _, s in run["score_history"])
    common = [arg for arg in common if arg not in ("--num-virtual-tokens", "2", "--batch-size", "4", "--eval-interval",
                                                   "1")]
    scored = softhard(capsys, "eval", *[a for a in common if a not in ("--placement", "system")],
                      "--adapter", run["adapter"])
    assert scored["success_rate"] == run["eval"]["success_rate"] and "no_prompt_success_rate" in scored
    found = softhard(capsys, "discover", *common, "--num-virtual-tokens", "2", "--steps", "1", "--batch-size", "4",
                     "--output-dir", str(tmp_path / "discover"))
    assert found["eval"]["examples"] == 2
    adapter = PeftConfig.from_pretrained(found["adapter"])  # the tokens where they were found: the system turn
    assert adapter.placement == "slot" and adapter.template.startswith("<|im_start|>system\n{prompt}<|im_end|>")


@settings(max_examples=40, deadline=None)
@given(
    lengths_offsets=st.lists(st.integers(0, 6).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))),
                             min_size=1, max_size=4),
    width=st.integers(0, 3), side=st.sampled_from(["left", "right"]), compact=st.booleans(), seed=st.integers(0, 99),
)
def test_one_prompt_length_is_laid_out_as_the_row_by_row_loop_does(lengths_offsets, width, side, compact, seed):
    """The gathers that put one prompt length at each row's slot give exactly the general per-row layout."""
    lengths, offsets = zip(*lengths_offsets, strict=True)
    generator = torch.Generator().manual_seed(seed)
    batch = padded_batch([torch.arange(n) + 3 for n in lengths], side, width=max(lengths) + 1)
    embeds = torch.randn(*batch["input_ids"].shape, 2, generator=generator)
    prompt = torch.randn(width, 2, generator=generator)
    padding_left = side == "left"
    fast = insert_prompts(prompt, embeds, batch["attention_mask"], list(offsets), padding_left, compact)
    loop = insert_prompts([prompt] * len(lengths), embeds, batch["attention_mask"], list(offsets), padding_left,
                          compact)
    for b in range(len(lengths)):  # each row's real columns, in order (padding and its width are unspecified)
        real, loop_real = fast.attention_mask[b].bool(), loop.attention_mask[b].bool()
        assert torch.equal(fast.inputs_embeds[b][real], loop.inputs_embeds[b][loop_real])
        assert torch.equal(fast.user_columns[b][real], loop.user_columns[b][loop_real])
        if real.any() and compact:  # rows end in the last column (decoders), or start in the first
            assert bool(real[-1] if padding_left else real[0])


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_a_soft_prompt_at_the_slot_is_its_vectors_there(side):
    """Soft mode: each row equals the base model fed the row's embeddings with the prompt's vectors between them."""
    model, reference = slot_model("llama", num_virtual_tokens=3, mode="soft")
    vectors = model.prompt_encoder["default"].prompt_embeddings()
    embed = reference.get_input_embeddings()
    rows = random_rows(LENGTHS, seed=5)
    batch = padded_batch([marked(r, o) for r, o in zip(rows, OFFSETS, strict=True)], side)
    out = model(**batch).logits
    for i, (row, offset) in enumerate(zip(rows, OFFSETS, strict=True)):
        inputs = torch.cat([embed(row[:offset]), vectors, embed(row[offset:])])[None]
        alone = reference(inputs_embeds=inputs).logits[0]
        assert_row_matches("CAUSAL_LM", out[i], batch["attention_mask"][i], batch["input_ids"][i], alone, 3, offset)
