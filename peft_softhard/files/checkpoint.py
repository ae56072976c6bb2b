"""Resumable checkpoints, written atomically, without pickle.

A checkpoint is a folder holding `state.safetensors` (every tensor) and `state.json` (everything else, with
each tensor replaced by a reference to its safetensors key). Nested dicts and lists — an optimiser's
`state_dict()`, a generator's state, histories — round-trip exactly. Folders and files are written to a
temporary name and renamed into place, so an interrupted write never replaces a good checkpoint with a
half-written one. Under data parallelism only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..distributed import is_main_process

_TENSOR = "__tensor__"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """A JSON-able copy of `obj` whose tensors are moved into `tensors` (keys stand in their place)."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"Checkpoint dict keys must be str or int, got {list(obj)[:3]}")
        return {"__dict__": [[k, flatten(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [flatten(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"Cannot checkpoint a {type(obj).__name__} without pickle.")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and _TENSOR in obj:
        return tensors[obj[_TENSOR]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` to `directory` atomically (the old checkpoint stays until the new one is complete)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)

    def write(staging: Path) -> None:
        save_file(tensors, staging / STATE_TENSORS)
        (staging / STATE_JSON).write_text(json.dumps(skeleton))

    write_directory_atomically(directory, write)


def load_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    directory = _existing(Path(directory))
    try:
        tensors = load_file(directory / STATE_TENSORS)
        skeleton = json.loads((directory / STATE_JSON).read_text())
    except Exception as error:
        raise ValueError(f"The checkpoint in {directory} cannot be read ({error}); delete it to start over.") from error
    return unflatten(skeleton, tensors)


def has_checkpoint(directory: str | os.PathLike) -> bool:
    return (_existing(Path(directory)) / STATE_JSON).is_file()


def _existing(directory: Path) -> Path:
    """The folder, or the previous version kept while a new one was being swapped in (a crash in between)."""
    retired = directory.with_name(f".{directory.name}.old")
    return retired if not directory.exists() and retired.exists() else directory


def write_directory_atomically(directory: str | os.PathLike, write) -> None:
    """Call `write(staging_folder)`, then swap the staging folder in for `directory` (rank 0 only)."""
    if not is_main_process():
        return
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.writing-"))
    try:
        write(staging)
        if directory.exists():
            retired = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(directory, retired)
            os.replace(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_file_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(temporary_path)`, then rename the file into place (rank 0 only)."""
    if not is_main_process():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.writing")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary name and rename it into place (rank 0 only)."""
    write_file_atomically(path, lambda temporary: temporary.write_text(text))


def save_adapter_atomically(peft_model: Any, directory: str | os.PathLike, adapter_name: str = "default") -> None:
    """`peft_model.save_pretrained` into `directory`, atomically, with the adapter at the top of the folder."""

    def write(staging: Path) -> None:
        peft_model.save_pretrained(str(staging), selected_adapters=[adapter_name])
        if adapter_name != "default":  # peft puts a non-default adapter in a subfolder; keep the layout flat
            for item in (staging / adapter_name).iterdir():
                item.rename(staging / item.name)
            (staging / adapter_name).rmdir()

    write_directory_atomically(directory, write)
