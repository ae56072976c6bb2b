"""The scoring engine every objective runs on: token rows with a prompt, their logits, and the summed
log-probabilities of their target tokens, for one prompt or many, batched and cached.

A row is its tokens with the prompt inserted after the first `prompt_offsets` of them (0, the default: in
front; a template's `{prompt}` slot: the text before the slot, the prompt, the rest); rows are right-padded
(`Rows`), so each real token keeps the position it has alone and a row's result does not depend on the batch
it is in. The prompt goes in through `prompt_layout.insert_prompts`, as it does in the peft forward.

Two caches make many prompts cheap on a decoder, the results the same up to float rounding:
- one prompt in front of many rows: the prompt is run once (`cache_prompt`);
- many prompts at a slot: each row's tokens before the slot ("head") are run once and only the prompt and the
  rest ("tail") are run per prompt (`cache_heads`), so a candidate costs its tail, not its whole row.
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
from ..prompt_layout import accepts_argument, insert_prompts, is_decoder, positions_after_heads, positions_after_prefix

# Prompts for a set of rows: one [n, d] for all, [R, n, d], or a list of R prompts of any lengths.
Prompts = torch.Tensor | Sequence[torch.Tensor]

# Rows (prompt x example x label word) per forward pass when scoring without gradients.
DEFAULT_EVAL_ROWS = 64


@dataclass
class Rows:
    """Token rows a prompt goes into, right-padded, with the positions whose tokens are scored."""

    input_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor  # [R, L]
    target_mask: torch.Tensor  # [R, L] True where the token is a target (its log-probability is summed)
    prompt_offsets: torch.Tensor | None = None  # [R] the row tokens before the prompt (None: 0, in front)

    def select(self, rows: torch.Tensor, length: int | None = None) -> Rows:
        """These rows, in this order, cut to their first `length` columns."""
        columns = slice(None, length)
        offsets = None if self.prompt_offsets is None else self.prompt_offsets[rows]
        return Rows(self.input_ids[rows, columns], self.attention_mask[rows, columns], self.target_mask[rows, columns],
                    offsets)

    @property
    def has_slot(self) -> bool:
        """Whether the prompt goes after some row tokens (not in front of every row)."""
        return self.prompt_offsets is not None and bool(self.prompt_offsets.any())


def pad_rows(rows: Sequence[Sequence[int]], targets: Sequence[Sequence[bool]], pad_id: int,
             prompt_offsets: Sequence[int] | None = None) -> Rows:
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    target_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, (row, target) in enumerate(zip(rows, targets, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        target_mask[i, : len(row)] = torch.tensor(target)
    offsets = None if prompt_offsets is None else torch.tensor(list(prompt_offsets), dtype=torch.long)
    return Rows(input_ids, attention_mask, target_mask, offsets)


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
    cache = _output_cache(output)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    return CachedPrompt(cache, output.logits[0, -1], prompt_embeds.shape[0])


@dataclass
class TailsAfterHeads:
    """Prompts for some rows whose heads (the tokens before the prompt) are already run: `row_logits` then runs
    only each row's tail, [prompt; the rest of the row], after the cached keys/values (`CachedHeads.for_rows`)."""

    cache: Any  # these rows' heads, a copy of their own (the forward appends the tails' keys/values to it)
    head_mask: torch.Tensor  # [k, H] left-padded
    last_logits: torch.Tensor  # [k, V] at each head's last token (predicting a tail's first token)
    prompts: Prompts  # for these k rows


@dataclass
class CachedHeads:
    """Each row's tokens before its prompt, run through a decoder once, left-padded: the keys/values every
    candidate prompt at the slot reuses, and the logits at each head's last token."""

    cache: Any  # a transformers Cache for all R rows
    head_mask: torch.Tensor  # [R, H]
    last_logits: torch.Tensor  # [R, V]

    def for_rows(self, rows: torch.Tensor, prompts: Prompts) -> TailsAfterHeads:
        """The heads of `rows` [k] (indices into the cached rows), with a prompt for each."""
        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        for layer in cache.layers:
            layer.batch_select_indices(rows.to(layer.keys.device))  # rebinds the copy's tensors, not ours
        return TailsAfterHeads(cache, self.head_mask[rows], self.last_logits[rows], prompts)


@torch.no_grad()
def cache_heads(model: nn.Module, rows: Rows) -> CachedHeads | None:
    """The keys/values of every row's head (its tokens before the prompt), or None where they cannot be reused:
    an encoder, a row without a head, a target inside a head, a cache of sliding-window or other special layers
    (whose reuse this module does not test)."""
    offsets = rows.prompt_offsets
    if offsets is None or not bool((offsets > 0).all()) or not is_decoder(model):
        return None
    first_target = rows.target_mask.long().argmax(1)
    if bool((rows.target_mask.any(1) & (first_target < offsets)).any()):
        return None
    device = module_device(model)
    width = int(offsets.max())
    columns = torch.arange(width)
    mask = (columns >= width - offsets[:, None]).long()  # left-padded heads
    source = (columns - (width - offsets[:, None])).clamp_min(0)
    ids = rows.input_ids.gather(1, source).masked_fill(mask == 0, 0).to(device)
    positions = (mask.cumsum(1) - 1).clamp_min(0).to(device)
    extra = {"position_ids": positions} if accepts_argument(model, "position_ids") else {}
    if accepts_argument(model, "logits_to_keep"):
        extra["logits_to_keep"] = 1
    output = model(inputs_embeds=embed_ids(model, ids), attention_mask=mask.to(device), use_cache=True, **extra)
    cache = _output_cache(output)
    if cache is None or not all(type(layer).__name__ == "DynamicLayer" for layer in getattr(cache, "layers", [None])):
        return None
    return CachedHeads(cache, mask.to(device), output.logits[:, -1])


def _output_cache(output: Any) -> Any:
    cache = output.get("cache")  # transformers 5.24 renamed `past_key_values` to `cache`
    return output.get("past_key_values") if cache is None else cache


def _cache_argument(model: nn.Module) -> str:
    """transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name goes in 5.40)."""
    return "cache" if accepts_argument(model, "cache") else "past_key_values"


def _row_logits_after_heads(model: nn.Module, tails: TailsAfterHeads, rows: Rows, positions: torch.Tensor | None):
    """`row_logits` for rows whose heads are cached: only [prompt; the rest of the row] is run — with `positions`,
    only up to the token before each position (what comes after it cannot change its logits)."""
    device = module_device(model)
    offsets, lengths = rows.prompt_offsets, rows.attention_mask.sum(1)
    ends = lengths - offsets if positions is None else positions.cpu() - offsets  # the row tokens each tail needs
    width = int(ends.max())
    columns = torch.arange(width)
    valid = columns < ends[:, None]
    source = (offsets[:, None] + columns).clamp(max=rows.input_ids.shape[1] - 1)
    tail_ids = rows.input_ids.gather(1, source).masked_fill(~valid, 0).to(device)
    batch = insert_prompts(tails.prompts, embed_ids(model, tail_ids), valid.long().to(device))
    if positions is not None:  # the token at p >= offset follows its tail's last column (none: the head's last)
        predecessors = batch.attention_mask.sum(1).cpu() - 1  # tails are right-padded: their last real column
        if batch.inputs_embeds.shape[1] == 0:  # no prompt and nothing before the targets: the heads predict them
            return tails.last_logits
    mask, tail_positions = positions_after_heads(tails.head_mask, batch.attention_mask)
    extra = {"position_ids": tail_positions} if accepts_argument(model, "position_ids") else {}
    inputs = {"inputs_embeds": batch.inputs_embeds, "attention_mask": mask, "use_cache": True,
              _cache_argument(model): tails.cache, **extra}
    if positions is not None:
        chosen = logits_at(model, predecessors.clamp_min(0).to(device), **inputs)
        return torch.where((predecessors < 0).to(device)[:, None], tails.last_logits.to(chosen.dtype), chosen)
    logits = model(**inputs).logits
    predecessors = batch.predecessor_columns(columns.expand(len(offsets), -1))
    tail_logits = _predicting(logits, predecessors)  # [k, T, V]; -1: a head's last token predicts it
    first = (predecessors < 0).to(device)[..., None]
    tail_logits = torch.where(first, tails.last_logits.to(tail_logits.dtype)[:, None], tail_logits)
    # back into row columns (heads' columns stay zero: their tokens are no target here); padding to a spare column
    target = torch.where(valid, offsets[:, None] + columns, rows.input_ids.shape[1]).to(device)
    out = tail_logits.new_zeros(len(offsets), rows.input_ids.shape[1] + 1, tail_logits.shape[-1])
    out.scatter_(1, target[..., None].expand(-1, -1, tail_logits.shape[-1]), tail_logits)
    return out[:, :-1]


def _row_logits_after_cache(model: nn.Module, cached: CachedPrompt, row_embeds: torch.Tensor, rows: Rows,
                            positions: torch.Tensor | None):
    """`row_logits` for rows after a cached prompt: only the rows' own tokens are run."""
    count = row_embeds.shape[0]
    device = row_embeds.device
    cache = copy.deepcopy(cached.cache)  # the forward appends the rows' keys/values to it
    cache.batch_repeat_interleave(count)
    mask, row_positions = positions_after_prefix(cached.length, rows.attention_mask.to(device))
    extra = {"position_ids": row_positions} if accepts_argument(model, "position_ids") else {}
    extra[_cache_argument(model)] = cache
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


def row_logits(model: nn.Module, prompt_embeds: Prompts | CachedPrompt | TailsAfterHeads, rows: Rows,
               positions: torch.Tensor | None = None):
    """[R, L, V] logits predicting each row token, the prompt in its place: one [n, d] for all rows, [R, n, d],
    a list of R prompts of any lengths (an empty [0, d]: no prompt), a `CachedPrompt` (in front of every row)
    or `TailsAfterHeads` (the rows' heads already run). With `positions` [R] (each at least 1 unless a prompt
    or a cached head precedes it): [R, V], the logits predicting only the token at each row's position.

    Right padding keeps every real token at the position it has alone, so a row's result does not depend on
    the batch it is in (nor on the other rows' prompt lengths).
    """
    device = module_device(model)
    if isinstance(prompt_embeds, TailsAfterHeads):
        return _row_logits_after_heads(model, prompt_embeds, rows, positions)
    input_ids = rows.input_ids.to(device)
    row_embeds = embed_ids(model, input_ids)
    if isinstance(prompt_embeds, CachedPrompt):
        return _row_logits_after_cache(model, prompt_embeds, row_embeds, rows, positions)
    batch = insert_prompts(prompt_embeds, row_embeds, rows.attention_mask.to(device), rows.prompt_offsets)
    inputs = {"inputs_embeds": batch.inputs_embeds, "attention_mask": batch.attention_mask}
    if positions is not None:
        return logits_at(model, batch.predecessor_columns(positions).clamp_min(0).to(device), **inputs)
    logits = model(**inputs).logits
    width = batch.prompt_width  # in front, the token in row column t is predicted at user-layout column P + t - 1
    if rows.has_slot:
        return _predicting(logits, batch.predecessor_columns(torch.arange(input_ids.shape[1]).expand_as(input_ids)))
    if width == 0:  # no prompt at all (a manual template alone): nothing predicts a row's first token
        return F.pad(batch.to_user_layout(logits, slice(0, input_ids.shape[1] - 1)), (0, 0, 1, 0))
    return batch.to_user_layout(logits, slice(width - 1, width - 1 + input_ids.shape[1]))  # a view where it can


def _predicting(logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """[R, L, V] the logits at each row's `columns` [R, L] (zeros where a column is -1: nothing predicts that
    token)."""
    columns = columns.to(logits.device)
    chosen = logits.gather(1, columns.clamp_min(0)[..., None].expand(-1, -1, logits.shape[-1]))
    return chosen.masked_fill((columns < 0)[..., None], 0.0)


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
    reuse_heads: bool = True,
    heads: CachedHeads | None = None,
) -> torch.Tensor:
    """[C, R, ...] `reduce` (default: target log-probabilities) of every row with each of C prompts in its place
    ([C, n] ids or [C, n, d] vectors, or a list of C prompts of any lengths), `max_rows` rows a forward.

    Three speed-ups, the results the same up to float rounding: `by_length` batches the rows in order of
    length, so a forward carries little padding; `reuse_prompt` runs a single prompt (C = 1) in front of the
    rows through a decoder once and reuses its keys/values for every row; `reuse_heads` runs each row's tokens
    before a slot once and reuses their keys/values for every prompt (C > 1), so a forward of `max_rows` tails
    costs only their prompts and the rest of their rows. `heads`: those keys/values already computed for these
    rows (`cache_heads(model, rows)`, e.g. kept for validation rows scored again and again)."""
    if isinstance(prompts, torch.Tensor):
        prompts = as_prompt_embeds(model, prompts)
    else:
        prompts = [as_prompt_embeds(model, prompt) for prompt in prompts]
    num_prompts, num_rows = len(prompts), rows.input_ids.shape[0]
    if heads is None and reuse_heads and num_prompts > 1 and rows.has_slot:
        heads = cache_heads(model, rows)
    order = torch.arange(num_rows)
    if by_length:
        order = rows.attention_mask.sum(1).argsort(descending=True, stable=True)  # longest first: memory fails early
        rows = rows.select(order)
    cached = cache_prompt(model, prompts[0]) if reuse_prompt and num_prompts == 1 and not rows.has_slot else None
    if heads is not None:  # a forward of tails: as many tokens as `max_rows` whole rows would have
        longest_prompt = max((prompt.shape[0] for prompt in prompts), default=0)
        whole, tail = rows.attention_mask.sum(1), rows.attention_mask.sum(1) - rows.prompt_offsets
        max_rows *= max(1, int((whole + longest_prompt).max()) // int((tail + longest_prompt).max()))
    results = []
    for start in range(0, num_prompts * num_rows, max_rows):
        flat = torch.arange(start, min(start + max_rows, num_prompts * num_rows))
        row = flat % num_rows
        chunk = rows.select(row, int(rows.attention_mask[row].sum(1).max()))  # drop columns all padding here
        which = flat // num_rows
        chunk_prompts = prompts[which] if isinstance(prompts, torch.Tensor) else [prompts[c] for c in which]
        if heads is not None:  # (cached in the rows' own order)
            chunk_prompts = heads.for_rows(order[row], chunk_prompts)
        elif cached is not None:
            chunk_prompts = cached
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
