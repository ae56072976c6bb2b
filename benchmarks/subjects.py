"""What the SmolLM2 benchmarks run on: the shared data folder, and the model — SmolLM2-135M, or for smoke
runs a tiny random GPT-2 with the real GPT-2 tokenizer (padding with its end-of-text token, as `load_model`
sets up a tokenizer without a padding token)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared"


def load(tiny: bool) -> tuple[Any, Any]:
    if tiny:
        import transformers

        from peft_softhard.testing import build, tiny_gpt2

        tokenizer = transformers.AutoTokenizer.from_pretrained(str(SHARED / "models" / "gpt2-tokenizer"))
        tokenizer.pad_token = tokenizer.eos_token
        return build(lambda: tiny_gpt2(initializer_range=0.3)), tokenizer
    from peft_softhard.models import load_model

    return load_model("smollm2-135m")
