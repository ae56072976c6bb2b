"""Nearest-token search: map prompt vectors to the tokens whose embeddings are closest.

"The embedding of token i" is what the model's input-embedding module returns for i (some models scale
inside that module), so candidates are always embedded by calling the module, a chunk of ids at a time:
memory stays bounded for any vocabulary and no V x d copy is kept.

A matrix product rounds differently for different shapes, so a score could change in its last bit with the
chunk size, and a tie between duplicate rows could then flip. Scores are therefore always computed in
fixed blocks of BLOCK candidates (the last one zero-padded), each by the same float64 product whatever the
chunk size: chunking changes the memory used, never a result.
"""

from __future__ import annotations

import torch
from torch import nn

# Each chunk of candidate embeddings is scored in float64; keep one near this many bytes.
CHUNK_BYTES = 64 * 2**20
# Candidates per matrix product; every product has this shape, so results never depend on the chunking.
# Large, because each block costs a handful of kernel launches: on a GPU, 256 made a PEZ step launch-bound.
BLOCK = 2048
_EPS = 1e-12


def default_chunk_size(dim: int) -> int:
    return max(BLOCK, CHUNK_BYTES // (dim * 8))


def similarity(vectors: torch.Tensor, candidates: torch.Tensor, metric: str) -> torch.Tensor:
    """Similarity (higher is closer) of each row of `vectors` [n, d] to each row of `candidates` [c, d], float64."""
    return _prepared_similarity(_prepare(vectors, metric), _prepare(candidates, metric), metric)


def _prepare(rows: torch.Tensor, metric: str) -> torch.Tensor:
    """`rows` as `similarity` compares them: float64, and for cosine of unit length."""
    rows = rows.to(torch.float64)
    if metric == "cosine":
        return rows / rows.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    if metric in ("dot", "l2"):
        return rows
    raise ValueError(f"Unknown metric {metric!r}: choose one of cosine, dot, l2.")


def _prepared_similarity(q: torch.Tensor, e: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "l2":
        squared = (q * q).sum(-1, keepdim=True) - 2 * (q @ e.T) + (e * e).sum(-1)
        return -squared.clamp_min(0).sqrt()
    return q @ e.T


def distance(vectors: torch.Tensor, candidates: torch.Tensor, metric: str) -> torch.Tensor:
    """Row-wise distance between `vectors` [n, d] and `candidates` [n, d] under `metric`, float64.

    cosine: 1 - cos; l2: Euclidean distance; dot: Euclidean distance too (a dot product has no distance).
    """
    q = vectors.to(torch.float64)
    e = candidates.to(torch.float64)
    if metric == "cosine":
        cos = (q * e).sum(-1) / (q.norm(dim=-1) * e.norm(dim=-1)).clamp_min(_EPS)
        return (1 - cos).clamp_min(0)
    return (q - e).norm(dim=-1)


@torch.no_grad()
def nearest_tokens(
    vectors: torch.Tensor,
    word_embeddings: nn.Module,
    candidate_ids: torch.Tensor | None = None,
    *,
    metric: str = "cosine",
    top_k: int = 1,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the `top_k` nearest candidate tokens of each vector and their similarities.

    Args:
        vectors: [n, d] prompt vectors, in the output space of `word_embeddings`.
        word_embeddings: the model's input-embedding module (`model.get_input_embeddings()`).
        candidate_ids: 1-D ids that may be chosen (default: the whole vocabulary).
        metric: "cosine", "dot" or "l2" (similarity = minus the distance).
        top_k: how many tokens per vector, best first; ties go to the lower id.
        chunk_size: candidates scored at once (default: about 64 MiB of float64 per chunk).

    Returns:
        (ids [n, top_k] long, similarities [n, top_k] float64), on the device of `vectors`.
    """
    device = vectors.device
    if candidate_ids is None:
        candidate_ids = torch.arange(vocabulary_size(word_embeddings), device=device)
    if candidate_ids.numel() == 0:
        raise ValueError("There are no candidate tokens to project to: the allowed vocabulary is empty.")
    if top_k < 1 or top_k > candidate_ids.numel():
        raise ValueError(f"top_k must be between 1 and the {candidate_ids.numel()} candidate tokens, got {top_k}.")
    chunk_size = chunk_size or default_chunk_size(vectors.shape[-1])
    weight_device = module_device(word_embeddings, device)

    chunk_size = max(BLOCK, chunk_size - chunk_size % BLOCK)  # whole blocks only
    queries = _prepare(vectors, metric)  # once, not once per block: the same numbers, fewer kernel launches

    best_scores = torch.full((vectors.shape[0], 0), float("-inf"), dtype=torch.float64, device=device)
    best_ids = torch.empty((vectors.shape[0], 0), dtype=torch.long, device=device)
    for start in range(0, candidate_ids.numel(), chunk_size):
        ids = candidate_ids[start : start + chunk_size].to(weight_device)
        scores = _block_scores(queries, word_embeddings(ids).to(device), metric)
        ids = ids.to(device).expand(vectors.shape[0], -1)
        if top_k == 1:
            chunk_best, position = scores.max(dim=1, keepdim=True)  # first maximum: the lower id wins a tie
            if best_scores.shape[1] == 0:
                best_scores, best_ids = chunk_best, ids.gather(1, position)
            else:
                better = chunk_best > best_scores  # strict: an earlier (lower-id) chunk keeps a tie
                best_scores = torch.where(better, chunk_best, best_scores)
                best_ids = torch.where(better, ids.gather(1, position), best_ids)
        else:
            merged_scores = torch.cat([best_scores, scores], dim=1)
            merged_ids = torch.cat([best_ids, ids], dim=1)
            order = merged_scores.sort(dim=1, descending=True, stable=True).indices[:, :top_k]
            best_scores, best_ids = merged_scores.gather(1, order), merged_ids.gather(1, order)
    return best_ids, best_scores


def _block_scores(queries: torch.Tensor, rows: torch.Tensor, metric: str) -> torch.Tensor:
    """Similarities [n, len(rows)] of prepared queries, computed BLOCK candidates at a time with zero rows padding
    the last block."""
    count = rows.shape[0]
    padded = torch.nn.functional.pad(rows, (0, 0, 0, -count % BLOCK))
    blocks = [_prepared_similarity(queries, _prepare(block, metric), metric) for block in padded.split(BLOCK)]
    return torch.cat(blocks, dim=1)[:, :count]


def vocabulary_size(word_embeddings: nn.Module) -> int:
    """Number of token rows of an input-embedding module."""
    size = getattr(word_embeddings, "num_embeddings", None)
    if size is None:
        size = word_embeddings.weight.shape[0]
    return int(size)


def module_device(module: nn.Module, default: torch.device | None = None) -> torch.device:
    """Device of a module's parameters (`default`, else the CPU, for a module without any)."""
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else (default or torch.device("cpu"))
