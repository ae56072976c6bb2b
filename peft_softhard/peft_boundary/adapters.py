"""A peft model's adapters as this package reads them: which adapter a call means, its prompt, its own
trainable tensors and task heads. What this relies on of peft's internals (the `peft_config`,
`prompt_encoder` and `prompt_tokens` dicts, the parameter names `prompt_encoder.<adapter>.` and
`modules_to_save.<adapter>.`, `ModulesToSaveWrapper`) is named here and nowhere else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from peft import PeftConfig, PeftModel

from ..method.config import SoftHardConfig, is_softhard
from ..method.encoder import SoftHardPromptEncoder

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in `adapter_names`
MIXABLE_PROMPT_TYPES = ("SOFTHARD", "PROMPT_TUNING", "P_TUNING")


def softhard_adapter(
    peft_model: Any, adapter_name: str | None = None, *, task_type: str | None = None
) -> tuple[str, SoftHardConfig, SoftHardPromptEncoder]:
    """(name, config, encoder) of a SOFTHARD adapter: `adapter_name`, else the active one. Raises a clear error
    for an adapter of another method (or, with `task_type`, for another task type)."""
    name = adapter_name or peft_model.active_adapter
    if name not in peft_model.peft_config:
        raise ValueError(f"No adapter {name!r}; this model holds {sorted(peft_model.peft_config)}.")
    config = peft_model.peft_config[name]
    if not is_softhard(config):
        raise ValueError(
            f"Adapter {name!r} is {config.peft_type}, not a SOFTHARD adapter: create the model with SoftHardConfig."
        )
    if task_type is not None and config.task_type != task_type:
        raise ValueError(f"Adapter {name!r} is a {config.task_type} adapter; this needs a {task_type} one.")
    return name, config, peft_model.prompt_encoder[name]


def adapter_parameters(peft_model: Any, adapter_name: str) -> dict[str, torch.Tensor]:
    """The trainable parameters of one adapter: its prompt and its own copies of task heads. The model's other
    adapters stay untouched, whatever their requires_grad says."""
    own = (f"prompt_encoder.{adapter_name}.", f"modules_to_save.{adapter_name}.")
    return {name: p for name, p in peft_model.named_parameters()
            if p.requires_grad and any(part in name for part in own)}


# ---------------------------------------------------------------------------------------- many adapters
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


# ---------------------------------------------------------------------------------------- training
def load_for_training(base_model: Any, adapter_path: str, adapter_name: str = "default", **kwargs: Any) -> PeftModel:
    """Load a saved SOFTHARD adapter onto `base_model`, ready to train further.

    `PeftModel.from_pretrained(..., is_trainable=True)` is refused by peft for every prompt method; this gives
    back a trainable model, with the continuous PEZ copy and the allowed vocabulary exactly as saved.

    Example:
        ```py
        >>> model = load_for_training(base_model, "out/checkpoint-200")  # doctest: +SKIP
        >>> trainer = Trainer(model=model, ...)                           # doctest: +SKIP
        ```
    """
    config = PeftConfig.from_pretrained(adapter_path)
    if not is_softhard(config):
        raise ValueError(f"{adapter_path} holds a {config.peft_type} adapter; load_for_training resumes SOFTHARD ones.")
    model = PeftModel.from_pretrained(base_model, adapter_path, adapter_name=adapter_name, config=config, **kwargs)
    config.inference_mode = False
    model.prompt_encoder[adapter_name].requires_grad_(True)
    for name, parameter in model.named_parameters():  # extra trained modules, e.g. a SEQ_CLS head
        if f"modules_to_save.{adapter_name}." in name:
            parameter.requires_grad_(True)
    model.train()
    return model
