"""Quality: which prompt method adapts frozen SmolLM2-135M best, for the same training budget.

Every row goes through the same task code and the same evaluation: a `ClassificationObjective` with the
task's manual template (`Review: {text}\\nSentiment:` with " negative"/" positive" for SST-2, `Article:
{text}\\nTopic:` with four topic words for AG News) and the prompt in front of it.
- manual: the template alone (zero-shot);
- stock PROMPT_TUNING (TEXT init, SAMPLE_VOCAB init): peft's own prompt embedding, trained by the loop below;
- soft: our SOFTHARD soft prompt (TEXT init, the same text), trained by `train_prompt`;
- PEZ, PEZ + fluency, projected SGD: `discovery.run`, hard prompts of whole-word tokens that round-trip;
- GCG: `discovery.run(method="gcg")` for the same search wall time as PEZ with the same seed (not the same
  examples: a GCG step scores many candidates);
- projection: each trained soft prompt read back as its nearest tokens (waywardness: soft next to projected);
- LoRA r=8 on the same frozen model: an upper reference.
Every trained method of a task sees the same number of training examples (steps x batch; AG News, whose
rows are three times as long, half as many as SST-2), keeps its best step by accuracy on held-out training
rows (200 in the full run), and is scored once on the evaluation rows: SST-2's full dev set, and a fixed,
seeded, class-balanced subset of AG News' official test set. MiniLM with a SEQ_CLS head (the head trained
with the prompt) gives a soft-prompt row for an encoder. A length sweep runs soft and PEZ at
1, 5, 10, 20 tokens; soft and stock TEXT also run once at the issue's reference budget (200 steps of 16).

    python benchmarks/quality.py            # SmolLM2, everything: about 3 hours on 2 cores
    python benchmarks/quality.py --quick    # smaller subsets, one seed: < 10 min
    python benchmarks/quality.py --tiny     # a tiny random GPT-2 (the test suite's smoke run)

Each finished row is written to --work-dir/records/ at once, so an interrupted run continues with the rows
it has not done (`--report-only` writes the report from the rows done so far). Writes
benchmarks/results/quality.json, a markdown report next to it, and PNG plots in docs/images/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path

import torch
from reporting import write_results
from subjects import SHARED, load, parser, plan_name, strip_adapters

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "quality.json"
IMAGES = HERE.parent / "docs" / "images"
INIT_TEXTS = {
    "sst2": "Classify the sentiment of this movie review as positive or negative.",
    "ag_news": "Classify the topic of this news article: politics, sports, business or technology.",
}
MAIN_METHODS = ["soft", "pez", "stock_text"]  # run with every seed; a soft row also scores its projection
SINGLE_METHODS = ["stock_vocab", "psgd", "gcg", "pez_fluency", "lora"]  # run with the first seed
LABELS = {
    "manual": "manual prompt (zero-shot)", "stock_text": "stock peft PROMPT_TUNING, TEXT init",
    "stock_vocab": "stock peft PROMPT_TUNING, SAMPLE_VOCAB init", "soft": "our soft prompt (TEXT init)",
    "pez": "our PEZ hard prompt", "pez_fluency": "PEZ + fluency", "psgd": "projected SGD",
    "gcg": "GCG (PEZ's wall time)", "projection": "projection of our soft prompt", "lora": "LoRA r=8 (reference)",
    "minilm_soft": "MiniLM SEQ_CLS: our soft prompt + head",
}
PLANS = {
    "full": {"steps": 100, "ag_steps": 50, "batch": 8, "lr": 3e-3, "pez_lr": 0.1, "lora_lr": 1e-3, "eval_every": 25,
             "gcg_eval_every": 2, "gcg_candidates": 16, "train_rows": 1000, "selection_rows": 200,
             "eval_rows": {"sst2": None, "ag_news": 2000}, "seeds": [0, 1, 2], "length": 10,
             "sweep": [1, 5, 20], "ag_methods": ["manual", "soft", "pez", "stock_text"],
             "reference_budget": {"steps": 200, "batch": 16, "eval_every": 50}},
    "quick": {"steps": 12, "ag_steps": 6, "batch": 8, "lr": 3e-3, "pez_lr": 0.1, "lora_lr": 1e-3, "eval_every": 6,
              "gcg_eval_every": 1, "gcg_candidates": 16, "train_rows": 200, "selection_rows": 32,
              "eval_rows": {"sst2": 100, "ag_news": 100}, "seeds": [0], "length": 10,
              "sweep": [], "ag_methods": ["manual", "soft", "pez"]},
    "tiny": {"steps": 2, "ag_steps": 2, "batch": 4, "lr": 3e-3, "pez_lr": 0.1, "lora_lr": 1e-3, "eval_every": 1,
             "gcg_eval_every": 1, "gcg_candidates": 4, "train_rows": 12, "selection_rows": 8,
             "eval_rows": {"sst2": 16, "ag_news": 16}, "seeds": [0, 1], "length": 3,
             "sweep": [1], "ag_methods": ["manual", "soft"],
             "reference_budget": {"steps": 3, "batch": 4, "eval_every": 3}},
}

logger = logging.getLogger("quality")


# ------------------------------------------------------------------------------------------------ data
def ag_news_test():
    """AG News' official test set (label, title, description; labels counted from 1) as a task split."""
    from peft_softhard.app.tasks import AG_NEWS, Source

    test = Source("ag_news/test.csv", column_names=["label", "title", "description"], label_offset=1)
    return dataclasses.replace(AG_NEWS, text_columns=["title", "description"], splits={"eval": test})


def task_of(task_name: str):
    from peft_softhard.app.tasks import AG_NEWS, SST2

    return SST2 if task_name == "sst2" else AG_NEWS


def splits(task_name: str, plan: dict) -> tuple[tuple[list, list], tuple[list, list], tuple[list, list]]:
    """(train, selection, evaluation) texts and labels: the training rows and the held-out training rows that
    pick the best step come from one seeded sample of the train split; the evaluation rows are fixed."""
    task, data = task_of(task_name), str(SHARED / "data")
    texts, labels = task.load("train", limit=plan["train_rows"] + plan["selection_rows"], seed=0, data_dir=data)
    split = plan["train_rows"]
    evaluation_task = task if task_name == "sst2" else ag_news_test()
    evaluation = evaluation_task.load("eval", limit=plan["eval_rows"][task_name], seed=0,
                                      balanced=task_name == "ag_news", data_dir=data)
    return (texts[:split], labels[:split]), (texts[split:], labels[split:]), evaluation


def objectives(task_name: str, tokenizer, plan: dict):
    """(training objective with held-out selection rows, evaluation objective) for a task."""
    from peft_softhard import ClassificationObjective

    task = task_of(task_name)
    train, selection, evaluation = splits(task_name, plan)
    common = {"template": task.manual_template, "label_words": task.label_words}
    return (ClassificationObjective(tokenizer, *train, held_out_texts=selection[0], held_out_labels=selection[1],
                                    **common),
            ClassificationObjective(tokenizer, train[0][:1], train[1][:1], held_out_texts=evaluation[0],
                                    held_out_labels=evaluation[1], **common))


def train_config(plan: dict, seed: int):
    """`train_prompt`'s settings for every trained soft prompt (one checkpoint, at the end)."""
    from peft_softhard.optimization.training import TrainConfig

    return TrainConfig(steps=plan["steps"], lr=plan["lr"], batch_size=plan["batch"], eval_interval=plan["eval_every"],
                       checkpoint_interval=plan["steps"], seed=seed, show_progress=False)


# ------------------------------------------------------------------------------------------------ methods
def fit(model, prompt_of, parameters, objective, plan: dict, seed: int, lr: float) -> dict:
    """`train_prompt`'s loop and strategy for models that are not SOFTHARD (stock peft, LoRA): AdamW, clipped
    gradients, the best step by held-out accuracy kept (no checkpoints)."""
    from peft_softhard.optimization.loop import frozen, optimize
    from peft_softhard.optimization.training import PromptTraining, TrainConfig

    config = TrainConfig(steps=plan["steps"], lr=lr, batch_size=plan["batch"], eval_interval=plan["eval_every"],
                         seed=seed, show_progress=False)
    named = {str(i): parameter for i, parameter in enumerate(parameters)}

    def score(prompt):
        with frozen(model), torch.no_grad():
            return objective.score(model, prompt)

    state, strategy = optimize(lambda restart: PromptTraining(model, objective, named, prompt_of, config), objective,
                               config, score)
    strategy.load_tensors(state.best.tensors)
    return {"selection_scores": state.scores}


def train_stock(base, tokenizer, objective, plan, seed, length, init: str, init_text: str):
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    torch.manual_seed(seed)
    extra = {"prompt_tuning_init_text": init_text, "tokenizer_name_or_path": tokenizer.name_or_path} \
        if init == "TEXT" else {}
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=length,
                                prompt_tuning_init=PromptTuningInit[init], **extra)
    model = get_peft_model(base, config)
    encoder, tokens = model.prompt_encoder["default"], model.prompt_tokens["default"]
    record = fit(base, lambda: encoder(tokens), list(encoder.parameters()), objective, plan, seed, plan["lr"])
    return model, encoder(tokens).detach(), record


def train_lora(base, objective, plan, seed):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0))
    empty = base.get_input_embeddings().weight[:0].detach()
    parameters = [p for p in model.parameters() if p.requires_grad]
    record = fit(model, lambda: empty, parameters, objective, plan, seed, plan["lora_lr"])
    record["trainable_parameters"] = sum(p.numel() for p in parameters)
    return model, empty, record


def train_soft(base, tokenizer, objective, plan, seed, length, init_text, work: Path):
    from peft import get_peft_model

    from peft_softhard import SoftHardConfig
    from peft_softhard.optimization.training import train_prompt

    torch.manual_seed(seed)
    text_ids = tokenizer(init_text, add_special_tokens=False)["input_ids"]
    init_ids = (text_ids * length)[:length]  # peft's TEXT init: the text's tokens, cut or repeated to the length
    config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=length, mode="soft", init="token_ids",
                            init_token_ids=init_ids)
    model = get_peft_model(base, config)
    result = train_prompt(model, objective, train_config(plan, seed), work)
    return model, model.prompt_encoder["default"].prompt_embeddings().detach(), \
        {"selection_scores": result.score_history}


def search_hard(base, tokenizer, objective, plan, seed, length, method, tiny, max_seconds=None, work=None):
    from peft_softhard import DiscoveryConfig, SoftHardConfig, run

    fluency = 0.1 if method == "pez_fluency" else 0.0
    gcg = method == "gcg"
    config = DiscoveryConfig(
        method="pez" if method == "pez_fluency" else method, lr=plan["pez_lr"], batch_size=plan["batch"],
        steps=100_000 if gcg else plan["steps"], max_seconds=max_seconds, seed=seed, fluency_weight=fluency,
        eval_interval=plan["gcg_eval_every"] if gcg else plan["eval_every"], gcg_candidates=plan["gcg_candidates"],
        show_progress=False)
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=length, mode="hard", init="vocab",
                            word_start_only=not tiny, round_trip_only=not tiny)
    torch.manual_seed(seed)
    result = run(base, objective, config, prompt, tokenizer, checkpoint_dir=str(work / "checkpoint"), resume=True)
    return result


# ------------------------------------------------------------------------------------------------ rows
def run_row(key: dict, base, tokenizer, plan: dict, work: Path, tiny: bool, records: dict) -> list[dict]:
    """Train (if the method trains) and evaluate one row; returns its record (a soft row: and its projection's)."""
    task, method, length, seed = key["task"], key["method"], key["length"], key["seed"]
    if task == "ag_news":  # rows three times as long as SST-2's: a smaller budget, the same for every method
        plan = {**plan, "steps": plan["ag_steps"], "eval_every": max(1, plan["ag_steps"] // 2)}
    if key.get("budget") == "reference":  # the stock peft reference run: 200 steps of 16
        plan = {**plan, **plan["reference_budget"]}
    train, evaluation = objectives(task, tokenizer, plan)
    row_work = work / "runs" / record_name(key)
    record: dict = {}
    started = time.time()
    model = None
    if method == "manual":
        prompt = base.get_input_embeddings().weight[:0].detach()
    elif method in ("stock_text", "stock_vocab"):
        init = "TEXT" if method == "stock_text" else "SAMPLE_VOCAB"
        model, prompt, record = train_stock(base, tokenizer, train, plan, seed, length, init, INIT_TEXTS[task])
    elif method == "lora":
        model, prompt, record = train_lora(base, train, plan, seed)
    elif method == "soft":
        model, prompt, record = train_soft(base, tokenizer, train, plan, seed, length, INIT_TEXTS[task], row_work)
    else:  # pez, pez_fluency, psgd, gcg
        max_seconds = None
        if method == "gcg":
            pez = records.get(record_name({**key, "method": "pez"}))
            max_seconds = pez["search_seconds"] if pez else None
            if max_seconds is None:
                raise RuntimeError("GCG runs for PEZ's wall time: run the PEZ row of the same seed first.")
        result = search_hard(base, tokenizer, train, plan, seed, length, method, tiny, max_seconds, row_work)
        prompt = torch.tensor(result.token_ids)
        record = {"text": result.text, "round_trips": result.round_trips, "perplexity": result.perplexity,
                  "steps_taken": result.steps, "search_seconds": round(result.score_seconds[-1], 1),
                  "selection_scores": result.score_history, "score_seconds": result.score_seconds}
    train_seconds = time.time() - started
    started = time.time()
    scoring_model = model if method == "lora" else base
    accuracy = evaluation.accuracy(scoring_model, prompt)
    steps = 0 if method == "manual" else record.get("steps_taken") or plan["steps"]
    record.update(key, accuracy=round(accuracy, 4), train_seconds=round(train_seconds, 1),
                  eval_seconds=round(time.time() - started, 1), eval_rows=len(evaluation.labels()),
                  examples_seen=steps * plan["batch"])
    if method == "lora":
        model.unload()  # LoRA wraps the base model's layers: take the wrappers out again
    if method != "soft" or length != plan["length"]:  # waywardness is read at the main length only
        return [record]
    from peft_softhard.reading import project_prompt

    started = time.time()
    reading = project_prompt(model, tokenizer)
    projected = evaluation.accuracy(base, torch.tensor(reading.token_ids))
    projection = {**key, "method": "projection", "accuracy": round(projected, 4), "soft_accuracy": record["accuracy"],
                  "text": reading.text, "mean_distance": round(reading.mean_distance, 4), "train_seconds": 0.0,
                  "eval_seconds": round(time.time() - started, 1), "eval_rows": record["eval_rows"],
                  "examples_seen": record["examples_seen"]}
    return [record, projection]


def run_minilm_row(key: dict, plan: dict, work: Path) -> list[dict]:
    """Our soft prompt on MiniLM with a SEQ_CLS head (the head trained with it) on SST-2."""
    from peft import get_peft_model

    from peft_softhard import SoftHardConfig
    from peft_softhard.app.models import load_model
    from peft_softhard.objectives import SequenceClassificationObjective
    from peft_softhard.optimization.training import train_prompt

    model, tokenizer = load_model("minilm", task_type="SEQ_CLS", num_labels=2)  # small enough for smoke runs
    (texts, labels), selection, (eval_texts, eval_labels) = splits("sst2", plan)
    train = SequenceClassificationObjective(tokenizer, texts, labels, num_labels=2, held_out_texts=selection[0],
                                            held_out_labels=selection[1])
    evaluation = SequenceClassificationObjective(tokenizer, texts[:1], labels[:1], num_labels=2,
                                                 held_out_texts=eval_texts, held_out_labels=eval_labels)
    torch.manual_seed(key["seed"])
    config = SoftHardConfig(task_type="SEQ_CLS", num_virtual_tokens=key["length"], mode="soft", init="vocab")
    peft_model = get_peft_model(model, config)
    started = time.time()
    result = train_prompt(peft_model, train, train_config(plan, key["seed"]), work / "runs" / record_name(key))
    train_seconds = time.time() - started
    started = time.time()
    prompt = peft_model.prompt_encoder["default"].prompt_embeddings().detach()
    # the evaluation objective runs the base model with the adapter's trained head active
    with torch.no_grad():
        accuracy = evaluation.score(peft_model.get_base_model(), prompt)
    return [{**key, "accuracy": round(accuracy, 4), "train_seconds": round(train_seconds, 1),
             "eval_seconds": round(time.time() - started, 1), "eval_rows": len(eval_labels),
             "examples_seen": plan["steps"] * plan["batch"], "selection_scores": result.score_history}]


def plan_rows(plan: dict) -> list[dict]:
    """Every row, most important first (a run cut short has the main comparison)."""
    length, seeds = plan["length"], plan["seeds"]
    rows = [{"task": "sst2", "method": "manual", "length": 0, "seed": 0}]
    for seed in seeds:
        rows += [{"task": "sst2", "method": m, "length": length, "seed": seed} for m in MAIN_METHODS]
    rows += [{"task": "sst2", "method": m, "length": length, "seed": seeds[0]} for m in SINGLE_METHODS]
    rows += [{"task": "sst2", "method": "minilm_soft", "length": length, "seed": s} for s in seeds]
    if "reference_budget" in plan:
        rows += [{"task": "sst2", "method": m, "length": length, "seed": seeds[0], "budget": "reference"}
                 for m in ("soft", "stock_text")]
    rows += [{"task": "ag_news", "method": m, "length": 0 if m == "manual" else length, "seed": seeds[0]}
             for m in plan["ag_methods"]]
    rows += [{"task": "sst2", "method": m, "length": n, "seed": seeds[0]}
             for n in plan["sweep"] for m in ("soft", "pez")]
    return rows


def record_name(key: dict) -> str:
    budget = f"-{key['budget']}-budget" if key.get("budget") else ""
    return f"{key['task']}-{key['method']}-{key['length']}-seed{key['seed']}{budget}"


# ------------------------------------------------------------------------------------------------ report
def summarise(records: dict, plan: dict) -> dict:
    """Mean and std over seeds for each (task, method, length, budget)."""
    groups: dict[tuple, list[dict]] = {}
    for record in records.values():
        key = (record["task"], record["method"], record["length"], record.get("budget"))
        groups.setdefault(key, []).append(record)
    summary = []
    for (task, method, length, budget), members in groups.items():
        accuracies = [m["accuracy"] for m in members]
        summary.append({
            "task": task, "method": method, "length": length, "budget": budget,
            "seeds": sorted(m["seed"] for m in members),
            "accuracy_mean": round(statistics.mean(accuracies), 4),
            "accuracy_std": round(statistics.stdev(accuracies), 4) if len(accuracies) > 1 else None,
            "train_seconds_mean": round(statistics.mean(m["train_seconds"] for m in members), 1),
            "examples_seen": members[0]["examples_seen"], "eval_rows": members[0]["eval_rows"],
        })
    order = {m: i for i, m in enumerate(["manual", "soft", "projection", "pez", "stock_text", *SINGLE_METHODS,
                                         "minilm_soft"])}
    summary.sort(key=lambda s: (s["task"] != "sst2", bool(s["budget"]),
                                s["length"] != plan["length"] and s["method"] != "manual",
                                s["length"], order.get(s["method"], 99)))
    return {"rows": summary}


def markdown(records: dict, summary: dict, plan: dict, missing: list[str]) -> str:
    def cell(s):
        std = f" ± {100 * s['accuracy_std']:.1f}" if s["accuracy_std"] is not None else ""
        return f"{100 * s['accuracy_mean']:.1f}{std}"

    lines = []
    reference = [s for s in summary["rows"] if s["budget"]]
    records = {name: r for name, r in records.items() if not r.get("budget")}  # the rest is at the common budget
    for task, title in (("sst2", "SST-2 (dev set)"), ("ag_news", "AG News (class-balanced test subset)")):
        rows = [s for s in summary["rows"] if s["task"] == task and s["length"] in (0, plan["length"])
                and not s["budget"]]
        if not rows:
            continue
        lines += [f"**{title}**, {rows[0]['eval_rows']} rows, prompts of {plan['length']} tokens:", "",
                  "| method | accuracy % (mean ± std) | seeds | examples seen | train s (mean) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {LABELS[s['method']]} | {cell(s)} | {len(s['seeds'])} | {s['examples_seen']} | "
                  f"{s['train_seconds_mean']} |" for s in rows]
        lines.append("")
    if reference:
        lines += [f"**SST-2 at the issue's reference budget** (batch {plan['reference_budget']['batch']}, "
                  f"{plan['reference_budget']['steps']} steps), first seed:", "",
                  "| method | accuracy % | examples seen | train s |", "|---|---|---|---|"]
        lines += [f"| {LABELS[s['method']]} | {cell(s)} | {s['examples_seen']} | {s['train_seconds_mean']} |"
                  for s in reference]
        lines.append("")
    sweep = [s for s in summary["rows"] if s["task"] == "sst2" and s["method"] in ("soft", "pez") and not s["budget"]]
    if len({s["length"] for s in sweep}) > 1:
        lengths = sorted({s["length"] for s in sweep})
        lines += ["**Prompt length** (SST-2 dev accuracy %, first seed):", "",
                  "| method | " + " | ".join(f"n = {n}" for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
        for method in ("soft", "pez"):
            by_length = {r["length"]: r["accuracy"] for r in records.values() if r["task"] == "sst2"
                         and r["method"] == method and r["seed"] == plan["seeds"][0]}
            lines.append(f"| {LABELS[method]} | " + " | ".join(
                f"{100 * by_length[n]:.1f}" if n in by_length else "—" for n in lengths) + " |")
        lines.append("")
    projections = sorted((r for r in records.values() if r["method"] == "projection" and r["length"] == plan["length"]),
                         key=record_name)
    if projections:
        lines += ["**Waywardness** (a soft prompt and its nearest-token reading, same evaluation):", "",
                  "| task, seed | soft % | projected % | projected text |", "|---|---|---|---|"]
        lines += [f"| {r['task']}, {r['seed']} | {fmt(r.get('soft_accuracy'))} | {fmt(r['accuracy'])} | "
                  f"`{r['text']!r}` |" for r in projections]
        lines.append("")
    hard = sorted((r for r in records.values() if r["method"] in ("pez", "pez_fluency", "psgd", "gcg")),
                  key=record_name)
    if hard:
        lines += ["**Discovered hard prompts:**", "", "| task | method | tokens | seed | accuracy % | steps | "
                  "search s | perplexity | text |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['method']} | {r['length']} | {r['seed']} | {fmt(r['accuracy'])} | "
                  f"{r['steps_taken']} | {r['search_seconds']} | {r['perplexity'] and round(r['perplexity'])} | "
                  f"`{r['text']!r}` |" for r in hard]
        lines.append("")
    if missing:
        lines.append(f"Not run yet: {', '.join(missing)}.")
    return "\n".join(lines)


def fmt(accuracy) -> str:
    return "—" if accuracy is None else f"{100 * accuracy:.1f}"


def plots(records: dict, plan: dict, images: Path, suffix: str) -> list[str]:
    """Accuracy against search seconds for PEZ / projected SGD / GCG, and accuracy against prompt length."""
    from peft_softhard.app.plots import plot_accuracy_vs_length, plot_score_vs_seconds

    written = []
    seed, length = plan["seeds"][0], plan["length"]
    records = {name: r for name, r in records.items() if not r.get("budget")}
    curves = {m: records.get(record_name({"task": "sst2", "method": m, "length": length, "seed": seed}))
              for m in ("pez", "psgd", "gcg")}
    curves = {LABELS[m]: (r["score_seconds"], [score for _, score in r["selection_scores"]])
              for m, r in curves.items() if r}
    if curves:
        written.append(str(plot_score_vs_seconds(curves, images / f"quality_wall_clock{suffix}.png",
                                                 title="SST-2, SmolLM2-135M: accuracy vs wall clock")))
    points = {LABELS[m]: [(r["length"], r["accuracy"]) for r in records.values()
                          if r["task"] == "sst2" and r["method"] == m and r["seed"] == seed] for m in ("soft", "pez")}
    points = {label: values for label, values in points.items() if len(values) > 1}
    if points:
        written.append(str(plot_accuracy_vs_length(points, images / f"quality_length{suffix}.png")))
    return written


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    options = parser(__doc__, RESULTS, quick_help="smaller subsets, one seed: < 10 min on SmolLM2")
    options.add_argument("--work-dir", default=str(HERE.parent / "out" / "benchmarks" / "quality"),
                         help="finished rows (resumable)")
    options.add_argument("--images", default=str(IMAGES), help="where the PNG plots go")
    options.add_argument("--report-only", action="store_true", help="write the report from the rows done so far")
    args = options.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    name = plan_name(args)
    plan, started = PLANS[name], time.time()
    work = Path(args.work_dir) / name
    (work / "records").mkdir(parents=True, exist_ok=True)
    records = {p.stem: json.loads(p.read_text()) for p in sorted((work / "records").glob("*.json"))}
    keys = plan_rows(plan)
    if not args.report_only:
        base, tokenizer = load(args.tiny)
        for key in keys:
            name_of_row = record_name(key)
            if name_of_row in records:
                continue
            logger.info("row %s", name_of_row)
            if key["method"] == "minilm_soft":
                done = run_minilm_row(key, plan, work)
            else:
                done = run_row(key, base, tokenizer, plan, work, args.tiny, records)
                base = strip_adapters(base)
            for record in done:
                logger.info("row %s: accuracy %.4f (train %.0f s, eval %.0f s)", record_name(record),
                            record["accuracy"], record["train_seconds"], record["eval_seconds"])
                records[record_name(record)] = record
                (work / "records" / f"{record_name(record)}.json").write_text(json.dumps(record, indent=1))
    missing = [record_name(k) for k in keys if record_name(k) not in records]
    summary = summarise(records, plan)
    report = markdown(records, summary, plan, missing)
    print(report)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(report + "\n")
    images = plots(records, plan, Path(args.images), "" if name == "full" else f"_{name}")
    total = sum(r["train_seconds"] + r["eval_seconds"] for r in records.values())
    write_results(output, "prompt-method quality on SST-2 and AG News", started, plan_name=name, plan=plan,
                  summary=summary["rows"], records=records, missing=missing, images=images,
                  seconds_of_all_rows=round(total, 1))


if __name__ == "__main__":
    main()
