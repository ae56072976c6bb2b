"""The scoring engine every objective runs on: token rows after a prompt, their logits, and the summed
log-probabilities of their target tokens, for one prompt or many, batched and cached.

A row is [prompt; row tokens]; rows are right-padded (`Rows`), so each real token keeps the position it has
alone and a row's result does not depend on the batch it is in. The prompt goes before the rows through
`prompt_layout.prepend_prompts`, as it does in the peft forward.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..method.projection import module_device
from ..prompt_layout import accepts_argument, is_decoder, positions_after_prefix, prepend_prompts

# Prompts for a set of rows: one [n, d] for all, [R, n, d], or a list of R prompts of any lengths.
Prompts = torch.Tensor | Sequence[torch.Tensor]

# Rows (prompt x example x label word) per forward pass when scoring without gradients.
DEFAULT_EVAL_ROWS = 64


@dataclass
class Rows:
    """Token rows that follow the prompt, right-padded, with the positions whose tokens are scored."""

    input_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor  # [R, L]
    target_mask: torch.Tensor  # [R, L] True where the token is a target (its log-probability is summed)


def pad_rows(rows: Sequence[Sequence[int]], targets: Sequence[Sequence[bool]], pad_id: int) -> Rows:
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    target_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, (row, target) in enumerate(zip(rows, targets, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        target_mask[i, : len(row)] = torch.tensor(target)
    return Rows(input_ids, attention_mask, target_mask)


@dataclass
class CachedPrompt:
    """One prompt run through a decoder once: its keys/values and the logits at its last position. Every row
    after it then costs only its own tokens (a prompt is a fixed prefix at evaluation time)."""

    cache: Any  # a transformers Cache for a batch of one
    last_logits: torch.Tensor  # [V], predicting a row's first token
    length: int


@torch.no_grad()
def cache_prompt(model: nn.Module, prompt_embeds: torch.Tensor) -> CachedPrompt | None:
    """The prompt's keys/values, or None where they cannot be reused (an encoder, no cache, an empty prompt)."""
    if prompt_embeds.shape[0] == 0 or not is_decoder(model):
        return None
    output = model(inputs_embeds=prompt_embeds[None].to(module_device(model)), use_cache=True)
    cache = output.get("cache")  # transformers 5.24 renamed `past_key_values` to `cache`
    if cache is None:
        cache = output.get("past_key_values")
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    return CachedPrompt(cache, output.logits[0, -1], prompt_embeds.shape[0])


def _row_logits_after_cache(model: nn.Module, cached: CachedPrompt, row_embeds: torch.Tensor, rows: Rows,
                            positions: torch.Tensor | None):
    """`row_logits` for rows after a cached prompt: only the rows' own tokens are run."""
    count = row_embeds.shape[0]
    device = row_embeds.device
    cache = copy.deepcopy(cached.cache)  # the forward appends the rows' keys/values to it
    cache.batch_repeat_interleave(count)
    mask, row_positions = positions_after_prefix(cached.length, rows.attention_mask.to(device))
    extra = {"position_ids": row_positions} if accepts_argument(model, "position_ids") else {}
    # transformers 5.24 renamed `past_key_values` to `cache` (the old name goes in 5.40)
    extra["cache" if accepts_argument(model, "cache") else "past_key_values"] = cache
    inputs = {"inputs_embeds": row_embeds, "attention_mask": mask, "use_cache": True, **extra}
    if positions is not None:  # the token at row position p is predicted at row column p - 1 (p = 0: the prompt)
        positions = positions.to(device)
        chosen = logits_at(model, (positions - 1).clamp(min=0), **inputs)
        return torch.where((positions == 0)[:, None], cached.last_logits.to(chosen.dtype), chosen)
    logits = model(**inputs).logits
    first = cached.last_logits.to(logits.dtype).expand(count, 1, -1)
    return torch.cat([first, logits[:, :-1]], 1)


def logits_at(model: nn.Module, columns: torch.Tensor, **inputs: Any) -> torch.Tensor:
    """[R, V] the logits of the forward `inputs` at one column per row (`columns` [R]). Where the model takes
    `logits_to_keep`, its output head runs on those columns only: a small model's vocabulary-wide head at every
    position is a large share of its forward and backward (benchmarks/cost.py measures it), and its [R, W, V]
    output the largest tensor of the step."""
    rows = torch.arange(columns.shape[0], device=columns.device)
    if not accepts_argument(model, "logits_to_keep"):
        return model(**inputs).logits[rows, columns]
    kept, where = columns.unique(return_inverse=True)  # 1-D: every transformers 5 release takes it
    return model(**inputs, logits_to_keep=kept).logits[rows, where]


def row_logits(model: nn.Module, prompt_embeds: Prompts | CachedPrompt, rows: Rows,
                positions: torch.Tensor | None = None):
    """[R, L, V] logits predicting each row token after the prompt: one [n, d] for all rows, [R, n, d], a
    list of R prompts of any lengths (an empty [0, d]: no prompt), or a `CachedPrompt`. With `positions` [R]
    (each at least 1 unless the prompt is cached): [R, V], the logits predicting only the token at each row's
    position.

    Right padding keeps every real token at the position it has alone, so a row's result does not depend on
    the batch it is in (nor on the other rows' prompt lengths).
    """
    device = module_device(model)
    input_ids = rows.input_ids.to(device)
    row_embeds = embed_ids(model, input_ids)
    if isinstance(prompt_embeds, CachedPrompt):
        return _row_logits_after_cache(model, prompt_embeds, row_embeds, rows, positions)
    batch = prepend_prompts(prompt_embeds, row_embeds, rows.attention_mask.to(device))
    inputs = {"inputs_embeds": batch.inputs_embeds, "attention_mask": batch.attention_mask}
    width = batch.prompt_width  # the token in row column t is predicted at user-layout column P + t - 1
    if positions is not None:
        return logits_at(model, batch.internal_columns_at(width - 1 + positions.cpu()).to(device), **inputs)
    logits = model(**inputs).logits
    if width == 0:  # no prompt at all (a manual template alone): nothing predicts a row's first token
        return F.pad(batch.to_user_layout(logits, slice(0, input_ids.shape[1] - 1)), (0, 0, 1, 0))
    return batch.to_user_layout(logits, slice(width - 1, width - 1 + input_ids.shape[1]))


def target_log_probs(model: nn.Module, prompt_embeds: Prompts, rows: Rows) -> torch.Tensor:
    """[R] sum of log-probabilities of each row's target tokens after the prompt."""
    log_probs = row_logits(model, prompt_embeds, rows).float().log_softmax(-1)
    device = log_probs.device
    token_log_probs = log_probs.gather(-1, rows.input_ids.to(device).unsqueeze(-1)).squeeze(-1)
    return (token_log_probs * rows.target_mask.to(device)).sum(-1)


@torch.no_grad()
def candidate_target_log_probs(
    model: nn.Module,
    prompts: torch.Tensor | Sequence[torch.Tensor],
    rows: Rows,
    max_rows: int = DEFAULT_EVAL_ROWS,
    reduce: Callable[[nn.Module, Prompts, Rows], torch.Tensor] = target_log_probs,
    by_length: bool = True,
    reuse_prompt: bool = True,
) -> torch.Tensor:
    """[C, R, ...] `reduce` (default: target log-probabilities) of every row after each of C prompts
    ([C, n] ids or [C, n, d] vectors, or a list of C prompts of any lengths), `max_rows` rows a forward.

    Two speed-ups, the results the same up to float rounding: `by_length` batches the rows in order of
    length, so a forward carries little padding; `reuse_prompt` runs a single prompt (C = 1) through a
    decoder once and reuses its keys/values for every row."""
    if isinstance(prompts, torch.Tensor):
        prompts = as_prompt_embeds(model, prompts)
    else:
        prompts = [as_prompt_embeds(model, prompt) for prompt in prompts]
    num_prompts, num_rows = len(prompts), rows.input_ids.shape[0]
    order = torch.arange(num_rows)
    if by_length:
        order = rows.attention_mask.sum(1).argsort(descending=True, stable=True)  # longest first: memory fails early
        rows = Rows(rows.input_ids[order], rows.attention_mask[order], rows.target_mask[order])
    cached = cache_prompt(model, prompts[0]) if reuse_prompt and num_prompts == 1 else None
    results = []
    for start in range(0, num_prompts * num_rows, max_rows):
        flat = torch.arange(start, min(start + max_rows, num_prompts * num_rows))
        row = flat % num_rows
        length = int(rows.attention_mask[row].sum(1).max())  # drop columns that are padding in this chunk
        chunk = Rows(rows.input_ids[row, :length], rows.attention_mask[row, :length], rows.target_mask[row, :length])
        which = flat // num_rows
        if cached is not None:
            chunk_prompts = cached
        else:
            chunk_prompts = prompts[which] if isinstance(prompts, torch.Tensor) else [prompts[c] for c in which]
        results.append(reduce(model, chunk_prompts, chunk))
    results = torch.cat(results)
    results = results.view(num_prompts, num_rows, *results.shape[1:])
    return results[:, order.argsort()]  # back to the rows' own order


def embed_ids(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    embed = model.get_input_embeddings()
    return embed(ids.to(module_device(embed)))


def as_prompt_embeds(model: nn.Module, prompt: torch.Tensor) -> torch.Tensor:
    """A prompt as the vectors the model sees: token ids are embedded by the model, vectors pass through."""
    return prompt if prompt.is_floating_point() else embed_ids(model, prompt)
