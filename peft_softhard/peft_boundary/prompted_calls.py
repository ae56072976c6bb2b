"""The forward and `generate()` of every SOFTHARD call, and of mixed batches (one adapter per row).

peft's prompt-learning forward puts left padding between prompt and input, and its
`prepare_inputs_for_generation` diverges after the first new token with transformers 5.24; neither is used
for SOFTHARD. Instead each row's prompt goes where the row marks its slot (`prompt_layout.PROMPT_SLOT_ID`,
written by `placement.tokenize_with_prompt`; an unmarked row's right before its real tokens), positions are
counted per row, and the base model's own `generate` runs from the embeddings.

peft's `adapter_names=` argument mixes LoRA-style adapters in a batch, but prompt-learning models drop it and
give every row the active prompt. With this plugin, a model holding several SOFTHARD (or stock PROMPT_TUNING
/ P_TUNING) adapters takes it in `forward` and `generate`; without it, every row gets the active adapter's
prompt through the same code:

```py
>>> out = model(input_ids=ids, attention_mask=mask, adapter_names=["sst2", "agnews", "__base__"])  # doctest: +SKIP
>>> out.logits[:, -ids.shape[1]:]   # the input tokens' logits, in the same columns for every row  # doctest: +SKIP
```

`"__base__"` means no prompt (and the original classification head). Every row computes what it computes
alone, without padding (see `prompt_layout` for the layout). A module peft trains per adapter
(`modules_to_save`, such as a classification head) is applied per row too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..method.config import is_softhard
from ..prompt_layout import (
    PROMPT_SLOT_ID,
    PromptedBatch,
    accepts_argument,
    insert_prompts,
    is_decoder,
    length_groups,
    slot_offsets,
)
from .adapters import adapter_prompt, check_adapter_names, per_row_heads, row_prompts

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------ forward, generate
# On a CPU one more forward costs about what this many more tokens do (the intercept of the step-time sweep in
# benchmarks/cost.py, SmolLM2-135M); on an accelerator a small model's forward is launch-bound, so a mixed batch
# is never split there.
GROUP_OVERHEAD_TOKENS = 64


def takes_prompt_path(peft_model: Any, adapter_names: Sequence[str] | None) -> bool:
    """Whether a forward/generate call is ours: every call of a SOFTHARD adapter, and calls with `adapter_names`
    on a model of prompt adapters (LoRA-style adapters go to peft, which cannot hold both kinds in one model).
    Inside `disable_adapter()` nothing is: peft then runs the base model alone."""
    if getattr(peft_model, "_adapters_disabled", False):
        return False
    config = peft_model.active_peft_config
    if adapter_names is not None:
        return config.is_prompt_learning
    return is_softhard(config)


def forward_with_prompts(
    peft_model: Any,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    adapter_names: Sequence[str] | None = None,
    **kwargs: Any,
) -> Any:
    """`peft_model(...)` with each row's prompt at its slot (unmarked rows: right before their real tokens): its
    adapter's from `adapter_names`, else the active adapter's. Token outputs come back in the user layout (see
    the module docstring); a slot mark's column is padding there, and its label is ignored."""
    base = peft_model.base_model
    encoder_decoder = bool(getattr(base.config, "is_encoder_decoder", False))
    if labels is not None and input_ids is not None and labels.shape == input_ids.shape and not encoder_decoder:
        labels = labels.masked_fill(input_ids == PROMPT_SLOT_ID, -100)  # e.g. labels copied from the input ids
    offsets, input_ids, attention_mask, inputs_embeds, names = _slotted_rows(
        peft_model, input_ids, attention_mask, inputs_embeds, adapter_names)
    _drop_positions(kwargs)
    return_dict = kwargs.pop("return_dict", None)
    decoder = is_decoder(base)
    prompts = _prompts_of(peft_model, names)
    groups = _length_groups_if_worth_it(prompts, inputs_embeds, attention_mask, labels, kwargs, encoder_decoder)
    if groups is not None:
        output = _grouped_forward(peft_model, groups, names, prompts, inputs_embeds, attention_mask, offsets, decoder,
                                  kwargs)
    else:
        # A decoder's causal-LM logits need no reordering if the caller's padding stays in place (masked;
        # `position_ids()` count only real tokens). Everything else gets rows without inner padding, so a row's
        # last token is in the last column (decoder heads) and models without position ids see each row as it
        # is alone.
        token_outputs = peft_model.active_peft_config.task_type == "CAUSAL_LM"
        compact = not (token_outputs and decoder and accepts_argument(base, "position_ids"))
        batch = insert_prompts(prompts, inputs_embeds, attention_mask, offsets, decoder, compact)
        output = _run_base(peft_model, batch, names, labels, kwargs, encoder_decoder)
        if not encoder_decoder:
            _to_user_layout(output, batch)
    return output.to_tuple() if return_dict is False else output


def generate_with_prompts(
    peft_model: Any,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    *,
    adapter_names: Sequence[str] | None = None,
    **kwargs: Any,
) -> Any:
    """`peft_model.generate(...)` with each row's prompt at its slot (unmarked rows: right before their real
    tokens). Rows are laid out as the base model would take them with the prompt's ids literally in place
    (decoders: padding on the left, so every row continues from the last column), and the base model's own
    `generate` runs from those embeddings: its positions, masks, cache and sampling apply unchanged. A decoder
    returns each row's input ids as given (slot mark included; tokenizers decode it to nothing) followed by its
    new tokens (as peft does); an encoder-decoder returns the decoder's sequences."""
    base = peft_model.base_model
    given_ids = input_ids
    offsets, input_ids, attention_mask, inputs_embeds, names = _slotted_rows(
        peft_model, input_ids, attention_mask, inputs_embeds, adapter_names)
    _drop_positions(kwargs)
    decoder = is_decoder(base)
    batch = insert_prompts(_prompts_of(peft_model, names), inputs_embeds, attention_mask, offsets, decoder)
    encoder_decoder = bool(getattr(base.config, "is_encoder_decoder", False))
    if not encoder_decoder and input_ids is not None:
        _lengths_count_the_input_ids(kwargs, input_ids.shape[1])
    with _heads_of(peft_model, names):
        output = base.generate(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, **kwargs)
    if encoder_decoder or input_ids is None:
        return output
    # transformers returns only the new tokens when generation starts from embeddings
    if isinstance(output, torch.Tensor):
        return torch.cat([given_ids.to(output.device), output], 1)
    output["sequences"] = torch.cat([given_ids.to(output.sequences.device), output.sequences], 1)
    return output


def _slotted_rows(peft_model: Any, input_ids, attention_mask, inputs_embeds, adapter_names):
    """(prompt offsets [B] or None, input ids and attention mask with the slot marks made padding, the inputs as
    embeddings [B, L, d], each row's adapter name). A row whose adapter places its prompt other than in front
    must mark its slot."""
    if input_ids is None and inputs_embeds is None:
        raise ValueError("Give input_ids or inputs_embeds.")
    rows = (input_ids if input_ids is not None else inputs_embeds).shape[0]
    if adapter_names is None:
        names = [peft_model.active_adapter] * rows
    else:
        check_adapter_names(peft_model, adapter_names, rows)
        names = list(adapter_names)
    marked = (input_ids == PROMPT_SLOT_ID).any(1).tolist() if input_ids is not None else [False] * rows
    for row, (name, has_mark) in enumerate(zip(names, marked, strict=True)):
        placement = getattr(peft_model.peft_config.get(name), "placement", "prefix")
        if placement != "prefix" and not has_mark:
            raise ValueError(
                f"Adapter {name!r} puts its prompt at placement={placement!r}, but row {row} marks no slot for it. "
                "Tokenize inputs with peft_softhard.tokenize_with_prompt(tokenizer, config, ...), which marks the "
                "slot in input_ids (inputs_embeds cannot carry a mark)."
            )
    offsets, input_ids, attention_mask = slot_offsets(input_ids, attention_mask)
    if inputs_embeds is None:
        inputs_embeds = peft_model.word_embeddings(input_ids)
    return offsets, input_ids, attention_mask, inputs_embeds, names


def _drop_positions(kwargs: dict) -> None:
    for unused in ("task_ids", "position_ids"):
        if kwargs.pop(unused, None) is not None:
            logger.warning("%s is ignored with a prompt adapter: each row gets its own positions.", unused)


def _prompts_of(peft_model: Any, names: list[str]) -> torch.Tensor | list[torch.Tensor]:
    """One [n, d] prompt when every row has the same adapter (one concatenation, no per-row work), else a list."""
    if len(set(names)) == 1:
        return adapter_prompt(peft_model, names[0])
    return row_prompts(peft_model, names)


def _heads_of(peft_model: Any, names: list[str]) -> contextlib.AbstractContextManager:
    """Per-adapter heads applied per row, unless every row is the active adapter's (peft's own case)."""
    if set(names) == {peft_model.active_adapter}:
        return contextlib.nullcontext()
    return per_row_heads(peft_model, names)


def _run_base(peft_model: Any, batch: PromptedBatch, names: list[str], labels, kwargs: dict, encoder_decoder: bool):
    """The base model on prompted rows: per-token arguments laid out like the rows, positions counted per row."""
    base = peft_model.base_model
    kwargs = dict(kwargs)
    if kwargs.get("token_type_ids") is not None:
        kwargs["token_type_ids"] = batch.extend_per_token(kwargs["token_type_ids"], fill=0)
    if labels is not None and labels.dim() == 2 and not encoder_decoder:  # per-token labels: none on prompts
        labels = batch.extend_per_token(labels, fill=-100)
    if not encoder_decoder and accepts_argument(base, "position_ids"):
        kwargs["position_ids"] = batch.position_ids()
    if labels is not None:
        kwargs["labels"] = labels
    with _heads_of(peft_model, names):
        return base(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, return_dict=True,
                    **kwargs)


def _is_per_token(value: Any, batch: PromptedBatch) -> bool:
    """Whether an output has one entry per column of `batch` ([B, W, ...]: logits, hidden states)."""
    return isinstance(value, torch.Tensor) and value.dim() >= 3 and value.shape[1] == batch.inputs_embeds.shape[1]


def _to_user_layout(output: Any, batch: PromptedBatch) -> None:
    """Token-level outputs (logits, hidden states) of a decoder-only or encoder model, in the user layout."""
    for key in ("logits", "last_hidden_state"):
        if _is_per_token(output.get(key), batch):
            output[key] = batch.to_user_layout(output[key])
    hidden = output.get("hidden_states")
    if isinstance(hidden, tuple) and all(_is_per_token(h, batch) for h in hidden):
        output["hidden_states"] = tuple(batch.to_user_layout(h) for h in hidden)


def _lengths_count_the_input_ids(kwargs: dict, given: int) -> None:
    """generate() from embeddings counts `max_length`/`min_length` over the embeddings, prompt included; peft and
    transformers count them over the input ids the caller gave."""
    for limit in ("max", "min"):
        if kwargs.get(f"{limit}_length") is not None and kwargs.get(f"{limit}_new_tokens") is None:
            kwargs[f"{limit}_new_tokens"] = kwargs.pop(f"{limit}_length") - given


# ------------------------------------------------------------------------------------------ grouping by length
def _length_groups_if_worth_it(prompts, inputs_embeds, attention_mask, labels, kwargs,
                               encoder_decoder: bool) -> list | None:
    """Groups for a mixed batch of prompts of different lengths at inference, where one forward would be as wide
    as the longest prompt plus the longest input; None for one forward (one prompt length, training, labels, a
    cache, attention maps or hidden states asked for, an encoder-decoder, an accelerator, or too little
    padding to save)."""
    if (isinstance(prompts, torch.Tensor) or torch.is_grad_enabled() or labels is not None
            or inputs_embeds.device.type != "cpu" or encoder_decoder
            or any(kwargs.get(k) for k in ("use_cache", "output_attentions", "output_hidden_states"))):
        return None
    lengths = (attention_mask.sum(1).tolist() if attention_mask is not None
               else [inputs_embeds.shape[1]] * inputs_embeds.shape[0])
    groups = length_groups([p.shape[0] + int(n) for p, n in zip(prompts, lengths, strict=True)],
                           GROUP_OVERHEAD_TOKENS)
    return groups if len(groups) > 1 else None


def _grouped_forward(peft_model, groups, names, prompts, inputs_embeds, attention_mask, offsets, decoder: bool,
                     kwargs: dict):
    """One forward per group of rows (each without inner padding), assembled into the output one forward gives:
    token outputs in the user layout, other outputs row by row. No cache is returned."""
    if attention_mask is None:
        attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
    width = max(p.shape[0] for p in prompts) + inputs_embeds.shape[1]
    kwargs = {**kwargs, "use_cache": False}
    parts = []
    for rows in groups:
        batch = insert_prompts([prompts[i] for i in rows], inputs_embeds[rows], attention_mask[rows],
                               None if offsets is None else offsets[rows], decoder)
        parts.append((rows, batch, _run_base(peft_model, batch, [names[i] for i in rows], None, kwargs, False)))
    merged = {}
    for key, value in parts[0][2].items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            continue
        per_token = _is_per_token(value, parts[0][1])
        merged[key] = value.new_zeros(len(names), *((width,) if per_token else ()), *value.shape[1 + per_token :])
        for rows, batch, output in parts:
            rows = torch.tensor(rows, device=value.device)
            if per_token:  # each internal column to its user-layout column, this group's prompts right-aligned
                row, column = (batch.user_columns >= 0).nonzero(as_tuple=True)
                target = batch.user_columns[row, column] + width - batch.prompt_width - batch.input_width
                merged[key][rows[row.to(value.device)], target.to(value.device)] = output[key][row, column]
            else:
                merged[key][rows] = output[key]
    return type(parts[0][2])(**merged)
