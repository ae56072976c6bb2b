"""Position-correct everywhere: a batch (any padding side, one prompt or one per row) gives every row what it
gives alone, and a hard prompt gives what the base model gives with its ids literally before the row's real
tokens — in forward and in generate (greedy and sampled, with and without a KV cache), on every architecture.

These are the regression tests of the "exact everywhere" issue: on peft's own prompt-learning path a
left-padded batch put the padding between the prompt and the input (positions shifted, max |Δlogit| 1.5 on a
tiny Llama), and with transformers 5.24 peft's generate() diverged after the first new token.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import get_peft_model

from peft_softhard import SoftHardConfig
from peft_softhard.testing import ARCHITECTURES, build, padded_batch, random_rows

# Relative to the largest output: batching alone (no padding at all) moves a float32 logit of size 40 by ~2e-5.
TOLERANCE = 1e-5
PAD = 0


GENERATING = ["gpt2", "llama", "gemma3", "t5"]
LENGTHS = [7, 2, 5]  # the case: a long row and a short one in one padded batch
DECODER_INPUTS = torch.tensor([[0, 5, 9]])


def hard_model(case: str, num_virtual_tokens: int = 4, mode: str = "hard"):
    task, factory = ARCHITECTURES[case]
    base = build(factory)
    config = SoftHardConfig(task_type=task, num_virtual_tokens=num_virtual_tokens, mode=mode, init="random")
    return get_peft_model(base, config).eval(), build(factory)


def output_of(task: str, output) -> torch.Tensor:
    return output.last_hidden_state if task == "FEATURE_EXTRACTION" else output.logits


def literal(reference, task: str, ids: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """The base model's output with the prompt's ids literally before the row (no padding, batch of one)."""
    extra = {"decoder_input_ids": DECODER_INPUTS} if task == "SEQ_2_SEQ_LM" else {}
    return output_of(task, reference(input_ids=torch.cat([ids, row])[None], **extra))[0]


def assert_row_matches(task: str, batched: torch.Tensor, mask: torch.Tensor, alone: torch.Tensor, prompt: int):
    """`batched` [n + L, ...] (token outputs: the prompt's n columns, then the L input columns as given) or a
    row's pooled output, against the same row alone."""
    atol = TOLERANCE * max(1.0, alone.abs().max().item())
    if task in ("CAUSAL_LM", "TOKEN_CLS", "FEATURE_EXTRACTION"):
        real = mask.bool()
        assert batched.shape[0] == prompt + mask.shape[0]
        torch.testing.assert_close(batched[prompt:][real], alone[prompt:], atol=atol, rtol=0)
        torch.testing.assert_close(batched[:prompt], alone[:prompt], atol=atol, rtol=0)
    else:
        torch.testing.assert_close(batched, alone, atol=atol, rtol=0)


@pytest.mark.parametrize("route", ["plain", "adapter_names"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", list(ARCHITECTURES))
@torch.no_grad()
def test_every_row_of_a_padded_batch_equals_the_base_model_with_the_ids_before_its_tokens(case, side, route):
    task = ARCHITECTURES[case][0]
    model, reference = hard_model(case)
    ids = model.prompt_encoder["default"].current_token_ids()
    rows = random_rows(LENGTHS)
    batch = padded_batch(rows, side)
    extra = {"decoder_input_ids": DECODER_INPUTS.expand(len(rows), -1)} if task == "SEQ_2_SEQ_LM" else {}
    if route == "adapter_names":
        extra["adapter_names"] = ["default"] * len(rows)
    out = output_of(task, model(**batch, **extra))
    for i, row in enumerate(rows):
        assert_row_matches(task, out[i], batch["attention_mask"][i], literal(reference, task, ids, row), len(ids))


def generate_settings(cache: bool, sampled: bool) -> dict:
    settings_ = {"max_new_tokens": 6, "pad_token_id": PAD, "use_cache": cache, "do_sample": sampled}
    return settings_ | ({"top_k": 20, "temperature": 1.5} if sampled else {})


def new_tokens(task: str, generated: torch.Tensor, given: int) -> list[int]:
    """The generated tokens (a decoder returns what it was given first), without trailing padding."""
    tokens = generated[given:].tolist() if task == "CAUSAL_LM" else generated.tolist()
    while tokens and tokens[-1] == PAD:
        tokens.pop()
    return tokens


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("route", ["plain", "adapter_names"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", GENERATING)
@torch.no_grad()
def test_greedy_generation_of_each_row_equals_the_base_model_with_the_ids_prepended(case, side, route, cache):
    task = ARCHITECTURES[case][0]
    model, reference = hard_model(case)
    ids = model.prompt_encoder["default"].current_token_ids()
    rows = random_rows([6, 3, 5, 1], seed=2)
    batch = padded_batch(rows, side)
    names = {"adapter_names": ["default"] * len(rows)} if route == "adapter_names" else {}
    settings_ = generate_settings(cache, sampled=False)
    generated = model.generate(**batch, **names, **settings_)
    if task == "CAUSAL_LM":
        assert torch.equal(generated[:, : batch["input_ids"].shape[1]], batch["input_ids"])
    for i, row in enumerate(rows):
        with_ids = torch.cat([ids, row])[None]
        expected = new_tokens(task, reference.generate(input_ids=with_ids, **settings_)[0], with_ids.shape[1])
        assert new_tokens(task, generated[i], batch["input_ids"].shape[1]) == expected
        alone = model.generate(input_ids=row[None], **settings_)[0]  # batch of one, through the same path
        assert new_tokens(task, alone, len(row)) == expected


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", GENERATING)
@torch.no_grad()
def test_sampled_generation_equals_the_base_model_sampling_the_literal_batch(case, side):
    """Sampling draws per batch, so the reference is the base model on the same rows with the ids literally in
    place, laid out as a user would pad them (decoders on the left), sampled from the same seed."""
    task = ARCHITECTURES[case][0]
    model, reference = hard_model(case)
    ids = model.prompt_encoder["default"].current_token_ids()
    rows = random_rows([6, 3, 5], seed=3)
    settings_ = generate_settings(cache=True, sampled=True)
    literal_side = "left" if task == "CAUSAL_LM" else "right"
    literal_batch = padded_batch([torch.cat([ids, row]) for row in rows], literal_side)
    batch = padded_batch(rows, side)
    for seed in range(3):
        torch.manual_seed(seed)
        ours = model.generate(**batch, **settings_)
        torch.manual_seed(seed)
        theirs = reference.generate(**literal_batch, **settings_)
        given, literal_given = (batch["input_ids"].shape[1], literal_batch["input_ids"].shape[1])
        for i in range(len(rows)):
            assert new_tokens(task, ours[i], given) == new_tokens(task, theirs[i], literal_given)


@pytest.mark.parametrize("case", ["llama", "gpt2"])
@torch.no_grad()
def test_max_length_counts_the_input_not_the_prompt(case):
    """As in peft and transformers: max_length is the length of what generate returns (the input ids and the new
    tokens); the virtual tokens do not count."""
    model, reference = hard_model(case)
    ids = model.prompt_encoder["default"].current_token_ids()
    row = random_rows([5], seed=4)[0]
    ours = model.generate(input_ids=row[None], max_length=9, pad_token_id=PAD, do_sample=False)
    theirs = reference.generate(input_ids=torch.cat([ids, row])[None], max_length=9 + len(ids), pad_token_id=PAD,
                                do_sample=False)
    assert ours.shape[1] == 9
    assert ours[0, len(row):].tolist() == theirs[0, len(ids) + len(row):].tolist()


@torch.no_grad()
def test_inside_disable_adapter_forward_and_generate_are_the_base_models():
    model, reference = hard_model("llama")
    batch = padded_batch(random_rows([5, 3], seed=5), "left")
    settings_ = generate_settings(cache=True, sampled=False)
    with model.disable_adapter():
        assert torch.equal(model(**batch).logits, reference(**batch).logits)
        assert torch.equal(model.generate(**batch, **settings_), reference.generate(**batch, **settings_))
    assert model(**batch).logits.shape[1] == batch["input_ids"].shape[1] + 4  # the prompt is back


@torch.no_grad()
def test_return_dict_false_gives_the_tuple_and_hidden_states_follow_the_logits():
    model, _ = hard_model("bert-token-cls")
    batch = padded_batch(random_rows(LENGTHS), "left")
    output = model(**batch, output_hidden_states=True)
    assert torch.equal(model(**batch, return_dict=False)[0], output.logits)
    # every hidden state is laid out like the logits: prompt columns, then the input columns as given
    last = output.hidden_states[-1]
    assert last.shape[:2] == output.logits.shape[:2]
    head = model.base_model.classifier
    torch.testing.assert_close(head(last), output.logits, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------- properties
PROPERTY_CASES = ["llama", "gpt2", "bert-token-cls"]


@settings(max_examples=30, deadline=None)
@given(
    case=st.sampled_from(PROPERTY_CASES),
    lengths=st.lists(st.integers(1, 8), min_size=1, max_size=4),
    side=st.sampled_from(["left", "right"]),
    prompt_length=st.integers(1, 6),
    mode=st.sampled_from(["soft", "hard"]),
    extra_padding=st.integers(0, 2),
    seed=st.integers(0, 1000),
)
@torch.no_grad()
def test_a_batched_call_equals_each_row_alone(case, lengths, side, prompt_length, mode, extra_padding, seed):
    task = ARCHITECTURES[case][0]
    model, _ = hard_model(case, num_virtual_tokens=prompt_length, mode=mode)
    rows = random_rows(lengths, seed=seed)
    batch = padded_batch(rows, side, width=max(lengths) + extra_padding)  # a column of padding in every row too
    out = output_of(task, model(**batch))
    for i, row in enumerate(rows):
        alone = output_of(task, model(input_ids=row[None]))[0]
        assert_row_matches(task, out[i], batch["attention_mask"][i], alone, prompt_length)
