"""Many adapters in one model: load every adapter of a folder (or a {name: folder} map) into one peft model,
ready for mixed batches (`adapter_names=`) and ensembles."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


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
