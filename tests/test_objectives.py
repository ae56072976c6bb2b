"""Fast scoring (rows batched by length, a single prompt's keys/values reused) gives the naive scores."""

from __future__ import annotations

import pytest
import torch

from peft_softhard import ClassificationObjective
from peft_softhard.objectives.scoring import cache_prompt, candidate_target_log_probs, pad_rows, row_logits
from peft_softhard.testing import WithoutLogitsToKeep, build, tiny_bert, tiny_gemma3, tiny_gpt2, tiny_llama

ROW_LENGTHS = (3, 9, 5, 12, 1, 7)  # a row of one token is predicted by the prompt's own last position


def random_rows(vocab: int):
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, vocab, (length,), generator=generator).tolist() for length in ROW_LENGTHS]
    targets = [[False] * (len(row) - 1) + [True] for row in rows]
    targets[1][2:5] = [True] * 3  # several target tokens in one row
    return pad_rows(rows, targets, pad_id=0)


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama, tiny_gemma3], ids=["gpt2", "llama", "gemma3"])
@pytest.mark.parametrize("prompt_kind", ["token ids", "vectors"])
def test_fast_target_log_probs_equal_naive(factory, prompt_kind):
    model = build(factory)
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (4,), generator=torch.Generator().manual_seed(1))
    prompt = ids if prompt_kind == "token ids" else model.get_input_embeddings()(ids).detach() + 0.1
    rows = random_rows(vocab)
    naive = candidate_target_log_probs(model, prompt[None], rows, max_rows=4, by_length=False, reuse_prompt=False)
    fast = candidate_target_log_probs(model, prompt[None], rows, max_rows=4)
    assert cache_prompt(model, model.get_input_embeddings()(ids)) is not None  # the cached path is the one tested
    assert naive.shape == fast.shape == (1, len(ROW_LENGTHS))
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama, tiny_gemma3, lambda: WithoutLogitsToKeep(tiny_llama())],
                         ids=["gpt2", "llama", "gemma3", "no logits_to_keep"])
def test_logits_at_positions_equal_the_full_logits_there(factory):
    """With `positions`, the head runs only where it is read (`logits_to_keep`): the same logits as the full
    forward at those positions, for one prompt, prompts of different lengths, and a cached prompt."""
    model = build(factory)
    embed = model.get_input_embeddings()
    rows = random_rows(embed.num_embeddings)
    lengths = rows.attention_mask.sum(1)
    positions = torch.tensor([0, 5, 4, 11, 0, 6])  # a position within each row; 0: predicted by the prompt's end
    generator = torch.Generator().manual_seed(2)
    prompt = embed(torch.randint(0, embed.num_embeddings, (4,), generator=generator)).detach()
    ragged = [prompt[: 1 + i % 4] for i in range(len(ROW_LENGTHS))]  # a different length per row
    cached = cache_prompt(model, prompt)
    assert bool((positions < lengths).all()) and cached is not None
    for prompts in (prompt, ragged, cached):
        picked = row_logits(model, prompts, rows)[torch.arange(len(positions)), positions]
        torch.testing.assert_close(row_logits(model, prompts, rows, positions=positions), picked, atol=1e-5, rtol=1e-5)


def test_fast_classification_equals_naive(gpt2_tokenizer):
    model = build(lambda: tiny_gpt2(initializer_range=0.3))
    texts = ["a fine film", "dull", "the best thing I have seen in years", "bad", "not good at all, sadly", "ok"]
    objective = ClassificationObjective(gpt2_tokenizer, texts, [1, 0, 1, 0, 0, 1], template="{text}. It was",
                                        label_words=[" bad", " good"], held_out_texts=texts,
                                        held_out_labels=[1, 0, 1, 0, 0, 1])
    prompt = torch.tensor([464, 3807, 373])
    for words in ([" bad", " good"], [" very bad", " good indeed"]):  # one label position, or one row per class
        objective.label_ids = [gpt2_tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
        objective.single_token = all(len(ids) == 1 for ids in objective.label_ids)
        objective.first_label_ids = torch.tensor([ids[0] for ids in objective.label_ids])
        examples = objective.held_out[0]
        naive = objective._candidate_class_log_probs(model, prompt[None], examples, 4, by_length=False,
                                                     reuse_prompt=False)
        for by_length, reuse_prompt in ((True, False), (False, True), (True, True)):
            fast = objective._candidate_class_log_probs(model, prompt[None], examples, 4, by_length=by_length,
                                                        reuse_prompt=reuse_prompt)
            torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-5)
        assert objective.predictions(model, prompt) == objective.predictions(model, prompt, by_length=False,
                                                                             reuse_prompt=False)


def test_no_cache_for_an_encoder_or_an_empty_prompt():
    bert = build(tiny_bert)
    assert cache_prompt(bert, bert.get_input_embeddings().weight[:3]) is None
    gpt2 = build(tiny_gpt2)
    assert cache_prompt(gpt2, gpt2.get_input_embeddings().weight[:0]) is None
