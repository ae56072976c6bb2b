"""Reading prompts as tokens: top-k with similarity and distance, statistics, conversion, waywardness."""

from __future__ import annotations

import pytest
import torch
from peft import PromptTuningConfig, get_peft_model

from peft_softhard import (
    ClassificationObjective,
    SoftHardConfig,
    export_prompt_tuning,
    project_prompt,
    to_hard_adapter,
    waywardness,
)
from peft_softhard.method.projection import distance
from peft_softhard.testing import build, tiny_gemma3, tiny_gpt2, tiny_llama

from conftest import GPT2_TOKENIZER

GPT2_EOS = 50256


def make(base, mode="hard", n=6, **config):
    return get_peft_model(base, SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, mode=mode, **config))


def test_hard_prompt_reads_as_exactly_the_tokens_in_use(gpt2_tokenizer):
    model = make(build(tiny_gpt2), tokenizer_name_or_path=str(GPT2_TOKENIZER))
    with torch.no_grad():  # move P off its tokens: the reading must still be the tokens fed to the model
        model.prompt_encoder["default"].embedding.weight.add_(0.003)
    reading = project_prompt(model, gpt2_tokenizer, top_k=3)
    in_use = model.prompt_encoder["default"].current_token_ids().tolist()
    assert reading.token_ids == in_use
    assert reading.text == gpt2_tokenizer.decode(in_use)
    assert [row[0].token_id for row in reading.candidates] == in_use  # same metric: the nearest is the one in use
    assert all(len(row) == 3 and row[0].similarity >= row[1].similarity >= row[2].similarity
               for row in reading.candidates)
    assert all(row[0].distance <= row[1].distance for row in reading.candidates)  # cosine: 1 - similarity
    assert 0 < reading.mean_distance <= reading.max_distance


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_soft_prompt_made_of_token_embeddings_reads_back_as_those_tokens(metric):
    ids = [11, 22, 33, 44]
    model = make(build(tiny_gemma3), "soft", n=4, init="token_ids", init_token_ids=ids, metric=metric)
    reading = project_prompt(model)
    assert reading.token_ids == ids and reading.mode == "soft" and reading.metric == metric
    assert reading.max_distance == pytest.approx(0, abs=1e-6)
    assert reading.text is None and reading.non_word_share is None  # no tokenizer for a model built in code


def test_distances_are_the_metric_distance_to_the_token():
    model = make(build(tiny_llama), "soft", n=3, metric="l2")
    encoder = model.prompt_encoder["default"]
    with torch.no_grad():
        encoder.embedding.weight.add_(torch.randn(3, 32) * 0.01)
    reading = project_prompt(model, top_k=2)
    vectors = encoder.embedding.weight.detach()
    expected = distance(vectors, encoder.word_embeddings(torch.tensor(reading.token_ids)), "l2")
    assert reading.distances == pytest.approx(expected.tolist())
    assert min(reading.distances) > 0.01
    similarities = [row[0].similarity for row in reading.candidates]
    assert similarities == pytest.approx([-d for d in reading.distances], abs=1e-6)


def test_statistics_count_special_and_non_word_tokens(gpt2_tokenizer):
    comma, word = gpt2_tokenizer(",", add_special_tokens=False).input_ids[0], gpt2_tokenizer(" movie").input_ids[0]
    model = make(build(tiny_gpt2), "soft", n=4, init="token_ids", init_token_ids=[GPT2_EOS, comma, word, word],
                 tokenizer_name_or_path=str(GPT2_TOKENIZER))
    everything = project_prompt(model, constrained=False)
    assert everything.token_ids == [GPT2_EOS, comma, word, word]
    assert everything.special_share == 0.25 and everything.non_word_share == 0.25  # the comma
    allowed = project_prompt(model)  # within the allowed vocabulary the special token is read as another one
    assert allowed.special_share == 0 and allowed.token_ids[0] != GPT2_EOS
    assert "mean distance" in allowed.table() and "' movie'" in allowed.table()


def test_project_prompt_refuses_other_methods():
    model = get_peft_model(build(tiny_llama), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    with pytest.raises(ValueError, match="not a SOFTHARD adapter"):
        project_prompt(model)


def test_soft_adapter_converts_to_a_hard_adapter_and_to_prompt_tuning(tmp_path):
    model = make(build(tiny_llama), "soft", n=5)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.mul_(1.3)  # off the token rows
    reading = project_prompt(model)
    name = to_hard_adapter(model)
    hard = model.prompt_encoder[name]
    assert model.peft_config[name].mode == "hard" and hard.current_token_ids().tolist() == reading.token_ids
    export_prompt_tuning(model, tmp_path, adapter_name=name)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter_model.safetensors")["prompt_embeddings"]
    assert torch.equal(saved, model.get_input_embeddings()(torch.tensor(reading.token_ids)))


def test_waywardness_scores_the_soft_prompt_and_its_reading(gpt2_tokenizer):
    texts = [" good", " great", " fine", " bad", " awful", " poor"] * 2
    labels = [1, 1, 1, 0, 0, 0] * 2
    objective = ClassificationObjective(gpt2_tokenizer, texts, labels, template="{text}. It was",
                                        label_words=[" no", " yes"], held_out_texts=texts, held_out_labels=labels)
    model = make(build(lambda: tiny_gpt2(initializer_range=0.3)), "soft", n=4)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.mul_(3.0)  # far from every token: a wayward prompt
    report = waywardness(model, objective)
    base = model.get_base_model()
    encoder = model.prompt_encoder["default"]
    assert report.soft_score == objective.accuracy(base, encoder.embedding.weight.detach())
    assert report.projected_score == objective.accuracy(base, torch.tensor(report.projected_token_ids))
    assert report.projected_token_ids == project_prompt(model).token_ids
    assert report.mean_distance > 0
