"""The chunked nearest-token search and the vocabulary constraints."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from peft_softhard import SoftHardConfig, nearest_tokens, project_prompt
from peft_softhard.method.projection import similarity
from peft_softhard.testing import build, tiny_gpt2, tiny_llama

from conftest import GPT2_TOKENIZER

GPT2_EOS = 50256


def make(base, mode="hard", n=6, **config):
    return get_peft_model(base, SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, mode=mode, **config))


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("top_k", [1, 5])
def test_chunked_search_equals_one_chunk_exactly(metric, top_k):
    embeddings = build(tiny_gpt2).get_input_embeddings()
    vectors = torch.randn(5, 32) * 0.02
    candidates = torch.arange(0, 50257, 3)
    whole_ids, whole_scores = nearest_tokens(vectors, embeddings, candidates, metric=metric, top_k=top_k,
                                             chunk_size=candidates.numel())
    for chunk_size in (1, 7, 1000, 4096):
        ids, scores = nearest_tokens(vectors, embeddings, candidates, metric=metric, top_k=top_k,
                                     chunk_size=chunk_size if chunk_size > 1 else 1)
        assert torch.equal(ids, whole_ids) and torch.equal(scores, whole_scores)
    brute = similarity(vectors, embeddings(candidates), metric)
    assert torch.equal(candidates[brute.argmax(1)], whole_ids[:, 0])


def test_ties_go_to_the_lower_id():
    embeddings = torch.nn.Embedding(6, 2)
    with torch.no_grad():
        embeddings.weight.copy_(torch.tensor([[0.0, 1], [1, 0], [1, 0], [0, 1], [1, 0], [2, 2]]))
    ids, _ = nearest_tokens(torch.tensor([[1.0, 0]]), embeddings, metric="l2", top_k=3, chunk_size=2)
    assert ids.tolist() == [[1, 2, 4]]


def test_special_tokens_are_excluded_by_default(gpt2_tokenizer):
    model = make(
        build(tiny_gpt2), init="token_ids", init_token_ids=[GPT2_EOS], tokenizer_name_or_path=str(GPT2_TOKENIZER)
    )
    assert GPT2_EOS not in model.prompt_encoder["default"].allowed_token_ids().tolist()
    assert GPT2_EOS not in model.prompt_encoder["default"].current_token_ids().tolist()
    kept = make(build(tiny_gpt2), exclude_special_tokens=False, init="token_ids", init_token_ids=[GPT2_EOS])
    assert kept.prompt_encoder["default"].current_token_ids().tolist() == [GPT2_EOS] * 6


def test_allow_and_deny_lists():
    allowed = list(range(100, 120))
    model = make(build(tiny_llama), allowed_token_ids=allowed, denied_token_ids=[100, 101])
    encoder = model.prompt_encoder["default"]
    assert encoder.allowed_token_ids().tolist() == allowed[2:]
    for metric in ("cosine", "dot", "l2"):
        reading = project_prompt(model, metric=metric, top_k=4)
        assert all(candidate.token_id in allowed[2:] for row in reading.candidates for candidate in row)


def test_ascii_and_word_start_constraints_with_the_real_gpt2_tokenizer(gpt2_tokenizer):
    model = make(build(tiny_gpt2), ascii_only=True, word_start_only=True, tokenizer_name_or_path=str(GPT2_TOKENIZER))
    allowed = model.prompt_encoder["default"].allowed_token_ids().tolist()
    assert 10_000 < len(allowed) < 50_000
    texts = [gpt2_tokenizer.decode([i]) for i in allowed]
    assert all(text.isascii() and text.startswith(" ") and text[1].isalnum() for text in texts)
    reading = project_prompt(model, gpt2_tokenizer)
    assert all(token in set(allowed) for token in reading.token_ids)


def test_constraints_that_leave_nothing_are_refused():
    with pytest.raises(ValueError, match="leave no token to choose from"):
        make(build(tiny_llama), allowed_token_ids=[5], denied_token_ids=[5])
    with pytest.raises(ValueError, match="outside this model's vocabulary of 1000"):
        make(build(tiny_llama), allowed_token_ids=[5, 5000])
    with pytest.raises(ValueError, match="need a tokenizer"):
        make(build(tiny_llama), ascii_only=True)


def test_text_init_uses_the_tokenizer_and_checks_the_length(gpt2_tokenizer):
    model = make(build(tiny_gpt2), "hard", n=4, init="text", init_text=" great movie",
                 tokenizer_name_or_path=str(GPT2_TOKENIZER))
    ids = gpt2_tokenizer(" great movie", add_special_tokens=False).input_ids
    assert model.prompt_encoder["default"].current_token_ids().tolist() == (ids * 2)[:4]
    with pytest.raises(ValueError, match="init_text is 5 tokens long but the prompt has num_virtual_tokens=4"):
        make(build(tiny_gpt2), n=4, init="text", init_text=" one two three four five",
             tokenizer_name_or_path=str(GPT2_TOKENIZER))
    with pytest.raises(ValueError, match=r"init_token_ids \[5000\] are outside"):
        make(build(tiny_llama), n=4, init="token_ids", init_token_ids=[5000])


def test_the_vocabulary_judged_among_a_few_tokens_is_the_whole_vocabulary_s_verdict(gpt2_tokenizer):
    """`among=` (how a task's words become a whole-word prompt's start) agrees with the full mask on those ids."""
    from peft_softhard.method.vocabulary import allowed_token_mask

    config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, word_start_only=True, round_trip_only=True)
    words = gpt2_tokenizer(" Classify the review:", add_special_tokens=False).input_ids  # ' Class' 'ify' ...
    full = allowed_token_mask(config, len(gpt2_tokenizer), gpt2_tokenizer)
    some = allowed_token_mask(config, len(gpt2_tokenizer), gpt2_tokenizer, among=words)
    assert some.nonzero().flatten().tolist() == sorted(i for i in set(words) if full[i])
    assert [gpt2_tokenizer.decode([i]) for i in words if some[i]] == [" Class", " the", " review"]
    only_the = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, allowed_token_ids=[words[2], 1000])
    assert allowed_token_mask(only_the, len(gpt2_tokenizer), gpt2_tokenizer, among=words).nonzero().flatten().tolist() \
        == [words[2]]  # an allow list and `among` together: what both admit
