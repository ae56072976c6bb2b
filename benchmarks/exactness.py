"""Hard-mode exactness: max |output difference| between a SOFTHARD hard prompt and the same token ids
literally prepended, for every architecture and task type we support: on an unpadded batch; on batches of rows
of different lengths (7, 2 and 5 tokens) padded on the left and on the right, each row against the base model on
[ids; that row] alone; and for generate() from the left-padded batch, the largest difference of the scores
(greedy, 6 new tokens, KV cache) from the base model generating from [ids; row] alone, and whether every token
is the same.

    python benchmarks/exactness.py                # tiny models + the real SmolLM2-135M (about 40 s)
    python benchmarks/exactness.py --tiny-only    # tiny models only (a few seconds)

Writes benchmarks/results/exactness.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import torch
from peft import get_peft_model
from reporting import write_results

from peft_softhard import SoftHardConfig
from peft_softhard.testing import CAUSAL_MODELS, TASK_MODELS, build, padded_batch, random_batch, random_rows

RESULTS = Path(__file__).resolve().parent / "results" / "exactness.json"
SEEDS = (0, 1, 2)


def max_difference(base, task_type: str, num_virtual_tokens: int, batch: dict, seed: int) -> float:
    model = hard_model(base, task_type, num_virtual_tokens, seed)
    ids = model.prompt_encoder["default"].current_token_ids()
    input_ids = torch.cat([ids.expand(batch["input_ids"].shape[0], -1), batch["input_ids"]], dim=1)
    extra = {"decoder_input_ids": torch.zeros_like(batch["input_ids"][:, :3])} if task_type == "SEQ_2_SEQ_LM" else {}
    with torch.no_grad():
        ours = model(**batch, **extra)
        reference = base(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **extra)
    field = "last_hidden_state" if task_type == "FEATURE_EXTRACTION" else "logits"
    return (getattr(ours, field).float() - getattr(reference, field).float()).abs().max().item()


TOKEN_OUTPUTS = ("CAUSAL_LM", "TOKEN_CLS", "FEATURE_EXTRACTION")


def hard_model(base, task_type: str, num_virtual_tokens: int, seed: int):
    torch.manual_seed(seed)
    config = SoftHardConfig(task_type=task_type, num_virtual_tokens=num_virtual_tokens, mode="hard")
    return get_peft_model(base, config).eval()


@torch.no_grad()
def padded_difference(base, task_type: str, num_virtual_tokens: int, side: str, seed: int,
                      vocab: int) -> tuple[float, float]:
    """Each row of a padded batch against the base model on [ids; that row] alone; and the floor: the base model
    itself on the batch of [ids; row] rows padded the same way (positions counted per row), against the same."""
    model = hard_model(base, task_type, num_virtual_tokens, seed)
    ids = model.prompt_encoder["default"].current_token_ids()
    rows = random_rows([7, 2, 5], vocab=vocab, seed=seed)
    batch, literal = padded_batch(rows, side), padded_batch([torch.cat([ids, row]) for row in rows], side)
    decoder = {"decoder_input_ids": torch.zeros(1, 3, dtype=torch.long)} if task_type == "SEQ_2_SEQ_LM" else {}
    batched = {k: v.expand(len(rows), -1) for k, v in decoder.items()}
    field = "last_hidden_state" if task_type == "FEATURE_EXTRACTION" else "logits"
    ours = getattr(model(**batch, **batched), field).float()
    if "position_ids" in inspect.signature(base.forward).parameters and task_type != "SEQ_2_SEQ_LM":
        batched["position_ids"] = (literal["attention_mask"].cumsum(1) - 1).clamp_min(0)
    floor = getattr(base(**literal, **batched), field).float()
    worst = worst_floor = 0.0
    for i, row in enumerate(rows):
        alone = getattr(base(input_ids=torch.cat([ids, row])[None], **decoder), field)[0].float()
        mine, theirs = ours[i], floor[i]
        if task_type in TOKEN_OUTPUTS:  # the prompt's columns, then the row's real tokens among the input columns
            n = len(ids)
            mine = torch.cat([mine[:n], mine[n:][batch["attention_mask"][i].bool()]])
            theirs = theirs[literal["attention_mask"][i].bool()]
        worst = max(worst, (mine - alone).abs().max().item())
        worst_floor = max(worst_floor, (theirs - alone).abs().max().item())
    return worst, worst_floor


@torch.no_grad()
def generation_difference(base, task_type: str, num_virtual_tokens: int, seed: int, vocab: int) -> tuple[float, bool]:
    """generate() from a left-padded batch against the base model generating from [ids; row] alone: the largest
    score difference over the steps both took, and whether all tokens are the same."""
    model = hard_model(base, task_type, num_virtual_tokens, seed)
    ids = model.prompt_encoder["default"].current_token_ids()
    rows = random_rows([7, 2, 5], vocab=vocab, seed=seed)
    batch = padded_batch(rows, "left")
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "output_scores": True,
                "return_dict_in_generate": True}
    ours = model.generate(**batch, **settings)
    given = batch["input_ids"].shape[1] if task_type == "CAUSAL_LM" else 0
    worst, same = 0.0, True
    for i, row in enumerate(rows):
        with_ids = torch.cat([ids, row])[None]
        theirs = base.generate(input_ids=with_ids, **settings)
        steps = len(theirs.scores)
        for step in range(steps):
            worst = max(worst, (ours.scores[step][i] - theirs.scores[step][0]).abs().max().item())
        mine = ours.sequences[i, given:].tolist()
        reference = theirs.sequences[0, with_ids.shape[1] if given else 0 :].tolist()
        same &= mine[: len(reference)] == reference and not any(mine[len(reference) :])  # the rest: padding
    return worst, same


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
        from peft_softhard.app.models import load_smollm2

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
        base = make_base()
        vocab = min(base.get_input_embeddings().weight.shape[0], 1000)
        row = {"model": name, "task_type": task_type,
               "max_abs_difference": max(max_difference(base, task_type, 5, batch, seed) for seed in SEEDS)}
        for side in ("left", "right"):
            differences = [padded_difference(base, task_type, 5, side, seed, vocab) for seed in SEEDS]
            row[f"{side}_padded_max_abs_difference"] = max(ours for ours, _ in differences)
            row[f"{side}_padded_base_model_floor"] = max(floor for _, floor in differences)
        if task_type in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):
            generated = [generation_difference(base, task_type, 5, seed, vocab) for seed in SEEDS]
            row["generation_max_abs_score_difference"] = max(worst for worst, _ in generated)
            row["generation_same_tokens"] = all(same for _, same in generated)
        rows.append(row)
    result = write_results(
        arguments.output, "max |output difference|, hard prompt vs the same ids prepended, 5 virtual tokens, seeds "
        "0-2: unpadded batch; rows of 7, 2, 5 tokens padded left / right; generate() from the left-padded batch",
        started, rows=rows,
    )
    print("| model (task type) | unpadded | left-padded (base model's floor) | right-padded (floor) | "
          "generate: scores | generate: same tokens |\n|---|---|---|---|---|---|")
    for row in rows:
        generation = (f"{row['generation_max_abs_score_difference']:.1e} | {row['generation_same_tokens']}"
                      if "generation_same_tokens" in row else "– | –")
        padded = " | ".join(f"{row[f'{side}_padded_max_abs_difference']:.1e} "
                            f"({row[f'{side}_padded_base_model_floor']:.1e})" for side in ("left", "right"))
        print(f"| {row['model']} | {row['max_abs_difference']:.1e} | {padded} | {generation} |")
    print(f"\nwritten to {arguments.output} in {result['seconds']} s")


if __name__ == "__main__":
    main()
