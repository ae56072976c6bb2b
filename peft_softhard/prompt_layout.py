"""Where prompt vectors go relative to a batch's input: the layout of prompted rows, their masks and positions.

Every path that puts a prompt into an input uses this module: the peft forward and `generate()`
(`peft_boundary.prompted_calls`), mixed batches (a different prompt per row) and every objective. It knows
nothing of peft: rows in, rows out.

The layout, for prompts of any lengths:
- a row is its input with its prompt inserted after the row's first `offset` real tokens (`insert_prompts`;
  offset 0, the default, puts it in front; a template's `{prompt}` slot gives another). In
  token ids a slot is marked by `PROMPT_SLOT_ID` (`placement.tokenize_with_prompt` writes it), as multimodal
  models mark where image features go; `slot_offsets` reads the marks: the mark becomes a masked column, so
  every position stays where the tokenizer put it;
  the columns it does not use are padding, masked out, and its positions are counted over its real tokens
  only (`position_ids()`), so padding moves nothing;
- decoders (causal attention) put that padding on the left, so each row ends in the last column, where
  generation continues and where a decoder's classification head reads; encoders put it on the right, so
  each row starts in the first column, where BERT-style heads read;
- token-level outputs come back in one "user layout": the last L columns are the L input columns as given,
  the P = longest prompt columns before them hold each row's prompt, right-aligned. Values in padding
  columns are unspecified. `predecessor_columns` says where the output predicting an input token is (the
  column of the real token before it: a prompt's last token when the prompt sits right before it);
- a decoder's rows can also be run in two parts (`positions_after_heads`): the tokens before the prompt
  ("heads", left-padded) once, their keys/values kept, then the prompt and the rest ("tails", right-padded)
  for as many prompts as wanted: what exact candidate scoring at a slot pays for is the tail.

Example:
    ```py
    >>> batch = insert_prompts(prompt, inputs_embeds, attention_mask, offsets, padding_left=True)  # doctest: +SKIP
    >>> logits = model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
    ...                position_ids=batch.position_ids()).logits                         # doctest: +SKIP
    >>> batch.to_user_layout(logits)[:, -inputs_embeds.shape[1]:]  # the input tokens' logits  # doctest: +SKIP
    ```
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# The id that marks a prompt's slot in a row of token ids: outside every vocabulary (no embedding row, and
# tokenizers decode it to nothing), so it can never be a real token, and any collator pads and batches it.
PROMPT_SLOT_ID = 2**31 - 1


def slot_offsets(input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(offsets [B] or None, `input_ids` with the marks made padding, `attention_mask` with the marks masked) for
    rows of ids [B, L] that may mark their prompt's slot with `PROMPT_SLOT_ID`: a marked row's prompt goes after
    its real tokens before the mark, an unmarked row's in front (offset 0). None when no row is marked."""
    if input_ids is None or not bool((input_ids == PROMPT_SLOT_ID).any()):
        return None, input_ids, attention_mask
    marks = input_ids == PROMPT_SLOT_ID
    if bool((marks.sum(1) > 1).any()):
        rows = (marks.sum(1) > 1).nonzero().flatten().tolist()
        raise ValueError(f"Rows {rows} mark more than one prompt slot (id {PROMPT_SLOT_ID}); a row takes one prompt.")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if bool((attention_mask[marks] == 0).any()):
        raise ValueError("A prompt slot mark is masked out by the attention mask; the mark must be one of the row's "
                         "real tokens (tokenize with peft_softhard.tokenize_with_prompt, then pad).")
    before = (attention_mask * (marks.long().cumsum(1) == 0)).sum(1)  # real tokens left of the mark
    offsets = torch.where(marks.any(1), before, 0).cpu()
    return offsets, input_ids.masked_fill(marks, 0), attention_mask.masked_fill(marks, 0)


@dataclass
class PromptedBatch:
    """Prompts placed in each row's real input tokens; see the module docstring for the layout.

    Internally a row is [its input's first `offset` tokens; its prompt; the rest of its input] (its real tokens
    only, or with the caller's padding kept and masked), padded to the longest such row on the left or the
    right. The layout callers see ("user layout") is [P prompt columns; the L input columns as given]:
    `user_columns` maps one to the other.
    """

    inputs_embeds: torch.Tensor  # [B, W, d]
    attention_mask: torch.Tensor  # [B, W]
    user_columns: torch.Tensor  # [B, W] the user-layout column of each internal column, -1 for padding
    prompt_width: int  # P, the longest prompt
    input_width: int  # L

    def position_ids(self) -> torch.Tensor:
        """Each row's positions counted over its real tokens, as if it were alone (padding gets 0)."""
        positions = self.attention_mask.long().cumsum(-1) - 1
        return positions.masked_fill(self.attention_mask == 0, 0)

    def extend_per_token(self, values: torch.Tensor, fill: int) -> torch.Tensor:
        """[B, L] per-input-token values (labels, token type ids) laid out like the inputs, `fill` elsewhere."""
        prompt_slots = values.new_full((values.shape[0], self.prompt_width), fill)
        user = torch.cat([prompt_slots, values], 1)
        columns = self.user_columns.to(values.device)
        return user.gather(1, columns.clamp_min(0)).masked_fill(columns < 0, fill)

    def to_user_layout(self, values: torch.Tensor, columns: slice = slice(None)) -> torch.Tensor:
        """Token-level outputs [B, W, ...] in the user layout (input tokens in the last L columns), or only its
        `columns`. Values in padding columns are unspecified."""
        if self._is_identity():  # nothing moved (one prompt length, right-padded rows): a view, no copy
            return values[:, columns]
        index = self._internal_columns()[:, columns].to(values.device)
        shape = (*index.shape, *values.shape[2:])
        index = index.view(*index.shape, *[1] * (values.dim() - 2)).clamp_min(0).expand(shape)
        return values.gather(1, index)

    def internal_columns_at(self, columns: torch.Tensor) -> torch.Tensor:
        """[B] the internal column of each row's user-layout column (`columns` [B]): where to read a row's output
        at that column."""
        if self._is_identity():
            return columns
        return self._internal_columns().gather(1, columns.cpu()[:, None])[:, 0].clamp_min(0)

    def predecessor_columns(self, positions: torch.Tensor) -> torch.Tensor:
        """[B, ...] the internal column whose output predicts each row's input token at `positions` [B, ...]
        (input columns, 0..L-1): the row's real column just before that token (-1 where there is none: a
        row's first token with no prompt before it)."""
        user = self.prompt_width + positions.cpu()
        internal = self._internal_columns().gather(1, user.reshape(user.shape[0], -1)).view_as(user)
        real = torch.where(self.attention_mask.bool().cpu(), torch.arange(self.attention_mask.shape[1]), -1)
        last_real = torch.cat([real.new_full((real.shape[0], 1), -1), real.cummax(1).values], 1)  # before col c
        return last_real.gather(1, internal.clamp_min(0).reshape(internal.shape[0], -1)).view_as(internal)

    def _internal_columns(self) -> torch.Tensor:
        """[B, P + L] the internal column of each user-layout column (-1 where none)."""
        width = self.prompt_width + self.input_width
        internal = torch.full((self.user_columns.shape[0], width + 1), -1, dtype=torch.long)  # last: padding's sink
        sink = torch.where(self.user_columns < 0, width, self.user_columns).cpu()
        internal.scatter_(1, sink, torch.arange(self.user_columns.shape[1]).expand_as(sink))
        return internal[:, :width]

    def _is_identity(self) -> bool:
        width = self.prompt_width + self.input_width
        if self.user_columns.shape[1] != width:
            return False
        columns = torch.arange(width, device=self.user_columns.device)
        return bool(((self.user_columns == columns) | (self.user_columns < 0)).all())


def insert_prompts(
    prompts: torch.Tensor | Sequence[torch.Tensor],
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    offsets: torch.Tensor | Sequence[int] | None = None,
    padding_left: bool = False,
    compact: bool = True,
) -> PromptedBatch:
    """Put prompts into inputs [B, L, d]: one prompt [n, d] for every row, [B, n, d], or one per row (any
    lengths, an empty [0, d] for none), each after its row's first `offsets[b]` real tokens (None: 0, in
    front). With `compact`, padding in `attention_mask` (either side) is dropped from the rows; without it the
    rows keep it (masked), which is exact only with `position_ids()`."""
    batch, length, _ = inputs_embeds.shape
    device, dtype = inputs_embeds.device, inputs_embeds.dtype
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
    if offsets is None:  # in front: always fits (and checks nothing on the hot path)
        offsets = torch.zeros(batch, dtype=torch.long)
    else:
        offsets, real_counts = torch.as_tensor(offsets, dtype=torch.long).cpu(), attention_mask.sum(1).cpu()
        if offsets.shape != (batch,) or bool((offsets < 0).any()) or bool((offsets > real_counts).any()):
            raise ValueError(f"Prompt offsets {offsets.tolist()} do not fit rows of {real_counts.tolist()} real "
                             "tokens: give one offset per row, from 0 (in front) to the row's length (at its end).")
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.expand(batch, -1, -1) if prompts.dim() == 2 else prompts
        laid_out = _one_prompt_length(prompts, inputs_embeds, attention_mask, offsets, padding_left, compact)
        if laid_out is not None:
            return laid_out
        prompts = list(prompts)
    if len(prompts) != batch:
        raise ValueError(f"Got {len(prompts)} prompts for a batch of {batch} rows; give one per row.")
    width = max((p.shape[0] for p in prompts), default=0)
    contents, columns, masks = [], [], []
    for prompt, embeds, mask, offset in zip(prompts, inputs_embeds, attention_mask, offsets.tolist(), strict=True):
        keep = mask.bool() if compact else torch.ones_like(mask, dtype=torch.bool)
        kept, kept_mask, kept_columns = embeds[keep], mask[keep], width + keep.nonzero().flatten()
        split = int((kept_mask.cumsum(0) <= offset).sum()) if offset else 0  # after the offset-th real token
        prompt_columns = torch.arange(width - prompt.shape[0], width, device=device)
        contents.append(torch.cat([kept[:split], prompt.to(device=device, dtype=dtype), kept[split:]]))
        columns.append(torch.cat([kept_columns[:split], prompt_columns, kept_columns[split:]]))
        masks.append(torch.cat([kept_mask[:split], mask.new_ones(prompt.shape[0]), kept_mask[split:]]))
    total = max((c.shape[0] for c in contents), default=0)
    rows, row_masks, user_columns = [], [], []
    for content, column, mask in zip(contents, columns, masks, strict=True):
        padding = total - content.shape[0]
        pad = (content.new_zeros(padding, content.shape[1]), column.new_full((padding,), -1), mask.new_zeros(padding))
        pieces = [(content, column, mask), pad]
        if padding_left:
            pieces.reverse()
        rows.append(torch.cat([piece[0] for piece in pieces]))
        user_columns.append(torch.cat([piece[1] for piece in pieces]))
        row_masks.append(torch.cat([piece[2] for piece in pieces]))
    return PromptedBatch(torch.stack(rows), torch.stack(row_masks), torch.stack(user_columns), width, length)


def _one_prompt_length(prompts: torch.Tensor, inputs_embeds: torch.Tensor, mask: torch.Tensor, offsets: torch.Tensor,
                       padding_left: bool, compact: bool) -> PromptedBatch | None:
    """The layout of one prompt length [B, n, d] without a loop over rows, wherever the padding may stay where it
    is (it does not move when there is none, or when it is already on the side asked for); None elsewhere."""
    right_padded = bool((mask[:, 1:] <= mask[:, :-1]).all())
    left_padded = bool((mask[:, 1:] >= mask[:, :-1]).all())
    unpadded = bool(mask.all())
    if not bool(offsets.any()) and (not compact or (right_padded and not padding_left) or unpadded):
        return _concatenate(prompts, inputs_embeds, mask)
    if not compact or (right_padded and not padding_left) or (left_padded and padding_left) or unpadded:
        return _insert_at_columns(prompts, inputs_embeds, mask, offsets, compact and padding_left, compact)
    return None


def _insert_at_columns(prompts: torch.Tensor, inputs_embeds: torch.Tensor, mask: torch.Tensor,
                       offsets: torch.Tensor, after_padding: bool, compact: bool) -> PromptedBatch:
    """`insert_prompts` for one prompt length [B, n, d] with the rows' padding kept where it is, by gathers (a
    training step at a slot costs what one in front does): row b is [its first `split_b` columns; its prompt;
    the rest]. `compact` (padding all on one side): the prompt goes right after the row's offset-th real token
    (offset 0: in front, after the padding with `after_padding`), so no padding comes between; otherwise as the
    per-row layout puts it."""
    batch, length = mask.shape
    width = prompts.shape[1]
    if width == 0:
        return _concatenate(prompts, inputs_embeds, mask)
    device = inputs_embeds.device
    offsets, counts = offsets.to(device)[:, None], mask.long().cumsum(1)
    if compact:
        leading = (counts == 0).sum(1, keepdim=True) if after_padding else torch.zeros_like(offsets)
        split = torch.where(offsets > 0, (counts < offsets).sum(1, keepdim=True) + 1, leading)
    else:
        split = torch.where(offsets > 0, (counts <= offsets).sum(1, keepdim=True), 0)  # [B, 1]
    columns = torch.arange(length + width, device=device)[None]  # [1, L + n]
    in_prompt = (columns >= split) & (columns < split + width)  # [B, L + n]
    source = torch.where(columns < split, columns, columns - width).clamp(0, max(length - 1, 0))
    prompt_column = (columns - split).clamp(0, max(width - 1, 0))
    embeds = torch.where(in_prompt[..., None],
                         prompts.to(device=device, dtype=inputs_embeds.dtype).gather(
                             1, prompt_column[..., None].expand(-1, -1, prompts.shape[2])),
                         inputs_embeds.gather(1, source[..., None].expand(-1, -1, inputs_embeds.shape[2])))
    row_mask = torch.where(in_prompt, 1, mask.gather(1, source)).to(mask.dtype)
    user = torch.where(in_prompt, prompt_column, width + source)
    user_columns = user.masked_fill(row_mask == 0, -1)
    return PromptedBatch(embeds, row_mask, user_columns, width, length)


def _concatenate(prompts: torch.Tensor, inputs_embeds: torch.Tensor, mask: torch.Tensor) -> PromptedBatch:
    """The common case (training, scoring, a causal LM's forward) without a loop over rows: [prompt; input as
    given], one prompt length."""
    batch, width = prompts.shape[:2]
    embeds = torch.cat([prompts.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype), inputs_embeds], 1)
    mask = torch.cat([mask.new_ones(batch, width), mask], 1)
    columns = torch.arange(embeds.shape[1], device=mask.device).expand(batch, -1).masked_fill(mask == 0, -1)
    return PromptedBatch(embeds, mask, columns, width, inputs_embeds.shape[1])


def positions_after_prefix(prefix_length: int, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask [R, n + L] and positions [R, L] of right-padded rows [R, L] that follow a prefix of n positions
    already run (a cached prompt): token t of a row sits at position n + t."""
    heads = torch.ones(attention_mask.shape[0], prefix_length, dtype=attention_mask.dtype, device=attention_mask.device)
    return positions_after_heads(heads, attention_mask)


def positions_after_heads(head_mask: torch.Tensor, tail_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask [R, H + T] and positions [R, T] of right-padded tails [R, T] that follow heads [R, H] already
    run (left-padded, their keys/values cached): a tail's token t sits at position (its head's length) + t."""
    head_mask = head_mask.to(tail_mask)
    positions = head_mask.sum(1, keepdim=True) + torch.arange(tail_mask.shape[1], device=tail_mask.device)
    return torch.cat([head_mask, tail_mask], 1), positions


# ------------------------------------------------------------------------------------------ model structure
def is_decoder(model: torch.nn.Module) -> bool:
    """Whether a decoder-only model: its attention is causal (transformers' `is_causal` on attention modules)."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return any(flags)


def accepts_argument(model: torch.nn.Module, argument: str) -> bool:
    """Whether `model.forward` takes `argument` (not every architecture takes `position_ids`)."""
    return argument in inspect.signature(model.forward).parameters


# ------------------------------------------------------------------------------------------ grouping by length
def length_groups(totals: Sequence[int], overhead: int) -> list[list[int]]:
    """Rows split into groups of similar total length (prompt + real input) for the least padded work: the
    partition of the rows sorted by total that minimises sum(rows x longest total) + `overhead` per group (an
    O(B^2) dynamic programme; B is a batch)."""
    order = sorted(range(len(totals)), key=lambda i: totals[i])
    best, cut = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):
            cost = best[start] + (end - start) * totals[order[end - 1]] + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]
