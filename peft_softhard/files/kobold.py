"""The KoboldAI soft-prompt file: a .zip holding exactly `tensor.npy` ([n_tokens, d_model]) and `meta.json`.

The vectors go at the very start of the context, exactly where a causal-LM SOFTHARD adapter puts its prompt,
so the conversion is one to one. Importing never runs code from the file: the array is read with
`numpy.load(allow_pickle=False)`, and everything about it is checked before it becomes an adapter.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..method.config import SoftHardConfig
from ..peft_boundary.adapters import softhard_adapter
from .checkpoint import write_file_atomically

MEMBERS = {"tensor.npy", "meta.json"}
MAX_TOKENS = 2048
_MAX_MEMBER_BYTES = 256 * 2**20  # refuse a zip that would unpack into something huge


def export_kobold(peft_model: Any, path: str | Path, adapter_name: str | None = None, *, name: str = "soft prompt",
                  author: str = "", description: str = "", supported: list[str] | None = None) -> Path:
    """Write the adapter's prompt (what the model sees, float32) as a KoboldAI soft-prompt zip."""
    _, config, encoder = softhard_adapter(peft_model, adapter_name, task_type="CAUSAL_LM")  # KoboldAI: causal LMs
    config.require_prefix("A KoboldAI soft prompt")
    vectors = encoder.prompt_embeddings().detach().float().cpu().numpy()
    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    meta = {"name": name, "author": author, "description": description,
            "supported": supported or [config.base_model_name_or_path or "unknown"]}

    def write(temporary: Path) -> None:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("tensor.npy", buffer.getvalue())
            archive.writestr("meta.json", json.dumps(meta, indent=2))

    path = Path(path)
    write_file_atomically(path, write)
    return path


def read_kobold(path: str | Path, hidden_size: int | None = None) -> tuple[torch.Tensor, dict]:
    """The float32 vectors [n, d] and the metadata of a KoboldAI zip, after checking everything about it."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path} is not a readable zip file ({error}).") from error
    with archive:
        names = set(archive.namelist())
        if names != MEMBERS:
            raise ValueError(f"{path} must hold exactly tensor.npy and meta.json; it holds {sorted(names)}.")
        for info in archive.infolist():
            if info.file_size > _MAX_MEMBER_BYTES:
                raise ValueError(f"{path}: {info.filename} unpacks to {info.file_size} bytes, far too large.")
        try:
            array = np.load(io.BytesIO(archive.read("tensor.npy")), allow_pickle=False)
        except ValueError as error:  # numpy refuses object arrays (pickles) when allow_pickle=False
            raise ValueError(f"{path}: tensor.npy is not a plain numeric array ({error}).") from error
        try:
            meta = json.loads(archive.read("meta.json"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: meta.json is not valid JSON ({error}).") from error
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: meta.json must hold an object with name, author, supported, description.")
    vectors = _as_float_tensor(array, path)
    if vectors.dim() != 2:
        raise ValueError(f"{path}: tensor.npy must be 2-D [n_tokens, d_model], got shape {tuple(vectors.shape)}.")
    if not 0 < vectors.shape[0] < MAX_TOKENS:
        raise ValueError(f"{path}: {vectors.shape[0]} prompt tokens; a soft prompt has 1 to {MAX_TOKENS - 1}.")
    if hidden_size is not None:
        _check_width(vectors, hidden_size, f"{path}: the")
    if not torch.isfinite(vectors).all():
        raise ValueError(f"{path}: tensor.npy holds NaN or Inf.")
    return vectors, meta


def import_kobold(path: str | Path, base_model: Any, adapter_name: str = "default") -> Any:
    """A SOFTHARD soft-mode CAUSAL_LM adapter on `base_model` whose prompt is the zip's vectors."""
    vectors, _ = read_kobold(path, hidden_size=base_model.get_input_embeddings().embedding_dim)
    return soft_prompt_adapter(base_model, vectors, adapter_name)


def soft_prompt_adapter(base_model: Any, vectors: torch.Tensor, adapter_name: str = "default") -> Any:
    """A SOFTHARD soft-mode CAUSAL_LM adapter on `base_model` whose prompt is `vectors` [n, d]."""
    from peft import get_peft_model

    _check_width(vectors, base_model.get_input_embeddings().embedding_dim, "The")
    config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=vectors.shape[0], mode="soft", init="random")
    model = get_peft_model(base_model, config, adapter_name=adapter_name)
    with torch.no_grad():
        model.prompt_encoder[adapter_name].embedding.weight.copy_(vectors)
    return model


def _check_width(vectors: torch.Tensor, hidden_size: int, lead: str) -> None:
    if vectors.shape[1] != hidden_size:
        raise ValueError(f"{lead} soft prompt has d_model={vectors.shape[1]} and this model's embeddings "
                         f"{hidden_size}; it was made for another model.")


def _as_float_tensor(array: np.ndarray, path: Path) -> torch.Tensor:
    if array.dtype == np.dtype("V2"):  # bfloat16 stored as raw 2-byte values
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16).float()
    if array.dtype not in (np.float32, np.float16):
        raise ValueError(f"{path}: tensor.npy has dtype {array.dtype}; use float32, float16 or bfloat16 ('V2').")
    return torch.from_numpy(array.astype(np.float32))
