"""A system prompt that makes a chat model answer in one fixed format: the held-out success rate.

The pairs: SST-2 reviews asked about in the user turn of SmolLM2-Instruct's chat template ("Is this movie review
positive or negative?"), each target the one-line answer in a fixed format, `Answer: positive` or
`Answer: negative`. A pair succeeds when greedy decoding gives its whole target (format and label). Rows:
- no system prompt (the chat template's own default system turn);
- a hand-written system prompt, the instruction a user would type;
- a soft system prompt (10 vectors, from the hand-written instruction's tokens, AdamW 3e-2, the `train` loop);
- a hard system prompt: `softhard discover`'s token search in the system turn (PEZ, Adafactor 0.3, whole-word
  tokens, from the hand-written instruction).
Training pairs come from SST-2's train split, the validation pairs that choose the step from the rest of it,
the eval pairs (scored once, by the chosen prompt) from its dev split.

    python benchmarks/chat_format.py            # SmolLM2: about 30 minutes on 2 cores
    python benchmarks/chat_format.py --tiny     # a tiny random GPT-2 with a ChatML template (smoke run)

Writes benchmarks/results/chat_format.json and a markdown table next to it; each finished row is kept in
--work-dir, so a run that is stopped continues where it was.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from reporting import write_results
from subjects import RUN_STATE, SHARED, checkpoint_on_kill, finished_records, load, parser, plan_name, strip_adapters

RESULTS = Path(__file__).resolve().parent / "results" / "chat_format.json"
QUESTION = "Is this movie review positive or negative?\n\n{text}"
ANSWERS = ["Answer: negative", "Answer: positive"]
INSTRUCTION = "Reply with one line: 'Answer: positive' or 'Answer: negative'."
ROWS = ("none", "hand-written", "soft", "hard")
PLANS = {"full": {"train": 256, "validation": 64, "eval": 300, "steps": 60, "batch": 8, "eval_every": 10,
                  "whole_words": True},
         "quick": {"train": 64, "validation": 32, "eval": 100, "steps": 20, "batch": 8, "eval_every": 5,
                   "whole_words": True},
         "tiny": {"train": 8, "validation": 4, "eval": 4, "steps": 2, "batch": 4, "eval_every": 1,
                  "whole_words": False}}  # the tiny model's vocabulary is mostly not whole words
CHATML = ("{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
          "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
          "{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
          "{% endif %}")

logger = logging.getLogger("chat_format")


def pairs_of(plan: dict) -> dict[str, list[tuple[str, str]]]:
    """Train, validation (disjoint, both from SST-2's train split) and eval (its dev split) pairs."""
    from peft_softhard.app.tasks import SST2

    data_dir = str(SHARED / "data")
    texts, labels = SST2.load("train", limit=plan["train"] + plan["validation"], seed=0, balanced=True,
                              data_dir=data_dir)
    eval_texts, eval_labels = SST2.load("eval", limit=plan["eval"], seed=0, balanced=True, data_dir=data_dir)

    def pairs(texts, labels):
        return [(QUESTION.format(text=text.strip()), ANSWERS[label]) for text, label in zip(texts, labels,
                                                                                            strict=True)]

    every = pairs(texts, labels)
    return {"train": every[: plan["train"]], "validation": every[plan["train"]:], "eval": pairs(eval_texts,
                                                                                               eval_labels)}


def objectives(tokenizer, pairs: dict):
    """(the objective with the prompt as the system message, the same pairs with no system message at all)."""
    from peft_softhard import PairsObjective, placed_template

    def objective(template):
        return PairsObjective(tokenizer, pairs["train"], template=template, held_out_pairs=pairs["validation"],
                              eval_pairs=pairs["eval"])

    return objective(placed_template(tokenizer, "{text}", "system")), \
        objective(placed_template(tokenizer, "{text}", "prefix", chat=True))


def run_row(row: str, base, tokenizer, system, plain, plan: dict, work: Path) -> dict[str, Any]:
    from peft import get_peft_model

    from peft_softhard import DiscoveryConfig, SoftHardConfig, TrainConfig, run, train_prompt

    instruction = tokenizer(INSTRUCTION, add_special_tokens=False)["input_ids"]
    started = time.time()
    if row == "none":
        prompt, objective, extra = torch.tensor([], dtype=torch.long), plain, {}
    elif row == "hand-written":
        prompt, objective, extra = torch.tensor(instruction), system, {"text": INSTRUCTION}
    elif row == "soft":
        torch.manual_seed(0)
        config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=10, mode="soft", init="token_ids",
                                init_token_ids=instruction[:10], placement="system")
        model = get_peft_model(base, config)
        result = train_prompt(model, system, TrainConfig(steps=plan["steps"], batch_size=plan["batch"],
                                                         eval_interval=plan["eval_every"], show_progress=False),
                              work / "soft", resume=True)
        prompt, objective = model.prompt_encoder["default"].prompt_embeddings().detach(), system
        extra = {"validation": result.best_score, "best_step": result.best_step, "steps": result.steps}
    else:
        config = DiscoveryConfig(stages=["tokens"], method="pez", lr=0.3, optimizer="adafactor", weight_decay=0.0,
                                 placement="system", steps=plan["steps"], batch_size=plan["batch"],
                                 eval_interval=plan["eval_every"], show_progress=False)
        words = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=10, mode="hard", init="token_ids",
                               init_token_ids=instruction[:10], word_start_only=plan["whole_words"],
                               round_trip_only=plan["whole_words"])
        result = run(base, system, config, words, tokenizer, checkpoint_dir=str(work / "hard"), resume=True)
        prompt, objective = torch.tensor(result.token_ids, dtype=torch.long), system
        extra = {"validation": result.best_score, "best_step": result.best_step, "steps": result.steps,
                 "text": result.text, "round_trips": result.round_trips}
    seconds = time.time() - started
    successes = objective.successes(base, prompt, "eval")
    return {"row": row, "eval_success_rate": round(sum(successes) / len(successes), 4), "eval_pairs": len(successes),
            "validation_success_rate": round(objective.success_rate(base, prompt, "held_out"), 4),
            "train_seconds": round(seconds, 1), **extra}


def markdown(records: dict) -> str:
    lines = ["| system prompt | eval success % | validation % | seconds | prompt |", "|---|---|---|---|---|"]
    for row in ROWS:
        if row in records:
            r = records[row]
            lines.append(f"| {row} | {100 * r['eval_success_rate']:.1f} | {100 * r['validation_success_rate']:.1f} | "
                         f"{r['train_seconds']:.0f} | {r.get('text', '—')!r} |")
    return "\n".join(lines)


def main() -> None:
    options = parser(__doc__, RESULTS, quick_help="fewer pairs and steps (minutes on SmolLM2)")
    options.add_argument("--work-dir", default=str(RUN_STATE / "chat_format"), help="finished rows and checkpoints")
    args = options.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    checkpoint_on_kill()
    name = plan_name(args)
    plan, started = PLANS[name], time.time()
    work = Path(args.work_dir) / name
    records = finished_records(work)
    base, tokenizer = load(args.tiny)
    if args.tiny:
        tokenizer.chat_template = CHATML
    pairs = pairs_of(plan)
    system, plain = objectives(tokenizer, pairs)
    for row in ROWS:
        if row in records:
            continue
        logger.info("row %s", row)
        records[row] = run_row(row, base, tokenizer, system, plain, plan, work)
        base = strip_adapters(base)
        (work / "records" / f"{row}.json").write_text(json.dumps(records[row], indent=1))
    report = markdown(records)
    print(report)
    output = Path(args.output)
    output.with_suffix(".md").write_text(report + "\n")
    write_results(output, "a system prompt for a fixed answer format: held-out success rate", started,
                  plan_name=name, plan=plan, question=QUESTION, answers=ANSWERS, instruction=INSTRUCTION,
                  records=records)


if __name__ == "__main__":
    main()
