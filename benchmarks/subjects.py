"""What the SmolLM2 benchmarks run on: the shared data folder, and the model — SmolLM2-135M, or for smoke
runs a tiny random GPT-2 with the real GPT-2 tokenizer (padding with its end-of-text token, as `load_model`
sets up a tokenizer without a padding token); the command-line options that choose between them.

The cost benchmarks can also run on a GPU (`--device cuda`) and, on a machine without the model package, on
SmolLM2-135M's architecture with random weights (`--random-weights`: only its config and tokenizer are read;
time and memory do not depend on the weights' values). $PEFT_SOFTHARD_SHARED points at another shared folder."""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path
from typing import Any

SHARED = Path(os.environ.get("PEFT_SOFTHARD_SHARED") or Path(__file__).resolve().parents[2] / "shared")
# Where the benchmarks that take hours keep their finished stages and checkpoints. It is tracked by git (smoke
# and quick runs and LoRA's large checkpoints are ignored): a run spread over sittings continues from what
# was committed, since a fresh checkout has nothing that is not.
RUN_STATE = Path(__file__).resolve().parent / "results" / "runs"


def sst2_as_recorded():
    """SST-2 with the validation rows the quality and settings runs began with (rows of 10+ words, phrases
    included), before SST-2's validation rows became whole sentences: their committed stages and checkpoints
    stay comparable with the stages still to run."""
    import dataclasses

    from peft_softhard.app.tasks import SST2

    return dataclasses.replace(SST2, validation_min_words=10, validation_sentences_only=False)


def load(tiny: bool, random_weights: bool = False, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer): the tiny GPT-2, SmolLM2-135M, or SmolLM2-135M's architecture with random weights."""
    import transformers

    if tiny:
        from peft_softhard.testing import build, tiny_gpt2

        tokenizer = transformers.AutoTokenizer.from_pretrained(str(SHARED / "models" / "gpt2-tokenizer"))
        tokenizer.pad_token = tokenizer.eos_token
        return build(lambda: tiny_gpt2(initializer_range=0.3)).to(device), tokenizer
    from peft_softhard.app.models import load_model, pad_with_eos, resolve_model

    if not random_weights:
        model, tokenizer = load_model("smollm2-135m")
        return model.to(device), tokenizer
    path = resolve_model("smollm2-135m")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(path))
    pad_with_eos(model, tokenizer)
    return model.to(device).eval(), tokenizer


def parser(description: str, results: Path, quick_help: str) -> argparse.ArgumentParser:
    """The options every SmolLM2 benchmark has: --quick, --tiny (the test suite's smoke run) and --output."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=quick_help)
    size.add_argument("--tiny", action="store_true", help="a tiny random GPT-2 (smoke run)")
    parser.add_argument("--output", default=str(results))
    return parser


def add_measurement_options(parser: argparse.ArgumentParser) -> None:
    """--device, --random-weights and --repeats, for the benchmarks that measure time and memory."""
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu (default) or cuda")
    parser.add_argument("--random-weights", action="store_true",
                        help="SmolLM2-135M's architecture with random weights (needs only its config and tokenizer)")
    parser.add_argument("--repeats", type=int, help="timed repeats instead of the plan's (cheap on a GPU)")


def on_gpu(device: str) -> bool:
    import torch

    return torch.device(device).type == "cuda"


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so a wall-clock reading after it counts that work."""
    import torch

    if on_gpu(device):
        torch.cuda.synchronize()


def checkpoint_on_kill() -> None:
    """Let `kill` (SIGTERM) and Ctrl-C stop a long benchmark as Ctrl-C does: the loop writes its checkpoint on
    the way out. (A job started with `&` from a script ignores SIGINT unless told otherwise.)"""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def finished_records(work: Path) -> dict[str, dict]:
    """The stages a resumable benchmark has finished: the JSON records in `work`/records (made if absent), by
    name, in name order."""
    (work / "records").mkdir(parents=True, exist_ok=True)
    return {path.stem: json.loads(path.read_text()) for path in sorted((work / "records").glob("*.json"))}


def plan_name(args: argparse.Namespace) -> str:
    return "tiny" if args.tiny else "quick" if args.quick else "full"


def train_lora_reference(base, objective, config, work: Path, seed: int) -> dict:
    """LoRA r=8 (peft's default q/v projections) on the frozen model, trained on the one loop (`PromptTraining`
    with no prompt at all), its best step by the objective's validation score: the reference every prompt
    benchmark compares with. `config`: a `TrainConfig`; checkpoints in `work`/checkpoint (resumable). Returns
    the record fields, with the LoRA model (holding the best step's weights) under "model"."""
    import torch
    from peft import LoraConfig, get_peft_model

    from peft_softhard.optimization.loop import frozen, optimize
    from peft_softhard.optimization.training import PromptTraining

    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0))
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    empty = base.get_input_embeddings().weight[:0].detach()

    def score(prompt: torch.Tensor) -> float:
        with frozen(model), torch.no_grad():
            return objective.score(model, prompt)

    state, strategy = optimize(lambda restart: PromptTraining(model, objective, parameters, lambda: empty, config),
                               objective, config, score, checkpoint_dir=Path(work) / "checkpoint",
                               checkpoint_interval=config.eval_interval, resume=True, description="lora")
    strategy.load_tensors(state.best.tensors)
    return {"prompt": empty, "model": model, "validation": state.best.score, "best_step": state.best.step,
            "steps": state.step, "score_history": state.scores, "search_seconds": state.score_seconds[-1],
            "seconds": state.seconds, "trainable_parameters": sum(p.numel() for p in parameters.values())}


def strip_adapters(model):
    """The plain base model back from a peft wrapper (prompt methods leave the base model's weights as they were)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
