"""What the SmolLM2 benchmarks run on: the shared data folder, and the model — SmolLM2-135M, or for smoke
runs a tiny random GPT-2 with the real GPT-2 tokenizer (padding with its end-of-text token, as `load_model`
sets up a tokenizer without a padding token); the command-line options that choose between them."""

from __future__ import annotations

import argparse
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


def parser(description: str, results: Path, quick_help: str) -> argparse.ArgumentParser:
    """The options every SmolLM2 benchmark has: --quick, --tiny (the test suite's smoke run) and --output."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=quick_help)
    size.add_argument("--tiny", action="store_true", help="a tiny random GPT-2 (smoke run)")
    parser.add_argument("--output", default=str(results))
    return parser


def plan_name(args: argparse.Namespace) -> str:
    return "tiny" if args.tiny else "quick" if args.quick else "full"


def strip_adapters(model):
    """The plain base model back from a peft wrapper (prompt methods leave the base model's weights as they were)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
