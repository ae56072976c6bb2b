"""Prompts before each row's real tokens: the forward and generate of every SOFTHARD call, and of mixed batches
(many prompts, one frozen model, one batch: every row gets its own adapter's prompt).

peft's `adapter_names=` argument mixes LoRA-style adapters in a batch, but prompt-learning models drop it and
give every row the active prompt. With this plugin, a model holding several SOFTHARD (or stock PROMPT_TUNING
/ P_TUNING) adapters takes it in `forward` and `generate`; without it, every row gets the active adapter's
prompt through the same code:

```py
>>> out = model(input_ids=ids, attention_mask=mask, adapter_names=["sst2", "agnews", "__base__"])  # doctest: +SKIP
>>> out.logits[:, -ids.shape[1]:]   # the input tokens' logits, in the same columns for every row  # doctest: +SKIP
```

`"__base__"` means no prompt (and the original classification head). Prompts of different lengths are
aligned so that every row computes what it computes alone, without padding:
- a row is [its prompt; its input]; the columns it does not use are padding, masked out, and its positions
  are counted over its real tokens only (`position_ids`), so padding moves nothing;
- decoders (causal attention) put that padding on the left, so each row ends in the last column, where
  generation continues and where a decoder's classification head reads; encoders put it on the right, so
  each row starts in the first column, where BERT-style heads read;
- token-level outputs (`logits`, `last_hidden_state`) come back in one layout: the last L columns are the L
  input columns as given, the P = longest prompt columns before them hold each row's prompt, right-aligned.
  Values in padding columns are unspecified.
A module peft trains per adapter (`modules_to_save`, such as a classification head) is applied per row too.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .registration import is_softhard

logger = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in `adapter_names`
MIXABLE_PROMPT_TYPES = ("SOFTHARD", "PROMPT_TUNING", "P_TUNING")


@dataclass
class PromptedBatch:
    """Prompts placed before each row's real input tokens; see the module docstring for the layout.

    Internally a row is [its prompt; its input] (its real tokens only, or with the caller's padding kept and
    masked), padded to the longest such row on the left or the right. The layout callers see ("user layout")
    is [P prompt columns; the L input columns as given]: `user_columns` maps one to the other.
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

    def at(self, values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """[B, ...]: each row's output [B, W, ...] at its own user-layout column (`columns` [B]), without copying
        the rest."""
        rows = torch.arange(values.shape[0], device=values.device)
        if not self._is_identity():
            columns = self._internal_columns().gather(1, columns.cpu()[:, None])[:, 0].clamp_min(0)
        return values[rows, columns.to(values.device)]

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


def prepend_prompts(
    prompts: torch.Tensor | Sequence[torch.Tensor],
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    padding_left: bool = False,
    compact: bool = True,
) -> PromptedBatch:
    """Put prompts before inputs [B, L, d]: one prompt [n, d] for every row, [B, n, d], or one per row (any
    lengths, an empty [0, d] for none). With `compact`, padding in `attention_mask` (either side) is dropped
    from the rows; without it the rows keep it (masked), which is exact only with `position_ids()`."""
    batch, length, _ = inputs_embeds.shape
    device, dtype = inputs_embeds.device, inputs_embeds.dtype
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.expand(batch, -1, -1) if prompts.dim() == 2 else prompts
        # One prompt length: a concatenation is the layout wherever padding may stay where it is, or where there
        # is none to move (no padding, or right padding kept on the right).
        right_padded = bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
        if not compact or (right_padded and (not padding_left or bool(attention_mask.all()))):
            return _concatenate(prompts, inputs_embeds, attention_mask)
        prompts = list(prompts)
    if len(prompts) != batch:
        raise ValueError(f"Got {len(prompts)} prompts for a batch of {batch} rows; give one per row.")
    width = max((p.shape[0] for p in prompts), default=0)
    contents, columns, masks = [], [], []
    for prompt, embeds, mask in zip(prompts, inputs_embeds, attention_mask, strict=True):
        keep = mask.bool() if compact else torch.ones_like(mask, dtype=torch.bool)
        contents.append(torch.cat([prompt.to(device=device, dtype=dtype), embeds[keep]]))
        columns.append(torch.cat([torch.arange(width - prompt.shape[0], width, device=device),
                                  width + keep.nonzero().flatten()]))
        masks.append(torch.cat([mask.new_ones(prompt.shape[0]), mask[keep]]))
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


def _concatenate(prompts: torch.Tensor, inputs_embeds: torch.Tensor, mask: torch.Tensor) -> PromptedBatch:
    """The common case (training, scoring, a causal LM's forward) without a loop over rows: [prompt; input as
    given], one prompt length."""
    batch, width = prompts.shape[:2]
    embeds = torch.cat([prompts.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype), inputs_embeds], 1)
    mask = torch.cat([mask.new_ones(batch, width), mask], 1)
    columns = torch.arange(embeds.shape[1], device=mask.device).expand(batch, -1).masked_fill(mask == 0, -1)
    return PromptedBatch(embeds, mask, columns, width, inputs_embeds.shape[1])


# ------------------------------------------------------------------------------------------ adapters' prompts
def check_adapter_names(peft_model: Any, adapter_names: Sequence[str], batch_size: int) -> None:
    if isinstance(adapter_names, str) or len(adapter_names) != batch_size:
        raise ValueError(
            f"adapter_names must be a list with one adapter name per row: got {adapter_names!r} for a batch of "
            f"{batch_size} rows."
        )
    unknown = sorted({n for n in adapter_names if n != BASE_ADAPTER and n not in peft_model.peft_config})
    if unknown:
        raise ValueError(
            f"Unknown adapters {unknown} in adapter_names; this model holds {sorted(peft_model.peft_config)} "
            f"(and {BASE_ADAPTER!r} means no prompt). Load them with model.load_adapter(path, adapter_name=...)."
        )
    unmixable = sorted({n for n in adapter_names if n != BASE_ADAPTER and not _is_mixable(peft_model, n)})
    if unmixable:
        raise ValueError(
            f"Adapters {unmixable} are not prompts that can be mixed per row (types "
            f"{[peft_model.peft_config[n].peft_type.value for n in unmixable]}); mixed batches take "
            f"{', '.join(MIXABLE_PROMPT_TYPES)} adapters. Run those adapters in batches of their own."
        )


def _is_mixable(peft_model: Any, name: str) -> bool:
    config = peft_model.peft_config[name]
    return config.peft_type in MIXABLE_PROMPT_TYPES and config.num_transformer_submodules in (None, 1)


def adapter_prompt(peft_model: Any, name: str) -> torch.Tensor:
    """The [n, d] vectors adapter `name` puts before the input (an empty [0, d] for "__base__")."""
    if name == BASE_ADAPTER:
        embedding = peft_model.word_embeddings
        return embedding.weight.new_zeros(0, embedding.weight.shape[1])
    encoder = peft_model.prompt_encoder[name]
    if is_softhard(peft_model.peft_config[name]):
        return encoder.prompt_embeddings()
    tokens = peft_model.prompt_tokens[name].to(peft_model.device)
    return encoder(tokens)  # PROMPT_TUNING: the embedding rows; P_TUNING: its encoder's output


def row_prompts(peft_model: Any, adapter_names: Sequence[str]) -> list[torch.Tensor]:
    """Each row's prompt, computed once per adapter."""
    unique = {name: adapter_prompt(peft_model, name) for name in dict.fromkeys(adapter_names)}
    return [unique[name] for name in adapter_names]


# ------------------------------------------------------------------------------------------ model structure
def is_decoder(model: torch.nn.Module) -> bool:
    """Whether a decoder-only model: its attention is causal (transformers' `is_causal` on attention modules)."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return any(flags)


def _accepts(model: torch.nn.Module, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


@contextlib.contextmanager
def per_row_heads(peft_model: Any, adapter_names: Sequence[str]) -> Iterator[None]:
    """Within the block, every per-adapter module peft trains with the prompt (a `modules_to_save` copy, such
    as a classification head) is applied to each row with that row's adapter's copy ("__base__", or an adapter
    without a copy: the original module)."""
    from peft.utils.other import ModulesToSaveWrapper

    wrappers = [m for m in peft_model.base_model.modules() if isinstance(m, ModulesToSaveWrapper)]
    for wrapper in wrappers:
        wrapper.forward = _rowwise_forward(wrapper, list(adapter_names))  # an instance attribute, removed below
    try:
        yield
    finally:
        for wrapper in wrappers:
            del wrapper.forward


def _rowwise_forward(wrapper: Any, adapter_names: list[str]):
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if x.shape[0] != len(adapter_names):
            raise ValueError(f"{type(wrapper).__name__} got {x.shape[0]} rows for {len(adapter_names)} adapter names.")
        outputs: list[torch.Tensor | None] = [None] * len(adapter_names)
        for name in dict.fromkeys(adapter_names):
            rows = [i for i, n in enumerate(adapter_names) if n == name]
            module = wrapper.modules_to_save[name] if name in wrapper.modules_to_save else wrapper.original_module
            for i, out in zip(rows, module(x[rows], *args, **kwargs), strict=True):
                outputs[i] = out
        return torch.stack(outputs)

    return forward


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
    """`peft_model(...)` with each row's prompt right before its real tokens: its adapter's from `adapter_names`,
    else the active adapter's. Token outputs come back in the user layout (see the module docstring)."""
    base = peft_model.base_model
    inputs_embeds, names = _embedded_rows(peft_model, input_ids, inputs_embeds, adapter_names)
    encoder_decoder = bool(getattr(base.config, "is_encoder_decoder", False))
    _drop_positions(kwargs)
    return_dict = kwargs.pop("return_dict", None)
    decoder = is_decoder(base)
    prompts = _prompts_of(peft_model, names)
    groups = _length_groups_if_worth_it(prompts, inputs_embeds, attention_mask, labels, kwargs, encoder_decoder)
    if groups is not None:
        output = _grouped_forward(peft_model, groups, names, prompts, inputs_embeds, attention_mask, decoder, kwargs)
    else:
        # A decoder's causal-LM logits need no reordering if the caller's padding stays in place (masked;
        # `position_ids()` count only real tokens). Everything else gets rows without inner padding, so a row's
        # last token is in the last column (decoder heads) and models without position ids see each row as it
        # is alone.
        token_outputs = peft_model.active_peft_config.task_type == "CAUSAL_LM"
        compact = not (token_outputs and decoder and _accepts(base, "position_ids"))
        batch = prepend_prompts(prompts, inputs_embeds, attention_mask, decoder, compact)
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
    """`peft_model.generate(...)` with each row's prompt right before its real tokens. Rows are laid out as the
    base model would take them with the prompt's ids literally in place (decoders: padding on the left, so every
    row continues from the last column), and the base model's own `generate` runs from those embeddings: its
    positions, masks, cache and sampling apply unchanged. A decoder returns each row's input ids as given
    followed by its new tokens (as peft does); an encoder-decoder returns the decoder's sequences."""
    base = peft_model.base_model
    inputs_embeds, names = _embedded_rows(peft_model, input_ids, inputs_embeds, adapter_names)
    _drop_positions(kwargs)
    decoder = is_decoder(base)
    batch = prepend_prompts(_prompts_of(peft_model, names), inputs_embeds, attention_mask, decoder, compact=True)
    encoder_decoder = bool(getattr(base.config, "is_encoder_decoder", False))
    if not encoder_decoder and input_ids is not None:
        _lengths_count_the_input_ids(kwargs, input_ids.shape[1])
    with _heads_of(peft_model, names):
        output = base.generate(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, **kwargs)
    if encoder_decoder or input_ids is None:
        return output
    # transformers returns only the new tokens when generation starts from embeddings
    if isinstance(output, torch.Tensor):
        return torch.cat([input_ids.to(output.device), output], 1)
    output["sequences"] = torch.cat([input_ids.to(output.sequences.device), output.sequences], 1)
    return output


def _embedded_rows(peft_model: Any, input_ids, inputs_embeds, adapter_names) -> tuple[torch.Tensor, list[str]]:
    """The inputs as embeddings [B, L, d], and each row's adapter name."""
    if inputs_embeds is None:
        if input_ids is None:
            raise ValueError("Give input_ids or inputs_embeds.")
        inputs_embeds = peft_model.word_embeddings(input_ids)
    if adapter_names is None:
        return inputs_embeds, [peft_model.active_adapter] * inputs_embeds.shape[0]
    check_adapter_names(peft_model, adapter_names, inputs_embeds.shape[0])
    return inputs_embeds, list(adapter_names)


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
    if not encoder_decoder and _accepts(base, "position_ids"):
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


def _grouped_forward(peft_model, groups, names, prompts, inputs_embeds, attention_mask, decoder: bool, kwargs: dict):
    """One forward per group of rows (each without inner padding), assembled into the output one forward gives:
    token outputs in the user layout, other outputs row by row. No cache is returned."""
    if attention_mask is None:
        attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
    width = max(p.shape[0] for p in prompts) + inputs_embeds.shape[1]
    kwargs = {**kwargs, "use_cache": False}
    parts = []
    for rows in groups:
        batch = prepend_prompts([prompts[i] for i in rows], inputs_embeds[rows], attention_mask[rows], decoder)
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


# ------------------------------------------------------------------------------------------ many adapters
def load_adapters(
    base_model: torch.nn.Module,
    adapters: str | os.PathLike | Mapping[str, str | os.PathLike],
    is_trainable: bool = False,
) -> Any:
    """One peft model holding several adapters: a folder written by `save_pretrained` of a multi-adapter model
    (the "default" adapter at its top, every other in a sub-folder named after it), or {name: folder}.

    Example:
        ```py
        >>> model.save_pretrained("adapters")          # a model holding "default", "sst2" and "agnews"
        >>> model = load_adapters(base_model, "adapters")  # doctest: +SKIP
        >>> sorted(model.peft_config)                   # doctest: +SKIP
        ['agnews', 'default', 'sst2']
        ```
    """
    from peft import PeftModel

    folders = dict(adapters) if isinstance(adapters, Mapping) else _saved_adapters(Path(adapters))
    if not folders:
        raise ValueError(f"No adapters in {adapters}: expected adapter_config.json there or in its sub-folders.")
    model = None
    for name, folder in folders.items():
        if model is None:
            model = PeftModel.from_pretrained(base_model, str(folder), adapter_name=name, is_trainable=is_trainable)
        else:
            model.load_adapter(str(folder), adapter_name=name, is_trainable=is_trainable)
    return model


def _saved_adapters(folder: Path) -> dict[str, Path]:
    found = {"default": folder} if (folder / "adapter_config.json").is_file() else {}
    if folder.is_dir():
        for sub in sorted(folder.iterdir()):
            if (sub / "adapter_config.json").is_file():
                found[sub.name] = sub
    return found
