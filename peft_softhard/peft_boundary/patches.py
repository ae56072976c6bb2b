"""Every change this package makes to peft's behaviour, listed in `PATCHES`, and the registration of SOFTHARD.

peft 0.21 only knows the prompt methods it ships, so `register()` (run when `peft_softhard` is imported)
adds SOFTHARD to its tables and wraps the methods in `PATCHES`; every wrapper passes other adapters through
to peft unchanged. `check_supported_peft()` resolves every name in `PATCHES` and `RELIED_ON` first, so a peft
that differs where it matters fails at import with the supported versions, not later with an AttributeError.
docs/python-api.md lists the same patches (a test keeps the two equal).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..method.config import PEFT_TYPE_NAME, SoftHardConfig, is_softhard
from ..method.encoder import SoftHardPromptEncoder
from .prompted_calls import forward_with_prompts, generate_with_prompts, takes_prompt_path

SUPPORTED_PEFT = ">=0.21,<0.22"
# peft warns when an adapter name is a substring of the method's key prefix; "softhard_" would catch the
# natural names "soft" and "hard". No key of our state dict starts with this prefix, so peft renames none.
KEY_PREFIX = "shvt_"
PROMPTED_FORWARD = ("PeftModelForCausalLM", "PeftModelForSeq2SeqLM", "PeftModelForSequenceClassification",
                    "PeftModelForTokenClassification", "PeftModelForFeatureExtraction")
PROMPTED_GENERATE = ("PeftModelForCausalLM", "PeftModelForSeq2SeqLM")


@dataclass(frozen=True)
class Patch:
    """One change to peft: what it touches (`module:Class.attribute`), what we do, and why."""

    targets: tuple[str, ...]
    change: str
    why: str


PATCHES = (
    Patch(("peft.utils.peft_types:PeftType",), "adds the SOFTHARD member (CPython Enum internals)",
          "`register_peft_method` refuses names the enum lacks"),
    Patch(("peft:PeftModel._setup_prompt_encoder",), "wrapped: builds a SoftHardPromptEncoder for SOFTHARD",
          "peft builds only the encoders it ships; ours finds embeddings through `get_input_embeddings()`"),
    Patch(("peft:PeftModel.get_prompt",), "wrapped: SOFTHARD prompts come from `prompt_embeddings()`",
          "peft reads `embedding.weight` directly at inference, which would skip the hard projection"),
    Patch(tuple(f"peft:{name}.forward" for name in PROMPTED_FORWARD),
          "wrapped: every SOFTHARD call, and every `adapter_names=` call on prompt adapters, runs "
          "`prompted_calls.forward_with_prompts`",
          "peft puts left padding between prompt and input and drops `adapter_names` for prompt adapters"),
    Patch(tuple(f"peft:{name}.generate" for name in PROMPTED_GENERATE),
          "wrapped: the same calls run `prompted_calls.generate_with_prompts` (the base model's own generate)",
          "peft's `prepare_inputs_for_generation` diverges after the first new token with transformers 5.24"),
    Patch(("peft:PeftModel.delete_adapter",), "wrapped for prompt adapters",
          "peft 0.21 hands every remaining adapter to each task head's `delete_adapter`, which refuses more than "
          "one, so deleting one of three SEQ_CLS adapters failed"),
    Patch(("peft:PeftModel.load_adapter",), "wrapped: a truncated SOFTHARD weights file names the file and the fix",
          "safetensors' bare 'Error while deserializing header' says neither"),
    Patch(("peft.utils.other:ModulesToSaveWrapper",),
          "its instances' `forward` replaced, only during a mixed-batch call (`adapters.per_row_heads`)",
          "each row's task head must be its own adapter's copy"),
    Patch(("peft:__import__",), "an import hook (_peft_softhard_autoload.py, run by a .pth file at interpreter "
          "start) imports peft_softhard right after peft",
          "a saved SOFTHARD adapter loads in a fresh process without `import peft_softhard`"),
)

# peft names used, not changed: the extension points we implement and the internals we call.
RELIED_ON = (
    "peft.utils.peft_types:register_peft_method",
    "peft.mapping:PEFT_TYPE_TO_CONFIG_MAPPING",
    "peft.tuners.tuners_utils:BasePromptEncoder._get_adapter_state_dict",
    "peft.tuners.tuners_utils:BasePromptEncoder._load_adapter_state_dict",
    "peft.tuners.tuners_utils:_delete_auxiliary_adapter",
)


def check_supported_peft() -> None:
    """Fail at import, with the versions we support, if peft lacks anything `PATCHES` or `RELIED_ON` names."""
    targets = [t for patch in PATCHES for t in patch.targets if not t.endswith(":__import__")] + list(RELIED_ON)
    missing = [target for target in targets if not _defined(target)]
    if not hasattr(importlib.import_module("peft.utils.peft_types").PeftType, "_member_map_"):
        missing.append("PeftType as a standard Enum")
    if missing:
        version = importlib.metadata.version("peft")
        raise ImportError(
            f"peft-softhard supports peft {SUPPORTED_PEFT}; the installed peft {version} differs where it matters "
            f"(missing {', '.join(missing)}). Install a supported version: pip install 'peft{SUPPORTED_PEFT}'."
        )


def _defined(target: str) -> bool:
    """Whether `module:Owner.attribute` exists, defined on the owner itself (a wrapper replaces that one)."""
    module_name, _, path = target.partition(":")
    try:
        owner: Any = importlib.import_module(module_name)
    except ImportError:
        return False
    *owners, attribute = path.split(".")
    for name in owners:
        owner = getattr(owner, name, None)
    return owner is not None and attribute in vars(owner)


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


def _setup_softhard_encoder(peft_model: Any, adapter_name: str) -> None:
    """peft's `_setup_prompt_encoder` for SOFTHARD: embeddings are found through `get_input_embeddings()`."""
    import torch
    from transformers import PreTrainedModel

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

    check_supported_peft()
    peft_type = _add_peft_type()
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(
            name=PEFT_TYPE_NAME.lower(), config_cls=SoftHardConfig, model_cls=SoftHardPromptEncoder, prefix=KEY_PREFIX
        )
    _patch_peft_model()
