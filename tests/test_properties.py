"""Property-based tests (hypothesis) of the projection: exact rows, idempotence, chunking, constraints."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_softhard import SoftHardConfig, SoftHardPromptEncoder, nearest_tokens

VOCAB, DIM = 300, 8
METRICS = st.sampled_from(["cosine", "dot", "l2"])
SETTINGS = settings(max_examples=40, deadline=None)


class ScaledEmbedding(torch.nn.Embedding):
    """An embedding module that scales its output, as Gemma's does: rows of `weight` are not what it returns."""

    def forward(self, ids):
        return super().forward(ids) * 2.5


def embedding(seed: int, scaled: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = (ScaledEmbedding if scaled else torch.nn.Embedding)(VOCAB, DIM)
    return module.requires_grad_(False)


def vectors(seed: int, rows: int = 4) -> torch.Tensor:
    return torch.randn(rows, DIM, generator=torch.Generator().manual_seed(seed + 1))


@SETTINGS
@given(seed=st.integers(0, 10_000), metric=METRICS, scaled=st.booleans(), scale=st.floats(0.01, 100))
def test_the_hard_prompt_is_always_exactly_what_the_embedding_module_returns(seed, metric, scaled, scale):
    module = embedding(seed, scaled)
    config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, mode="hard", metric=metric, init="random",
                            token_dim=DIM, exclude_special_tokens=False)
    encoder = SoftHardPromptEncoder(config, module)
    with torch.no_grad():
        encoder.embedding.weight.copy_(vectors(seed) * scale)
    ids = encoder.current_token_ids()
    assert torch.equal(encoder.prompt_embeddings(), module(ids))
    encoder.embedding.weight.requires_grad_(True)
    assert torch.equal(encoder.prompt_embeddings(), module(ids))  # the straight-through form too


@SETTINGS
@given(seed=st.integers(0, 10_000), metric=st.sampled_from(["cosine", "l2"]), scaled=st.booleans())
def test_projection_is_idempotent(seed, metric, scaled):
    """A token's own embedding projects to that token (cosine and l2; under a dot product a longer row can win)."""
    module = embedding(seed, scaled)
    ids, _ = nearest_tokens(vectors(seed), module, metric=metric)
    again, _ = nearest_tokens(module(ids[:, 0]), module, metric=metric)
    assert torch.equal(again, ids)


@SETTINGS
@given(seed=st.integers(0, 10_000), metric=METRICS, chunk=st.integers(1, VOCAB + 50), top_k=st.integers(1, 6))
def test_chunked_equals_unchunked_for_any_chunk_size(seed, metric, chunk, top_k):
    module = embedding(seed)
    whole = nearest_tokens(vectors(seed), module, metric=metric, top_k=top_k, chunk_size=VOCAB)
    chunked = nearest_tokens(vectors(seed), module, metric=metric, top_k=top_k, chunk_size=chunk)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


@SETTINGS
@given(seed=st.integers(0, 10_000), metric=METRICS, allowed=st.sets(st.integers(0, VOCAB - 1), min_size=1, max_size=40),
       top_k=st.integers(1, 3))
def test_every_metric_respects_the_vocabulary_constraint(seed, metric, allowed, top_k):
    top_k = min(top_k, len(allowed))
    candidates = torch.tensor(sorted(allowed))
    ids, _ = nearest_tokens(vectors(seed), embedding(seed), candidates, metric=metric, top_k=top_k)
    assert set(ids.flatten().tolist()) <= allowed
    config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, mode="hard", metric=metric,
                            allowed_token_ids=sorted(allowed), token_dim=DIM, exclude_special_tokens=False)
    encoder = SoftHardPromptEncoder(config, embedding(seed))
    assert set(encoder.current_token_ids().tolist()) <= allowed
