"""Interrupted training and discovery resume to the same result as an uninterrupted run."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file

from peft_softhard import ClassificationObjective, DiscoveryConfig, SoftHardConfig, run
from peft_softhard.files.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from peft_softhard.optimization.training import TrainConfig, train_prompt
from peft_softhard.testing import build, tiny_gpt2

IN_FRONT = {"stages": ["tokens"], "placement": "prefix"}  # the token searches in front, as these tests were written


class Interrupting:
    """Wraps an objective and raises KeyboardInterrupt (a Ctrl-C) on the n-th training loss."""

    def __init__(self, objective, at_call: int):
        self.objective, self.at_call, self.calls = objective, at_call, 0

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def loss(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at_call:
            raise KeyboardInterrupt
        return self.objective.loss(*args, **kwargs)


@pytest.fixture(scope="module")
def sentiment(gpt2_tokenizer):
    texts = [" good", " great", " fine", " bad", " awful", " poor", " nice", " dull"]
    labels = [1, 1, 1, 0, 0, 0, 1, 0]
    return ClassificationObjective(gpt2_tokenizer, texts, labels, template="{text}. It was",
                                   label_words=[" no", " yes"], held_out_texts=texts, held_out_labels=labels)


def fresh_model(mode: str):
    torch.manual_seed(0)
    base = build(lambda: tiny_gpt2(initializer_range=0.3))
    return get_peft_model(base, SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, mode=mode))


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path, sentiment, mode):
    config = TrainConfig(steps=12, lr=0.05, batch_size=4, eval_interval=3, checkpoint_interval=5, show_progress=False)
    straight = fresh_model(mode)
    expected = train_prompt(straight, sentiment, config, tmp_path / "straight")

    interrupted = fresh_model(mode)
    with pytest.raises(KeyboardInterrupt):
        train_prompt(interrupted, Interrupting(sentiment, at_call=8), config, tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint")["loop"]["step"] == 7  # the last completed step
    again = fresh_model(mode)
    result = train_prompt(again, sentiment, config, tmp_path / "resumed", resume=True)

    assert result.resumed_from == 7
    assert result.loss_history == pytest.approx(expected.loss_history, abs=1e-6)
    assert result.score_history == expected.score_history
    ours = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.allclose(ours[key].float(), theirs[key].float(), atol=1e-6), key
    if mode == "hard":
        assert torch.equal(ours["token_ids"], theirs["token_ids"])


@pytest.mark.parametrize(("method", "at_call"), [("pez", 17), ("gcg", 17), ("pez_refine", 17), ("pez_refine", 22)])
def test_interrupted_discovery_resumes_to_the_uninterrupted_result(tmp_path, sentiment, method, at_call):
    model = build(lambda: tiny_gpt2(initializer_range=0.3))
    objective = sentiment  # every prompt position matters here, so any lost state would show
    config = DiscoveryConfig(**IN_FRONT, method=method, steps=12, batch_size=4, eval_interval=2, num_restarts=2,
                             lr=0.05,
                             gcg_top_k=8, gcg_candidates=8, buffer_size=2, n_replace=2, show_progress=False)
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    expected = run(model, objective, config, prompt)

    with pytest.raises(KeyboardInterrupt):
        run(model, Interrupting(objective, at_call=at_call), config, prompt, checkpoint_dir=str(tmp_path),
            checkpoint_interval=5)
    assert has_checkpoint(tmp_path)
    saved = load_checkpoint(tmp_path)["loop"]
    # call 17 is step 5 of the second restart (pez_refine: still PEZ), call 22 step 10 (refining since step 6)
    assert (saved["restart"], saved["step"]) == (1, at_call - 13)
    result = run(model, objective, config, prompt, checkpoint_dir=str(tmp_path), resume=True)
    assert result.token_ids == expected.token_ids and result.best_score == expected.best_score
    assert result.score_history == expected.score_history
    assert result.loss_history == pytest.approx(expected.loss_history, abs=1e-6)


def test_a_finished_run_continued_to_more_steps_ends_as_the_longer_run(tmp_path, sentiment):
    # how the quality benchmark measures one run at several budgets (constant learning rates)
    config = DiscoveryConfig(**IN_FRONT, method="pez", steps=12, batch_size=4, eval_interval=3, lr=0.05,
                             show_progress=False)
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    model = build(lambda: tiny_gpt2(initializer_range=0.3))
    expected = run(model, sentiment, config, prompt)
    shorter = dataclasses.replace(config, steps=6)
    first = run(model, sentiment, shorter, prompt, checkpoint_dir=str(tmp_path), checkpoint_interval=4)
    result = run(model, sentiment, config, prompt, checkpoint_dir=str(tmp_path), resume=True)
    assert first.steps == 6 and result.steps == 12
    assert result.score_history == expected.score_history and result.token_ids == expected.token_ids
    assert result.loss_history == pytest.approx(expected.loss_history, abs=1e-6)


def test_a_run_stopped_by_its_time_limit_checkpoints_where_it_stopped(tmp_path, sentiment):
    config = DiscoveryConfig(**IN_FRONT, method="pez", steps=1000, batch_size=4, eval_interval=500, lr=0.05,
                             max_seconds=1e-6,
                             show_progress=False)
    result = run(build(lambda: tiny_gpt2(initializer_range=0.3)), sentiment, config,
                 SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=3), checkpoint_dir=str(tmp_path),
                 checkpoint_interval=500)
    assert result.steps == 1 and load_checkpoint(tmp_path)["loop"]["step"] == 1  # not lost: a longer run continues


def test_checkpoints_hold_no_pickle_and_round_trip(tmp_path):
    state = {"step": 3, "nested": {"a": [torch.arange(3), 1.5, None]}, 7: "int key", "flag": True}
    save_checkpoint(tmp_path / "c", state)
    loaded = load_checkpoint(tmp_path / "c")
    assert loaded["step"] == 3 and loaded[7] == "int key" and loaded["flag"] is True
    assert torch.equal(loaded["nested"]["a"][0], torch.arange(3)) and loaded["nested"]["a"][1:] == [1.5, None]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["state.json", "state.safetensors"]
    with pytest.raises(TypeError, match="without pickle"):
        save_checkpoint(tmp_path / "d", {"bad": object()})


def test_the_same_seed_gives_the_same_prompts(tmp_path, sentiment):
    config = TrainConfig(steps=6, lr=0.05, batch_size=4, eval_interval=3, show_progress=False)
    soft = [fresh_model("soft") for _ in range(2)]
    for index, model in enumerate(soft):
        train_prompt(model, sentiment, config, tmp_path / f"soft{index}")
    assert torch.equal(*(m.prompt_encoder["default"].embedding.weight for m in soft))

    model = build(lambda: tiny_gpt2(initializer_range=0.3))
    search = DiscoveryConfig(**IN_FRONT, method="pez", steps=6, batch_size=4, eval_interval=3, lr=0.05,
                             show_progress=False)
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    first, second = run(model, sentiment, search, prompt), run(model, sentiment, search, prompt)
    assert first.token_ids == second.token_ids and first.loss_history == second.loss_history


def test_a_checkpoint_of_the_old_layout_is_refused_with_what_to_do(tmp_path, sentiment):
    save_checkpoint(tmp_path / "out" / "checkpoint", {"step": 3, "losses": [1.0], "parameters": {}})
    config = TrainConfig(steps=4, batch_size=4, show_progress=False)
    with pytest.raises(ValueError, match="written by peft-softhard 0.1.0.*delete it to start over"):
        train_prompt(fresh_model("soft"), sentiment, config, tmp_path / "out", resume=True)
