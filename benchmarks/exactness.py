"""Hard-mode exactness: max |output difference| between a SOFTHARD hard prompt and the same token ids
literally prepended, for every architecture and task type we support: on an unpadded batch; on batches of rows
of different lengths (7, 2 and 5 tokens) padded on the left and on the right, each row against the base model on
[ids; that row] alone; and for generate() from the left-padded batch, the largest difference of the scores
(greedy, 6 new tokens, KV cache) from the base model generating from [ids; row] alone, and whether every token
is the same. The same again with the prompt at a slot inside each row (placement="slot": after 3, 1 and 5 of
the rows' tokens, marked with `PROMPT_SLOT_ID`), against the base model on the row with the ids written there.

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

from peft_softhard import PROMPT_SLOT_ID, SoftHardConfig
from peft_softhard.testing import CAUSAL_MODELS, TASK_MODELS, build, padded_batch, random_batch, random_rows

RESULTS = Path(__file__).resolve().parent / "results" / "exactness.json"
SEEDS = (0, 1, 2)
LENGTHS = [7, 2, 5]
SLOT_OFFSETS = {"prefix": [0, 0, 0], "slot": [3, 1, 5]}  # each row's tokens before its prompt


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


def hard_model(base, task_type: str, num_virtual_tokens: int, seed: int, placement: str = "prefix"):
    torch.manual_seed(seed)
    slot = {"placement": "slot", "template": "{text}{prompt}"} if placement == "slot" else {}
    config = SoftHardConfig(task_type=task_type, num_virtual_tokens=num_virtual_tokens, mode="hard", **slot)
    return get_peft_model(base, config).eval()


def placed_rows(rows: list[torch.Tensor], ids: torch.Tensor, placement: str):
    """(the rows as given to our model: slot marks where the prompt goes, none in front; the rows with the ids
    literally in place; each row's offset)."""
    offsets = SLOT_OFFSETS[placement]
    mark = torch.tensor([PROMPT_SLOT_ID]) if placement == "slot" else torch.tensor([], dtype=torch.long)
    given = [torch.cat([row[:o], mark, row[o:]]) for row, o in zip(rows, offsets, strict=True)]
    literal = [torch.cat([row[:o], ids, row[o:]]) for row, o in zip(rows, offsets, strict=True)]
    return given, literal, offsets


@torch.no_grad()
def padded_difference(base, task_type: str, num_virtual_tokens: int, side: str, seed: int,
                      vocab: int, placement: str = "prefix") -> tuple[float, float]:
    """Each row of a padded batch against the base model on that row with the ids in place, alone; and the floor:
    the base model itself on the batch of those rows padded the same way (positions counted per row), against
    the same."""
    model = hard_model(base, task_type, num_virtual_tokens, seed, placement)
    ids = model.prompt_encoder["default"].current_token_ids()
    rows = random_rows(LENGTHS, vocab=vocab, seed=seed)
    given, literal_rows, offsets = placed_rows(rows, ids, placement)
    batch, literal = padded_batch(given, side), padded_batch(literal_rows, side)
    decoder = {"decoder_input_ids": torch.zeros(1, 3, dtype=torch.long)} if task_type == "SEQ_2_SEQ_LM" else {}
    batched = {k: v.expand(len(rows), -1) for k, v in decoder.items()}
    field = "last_hidden_state" if task_type == "FEATURE_EXTRACTION" else "logits"
    ours = getattr(model(**batch, **batched), field).float()
    if "position_ids" in inspect.signature(base.forward).parameters and task_type != "SEQ_2_SEQ_LM":
        batched["position_ids"] = (literal["attention_mask"].cumsum(1) - 1).clamp_min(0)
    floor = getattr(base(**literal, **batched), field).float()
    worst = worst_floor = 0.0
    for i, (row, offset) in enumerate(zip(literal_rows, offsets, strict=True)):
        alone = getattr(base(input_ids=row[None], **decoder), field)[0].float()
        mine, theirs = ours[i], floor[i]
        if task_type in TOKEN_OUTPUTS:  # the prompt's columns, then the row's real tokens among the input columns
            n = len(ids)
            real = batch["attention_mask"][i].bool() & (batch["input_ids"][i] != PROMPT_SLOT_ID)
            mine = torch.cat([mine[:n], mine[n:][real]])
            order = torch.cat([torch.arange(offset, offset + n), torch.arange(offset),
                               torch.arange(offset + n, len(row))])  # the literal row's columns in that order
            alone, theirs = alone[order], theirs[literal["attention_mask"][i].bool()][order]
        worst = max(worst, (mine - alone).abs().max().item())
        worst_floor = max(worst_floor, (theirs - alone).abs().max().item())
    return worst, worst_floor


@torch.no_grad()
def generation_difference(base, task_type: str, num_virtual_tokens: int, seed: int, vocab: int,
                          placement: str = "prefix") -> tuple[float, bool]:
    """generate() from a left-padded batch against the base model generating from the row with the ids in place,
    alone: the largest score difference over the steps both took, and whether all tokens are the same."""
    model = hard_model(base, task_type, num_virtual_tokens, seed, placement)
    ids = model.prompt_encoder["default"].current_token_ids()
    rows = random_rows(LENGTHS, vocab=vocab, seed=seed)
    given, literal_rows, _ = placed_rows(rows, ids, placement)
    batch = padded_batch(given, "left")
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "output_scores": True,
                "return_dict_in_generate": True}
    ours = model.generate(**batch, **settings)
    given = batch["input_ids"].shape[1] if task_type == "CAUSAL_LM" else 0
    worst, same = 0.0, True
    for i, row in enumerate(literal_rows):
        with_ids = row[None]
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
        for placement, key in (("prefix", ""), ("slot", "slot_")):
            for side in ("left", "right"):
                differences = [padded_difference(base, task_type, 5, side, seed, vocab, placement) for seed in SEEDS]
                row[f"{key}{side}_padded_max_abs_difference"] = max(ours for ours, _ in differences)
                row[f"{key}{side}_padded_base_model_floor"] = max(floor for _, floor in differences)
            if task_type in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):
                generated = [generation_difference(base, task_type, 5, seed, vocab, placement) for seed in SEEDS]
                row[f"{key}generation_max_abs_score_difference"] = max(worst for worst, _ in generated)
                row[f"{key}generation_same_tokens"] = all(same for _, same in generated)
        rows.append(row)
    result = write_results(
        arguments.output, "max |output difference|, hard prompt vs the same ids prepended, 5 virtual tokens, seeds "
        "0-2: unpadded batch; rows of 7, 2, 5 tokens padded left / right; generate() from the left-padded batch; "
        "the same with the prompt at a slot after 3, 1, 5 of the rows' tokens (slot_*)",
        started, rows=rows,
    )
    for key, title in (("", "in front"), ("slot_", "at a slot inside the row")):
        print(f"\nThe prompt {title}:\n\n| model (task type) | unpadded | left-padded (base model's floor) | "
              "right-padded (floor) | generate: scores | generate: same tokens |\n|---|---|---|---|---|---|")
        for row in rows:
            generation = (f"{row[f'{key}generation_max_abs_score_difference']:.1e} | "
                          f"{row[f'{key}generation_same_tokens']}" if f"{key}generation_same_tokens" in row
                          else "– | –")
            padded = " | ".join(f"{row[f'{key}{side}_padded_max_abs_difference']:.1e} "
                                f"({row[f'{key}{side}_padded_base_model_floor']:.1e})" for side in ("left", "right"))
            unpadded = f"{row['max_abs_difference']:.1e}" if not key else "–"
            print(f"| {row['model']} | {unpadded} | {padded} | {generation} |")
    print(f"\nwritten to {arguments.output} in {result['seconds']} s")


if __name__ == "__main__":
    main()
