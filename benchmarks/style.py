"""Style prompts: how much a prompt makes frozen SmolLM2-135M write like a body of text, as held-out perplexity.

Two corpora built from the data here, each 2,400 seeded documents: "reviews", SST-2's training sentences (the
rows that end a sentence) as a movie-review style, and "news", AG News' descriptions (the description column
of its official test file) as a news style. 100 documents choose each run's step (validation), 300 others are
scored once per budget (report); chunks of at most 64 tokens, batches of 8 chunks.

Rows, each with the corpus objective (`softhard train/discover --corpus`):
- none: no prompt;
- instruction: a hand-written instruction as text ("Write a movie review:", "Write a news article:");
- soft10, soft50: soft prompts of 10 and 50 tokens from the instruction (`softhard train`'s AdamW 3e-2);
- hard: a 10-token hard prompt, `softhard discover`'s search (PEZ, Adafactor 0.3) from the instruction, whole
  words that round-trip;
- lora: LoRA r=8 (AdamW 1e-3), the reference.
Budgets are chunks seen, 400 and 1,600; the 1,600 run continues the 400 one. Every prompt is also scored on
the other corpus' report documents (does it help its own corpus more than the other?), and generations from
fixed opening lines are sampled with no prompt, the 10-token soft prompt and the hard prompt.

    python benchmarks/style.py           # about 80 minutes on 2 cores, resumable (records and checkpoints)
    python benchmarks/style.py --tiny    # a tiny random GPT-2 (the test suite's smoke run)

Writes benchmarks/results/style.json and style.md.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from pathlib import Path

import torch
from reporting import write_results
from subjects import (
    RUN_STATE,
    SHARED,
    checkpoint_on_kill,
    finished_records,
    load,
    parser,
    plan_name,
    strip_adapters,
    train_lora_reference,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "style.json"
CORPORA = ("reviews", "news")
INSTRUCTIONS = {"reviews": "Write a movie review:", "news": "Write a news article:"}
TRAINED = ("soft10", "soft50", "hard", "lora")
PLANS = {
    "full": {"documents": 2400, "validation": 100, "report": 300, "chunk_tokens": 64, "batch": 8,
             "budgets": [400, 1600], "eval_every": {400: 25, 1600: 50}, "samples": 3, "sample_tokens": 40},
    "quick": {"documents": 400, "validation": 40, "report": 60, "chunk_tokens": 64, "batch": 8, "budgets": [80, 160],
              "eval_every": {80: 5, 160: 10}, "samples": 2, "sample_tokens": 20},
    "tiny": {"documents": 40, "validation": 4, "report": 4, "chunk_tokens": 8, "batch": 2, "budgets": [4, 8],
             "eval_every": {4: 1, 8: 2}, "samples": 1, "sample_tokens": 4, "lengths": {"soft10": 2, "soft50": 3,
                                                                                        "hard": 2},
             "whole_words": False},  # the tiny model's vocabulary is mostly not whole words
}
LENGTHS = {"soft10": 10, "soft50": 50, "hard": 10}

logger = logging.getLogger("style")


# ------------------------------------------------------------------------------------------------ data
def documents(corpus: str, count: int) -> list[str]:
    """`count` seeded documents of a corpus (see the module docstring)."""
    if corpus == "reviews":
        with open(SHARED / "data" / "sst2" / "train.tsv", encoding="utf-8") as rows:
            reader = csv.reader(rows, delimiter="\t", quoting=csv.QUOTE_NONE)
            next(reader)
            texts = [row[0] for row in reader if row[0].rstrip().endswith((".", "!", "?"))]
    else:
        with open(SHARED / "data" / "ag_news" / "test.csv", encoding="utf-8") as rows:
            texts = [row[2].replace("\\", " ") for row in csv.reader(rows)]
    return random.Random(0).sample(texts, count)


def objectives(tokenizer, plan: dict) -> dict:
    """Each corpus' `CorpusObjective`: training, validation and report documents, seeded and disjoint."""
    from peft_softhard.app.corpus import corpus_objective, split_corpus

    built = {}
    for corpus in CORPORA:
        texts = documents(corpus, plan["documents"])
        splits = split_corpus(texts, plan["validation"] / len(texts), plan["report"] / len(texts), seed=0)
        built[corpus] = corpus_objective(splits, tokenizer, plan["chunk_tokens"])
    return built


# ------------------------------------------------------------------------------------------------ rows
PEZ = {"stages": ["tokens"], "method": "pez", "lr": 0.3, "optimizer": "adafactor", "weight_decay": 0.0}


def train_row(base, tokenizer, objective, method: str, corpus: str, budget: int, plan: dict, work: Path) -> dict:
    """Run (or continue) one trained row up to `budget` chunks; returns its record fields, with "prompt" (what
    goes before the text, for scoring) and "model" (the model to score with)."""
    from peft import get_peft_model

    from peft_softhard import DiscoveryConfig, SoftHardConfig, TrainConfig, run, train_prompt
    from peft_softhard.files.checkpoint import save_adapter_atomically

    steps, every = budget // plan["batch"], plan["eval_every"][budget]
    settings = {"steps": steps, "batch_size": plan["batch"], "eval_interval": every, "show_progress": False}
    if method == "lora":
        return train_lora_reference(base, objective, TrainConfig(**settings, lr=1e-3), work, seed=0)
    length = plan.get("lengths", LENGTHS)[method]
    instruction = tokenizer(INSTRUCTIONS[corpus], add_special_tokens=False)["input_ids"]
    filled = (instruction * math.ceil(length / len(instruction)))[:length]  # repeated to fill a longer prompt
    start = {"init": "token_ids", "init_token_ids": filled}
    if method == "hard":
        search = PEZ  # the search these rows were measured with (discover's corpus default: PEZ in front)
        whole_words = plan.get("whole_words", True)
        prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=length, mode="hard",
                                word_start_only=whole_words, round_trip_only=whole_words, **start)
        result = run(base, objective, DiscoveryConfig(**search, **settings), prompt, tokenizer,
                     checkpoint_dir=str(work / "checkpoint"), checkpoint_interval=every, resume=True)
        save_adapter_atomically(result.to_peft_model(base), work / "best")  # for the samples
        return {"prompt": torch.tensor(result.token_ids, dtype=torch.long), "text": result.text,
                "validation": result.best_score, "best_step": result.best_step, "steps": result.steps,
                "seconds": result.seconds}
    torch.manual_seed(0)
    model = get_peft_model(base, SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=length, mode="soft",
                                                **start))
    result = train_prompt(model, objective, TrainConfig(**settings, checkpoint_interval=every), work, resume=True)
    return {"prompt": model.prompt_encoder["default"].prompt_embeddings().detach(), "validation": result.best_score,
            "best_step": result.best_step, "steps": result.steps, "seconds": result.seconds}


def perplexities(model, built: dict, prompt: torch.Tensor) -> dict[str, float]:
    """The report perplexity of every corpus after `prompt`."""
    return {corpus: round(objective.perplexity(model, prompt, "eval"), 3) for corpus, objective in built.items()}


def run_stage(base, tokenizer, built: dict, corpus: str, method: str, budget: int, plan: dict, work: Path) -> dict:
    from peft_softhard.optimization.loop import frozen

    started = time.time()
    empty = torch.tensor([], dtype=torch.long)
    if method == "none":
        out = {"prompt": empty, "steps": 0, "seconds": 0.0}
    elif method == "instruction":
        out = {"prompt": torch.tensor(tokenizer(INSTRUCTIONS[corpus], add_special_tokens=False)["input_ids"]),
               "steps": 0, "seconds": 0.0, "text": INSTRUCTIONS[corpus]}
    else:
        out = train_row(base, tokenizer, built[corpus], method, corpus, budget, plan, work / "runs" /
                        f"{corpus}-{method}")
    model = out.pop("model", base)
    with frozen(model):
        scored = perplexities(model, built, out.pop("prompt"))
    if method == "lora":
        model.unload()
    validation = out.pop("validation", None)
    return {"corpus": corpus, "method": method, "budget": budget, "examples_seen": out["steps"] * plan["batch"],
            **out, "validation_perplexity": None if validation is None else round(math.exp(-validation), 3),
            "report_perplexity": scored[corpus], "other_corpus_perplexity": scored[other(corpus)],
            "stage_seconds": round(time.time() - started, 1)}


def other(corpus: str) -> str:
    return CORPORA[1 - CORPORA.index(corpus)]


def stages(plan: dict) -> list[tuple[str, str, int]]:
    out = [(corpus, method, 0) for corpus in CORPORA for method in ("none", "instruction")]
    return out + [(corpus, method, budget) for corpus in CORPORA for budget in plan["budgets"] for method in TRAINED]


def samples(base, tokenizer, plan: dict, work: Path) -> dict:
    """Generations from fixed opening lines: no prompt, and each corpus' 10-token soft prompt and hard prompt."""
    from peft import PeftModel

    from peft_softhard.app.corpus import sample_generations

    count, tokens = plan["samples"], plan["sample_tokens"]
    out = {"no prompt": sample_generations(base, tokenizer, count, max_new_tokens=tokens)}
    for corpus in CORPORA:
        for method in ("soft10", "hard"):
            folder = work / "runs" / f"{corpus}-{method}" / "best"
            model = PeftModel.from_pretrained(base, str(folder))
            out[f"{corpus} {method}"] = sample_generations(model, tokenizer, count, max_new_tokens=tokens)
            base = strip_adapters(model)
    return out


# ------------------------------------------------------------------------------------------------ report
LABELS = {"none": "no prompt", "instruction": "the instruction as text", "soft10": "soft prompt, 10 tokens",
          "soft50": "soft prompt, 50 tokens", "hard": "hard prompt, 10 tokens (discover)", "lora": "LoRA r=8"}


def markdown(records: dict, plan: dict, sampled: dict | None) -> str:
    lines = []
    for corpus in CORPORA:
        none = records.get(f"{corpus}-none-0", {}).get("report_perplexity")
        lines += [f"**{corpus}**: report perplexity (validation perplexity that chose the step; seconds of the "
                  "run up to that budget); lower is better", "",
                  "| row | " + " | ".join(f"{b:,} chunks" for b in [0, *plan["budgets"]]) + " | on the other corpus |",
                  "|---|" + "---|" * (len(plan["budgets"]) + 2)]
        for method, label in LABELS.items():
            cells, last = [], None
            for budget in [0, *plan["budgets"]]:
                record = records.get(f"{corpus}-{method}-{budget}")
                last = record or last
                cells.append("—" if record is None else f"{record['report_perplexity']:.2f}" + (
                    "" if record["validation_perplexity"] is None else
                    f" ({record['validation_perplexity']:.2f}; {record['seconds']:.0f} s)"))
            if last is not None:
                lines.append(f"| {label} | " + " | ".join(cells) + f" | {last['other_corpus_perplexity']:.2f} |")
        lines += ["", f"(no prompt on this corpus: {none})", ""]
    if sampled:
        lines += ["**Samples** (fixed opening lines, sampled with a fixed seed):", ""]
        for name, texts in sampled.items():
            lines += [f"- {name}: " + " / ".join(f"`{text!r}`" for text in texts)]
    return "\n".join(lines)


def main() -> None:
    options = parser(__doc__.split("\n\n")[0], RESULTS, "small corpora and budgets (minutes)")
    options.add_argument("--work-dir", default=str(RUN_STATE / "style"), help="records and checkpoints (resumable)")
    args = options.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    checkpoint_on_kill()
    name = plan_name(args)
    plan, started = PLANS[name], time.time()
    work = Path(args.work_dir) / name
    records = finished_records(work)
    base, tokenizer = load(args.tiny)
    built = objectives(tokenizer, plan)
    for corpus, method, budget in stages(plan):
        key = f"{corpus}-{method}-{budget}"
        if key in records:
            continue
        logger.info("stage %s", key)
        records[key] = run_stage(base, tokenizer, built, corpus, method, budget, plan, work)
        base = strip_adapters(base)
        (work / "records" / f"{key}.json").write_text(json.dumps(records[key], indent=1))
    sampled = samples(base, tokenizer, plan, work)
    report = markdown(records, plan, sampled)
    print(report)
    output = Path(args.output)
    output.with_suffix(".md").write_text(report + "\n")
    write_results(output, "style prompts: held-out perplexity on two corpora", started, plan_name=name, plan=plan,
                  records=records, samples=sampled,
                  helps_own_corpus_more={key: r["report_perplexity"] / records[f"{r['corpus']}-none-0"][
                      "report_perplexity"] < r["other_corpus_perplexity"] / records[f"{other(r['corpus'])}-none-0"][
                      "report_perplexity"] for key, r in records.items() if r["method"] != "none"},
                  seconds_of_all_stages=round(sum(r["stage_seconds"] for r in records.values()), 1))


if __name__ == "__main__":
    main()
