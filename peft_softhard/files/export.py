"""Export a SOFTHARD adapter as a plain peft PROMPT_TUNING adapter that stock peft loads with no plugin; read
the prompt vectors of a saved adapter folder (ours or stock PROMPT_TUNING) without building a model. (As text
in its place: `reading.placed_text`.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from peft import PromptTuningConfig
from peft.utils import SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ..method.encoder import ALLOWED_KEY, CONTINUOUS_KEY, TOKEN_IDS_KEY
from ..peft_boundary.adapters import softhard_adapter
from .checkpoint import write_directory_atomically


def export_prompt_tuning(peft_model: Any, save_directory: str, adapter_name: str | None = None) -> str:
    """Write `adapter_config.json` (peft_type PROMPT_TUNING) and `adapter_model.safetensors` to `save_directory`.

    The exported `prompt_embeddings` are what the model sees (for a hard prompt: the embeddings of its
    tokens), so the stock adapter gives the same outputs. Extra trained modules (e.g. a SEQ_CLS head) come too.

    Example:
        ```py
        >>> export_prompt_tuning(peft_model, "out/plain")  # doctest: +SKIP
        >>> PeftModel.from_pretrained(base_model, "out/plain")  # no peft_softhard import needed  # doctest: +SKIP
        ```
    """
    adapter_name, config, _ = softhard_adapter(peft_model, adapter_name)
    config.require_prefix("Stock peft PROMPT_TUNING")
    plain = PromptTuningConfig(
        task_type=config.task_type,
        num_virtual_tokens=config.num_virtual_tokens,
        token_dim=config.token_dim,
        num_transformer_submodules=1,
        num_attention_heads=config.num_attention_heads,
        num_layers=config.num_layers,
        modules_to_save=config.modules_to_save,
        base_model_name_or_path=config.base_model_name_or_path,
        revision=config.revision,
        inference_mode=True,
    )
    state = get_peft_model_state_dict(peft_model, adapter_name=adapter_name)
    for key in (CONTINUOUS_KEY, TOKEN_IDS_KEY, ALLOWED_KEY):
        state.pop(key, None)
    state = {key: tensor.detach().cpu().contiguous() for key, tensor in state.items()}

    def write(staging) -> None:
        plain.save_pretrained(str(staging))
        save_file(state, os.path.join(staging, SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})

    write_directory_atomically(save_directory, write)
    return save_directory


def read_prompt_vectors(adapter_dir: str | os.PathLike) -> torch.Tensor:
    """[n, d] the prompt vectors the model sees, from a saved SOFTHARD or PROMPT_TUNING adapter folder."""
    path = Path(adapter_dir) / SAFETENSORS_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No {SAFETENSORS_WEIGHTS_NAME} in {adapter_dir}: give a saved adapter folder "
                                "(e.g. out/train/n10/best).")
    tensors = load_file(str(path))
    if "prompt_embeddings" not in tensors:
        raise ValueError(f"{path} holds no prompt ({sorted(tensors)[:5]}...): give a SOFTHARD or PROMPT_TUNING "
                         "adapter.")
    return tensors["prompt_embeddings"].float()
