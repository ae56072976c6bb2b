"""The searches issue 15 added: GCG's buffer and multi-position swaps, PEZ + refinement, soft-to-hard
distillation, warm starts from vectors, the step-0 score, and the reference preset."""

from __future__ import annotations

import pytest
import torch

from peft_softhard import ClassificationObjective, DiscoveryConfig, DistillationObjective, SoftHardConfig, run
from peft_softhard.method.encoder import SoftHardPromptEncoder
from peft_softhard.optimization.loop import frozen
from peft_softhard.optimization.token_search import GCG, PEZRefine
from peft_softhard.testing import build, tiny_gpt2

TEXTS = [" good", " great", " fine", " bad", " awful", " poor", " nice", " dull"]
LABELS = [1, 1, 1, 0, 0, 0, 1, 0]


@pytest.fixture(scope="module")
def model():
    return build(lambda: tiny_gpt2(initializer_range=0.3))


@pytest.fixture(scope="module")
def sentiment(gpt2_tokenizer):
    return ClassificationObjective(gpt2_tokenizer, TEXTS, LABELS, template="{text}. It was",
                                   label_words=[" no", " yes"], held_out_texts=TEXTS, held_out_labels=LABELS)


def hard(n: int = 4) -> SoftHardConfig:
    return SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, mode="hard")


def config(method: str, **kwargs) -> DiscoveryConfig:
    settings = {"steps": 6, "batch_size": 4, "eval_interval": 2, "lr": 0.05, "gcg_top_k": 8, "gcg_candidates": 8,
                "show_progress": False, **kwargs}
    return DiscoveryConfig(method=method, stages=["tokens"], placement="prefix", **settings)


def strategy(kind, model, objective, settings, n: int = 4):
    torch.manual_seed(0)
    encoder = SoftHardPromptEncoder.for_model(hard(n), model)
    return kind(settings, model, objective, encoder)


def test_swaps_change_exactly_n_replace_positions_to_ranked_tokens(model, sentiment):
    for n_replace in (1, 3):
        search = strategy(GCG, model, sentiment, config("gcg", n_replace=n_replace, gcg_candidates=32), n=6)
        ids = torch.arange(100, 106)
        ranked = torch.arange(1000, 1000 + 6 * 8).view(6, 8)  # no ranked token equals a current one
        candidates = search.sample_swaps(ids, ranked)
        changed = candidates != ids
        assert candidates.shape == (32, 6) and (changed.sum(1) == n_replace).all()
        positions, = changed[0].nonzero(as_tuple=True)
        for position in positions.tolist():  # each new token is one of that position's ranked tokens
            assert candidates[0, position] in ranked[position]


def test_with_a_buffer_the_prompt_never_gets_worse_on_the_batch_that_judged_it(model, sentiment):
    search = strategy(GCG, model, sentiment, config("gcg", buffer_size=3, gcg_candidates=1))  # one random swap
    with frozen(model):
        for batch in ([0, 1, 2, 3], [4, 5, 6, 7], [0, 3, 5, 6], [1, 2, 4, 7]) * 3:
            before = search.prompt()
            search.step(batch)
            after = search.prompt()
            losses = sentiment.candidate_losses(model, torch.stack([before, after]), batch)
            assert losses[1] <= losses[0] + 1e-6
            assert torch.equal(search.buffer[0], after) and len(search.buffer) <= 3


def test_without_a_buffer_gcg_takes_the_steps_best_candidate_even_when_worse(model, sentiment):
    """buffer_size=0 is the original GCG (and the earlier records): the current prompt is not kept."""
    search = strategy(GCG, model, sentiment, config("gcg", buffer_size=0, gcg_candidates=2))
    with frozen(model):
        search.step([0, 1, 2, 3])
    assert search.buffer == []


def test_pez_refine_runs_pez_then_switches_to_exact_refinement(model, sentiment):
    search = strategy(PEZRefine, model, sentiment, config("pez_refine", steps=4, refine_share=0.5, buffer_size=2))
    with frozen(model):
        for step in range(4):
            search.step([0, 1, 2, 3])
            assert (search.refine is not None) == (step >= 2)
    assert search.pez is None
    assert search.refine.buffer and torch.equal(search.refine.buffer[0], search.prompt())
    result = run(model, sentiment, config("pez_refine", buffer_size=2, n_replace=2), hard())
    assert result.method == "pez_refine" and result.steps == 6 and result.score_history[0][0] == 0


def test_the_starting_prompt_is_scored_and_wins_when_nothing_beats_it(model, gpt2_tokenizer):
    class Falling(ClassificationObjective):
        """Every score after the first is worse."""

        def score(self, model, prompt):
            self.calls = getattr(self, "calls", 0) + 1
            return 1.0 / self.calls

    objective = Falling(gpt2_tokenizer, TEXTS, LABELS, template="{text}. It was", label_words=[" no", " yes"])
    start = [464, 3797, 2646, 318]
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, mode="hard", init="token_ids",
                            init_token_ids=start)
    result = run(model, objective, config("pez", lr=0.5), prompt)
    # the user's prompt (the template alone) is scored first, then the search's own start, at its step 0
    (stage,) = result.stages
    assert result.score_history[0][0] == 0 and stage.best_step == 0
    assert stage.prompt["token_ids"] == start  # the search's best is where it began, not a worse prompt,
    assert not stage.kept and result.token_ids == [] and result.best_score == 1.0  # and the template alone wins


def test_a_search_can_start_from_a_soft_prompts_vectors(model, sentiment):
    torch.manual_seed(1)
    vectors = torch.randn(4, model.config.n_embd) * 0.3
    encoder = SoftHardPromptEncoder.for_model(hard(), model)
    encoder.embedding.weight.data.copy_(vectors)
    reading = encoder.current_token_ids().tolist()  # the projection of those vectors
    seen = []

    class Recording(ClassificationObjective):
        def score(self, model, prompt):
            seen.append(prompt.tolist())
            return 0.0

    recording = Recording(sentiment.tokenizer, TEXTS, LABELS, template="{text}. It was", label_words=[" no", " yes"],
                          held_out_texts=TEXTS, held_out_labels=LABELS)
    run(model, recording, config("gcg"), hard(), init_prompt=vectors)
    assert seen[0] == [] and seen[1] == reading  # the template alone first, then the search's start
    with pytest.raises(ValueError, match="same length"):
        run(model, sentiment, config("pez"), hard(n=3), init_prompt=vectors)


def test_distillation_loss_is_zero_at_the_teacher_and_matches_its_candidate_form(model, sentiment):
    teacher_ids = torch.tensor([464, 3797, 2646, 318])
    embed = model.get_input_embeddings()
    distill = DistillationObjective(sentiment, embed(teacher_ids).detach())
    rows = [0, 3, 5]
    with torch.no_grad():
        assert distill.loss(model, embed(teacher_ids), rows).item() == pytest.approx(0.0, abs=1e-6)
        other = torch.tensor([100, 200, 300, 400])
        loss = distill.loss(model, embed(other), rows).item()
        candidates = distill.candidate_losses(model, torch.stack([teacher_ids, other]), rows)
    assert loss > 0 and candidates[0].item() == pytest.approx(0.0, abs=1e-6)
    assert candidates[1].item() == pytest.approx(loss, rel=1e-4)
    assert distill.score(model, other) == sentiment.score(model, other)  # chosen by accuracy, not imitation
    result = run(model, distill, config("pez_refine", buffer_size=2), hard(), init_prompt=embed(teacher_ids).detach())
    assert result.best_score >= result.score_history[0][1]


def test_distillation_refuses_an_objective_without_label_words(model):
    with pytest.raises(ValueError, match="ClassificationObjective"):
        DistillationObjective(object(), torch.zeros(2, 4))


def test_the_reference_preset_and_its_overrides():
    reference = DiscoveryConfig.from_preset("pez-reference")
    assert (reference.method, reference.optimizer, reference.lr, reference.steps, reference.batch_size,
            reference.eval_interval, reference.grad_clip) == ("pez", "adafactor", 0.3, 5000, 16, 100, 1.0)
    assert DiscoveryConfig.from_preset("pez-reference", steps=7).steps == 7
    with pytest.raises(ValueError, match="Unknown preset"):
        DiscoveryConfig.from_preset("fast")
    for kwargs, message in (({"buffer_size": -1}, "buffer_size"), ({"n_replace": 0}, "n_replace"),
                            ({"refine_share": 0.0}, "refine_share")):
        with pytest.raises(ValueError, match=message):
            DiscoveryConfig(**kwargs)
