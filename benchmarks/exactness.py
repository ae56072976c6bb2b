"""Hard-mode exactness: max |output difference| between a SOFTHARD hard prompt and the same token ids
literally prepended, for every architecture and task type we support.

    python benchmarks/exactness.py                # tiny models + the real SmolLM2-135M (about 40 s)
    python benchmarks/exactness.py --tiny-only    # tiny models only (a few seconds)

Writes benchmarks/results/exactness.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from peft import get_peft_model
from reporting import write_results

from peft_softhard import SoftHardConfig
from peft_softhard.testing import CAUSAL_MODELS, TASK_MODELS, build, random_batch

RESULTS = Path(__file__).resolve().parent / "results" / "exactness.json"
SEEDS = (0, 1, 2)


def max_difference(base, task_type: str, num_virtual_tokens: int, batch: dict, seed: int) -> float:
    torch.manual_seed(seed)
    config = SoftHardConfig(task_type=task_type, num_virtual_tokens=num_virtual_tokens, mode="hard")
    model = get_peft_model(base, config).eval()
    ids = model.prompt_encoder["default"].current_token_ids()
    input_ids = torch.cat([ids.expand(batch["input_ids"].shape[0], -1), batch["input_ids"]], dim=1)
    extra = {"decoder_input_ids": torch.zeros_like(batch["input_ids"][:, :3])} if task_type == "SEQ_2_SEQ_LM" else {}
    with torch.no_grad():
        ours = model(**batch, **extra)
        reference = base(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **extra)
    field = "last_hidden_state" if task_type == "FEATURE_EXTRACTION" else "logits"
    return (getattr(ours, field).float() - getattr(reference, field).float()).abs().max().item()


def cases(tiny_only: bool):
    for name, factory in sorted(CAUSAL_MODELS.items()):
        yield f"{name} (CAUSAL_LM)", lambda f=factory: build(f), "CAUSAL_LM", random_batch()
    yield "gemma3 bfloat16 (CAUSAL_LM)", lambda: build(CAUSAL_MODELS["gemma3"]).to(torch.bfloat16), "CAUSAL_LM", \
        random_batch()
    for task_type in ("SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "FEATURE_EXTRACTION"):
        factory = TASK_MODELS[task_type][0]
        yield f"{factory.__name__.removeprefix('tiny_')} ({task_type})", lambda f=factory: build(f), task_type, \
            random_batch()
    if not tiny_only:
        from peft_softhard.models import load_smollm2

        model, tokenizer = load_smollm2()
        rows = [tokenizer(text).input_ids[:5] for text in ("a gripping , funny film", "dull and far too long")]
        batch = {"input_ids": torch.tensor(rows), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
        yield "SmolLM2-135M (CAUSAL_LM)", lambda: model, "CAUSAL_LM", batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny-only", action="store_true", help="skip the real SmolLM2 model")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file to write (default {RESULTS})")
    arguments = parser.parse_args()
    started = time.time()
    rows = []
    for name, make_base, task_type, batch in cases(arguments.tiny_only):
        differences = [max_difference(make_base(), task_type, 5, batch, seed) for seed in SEEDS]
        rows.append({"model": name, "task_type": task_type, "max_abs_difference": max(differences)})
    result = write_results(
        arguments.output, "max |output difference|, hard prompt vs the same ids prepended, 5 virtual tokens, seeds 0-2",
        started, rows=rows,
    )
    print("| model (task type) | max abs difference |\n|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['max_abs_difference']:.1e} |")
    print(f"\nwritten to {arguments.output} in {result['seconds']} s")


if __name__ == "__main__":
    main()
