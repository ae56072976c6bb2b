"""Hard-prompt discovery: PEZ as Algorithm 1, the baselines, best-so-far, fluency, and the text round trip."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from peft_softhard import (
    BestHardPromptCallback,
    ClassificationObjective,
    DiscoveryConfig,
    SoftHardConfig,
    SoftHardPromptEncoder,
    TargetTextObjective,
    run,
)
from peft_softhard.optimization.loop import BestPrompt
from peft_softhard.optimization.token_search import METHODS, read_back
from peft_softhard.testing import bigram_llama, build, tiny_gpt2

from conftest import GPT2_TOKENIZER

KEY = 500  # the planted answer: the prompt must end in this token


@pytest.fixture(scope="module")
def planted():
    """A bigram model that produces the 3-token target right after a prompt exactly when it ends in KEY."""
    model, successor = bigram_llama()
    target = [int(successor[KEY]), int(successor[successor[KEY]]), int(successor[successor[successor[KEY]]])]
    return model, TargetTextObjective(None, target)


def prompt_config(n: int = 3, **kwargs) -> SoftHardConfig:
    return SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, mode="hard", **kwargs)


def search(method: str, steps: int = 40, **kwargs) -> DiscoveryConfig:
    settings = {"batch_size": 1, "eval_interval": 5, "show_progress": False, **kwargs}
    return DiscoveryConfig(method=method, steps=steps, stages=["tokens"], placement="prefix", **settings)


def test_the_planted_problem_has_the_planted_answer(planted):
    model, objective = planted
    assert objective.score(model, torch.tensor([10, 11, KEY])) == 1.0
    assert objective.score(model, torch.tensor([10, KEY, 11])) < 1.0


@pytest.mark.parametrize("method", ["pez", "gcg"])
def test_pez_and_gcg_find_the_planted_prompt(planted, method):
    model, objective = planted
    result = run(model, objective, search(method, gcg_top_k=16, gcg_candidates=32), prompt_config())
    assert result.best_score == 1.0 and result.token_ids[-1] == KEY
    assert result.steps == 40 and len(result.loss_history) == 40
    # search seconds at each score rise, and the run's wall time (scoring included) is at least the last of them
    assert result.score_seconds == sorted(result.score_seconds) and result.seconds >= result.score_seconds[-1]
    assert result.loss_history[-1] < result.loss_history[0]


def test_pez_beats_the_same_number_of_random_prompts(planted):
    model, objective = planted
    steps = 40
    result = run(model, objective, search("pez", steps), prompt_config())
    encoder = SoftHardPromptEncoder.for_model(prompt_config(), model)
    allowed = encoder.allowed_token_ids()
    generator = torch.Generator().manual_seed(0)
    random_prompts = allowed[torch.randint(len(allowed), (steps, 3), generator=generator)]
    best_random = max(objective.score(model, prompt) for prompt in random_prompts)
    assert result.best_score > best_random


def test_projected_sgd_runs_in_the_same_interface(planted):
    model, objective = planted
    result = run(model, objective, search("psgd"), prompt_config())
    assert result.method == "psgd" and len(result.score_history) == 9  # step 0, then every 5 of 40 steps


@pytest.mark.parametrize("method", ["pez", "gcg"])
def test_max_seconds_stops_the_search_and_scores_where_it_stopped(planted, method):
    model, objective = planted
    limit = 0.2
    result = run(model, objective, search(method, steps=100_000, eval_interval=10_000, max_seconds=limit,
                                          num_restarts=3), prompt_config())
    assert 0 < result.steps < 100_000 and len(result.loss_history) == result.steps
    assert result.best_restart == 0  # the limit counts all restarts together
    assert len(result.score_seconds) == len(result.score_history) == 2  # the start, and where it stopped
    assert result.score_seconds[0] < limit <= result.score_seconds[1]
    with pytest.raises(ValueError, match="max_seconds must be positive"):
        DiscoveryConfig(max_seconds=0)


def test_score_seconds_count_search_time_only(planted):
    model, objective = planted
    result = run(model, objective, search("pez", steps=20, eval_interval=5), prompt_config())
    assert len(result.score_seconds) == len(result.score_history) == 5
    assert result.score_seconds == sorted(result.score_seconds) and result.score_seconds[-1] <= result.seconds


def test_after_one_pez_step_the_continuous_copy_differs_from_its_projection(planted):
    """The reference code overwrote P with its projection every step, which is projected SGD, not PEZ."""
    model, objective = planted
    for method, expect_equal in (("pez", False), ("psgd", True)):
        torch.manual_seed(0)
        encoder = SoftHardPromptEncoder.for_model(prompt_config(), model)
        METHODS[method](search(method), model, objective, encoder).step([0])
        projection = model.get_input_embeddings()(encoder.current_token_ids())
        assert torch.equal(encoder.embedding.weight.detach(), projection) is expect_equal


def test_best_prompt_keeps_the_first_of_equal_scores():
    best = BestPrompt()
    assert best.update({"token_ids": torch.tensor([1])}, 0.5, step=1)
    assert best.update({"token_ids": torch.tensor([2])}, 0.9, step=2)
    assert not best.update({"token_ids": torch.tensor([3])}, 0.9, step=3)
    assert not best.update({"token_ids": torch.tensor([4])}, 0.1, step=4)
    assert (best.token_ids, best.score, best.step) == ([2], 0.9, 2)
    assert best.update({"token_ids": torch.tensor([5])}, 0.9, step=5, tie_break=1.0)  # e.g. a more fluent prompt
    assert best.token_ids == [5]


class ScriptedScores(TargetTextObjective):
    """Scores follow a script, whatever the prompt, and remember which prompt got which score."""

    def __init__(self, target, script):
        super().__init__(None, target)
        self.script, self.seen = list(script), []

    def score(self, model, prompt):
        self.seen.append(prompt.tolist())
        return self.script[len(self.seen) - 1]


def test_run_returns_the_best_projected_prompt_seen_not_the_last(planted):
    model, objective = planted
    scripted = ScriptedScores(objective.target_ids, [0.1, 0.2, 0.7, 0.4, 0.7, 0.1, 0.3, 0.2, 0.1])
    result = run(model, scripted, search("pez", lr=0.5), prompt_config())
    assert result.best_score == 0.7 and result.best_step == 10 and result.start_score == 0.1
    assert result.token_ids == scripted.seen[2]
    assert [score for _, score in result.score_history] == scripted.script


def test_restarts_and_adafactor(planted):
    model, objective = planted
    result = run(model, objective, search("pez", steps=10, num_restarts=2, optimizer="adafactor", lr=0.3),
                 prompt_config())
    assert len(result.score_history) == 6 and result.steps == 20
    assert [step for step, _ in result.score_history] == [0, 5, 10, 10, 15, 20]  # each restart scores its start
    scores = [score for _, score in result.score_history]  # restart 0's three scores, then restart 1's
    assert result.best_score == max(scores) and result.best_restart == scores.index(max(scores)) // 3


def test_fluency_weight_makes_the_prompt_more_likely_under_the_model(planted):
    model, objective = planted
    plain = run(model, objective, search("pez", steps=60), prompt_config(n=4))
    fluent = run(model, objective, search("pez", steps=60, fluency_weight=0.5), prompt_config(n=4))
    assert plain.perplexity is not None and fluent.perplexity is not None
    assert fluent.perplexity < plain.perplexity
    assert fluent.best_score == 1.0


def test_invalid_discovery_settings_are_refused():
    for kwargs, message in (({"method": "annealing"}, "Unknown method"), ({"steps": 0}, "steps must be"),
                            ({"optimizer": "sgd"}, "Unknown optimizer"), ({"fluency_weight": 1.0}, "fluency_weight")):
        with pytest.raises(ValueError, match=message):
            DiscoveryConfig(**kwargs)


def test_auto_resolves_to_grow_at_a_slot_and_pez_in_front():
    template = "Review: {text}\nSentiment:"
    assert DiscoveryConfig().token_method(template) == "grow"  # the default placement: the end slot
    assert DiscoveryConfig(placement="prefix").token_method(template) == "pez"
    assert DiscoveryConfig().token_method("{prompt}Review: {text}\nSentiment:") == "pez"  # the template's own slot
    assert DiscoveryConfig().token_method(None) == "pez"  # rows without a template (a corpus)
    assert DiscoveryConfig(method="gcg").token_method(template) == "gcg"


def test_discovered_text_round_trips_with_the_real_gpt2_tokenizer(gpt2_tokenizer):
    texts = [" good", " great", " fine", " bad", " awful", " poor"]
    objective = ClassificationObjective(gpt2_tokenizer, texts, [1, 1, 1, 0, 0, 0], template="{text}. It was",
                                        label_words=[" no", " yes"])
    prompt = prompt_config(n=6, round_trip_only=True, word_start_only=True, tokenizer_name_or_path=str(GPT2_TOKENIZER))
    for method in ("pez", "gcg"):
        result = run(build(tiny_gpt2), objective, search(method, steps=10, batch_size=6), prompt)
        assert result.round_trips is True
        assert gpt2_tokenizer(result.text, add_special_tokens=False).input_ids == result.token_ids
        assert any("round_trip_only" in note for note in result.notes)


def test_a_text_that_would_mean_other_tokens_is_flagged(gpt2_tokenizer):
    pieces = [gpt2_tokenizer.convert_tokens_to_ids(t) for t in ("Ġmov", "ie")]  # " mov" + "ie" re-encodes as " movie"
    text, round_trips, notes = read_back(gpt2_tokenizer, pieces, prompt_config())
    assert text == " movie" and round_trips is False
    assert any("does NOT tokenize back" in note for note in notes)


def test_classification_objective_scores_whole_multi_token_label_words(gpt2_tokenizer):
    model = build(tiny_gpt2)
    words = [" unremarkable", " yes"]  # the first is several tokens
    assert len(gpt2_tokenizer(words[0]).input_ids) > 1
    objective = ClassificationObjective(gpt2_tokenizer, [" fine film"], [0], template="{text}. It was",
                                        label_words=words)
    prompt = torch.tensor([100, 200])
    log_probs = objective._class_log_probs(model, model.get_input_embeddings()(prompt), objective.train[0])[0]
    text_ids, offset = objective.train[0][0]  # no slot: the prompt goes in front
    assert offset == 0
    sequence = torch.tensor(prompt.tolist() + text_ids + objective.label_ids[0])
    with torch.no_grad():
        token_log_probs = model(input_ids=sequence[None]).logits[0].log_softmax(-1)
    word_start = len(sequence) - len(objective.label_ids[0])
    expected = sum(token_log_probs[p - 1, sequence[p]] for p in range(word_start, len(sequence)))
    assert log_probs[0].item() == pytest.approx(expected.item(), abs=1e-5)


def test_bad_classification_data_is_refused(gpt2_tokenizer):
    with pytest.raises(ValueError, match="tokenise to the same ids"):
        ClassificationObjective(gpt2_tokenizer, ["a"], [0], label_words=[" yes", " yes"])
    with pytest.raises(ValueError, match=r"Labels \[5\] have no label word"):
        ClassificationObjective(gpt2_tokenizer, ["a"], [5], label_words=[" no", " yes"])
    with pytest.raises(ValueError, match="must contain"):
        ClassificationObjective(gpt2_tokenizer, ["a"], [0], template="no slot", label_words=[" no", " yes"])


def test_result_becomes_an_exact_hard_adapter(planted):
    model, objective = planted
    result = run(model, objective, search("gcg", steps=10, gcg_top_k=16), prompt_config())
    peft_model = result.to_peft_model(model)
    ids = torch.tensor(result.token_ids)
    assert peft_model.prompt_encoder["default"].current_token_ids().tolist() == result.token_ids
    batch = torch.tensor([[5, 6]])
    with torch.no_grad():
        ours = peft_model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits
        reference = model(input_ids=torch.cat([ids[None], batch], 1)).logits
    assert torch.equal(ours, reference)


def test_trainer_callback_tracks_and_saves_the_best_projected_prompt(planted, tmp_path):
    from datasets import Dataset
    from safetensors.torch import load_file
    from transformers import Trainer, TrainingArguments

    model, objective = planted
    peft_model = get_peft_model(model, prompt_config())
    target = objective.target_ids
    data = Dataset.from_dict({"input_ids": [target] * 8, "attention_mask": [[1] * 3] * 8, "labels": [target] * 8})
    callback = BestHardPromptCallback(objective, eval_steps=2)
    arguments = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=20,
                                  learning_rate=0.1, lr_scheduler_type="constant", report_to=[], use_cpu=True,
                                  disable_tqdm=True, save_strategy="no")
    Trainer(model=peft_model, args=arguments, train_dataset=data, callbacks=[callback]).train()

    assert [step for step, _ in callback.history] == list(range(2, 21, 2))
    assert callback.best.score == max(score for _, score in callback.history) == 1.0
    saved = load_file(tmp_path / "best_hard_prompt" / "adapter_model.safetensors")
    assert saved["token_ids"].tolist() == callback.best.token_ids and callback.best.token_ids[-1] == KEY


def test_single_token_label_fast_path_equals_scoring_each_word(gpt2_tokenizer):
    model = build(tiny_gpt2)
    texts, labels = [" fine film", " a dull , long movie", " ok"], [1, 0, 1]
    objective = ClassificationObjective(gpt2_tokenizer, texts, labels, template="{text}. It was",
                                        label_words=[" bad", " good"])
    assert objective.single_token
    prompts = torch.tensor([[100, 200], [300, 400]])
    fast = objective._candidate_class_log_probs(model, prompts, objective.train[0], max_rows=2)
    fast_losses = objective.candidate_losses(model, prompts, [0, 1, 2])
    objective.single_token = False  # score every label word as its own row
    slow = objective._candidate_class_log_probs(model, prompts, objective.train[0], max_rows=2)
    assert fast.shape == slow.shape == (2, 3, 2)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(fast_losses, objective.candidate_losses(model, prompts, [0, 1, 2]), atol=1e-5)
