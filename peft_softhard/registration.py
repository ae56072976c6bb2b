"""Registers the SOFTHARD method with peft. Every contact with peft's internals is in this module.

peft 0.21 only knows the prompt methods it ships, so these things are done here, once, at import:
1. `PeftType` gets a SOFTHARD member (`register_peft_method` refuses names the enum lacks);
2. `register_peft_method` fills peft's tables (config class, encoder class, key prefix);
3. `PeftModel._setup_prompt_encoder` (builds only the encoders it knows) and `PeftModel.get_prompt`
   (reads `embedding.weight` directly at inference, which would skip the hard projection) are wrapped to
   handle SOFTHARD adapters and pass every other adapter through unchanged;
4. the task models' `forward` and `generate` are wrapped so that every call of a SOFTHARD adapter, and every
   call with `adapter_names=` (one adapter per row, which peft drops for prompt adapters) on a model of prompt
   adapters, runs our own path (`mixed_batch.forward_with_prompts` / `generate_with_prompts`): each row's
   prompt right before its real tokens, positions counted per row, and the base model's own `generate`. peft's
   prompt-learning forward puts left padding between prompt and input, and its `prepare_inputs_for_generation`
   diverges after the first new token with transformers 5.24; neither is used for SOFTHARD. LoRA-style
   adapters and stock prompt adapters without `adapter_names` still go to peft;
5. `PeftModel.delete_adapter` is wrapped for prompt adapters: peft 0.21 hands every remaining adapter to each
   task head's `delete_adapter`, which refuses more than one, so deleting one of three SEQ_CLS adapters failed;
6. `PeftModel.load_adapter` is wrapped so a truncated or corrupted SOFTHARD weights file gives an error that
   names the file and the fix instead of safetensors' bare "Error while deserializing header".
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import json
import os
from collections.abc import Callable
from typing import Any

SUPPORTED_PEFT = ">=0.21,<0.22"
PEFT_TYPE_NAME = "SOFTHARD"
# peft warns when an adapter name is a substring of the method's key prefix; "softhard_" would catch the
# natural names "soft" and "hard". No key of our state dict starts with this prefix, so peft renames none.
KEY_PREFIX = "shvt_"
PROMPTED_FORWARD = ("PeftModelForCausalLM", "PeftModelForSeq2SeqLM", "PeftModelForSequenceClassification",
                    "PeftModelForTokenClassification", "PeftModelForFeatureExtraction")
PROMPTED_GENERATE = ("PeftModelForCausalLM", "PeftModelForSeq2SeqLM")


def _require_peft_symbols() -> None:
    """Fail at import, with the versions we support, if peft lacks anything this module relies on."""
    version = importlib.metadata.version("peft")
    problem = None
    try:
        import peft
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING  # noqa: F401
        from peft.tuners import tuners_utils
        from peft.utils.peft_types import PeftType, register_peft_method  # noqa: F401

        classes = {name: getattr(peft, name, None) for name in ("PeftModel", *PROMPTED_FORWARD)}
        classes["BasePromptEncoder"] = getattr(tuners_utils, "BasePromptEncoder", None)
        needed = [
            *[("PeftModel", name) for name in ("_setup_prompt_encoder", "get_prompt", "load_adapter",
                                               "delete_adapter")],
            *[("BasePromptEncoder", name) for name in ("_get_adapter_state_dict", "_load_adapter_state_dict")],
            *[(task_model, "forward") for task_model in PROMPTED_FORWARD],
            *[(task_model, "generate") for task_model in PROMPTED_GENERATE],
        ]
        missing = [f"{owner}.{name}" for owner, name in needed
                   if classes[owner] is None or name not in vars(classes[owner])]
        if missing:
            problem = f"missing {', '.join(missing)}"
        if not hasattr(PeftType, "_member_map_"):
            problem = "PeftType is not a standard Enum"
    except ImportError as error:
        problem = str(error)
    if problem:
        raise ImportError(
            f"peft-softhard supports peft {SUPPORTED_PEFT}; the installed peft {version} differs where it matters "
            f"({problem}). Install a supported version: pip install 'peft{SUPPORTED_PEFT}'."
        )


def _add_peft_type() -> Any:
    """Add SOFTHARD to peft's PeftType enum (CPython Enum internals; idempotent)."""
    from peft.utils.peft_types import PeftType

    if PEFT_TYPE_NAME in PeftType._member_map_:
        return PeftType[PEFT_TYPE_NAME]
    member = str.__new__(PeftType, PEFT_TYPE_NAME)
    member._name_ = PEFT_TYPE_NAME
    member._value_ = PEFT_TYPE_NAME
    member.__objclass__ = PeftType
    type.__setattr__(PeftType, PEFT_TYPE_NAME, member)
    PeftType._member_map_[PEFT_TYPE_NAME] = member
    PeftType._value2member_map_[PEFT_TYPE_NAME] = member
    PeftType._member_names_.append(PEFT_TYPE_NAME)
    return member


def is_softhard(config: Any) -> bool:
    return getattr(config, "peft_type", None) == PEFT_TYPE_NAME


def _setup_softhard_encoder(peft_model: Any, adapter_name: str) -> None:
    """peft's `_setup_prompt_encoder` for SOFTHARD: embeddings are found through `get_input_embeddings()`."""
    import torch
    from transformers import PreTrainedModel

    from .encoder import SoftHardPromptEncoder

    base = peft_model.base_model
    if not hasattr(peft_model, "prompt_encoder"):
        peft_model.prompt_encoder = torch.nn.ModuleDict({})
        peft_model.prompt_tokens = {}
    for name, module in base.named_children():  # freeze the base model, as peft does
        module.requires_grad_(False)
        if isinstance(module, PreTrainedModel) and not hasattr(peft_model, "transformer_backbone_name"):
            peft_model.transformer_backbone_name = name

    config = peft_model.peft_config[adapter_name]
    encoder = SoftHardPromptEncoder.for_model(config, base)
    peft_model.word_embeddings = encoder.word_embeddings
    peft_model.prompt_encoder.update(torch.nn.ModuleDict({adapter_name: encoder.to(peft_model.device)}))
    peft_model.prompt_tokens[adapter_name] = torch.arange(config.num_virtual_tokens).long()


def _softhard_prompts(peft_model: Any, batch_size: int) -> Any:
    prompt = peft_model.prompt_encoder[peft_model.active_adapter].prompt_embeddings()
    return prompt.unsqueeze(0).expand(batch_size, -1, -1)


def is_prompt_adapter(config: Any) -> bool:
    return bool(getattr(config, "is_prompt_learning", False))


def _route_softhard(original: Callable, softhard: Callable, config_of: Callable) -> Callable:
    """Wrap a peft method so SOFTHARD adapters go to `softhard` and everything else to `original`."""
    return _route(original, softhard, config_of, is_softhard)


def _route(original: Callable, ours: Callable, config_of: Callable, is_ours: Callable[[Any], bool]) -> Callable:
    """Wrap a peft method so adapters whose config `is_ours` go to `ours` and everything else to `original`."""

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        if is_ours(config_of(self, *args)):
            return ours(self, *args, **kwargs)
        return original(self, *args, **kwargs)

    wrapper.__softhard_original__ = original
    return wrapper


def _prompt_path(original: Callable, ours: Callable) -> Callable:
    """Wrap a task model's forward/generate so the calls `takes_prompt_path` claims run `ours`."""
    from .mixed_batch import takes_prompt_path

    signature = inspect.signature(original)

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        if not takes_prompt_path(self, kwargs.get("adapter_names")):
            return original(self, *args, **kwargs)
        return ours(self, **_as_keywords(signature, self, args, kwargs))

    wrapper.__softhard_original__ = original
    return wrapper


def _as_keywords(signature: inspect.Signature, model: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A call's arguments by name (a bare `*args` call such as generate(ids) gives its first one as input_ids)."""
    bound = signature.bind(model, *args, **kwargs)
    named: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if len(value) > 1:
                raise TypeError("With adapter_names, pass inputs by keyword (input_ids=..., attention_mask=...).")
            if value:
                named["input_ids"] = value[0]
        else:
            named[name] = value
    return named


def _delete_prompt_adapter(peft_model: Any, adapter_name: str) -> None:
    """peft's deletion of a prompt adapter, with one new active adapter (the current one when it stays)."""
    import warnings

    from peft.tuners.tuners_utils import _delete_auxiliary_adapter

    del peft_model.peft_config[adapter_name]
    del peft_model.prompt_encoder[adapter_name]
    del peft_model.prompt_tokens[adapter_name]
    remaining = list(peft_model.peft_config)
    active = peft_model.active_adapter
    keep = active if active != adapter_name else (remaining[0] if remaining else None)
    _delete_auxiliary_adapter(peft_model.base_model, adapter_name=adapter_name,
                              new_active_adapters=[keep] if keep else None)
    if active == adapter_name:
        if keep:
            warnings.warn(f"Adapter {adapter_name} was active which is now deleted. Setting active adapter to {keep}.",
                          stacklevel=3)
        peft_model.active_adapter = keep or []


def _explain_corrupted_weights(original: Callable) -> Callable:
    @functools.wraps(original)
    def load_adapter(self, model_id, adapter_name, *args, **kwargs):
        from safetensors import SafetensorError

        try:
            return original(self, model_id, adapter_name, *args, **kwargs)
        except SafetensorError as error:
            folder = os.path.join(str(model_id), kwargs.get("subfolder") or "")
            if _saved_peft_type(folder) != PEFT_TYPE_NAME:
                raise
            raise ValueError(
                f"{os.path.join(folder, 'adapter_model.safetensors')} is truncated or corrupted ({error}). "
                "Save the adapter again, or restore it from a backup: nothing was loaded."
            ) from error

    load_adapter.__softhard_original__ = original
    return load_adapter


def _saved_peft_type(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, "adapter_config.json")) as file:
            return json.load(file).get("peft_type")
    except (OSError, ValueError, AttributeError):
        return None


def _patch_peft_model() -> None:
    import peft

    from .mixed_batch import forward_with_prompts, generate_with_prompts

    PeftModel = peft.PeftModel  # noqa: N806

    if hasattr(PeftModel._setup_prompt_encoder, "__softhard_original__"):
        return
    active = lambda model, *args: model.active_peft_config  # noqa: E731
    PeftModel._setup_prompt_encoder = _route_softhard(
        PeftModel._setup_prompt_encoder, _setup_softhard_encoder, lambda model, name: model.peft_config[name]
    )
    PeftModel.get_prompt = _route_softhard(
        PeftModel.get_prompt, lambda model, batch_size, *a, **k: _softhard_prompts(model, batch_size), active
    )
    PeftModel.load_adapter = _explain_corrupted_weights(PeftModel.load_adapter)
    PeftModel.delete_adapter = _route(PeftModel.delete_adapter, _delete_prompt_adapter,
                                      lambda model, name: model.peft_config.get(name), is_prompt_adapter)
    for task_model in PROMPTED_FORWARD:
        cls = getattr(peft, task_model)
        cls.forward = _prompt_path(cls.forward, forward_with_prompts)
    for task_model in PROMPTED_GENERATE:
        cls = getattr(peft, task_model)
        cls.generate = _prompt_path(cls.generate, generate_with_prompts)


def register() -> None:
    """Make SOFTHARD a peft method. Safe to call more than once."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils.peft_types import register_peft_method

    _require_peft_symbols()
    peft_type = _add_peft_type()
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        from .config import SoftHardConfig
        from .encoder import SoftHardPromptEncoder

        register_peft_method(
            name=PEFT_TYPE_NAME.lower(), config_cls=SoftHardConfig, model_cls=SoftHardPromptEncoder, prefix=KEY_PREFIX
        )
    _patch_peft_model()
