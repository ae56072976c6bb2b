"""The whole-prompt searches, each on a tiny model where the right answer is known: label words, tokens grown at
a slot, template edits; the pipeline that composes them (a stage kept only if it wins on validation, resumable
across stages); contextual calibration."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from peft_softhard import ClassificationObjective, DiscoveryConfig, SoftHardConfig, TargetTextObjective, run
from peft_softhard.method.encoder import SoftHardPromptEncoder
from peft_softhard.objectives.templates import WholePrompt
from peft_softhard.optimization.loop import frozen
from peft_softhard.optimization.template_edits import edit_pool, phrase_pool, split_phrases
from peft_softhard.optimization.token_search import Grow
from peft_softhard.testing import bigram_llama, build, tiny_gpt2


class WordTokenizer:
    """Token i is the word " w{i}" (ids 0, 1, 2: pad, bos, eos): texts for the bigram model, whole words that
    re-tokenize as themselves."""

    pad_token_id, all_special_ids = 0, [0, 1, 2]

    def __init__(self, vocab: int = 1000) -> None:
        self.vocab = vocab

    def __len__(self) -> int:
        return self.vocab

    def __call__(self, text, add_special_tokens: bool = False):
        encode = lambda t: [int(word[1:]) for word in t.split()]  # noqa: E731
        return {"input_ids": [encode(t) for t in text] if isinstance(text, list) else encode(text)}

    def decode(self, ids) -> str:
        return "".join(f" w{int(i)}" for i in ids)

    def batch_decode(self, rows) -> list[str]:
        return [self.decode(row) for row in rows]

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [f" w{int(i)}" for i in ids]


@pytest.fixture(scope="module")
def bigram():
    """(model, successor, a, b): the bigram model (the next token depends only on the last one) and two tokens
    whose successors are ordinary tokens, ending the texts of class 0 (a) and class 1 (b)."""
    model, successor = bigram_llama(sharpness=2.0)
    a, b = [x for x in range(10, 1000) if successor[x] > 2][:2]
    return model, successor, a, b


def bigram_task(a: int, b: int, template: str = "{text}", words=(" w5", " w6")) -> ClassificationObjective:
    """Class 0 texts end in token a, class 1 texts in b (their first words vary)."""
    texts = [f" w{first} w{last}" for first in range(40, 46) for last in (a, b)]
    labels = [0 if text.endswith(f" w{a}") else 1 for text in texts]
    return ClassificationObjective(WordTokenizer(), texts, labels, template=template, label_words=list(words),
                                   held_out_texts=texts, held_out_labels=labels)


def quick(**fields) -> DiscoveryConfig:
    settings = {"steps": 3, "label_steps": 2, "edit_steps": 4, "batch_size": 12, "eval_interval": 1, "pool_size": 8,
                "gcg_candidates": 4, "edit_candidates": 8, "edit_beam": 2, "num_virtual_tokens": 2, "race_steps": 1,
                "show_progress": False}
    return DiscoveryConfig(**{**settings, **fields})


def test_label_words_are_the_tokens_that_separate_the_classes(bigram):
    model, successor, a, b = bigram
    objective = bigram_task(a, b)
    result = run(model, objective, quick(stages=["label_words"]))
    expected = [WordTokenizer().decode([successor[a]]), WordTokenizer().decode([successor[b]])]
    assert result.label_words == expected
    assert result.start_score == 0.5 and result.best_score == 1.0
    assert result.stages[0].kept and result.template == "{text}" and result.token_ids == []  # no slot: no tokens


def test_growth_finds_the_planted_token_that_makes_the_target(bigram):
    model, successor, a, _ = bigram
    target = [int(successor[a]), int(successor[successor[a]])]
    objective = TargetTextObjective(None, target)
    result = run(model, objective, quick(stages=["tokens"], method="grow", whole_words=False, pool_size=16))
    assert result.token_ids[-1] == a and result.best_score == 1.0
    assert result.score_history[0] == (0, result.start_score) and result.start_score < 1.0  # step 0: no prompt


def test_growth_takes_the_best_token_of_an_exhaustive_search(gpt2_tokenizer):
    """With every allowed token in its pool and the whole training set as its batch, growth's first step is
    exhaustive: it must take the token (or no token) with the lowest loss."""
    model = build(lambda: tiny_gpt2(initializer_range=0.3))
    texts, labels = [" good", " great", " bad", " awful", " fine", " dull"], [1, 1, 0, 0, 1, 0]
    objective = ClassificationObjective(gpt2_tokenizer, texts, labels, template="{text} It was{prompt}",
                                        label_words=[" no", " yes"])
    allowed = list(range(1000, 1030))
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=1, mode="hard", allowed_token_ids=allowed)
    search = Grow(quick(pool_size=30), model, objective, SoftHardPromptEncoder.for_model(prompt, model))
    everything = list(range(len(texts)))
    with frozen(model):
        search.step(everything)
        candidates = [torch.tensor([], dtype=torch.long)] + [torch.tensor([t]) for t in allowed]
        losses = objective.candidate_losses(model, candidates, everything)
    assert sorted(search.pool.tolist()) == allowed
    assert search.prompt().tolist() == candidates[int(losses.argmin())].tolist()


def test_template_edits_delete_the_phrase_that_hides_the_text(bigram):
    model, successor, a, b = bigram
    words = [WordTokenizer().decode([successor[a]]), WordTokenizer().decode([successor[b]])]
    objective = bigram_task(a, b, template="{text} w7", words=words)  # the label follows w7, whatever the text
    result = run(model, objective, quick(stages=["template_edits"]))
    assert result.start_score == 0.5
    assert result.template == "{text}" and result.best_score == 1.0 and result.stages[0].kept


def test_phrases_and_edits_keep_the_text_and_the_slot():
    template = "Review: {text}\n{prompt}Sentiment:"
    assert split_phrases(template) == ["Review:", " ", "{text}", "\n", "{prompt}", "Sentiment:"]
    assert phrase_pool("Classify the review.", longest=2) == [" Classify", " the", " review.", " Classify the",
                                                              " the review."]
    pool = edit_pool("Rate it.", "{text} Score:", [" great"])  # phrases, the instruction as a line, the words
    assert pool == [" Rate", " it.", " Rate it.", " Score:", "Rate it.\n", " great"]


def test_a_stage_that_does_not_win_on_validation_is_not_kept(bigram):
    model, successor, a, b = bigram
    words = [WordTokenizer().decode([successor[a]]), WordTokenizer().decode([successor[b]])]
    objective = bigram_task(a, b, words=words)  # already perfect: nothing can beat it
    result = run(model, objective, quick())
    assert result.best_score == result.start_score == 1.0
    assert [stage.kept for stage in result.stages] == [False, False, False]
    assert result.whole_prompt == WholePrompt("{text}", words, [])  # the user's own prompt, unchanged


def test_the_pipeline_resumes_where_it_was_interrupted(bigram, tmp_path, monkeypatch):
    model, _, a, b = bigram
    config = quick(placement="prefix", method="grow")
    whole = run(model, bigram_task(a, b), config, checkpoint_dir=str(tmp_path / "whole"))

    class Interrupted(Exception):
        pass

    calls = {"count": 0}
    original = Grow.step

    def failing(self, indices):
        calls["count"] += 1
        if calls["count"] == 2:  # inside the second stage, the tokens
            raise Interrupted
        return original(self, indices)

    monkeypatch.setattr(Grow, "step", failing)
    with pytest.raises(Interrupted):
        run(model, bigram_task(a, b), config, checkpoint_dir=str(tmp_path / "cut"))
    monkeypatch.setattr(Grow, "step", original)
    assert (tmp_path / "cut" / "label_words" / "outcome.json").exists()  # the first stage was done
    assert not (tmp_path / "cut" / "tokens" / "outcome.json").exists()
    resumed = run(model, bigram_task(a, b), config, checkpoint_dir=str(tmp_path / "cut"), resume=True)
    assert (resumed.template, resumed.label_words, resumed.token_ids) == (whole.template, whole.label_words,
                                                                         whole.token_ids)
    assert [dataclasses.astuple(s)[:5] for s in resumed.stages] == [dataclasses.astuple(s)[:5] for s in whole.stages]


def test_contextual_calibration_divides_out_the_content_free_bias(gpt2_tokenizer):
    model = build(lambda: tiny_gpt2(initializer_range=0.3))
    texts, labels = [" good", " great", " bad", " awful"], [1, 1, 0, 0]
    objective = ClassificationObjective(gpt2_tokenizer, texts, labels, template="{text} It was",
                                        label_words=[" no", " yes"], held_out_texts=texts, held_out_labels=labels)
    empty = torch.tensor([], dtype=torch.long)
    with torch.no_grad():
        bias = objective.content_free_log_probs(model, empty)
        free = [ClassificationObjective(gpt2_tokenizer, [t], [0], template="{text} It was",
                                        label_words=[" no", " yes"]) for t in ("N/A", "", "[MASK]")]
        no_prompt = torch.zeros(0, model.config.n_embd)
        each = torch.stack([f.class_log_probs(model, no_prompt, [0])[0] for f in free])
        torch.testing.assert_close(bias, each.exp().mean(0).log(), atol=1e-5, rtol=0)
        plain = objective.class_log_probs(model, no_prompt, [0, 1, 2, 3])
    expected = (plain - bias).argmax(-1).tolist()
    assert objective.predictions(model, empty, "held_out", calibrate=True) == expected
    assert objective.predictions(model, empty, "held_out") == plain.argmax(-1).tolist()


def test_label_words_are_scored_from_one_validation_forward_exactly(gpt2_tokenizer):
    from peft_softhard.optimization.label_words import LabelWordScores

    model = build(lambda: tiny_gpt2(initializer_range=0.3))
    texts, labels = [" good", " great", " bad", " awful", " fine", " dull"], [1, 1, 0, 0, 1, 0]
    objective = ClassificationObjective(gpt2_tokenizer, texts, labels, template="{text} It was{prompt}",
                                        label_words=[" no", " yes"], held_out_texts=texts, held_out_labels=labels)
    start = WholePrompt(objective.template, objective.label_words, gpt2_tokenizer(" so")["input_ids"])
    with torch.no_grad():
        scores = LabelWordScores(model, objective, start)
        for words in ([" no", " yes"], [" bad", " good"], [" the", " a"]):
            changed = objective.replace(label_words=words)
            assert scores.accuracy(words) == changed.score(model, torch.tensor(start.token_ids))
    assert scores.covers(WholePrompt(start.template, [" bad", " good"], start.token_ids))
    assert not scores.covers(WholePrompt(start.template, [" unremarkable", " good"], start.token_ids))  # two tokens
    assert not scores.covers(WholePrompt(start.template, [" bad", " good"], []))  # another prompt


def test_the_search_starts_from_the_users_own_template(gpt2_tokenizer):
    """Step 0 is the user's prompt exactly: their template tokenized whole, not its segments around an empty slot
    (which a tokenizer may split differently); the slot goes in with the tokens stage."""
    model = build(lambda: tiny_gpt2(initializer_range=0.3))
    texts, labels = [" good", " great", " bad", " awful", " fine", " dull"], [1, 1, 0, 0, 1, 0]
    objective = ClassificationObjective(gpt2_tokenizer, texts, labels, template="Review:{text}\nSentiment:",
                                        label_words=[" no", " yes"], held_out_texts=texts, held_out_labels=labels)
    result = run(model, objective, quick(stages=["tokens"], placement="before_answer_cue", whole_words=False))
    with torch.no_grad():
        assert result.start_score == objective.score(model, torch.tensor([], dtype=torch.long))
    (stage,) = result.stages
    assert stage.start_score == result.start_score
    assert stage.prompt["template"] == "Review:{text}\n{prompt} Sentiment:"
    assert result.template == (stage.prompt["template"] if stage.kept else objective.template)
