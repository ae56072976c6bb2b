"""A prompt at a slot in the template: the layout (`insert_prompts`), scoring with the prompt's tokens literally
at the slot, and the cached heads (each row's tokens before the slot run once) equal to re-encoding whole rows."""

from __future__ import annotations

import pytest
import torch

from peft_softhard import ClassificationObjective
from peft_softhard.objectives.scoring import (
    cache_heads,
    candidate_target_log_probs,
    pad_rows,
    row_logits,
    target_log_probs,
)
from peft_softhard.objectives.templates import (
    WholePrompt,
    encode_example,
    place_slot,
    unescape,
)
from peft_softhard.prompt_layout import insert_prompts
from peft_softhard.testing import build, random_rows, tiny_gemma3, tiny_gpt2, tiny_llama

CAUSAL = {"gpt2": lambda: tiny_gpt2(vocab=1000, initializer_range=0.3),
          "llama": lambda: tiny_llama(initializer_range=0.3), "gemma3": tiny_gemma3}
LENGTHS, OFFSETS = [7, 4, 9, 5], [3, 1, 6, 2]


def rows_with_slots(lengths=LENGTHS, offsets=OFFSETS, seed=0):
    """Random rows whose last two tokens are targets, a slot after the first `offsets` tokens."""
    rows = [row.tolist() for row in random_rows(lengths, seed=seed)]
    targets = [[False] * (len(row) - 2) + [True, True] for row in rows]
    return rows, pad_rows(rows, targets, 0, offsets)


def literal_log_probs(model, rows, offsets, prompt_ids):
    """The target log-probabilities with the prompt's ids written into each row at its slot (no prompt at all)."""
    inserted = [row[:o] + prompt_ids + row[o:] for row, o in zip(rows, offsets, strict=True)]
    targets = [[False] * (len(row) - 2) + [True, True] for row in inserted]
    empty = torch.zeros(0, model.get_input_embeddings().weight.shape[1])
    return target_log_probs(model, empty, pad_rows(inserted, targets, 0))


def test_insert_prompts_puts_each_prompt_after_its_offset_and_maps_outputs_back():
    embeds = torch.arange(2 * 4, dtype=torch.float).view(2, 4, 1)  # row r, column c holds 4r + c
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])  # right-padded, left-padded
    prompts = [torch.tensor([[100.0], [101.0]]), torch.tensor([[200.0]])]
    batch = insert_prompts(prompts, embeds, mask, offsets=[1, 2], padding_left=True)
    rows = [[v for v, m in zip(r.flatten().tolist(), mk.tolist(), strict=True) if m]
            for r, mk in zip(batch.inputs_embeds, batch.attention_mask, strict=True)]
    assert rows == [[0.0, 100.0, 101.0, 1.0, 2.0], [5.0, 6.0, 200.0, 7.0]]
    # the user layout: [P prompt columns (right-aligned); the input as given]
    user = batch.to_user_layout(batch.inputs_embeds)[..., 0]
    assert user[0].tolist() == [100.0, 101.0, 0.0, 1.0, 2.0, user[0, 5].item()]
    assert user[1, 1:].tolist()[0] == 200.0 and user[1, 3:].tolist() == [5.0, 6.0, 7.0]
    # the output predicting input token t sits at the real column before it: the prompt's last after a slot
    predecessors = batch.predecessor_columns(torch.tensor([[1, 0], [3, 2]]))
    values = batch.inputs_embeds[..., 0].gather(1, predecessors.clamp_min(0))
    assert values[0].tolist() == [101.0, 0.0] and predecessors[0, 1] == -1  # a row's first token: nothing before
    assert values[1].tolist() == [200.0, 5.0]
    with pytest.raises(ValueError, match="offsets"):
        insert_prompts(prompts, embeds, mask, offsets=[4, 0])  # row 0 has 3 real tokens


@pytest.mark.parametrize("arch", CAUSAL)
def test_a_prompt_at_a_slot_scores_as_its_ids_written_there(arch):
    model = build(CAUSAL[arch])
    rows, padded = rows_with_slots()
    prompt = torch.tensor([11, 12, 13])
    with torch.no_grad():
        fast = target_log_probs(model, model.get_input_embeddings()(prompt), padded)
        literal = literal_log_probs(model, rows, OFFSETS, prompt.tolist())
    torch.testing.assert_close(fast, literal, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cached_heads_equal_re_encoding_the_whole_rows(arch):
    model = build(CAUSAL[arch])
    rows, padded = rows_with_slots()
    prompts = [torch.tensor(p) for p in ([11, 12, 13], [14], [], [15, 16])]  # any lengths, one empty
    assert cache_heads(model, padded) is not None

    def at_targets(model, prompt, chunk):  # the positions path: the first target's logits only
        return row_logits(model, prompt, chunk, positions=chunk.target_mask.long().argmax(1))[:, :50]

    with torch.no_grad():
        for reduce in (target_log_probs, at_targets):
            cached = candidate_target_log_probs(model, prompts, padded, max_rows=5, reduce=reduce)
            whole = candidate_target_log_probs(model, prompts, padded, max_rows=5, reduce=reduce, reuse_heads=False)
            torch.testing.assert_close(cached, whole, atol=1e-5, rtol=0)
        literal = torch.stack([literal_log_probs(model, rows, OFFSETS, p.tolist()) for p in prompts])
        cached = candidate_target_log_probs(model, prompts, padded, max_rows=5)
    torch.testing.assert_close(cached, literal, atol=1e-5, rtol=0)


def test_a_slot_right_before_the_answer_runs_only_the_prompt_after_the_heads():
    """With the slot right before each row's last token (a label word's), a tail is the prompt alone, and with no
    prompt at all the heads' own last logits are the answer: both equal re-encoding the whole rows."""
    model = build(CAUSAL["llama"])
    rows = [row.tolist() for row in random_rows(LENGTHS)]
    padded = pad_rows(rows, [[False] * (len(row) - 1) + [True] for row in rows], 0, [len(row) - 1 for row in rows])

    def at_target(model, prompt, chunk):
        return row_logits(model, prompt, chunk, positions=chunk.target_mask.long().argmax(1))[:, :50]

    for prompts in ([torch.tensor([]).long()] * 3, [torch.tensor([11, 12]), torch.tensor([13]), torch.tensor([])]):
        with torch.no_grad():
            cached = candidate_target_log_probs(model, prompts, padded, reduce=at_target)
            whole = candidate_target_log_probs(model, prompts, padded, reduce=at_target, reuse_heads=False)
        torch.testing.assert_close(cached, whole, atol=1e-5, rtol=0)


def test_heads_are_not_cached_where_reuse_is_not_tested_or_cannot_apply():
    _, padded = rows_with_slots()
    assert cache_heads(build(tiny_gemma3), padded) is None  # sliding-window layers
    llama = build(CAUSAL["llama"])
    _, front = rows_with_slots(offsets=[0, 0, 0, 0])
    assert cache_heads(llama, front) is None  # no head: the prompt is in front
    rows = [row.tolist() for row in random_rows(LENGTHS)]
    targets = [[True] + [False] * (len(row) - 1) for row in rows]  # a target inside the head
    assert cache_heads(llama, pad_rows(rows, targets, 0, OFFSETS)) is None


def test_templates_place_the_slot_and_encode_segments(gpt2_tokenizer):
    template = "Review: {text}\nSentiment:"
    assert place_slot(template, "end") == "Review: {text}\nSentiment:{prompt}"
    assert place_slot(template, "prefix") == "{prompt}Review: {text}\nSentiment:"
    assert place_slot(template, "after_text") == "Review: {text}{prompt}\nSentiment:"
    assert place_slot(template, "before_answer_cue") == "Review: {text}\n{prompt} Sentiment:"  # the cue a word
    assert place_slot("{text} It was", "before_answer_cue") == "{text}{prompt} It was"  # no line: after the text
    assert place_slot("A {prompt}{text}", "end") == "A {prompt}{text}"  # the user's own slot is kept
    for bad in ("no text here", "{text}{text}", "{prompt}{text}{prompt}"):
        with pytest.raises(ValueError, match="template"):
            place_slot(bad, "end")
    ids, offset = encode_example(gpt2_tokenizer, "Review: {text}\n{prompt}Sentiment:", "a fine film")
    before = gpt2_tokenizer("Review: a fine film\n")["input_ids"]
    assert offset == len(before) and ids == before + gpt2_tokenizer("Sentiment:")["input_ids"]
    assert encode_example(gpt2_tokenizer, "Review: {text}", "x") == (gpt2_tokenizer("Review: x")["input_ids"], 0)
    assert unescape("Question: {text}\\nType:\\t\\\\n") == "Question: {text}\nType:\t\\n"


def test_a_whole_prompt_is_filled_saved_and_checked_for_its_round_trip(gpt2_tokenizer):
    this = gpt2_tokenizer(" this")["input_ids"]
    found = WholePrompt("Review: {text}\nSentiment:{prompt}", [" bad", " great"], this)
    assert found.filled(gpt2_tokenizer) == "Review: {text}\nSentiment: this"
    assert found.round_trips(gpt2_tokenizer, ["a fine film", "dull"])
    again = WholePrompt.from_json(found.to_json(gpt2_tokenizer))
    assert again == found
    # a token that merges with the word before it when the pasted text is tokenized again ("Sentimental")
    merging = WholePrompt("Review: {text}\nSentiment{prompt}", [" bad", " great"], gpt2_tokenizer("al")["input_ids"])
    assert not merging.round_trips(gpt2_tokenizer, ["a fine film"])
    with pytest.raises(ValueError, match="prompt file"):
        WholePrompt.from_json('{"template": "{text}"}')
    assert WholePrompt("{text} It was", [" no", " yes"], [464]).filled(gpt2_tokenizer) == "The{text} It was"


def test_a_classification_objective_with_a_slot_scores_the_tokens_there(gpt2_tokenizer):
    model = build(lambda: tiny_gpt2(initializer_range=0.3))  # the real vocabulary: the tokenizer's ids
    texts, labels = [" good", " bad", " fine", " dull"], [1, 0, 1, 0]
    words = [" no", " yes"]
    slot = ClassificationObjective(gpt2_tokenizer, texts, labels, template="{text} It was{prompt}", label_words=words,
                                   held_out_texts=texts, held_out_labels=labels)
    this = gpt2_tokenizer(" this")["input_ids"]
    written = ClassificationObjective(gpt2_tokenizer, texts, labels, template="{text} It was this", label_words=words,
                                      held_out_texts=texts, held_out_labels=labels)
    empty = torch.tensor([], dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(slot.candidate_losses(model, torch.tensor([this]), [0, 1, 2, 3]),
                                   written.candidate_losses(model, empty[None], [0, 1, 2, 3]), atol=1e-5, rtol=0)
        assert slot.predictions(model, torch.tensor(this)) == written.predictions(model, empty)
        changed = slot.replace(label_words=[" bad", " good"])
        assert changed.label_words == [" bad", " good"] and changed.texts == slot.texts
