"""Quality: which prompt method adapts frozen SmolLM2-135M best, against examples seen and wall-clock seconds.

Rows (10-token prompts; every trained row chooses its step on validation rows carved from the train split,
and the eval split, which chose nothing, is scored once per budget by the chosen prompt):
- template: the task's own template alone (`{text} . It was`; AG News `{text} It was about`), zero-shot;
- manual: the hand-written template alone (`Review: {text}\\nSentiment:`, `Article: {text}\\nTopic:`);
- soft: our soft prompt with `softhard train`'s defaults (AdamW 3e-2, starting from the task's instruction);
- discover: PEZ in front (Adafactor 0.3, from the instruction; whole-word tokens that round-trip, so that the
  prompt is its text): `softhard discover`'s default search until the whole-prompt search;
- whole, labels, grow, edits: `softhard discover`'s default now (label words -> tokens grown at the end ->
  template edits, from the manual template; the budget shared a fifth each to labels and edits), and each of its
  search spaces alone at the same budget; whole on SST-2 (seeds 0-2 at 3,200), then AG News, then each space
  alone at 800 on both tasks (the whole search's stage table shows each space at 3,200);
- pez_reference: the PEZ reference preset (Adafactor 0.3, label-word init, the task's own template, as the
  PEZ language-model code), here with this benchmark's validation rows and budgets;
- gcg: GCG (32 candidates of one swap, a buffer of 4) from the instruction, for discover's wall time;
- lora: LoRA r=8 on the same frozen model (AdamW 1e-3), an upper reference;
- refine: PEZ followed by exact refinement: discover's chosen prompt at the same seed and budget, then GCG's
  swaps (32 candidates changing 2 positions each, a buffer of the 4 best prompts) for as many search seconds
  again as discover took; its examples and seconds count discover's too;
- distill: soft-to-hard distillation: PEZ (discover's settings) on KL(the soft prompt's class distribution ||
  the hard prompt's) over training rows, from the soft prompt's vectors (its reading), the soft prompt being
  the soft row's chosen prompt at the same seed and budget; its examples count the soft prompt's too.
Every prompt but pez_reference and the whole-prompt rows goes in front of the manual template. Budgets are examples
seen (steps x 16): 800 and 3,200 for every row (800 for a search space alone), 12,800 for soft and discover (SST-2,
second seed), 3 seeds at 3,200 for soft, discover and pez_reference on SST-2. A budget continues the previous one's
run (constant learning rates, so the 3,200 run passes through the 800 one): its number is the best prompt of the
steps up to that budget. Eval splits: SST-2's full dev set (872 rows); AG News' official test set, a seeded
class-balanced 2,000 rows. Each SST-2 hard prompt is also scored as text with the other template (transfer). The refine
and distill rows run after the rest, on the (task, seed, budget) of each plan's `extra` list (the seeds whose
discover and soft runs end at that budget).

    python benchmarks/quality.py            # everything: about 18 hours on 2 cores, resumable
    python benchmarks/quality.py --quick    # small subsets, one seed (minutes)
    python benchmarks/quality.py --tiny     # a tiny random GPT-2 (the test suite's smoke run)

Every finished (row, budget) is written to --work-dir/records/ at once and every run checkpoints, so a run
killed at any point continues where it was (`--report-only` writes the report from what is done). Stop it
with Ctrl-C or `kill` (the run in progress writes its checkpoint) and commit benchmarks/results/runs/quality/full
to carry it to another machine or sitting. Writes
benchmarks/results/quality.json, a markdown report next to it, and PNG plots in docs/images/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

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
    sst2_as_recorded,
    strip_adapters,
    train_lora_reference,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "quality.json"
IMAGES = HERE.parent / "docs" / "images"
LABELS = {
    "template": "task template alone (zero-shot)", "manual": "manual template alone (zero-shot)",
    "soft": "soft prompt (train defaults)", "whole": "hard: discover default (the whole prompt)",
    "labels": "hard: label words only", "grow": "hard: tokens grown at the end only",
    "edits": "hard: template edits only", "discover": "hard: PEZ in front (discover's default until 0.1)",
    "pez_reference": "hard: PEZ reference preset", "gcg": "hard: GCG, discover's wall time",
    "lora": "LoRA r=8 (reference)",
    "refine": "hard: discover + exact refinement (twice discover's time)",
    "distill": "hard: distilled from the soft prompt (KL; soft's examples too)",
}
# the placement rows (issue 32): a method with its prompt at another place in the manual template than in front,
# named method@placement (`DiscoveryConfig.placement`'s names): before the answer cue (`...\n{prompt} Sentiment:`)
# or at the end, right before the answer word (`...\nSentiment:{prompt}`)
PLACED = ("before_answer_cue", "end")
PLACED_METHODS = ("soft", "discover", "gcg")
PLACED_LABELS = {"soft": "soft prompt", "discover": "hard: PEZ", "gcg": "hard: GCG (PEZ's wall time)"}
LABELS.update({f"{method}@{placement}": f"{PLACED_LABELS[method]}, {placement.replace('_', ' ')}"
               for method in PLACED_METHODS for placement in PLACED})
# the whole-prompt rows: discover's default pipeline, and each of its search spaces alone (`DiscoveryConfig.stages`)
WHOLE = {"whole": ["label_words", "tokens", "template_edits"], "labels": ["label_words"], "grow": ["tokens"],
         "edits": ["template_edits"]}
STAGE_NAMES = {"label_words": "label words", "tokens": "tokens at the end", "template_edits": "template edits"}
HARD = ("discover", "pez_reference", "gcg", "refine", "distill", *WHOLE,
        *(f"{m}@{p}" for m in PLACED_METHODS[1:] for p in PLACED))
# discover's default until 0.1: PEZ in front of the template, Adafactor 0.3, from the task's instruction
PEZ_IN_FRONT = {"stages": ["tokens"], "placement": "prefix", "method": "pez", "lr": 0.3, "optimizer": "adafactor",
                "weight_decay": 0.0}
GCG = {"method": "gcg", "gcg_candidates": 32, "gcg_top_k": 64, "buffer_size": 4, "n_replace": 1}
REFINE = {"method": "gcg", "gcg_candidates": 32, "gcg_top_k": 64, "buffer_size": 4, "n_replace": 2}
PLANS = {
    # eval_every: steps between validation scores, for the stage that ends at each budget
    "full": {"batch": 16, "length": 10, "validation_rows": 300, "max_train": 12800, "budgets": [800, 3200],
             "long_budget": 12800, "seeds": [0, 1, 2], "eval_rows": {"sst2": None, "ag_news": 2000},
             "eval_every": {800: 25, 3200: 50, 12800: 200}, "gcg_eval_every": 5, "lora_lr": 1e-3,
             # (task, method, seed, budget): seeds 1-2 on SST-2, where discover ran alone (seed 0's seconds were
             # inflated by other jobs) and soft seed 2's run ends at 3,200 (seed 1's went on to 12,800)
             "extra": [("sst2", "refine", 1, 800), ("sst2", "refine", 1, 3200), ("sst2", "refine", 2, 3200),
                       ("sst2", "distill", 2, 3200), ("ag_news", "refine", 0, 800), ("ag_news", "refine", 0, 3200),
                       ("ag_news", "distill", 0, 3200)],
             "whole_eval_every": 8, "whole": {}},
    "quick": {"batch": 8, "length": 10, "validation_rows": 100, "max_train": 800, "budgets": [160],
              "long_budget": 320, "seeds": [0], "eval_rows": {"sst2": 200, "ag_news": 200},
              "eval_every": {160: 10, 320: 20}, "gcg_eval_every": 2, "lora_lr": 1e-3,
              "extra": [("sst2", "refine", 0, 160), ("sst2", "distill", 0, 320)], "whole_eval_every": 4,
              "whole": {}},
    "tiny": {"batch": 4, "length": 3, "validation_rows": 6, "max_train": 24, "budgets": [8, 16], "long_budget": 24,
             "seeds": [0, 1], "eval_rows": {"sst2": 16, "ag_news": 16}, "eval_every": {8: 1, 16: 2, 24: 2},
             "gcg_eval_every": 1, "lora_lr": 1e-3, "gcg": {"gcg_candidates": 4, "gcg_top_k": 4},
             "extra": [("sst2", "refine", 0, 16), ("sst2", "distill", 0, 16)], "whole_eval_every": 1,
             "whole": {"pool_size": 4, "race_steps": 1, "edit_candidates": 2, "gcg_candidates": 4},
             "whole_words": False},  # the tiny model's vocabulary is mostly not whole words
}

logger = logging.getLogger("quality")


# ------------------------------------------------------------------------------------------------ plan
@dataclasses.dataclass(frozen=True)
class Row:
    """One method on one task with one seed, run up to each of its budgets (examples seen) in turn."""

    task: str
    method: str
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.task}-{self.method}-seed{self.seed}"

    @property
    def kind(self) -> str:
        """The method without its placement ("soft@end": "soft")."""
        return self.method.split("@")[0]

    @property
    def placement(self) -> str:
        """Where the prompt goes in the template ("prefix": in front of it)."""
        return self.method.split("@")[1] if "@" in self.method else "prefix"

    def with_kind(self, kind: str) -> Row:
        """The row of another method at the same placement."""
        return dataclasses.replace(self, method=kind if self.placement == "prefix" else f"{kind}@{self.placement}")


def plan_stages(plan: dict) -> list[tuple[Row, int]]:
    """(row, budget) in the order they run, most important first, so that a run cut short has the main
    comparison; a row's budgets come in increasing order (each continues the one before)."""
    budgets, first, others = plan["budgets"], plan["seeds"][0], plan["seeds"][1:]
    stages: list[tuple[Row, int]] = []
    for task in ("sst2", "ag_news"):
        stages += [(Row(task, m), 0) for m in ("template", "manual")]
        for budget in budgets:  # gcg runs for discover's wall time at the same budget: after it
            stages += [(Row(task, m, first), budget) for m in ("soft", "discover", "gcg", "pez_reference", "lora")]
    stages += [(Row("sst2", m, seed), budget) for seed in others for budget in budgets
               for m in ("soft", "discover", "pez_reference")]
    # The long budget continues the second seed's runs: the first seed's checkpoints were lost
    # with a machine (before the run state was committed), and redoing their 3,200 examples costs two hours.
    long_seed = (others or [first])[0]
    stages += [(Row("sst2", m, long_seed), plan["long_budget"]) for m in ("soft", "discover")]
    stages += [(Row(task, method, seed), budget) for task, method, seed, budget in plan.get("extra", [])]
    # the whole-prompt searches (issue 30): discover's default first, SST-2 with its seeds, then AG News, then
    # each search space alone
    stages += [(Row("sst2", "whole", first), budget) for budget in budgets]
    stages += [(Row("sst2", "whole", seed), budgets[-1]) for seed in others]
    stages += [(Row("ag_news", "whole", first), budget) for budget in budgets]
    # each space alone at the smallest budget only: the default's stage table shows each space at 3,200 too, and
    # template edits alone at 3,200 would cost about five CPU-hours on the two tasks
    stages += [(Row(task, method, first), budgets[0]) for method in ("labels", "grow", "edits")
               for task in ("sst2", "ag_news")]
    # the placement rows (issue 32) at the smallest budget: soft on both tasks first, then PEZ, then GCG
    stages += [(Row(task, f"{method}@{placement}", first), budgets[0]) for method in PLACED_METHODS
               for task in ("sst2", "ag_news") for placement in PLACED]
    return stages


def record_name(row: Row, budget: int) -> str:
    return f"{row.name}-{budget}"


def run_name(row: Row, budget: int) -> str:
    """The run (folder) a stage continues: one per row, whose budgets follow each other, but refine starts
    afresh at each budget (from discover's prompt at that budget), and so do the whole-prompt searches (a
    pipeline's stages share its budget)."""
    return record_name(row, budget) if row.method == "refine" or row.method in WHOLE else row.name


# ------------------------------------------------------------------------------------------------ data
def task_of(name: str):
    """The task; SST-2 with the validation rows this run began with (`sst2_as_recorded`)."""
    from peft_softhard.app.tasks import AG_NEWS

    return sst2_as_recorded() if name == "sst2" else AG_NEWS


def task_data(name: str, plan: dict):
    """The task's `TaskData`: validation rows carved from the train split, the rest to train on (both seeded),
    and the eval split — for AG News its official test set, a seeded class-balanced subset."""
    from peft_softhard.app.tasks import Source, TaskData, load_task_data

    task, data_dir = task_of(name), str(SHARED / "data")
    eval_rows = plan["eval_rows"][name] if name == "sst2" else 16  # AG News: replaced by its test rows below
    data = load_task_data(task, plan["max_train"], eval_rows, 0, data_dir, plan["validation_rows"])
    if name == "sst2":
        return data
    test = Source("ag_news/test.csv", column_names=["label", "title", "description"], label_offset=1)
    test_task = dataclasses.replace(task, text_columns=["title", "description"], splits={"eval": test})
    evaluation = test_task.load("eval", plan["eval_rows"]["ag_news"], 0, balanced=True, data_dir=data_dir)
    return TaskData(data.train, data.validation, evaluation)


class Objectives:
    """Each task's objective with each of its two templates, built once (tokenizing thousands of rows)."""

    def __init__(self, tokenizer: Any, plan: dict) -> None:
        self.tokenizer, self.plan, self.cache = tokenizer, plan, {}

    def get(self, task_name: str, template: str, placement: str = "prefix"):
        """template: "manual" or "task"; placement: where in it the prompt goes (`templates.place_slot`)."""
        if (task_name, template, placement) not in self.cache:
            from peft_softhard.app.tasks import task_objective
            from peft_softhard.objectives.templates import place_slot

            if task_name not in self.cache:
                self.cache[task_name] = task_data(task_name, self.plan)
            task = task_of(task_name)
            chosen = task.manual_template if template == "manual" else task.template
            chosen = chosen if placement == "prefix" else place_slot(chosen, placement)
            self.cache[task_name, template, placement] = task_objective(task, self.cache[task_name], self.tokenizer,
                                                                        template=chosen)
        return self.cache[task_name, template, placement]


# ------------------------------------------------------------------------------------------------ methods
def stage_config(plan: dict, method: str, budget: int, seed: int) -> dict:
    """The loop's settings for the stage of a run that ends at `budget` examples."""
    steps = budget // plan["batch"]
    every = plan["gcg_eval_every"] if method in ("gcg", "refine") else plan["eval_every"][budget]
    return {"steps": steps, "batch_size": plan["batch"], "eval_interval": every, "seed": seed, "show_progress": False}


def train_soft(base, tokenizer, objective, row: Row, budget: int, plan: dict, work: Path) -> dict:
    from peft import get_peft_model

    from peft_softhard import SoftHardConfig, TrainConfig, train_prompt
    from peft_softhard.app.tasks import prompt_init

    torch.manual_seed(row.seed)
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=plan["length"], mode="soft",
                            **prompt_init(task_of(row.task), "manual", tokenizer, plan["length"]))
    model = get_peft_model(base, prompt)
    settings = stage_config(plan, "soft", budget, row.seed)
    config = TrainConfig(**settings, checkpoint_interval=settings["eval_interval"])
    result = train_prompt(model, objective, config, work, resume=True)  # leaves the best step's prompt in the model
    return {"prompt": model.prompt_encoder["default"].prompt_embeddings().detach(), "validation": result.best_score,
            "best_step": result.best_step, "steps": result.steps, "score_history": result.score_history,
            "search_seconds": result.score_seconds[-1], "seconds": result.seconds}


def search_hard(base, tokenizer, objective, row: Row, budget: int, plan: dict, work: Path,
                max_seconds: float | None = None, start: dict | None = None) -> dict:
    """`start`: where refine starts ({"token_ids": discover's prompt}) or whom distill imitates ({"vectors": the
    soft prompt}, also its start)."""
    from peft_softhard import DiscoveryConfig, DistillationObjective, SoftHardConfig, run
    from peft_softhard.app.cli import discover_defaults
    from peft_softhard.app.tasks import prompt_init

    if row.method in WHOLE:
        return search_whole(base, tokenizer, objective, row, budget, plan, work)
    settings = stage_config(plan, row.kind, budget, row.seed)
    if row.method == "pez_reference":
        config = DiscoveryConfig.from_preset("pez-reference", **settings)
        init = discover_defaults("pez-reference")["init"]  # the reference's own init, as `--preset` sets it
    else:
        search = dict(PEZ_IN_FRONT)
        if row.kind in ("gcg", "refine"):  # as many steps as fit in the given wall time
            search.update(GCG if row.kind == "gcg" else REFINE, **plan.get("gcg", {}))
            settings.update(steps=1_000_000, max_seconds=max_seconds)
        config, init = DiscoveryConfig(**search, **settings), "manual"
    init_fields = prompt_init(task_of(row.task), init, tokenizer, plan["length"])
    init_prompt = None
    if row.method == "refine":
        init_fields = {"init": "token_ids", "init_token_ids": start["token_ids"]}
    elif row.method == "distill":
        objective, init_prompt = DistillationObjective(objective, start["vectors"]), start["vectors"]
    whole_words = plan.get("whole_words", True)
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=plan["length"], mode="hard",
                            word_start_only=whole_words, round_trip_only=whole_words, **init_fields)
    result = run(base, objective, config, prompt, tokenizer, checkpoint_dir=str(work / "checkpoint"),
                 checkpoint_interval=settings["eval_interval"], resume=True, init_prompt=init_prompt)
    return {"prompt": torch.tensor(result.token_ids, dtype=torch.long), "token_ids": result.token_ids,
            "text": result.text,
            "round_trips": result.round_trips, "perplexity": result.perplexity, "validation": result.best_score,
            "best_step": result.best_step, "steps": result.steps, "score_history": result.score_history,
            "search_seconds": result.score_seconds[-1], "seconds": result.seconds}


def search_whole(base, tokenizer, objective, row: Row, budget: int, plan: dict, work: Path) -> dict:
    """discover's default search (or one of its search spaces) from the manual template, its `budget` examples
    shared by its stages as the default's steps are (label words and edits a fifth each, tokens the rest)."""
    from peft_softhard import DiscoveryConfig, run

    steps, stages = budget // plan["batch"], WHOLE[row.method]
    share = {"label_words": max(1, steps // 5), "template_edits": max(1, steps // 5)}
    share["tokens"] = steps - sum(share[s] for s in stages if s != "tokens") if "tokens" in stages else 0
    if len(stages) == 1:
        share[stages[0]] = steps
    config = DiscoveryConfig(stages=stages, steps=max(1, share["tokens"]), label_steps=share["label_words"],
                             edit_steps=share["template_edits"], batch_size=plan["batch"],
                             eval_interval=plan["whole_eval_every"], seed=row.seed, show_progress=False,
                             whole_words=plan.get("whole_words", True), **plan["whole"])
    result = run(base, objective, config, tokenizer=tokenizer, checkpoint_dir=str(work / "checkpoint"), resume=True)
    found = result.whole_prompt
    scoring, prompt = objective.for_prompt(found)
    return {"prompt": prompt, "scoring": scoring, "token_ids": result.token_ids, "text": found.filled(tokenizer),
            "template": found.template, "label_words": found.label_words, "round_trips": result.round_trips,
            "perplexity": result.perplexity, "validation": result.best_score, "start_validation": result.start_score,
            "stages": [dataclasses.asdict(stage) for stage in result.stages], "best_step": result.best_step,
            "steps": result.steps, "score_history": result.score_history,
            "search_seconds": result.score_seconds[-1] if result.score_seconds else 0.0, "seconds": result.seconds}


def train_lora(base, objective, row: Row, budget: int, plan: dict, work: Path) -> dict:
    from peft_softhard import TrainConfig

    config = TrainConfig(**stage_config(plan, "lora", budget, row.seed), lr=plan["lora_lr"])
    return train_lora_reference(base, objective, config, work, row.seed)


def soft_prompt_at(run_dir: Path, budget: int, plan: dict, record: dict | None) -> torch.Tensor:
    """[n, d] the soft row's chosen prompt at `budget`: its run's best adapter, if the run ended at that budget."""
    from peft_softhard.files import read_prompt_vectors

    history = run_dir / "history.json"
    ended = json.loads(history.read_text())["steps"] if history.is_file() else None
    if record is None or ended != budget // plan["batch"]:
        raise RuntimeError(f"distill imitates the soft prompt chosen at {budget} examples: {run_dir} must hold a "
                           f"soft run that ended there (it ended at step {ended}); pick a seed whose soft run did.")
    return read_prompt_vectors(run_dir / "best")


def template_of(method: str) -> str:
    """The template a method's prompt goes in front of: the task's own for the reference preset (and the
    zero-shot row of that template), the manual one for everything else."""
    return "task" if method in ("template", "pez_reference") else "manual"


def run_stage(row: Row, budget: int, base, tokenizer, objectives: Objectives, plan: dict, work: Path,
              records: dict) -> dict:
    """Run (or continue) `row` up to `budget` examples and score its chosen prompt on the eval split."""
    from peft_softhard import evaluate_prompt

    template = template_of(row.method)
    objective = objectives.get(row.task, template, row.placement)
    run_dir = work / "runs" / run_name(row, budget)
    if row.method in ("template", "manual"):
        empty = torch.tensor([], dtype=torch.long)
        out = {"prompt": empty, "validation": evaluate_prompt(base, objective, empty, "held_out")["accuracy"],
               "steps": 0, "search_seconds": 0.0, "seconds": 0.0}
    elif row.kind == "soft":
        out = train_soft(base, tokenizer, objective, row, budget, plan, run_dir)
    elif row.method == "lora":
        out = train_lora(base, objective, row, budget, plan, run_dir)
    else:
        max_seconds, start, before = None, None, None
        if row.kind in ("gcg", "refine"):
            before = records.get(record_name(row.with_kind("discover"), budget))
            if before is None:
                raise RuntimeError(f"{row.method} runs for discover's wall time: run discover's stage of the same "
                                   "seed and budget first.")
            max_seconds = before["search_seconds"]
            start = {"token_ids": before["token_ids"]} if row.method == "refine" else None
        elif row.method == "distill":
            before = records.get(record_name(dataclasses.replace(row, method="soft"), budget))
            start = {"vectors": soft_prompt_at(work / "runs" / dataclasses.replace(row, method="soft").name, budget,
                                               plan, before)}
        out = search_hard(base, tokenizer, objective, row, budget, plan, run_dir, max_seconds, start)
        if row.method in ("refine", "distill"):  # what came before counts: discover's search, the soft training
            out["own_seconds"] = out["seconds"]
            out["steps"] += before["steps"]
            out["search_seconds"] += before["search_seconds"]
            out["seconds"] += before["seconds"]
    model, scoring = out.pop("model", base), out.pop("scoring", objective)  # (a whole prompt: its own template)
    started = time.time()
    scored = evaluate_prompt(model, scoring, out.pop("prompt"), return_predictions=True)
    record = {**dataclasses.asdict(row), "budget": budget, "run": run_name(row, budget),
              "examples_seen": out["steps"] * plan["batch"], **out,
              "eval": round(scored["accuracy"], 4), "eval_macro_f1": round(scored["macro_f1"], 4),
              "eval_rows": scored["examples"], "eval_seconds": round(time.time() - started, 1),
              "eval_predictions": scored["predictions"]}
    if row.method == "lora":
        model.unload()  # LoRA wraps the base model's layers: take the wrappers out again
    if row.method in HARD and row.task == "sst2" and row.seed == plan["seeds"][0] and row.placement == "prefix":
        other = objectives.get(row.task, "manual" if template == "task" else "task")
        record["transfer"] = round(evaluate_prompt(base, *transferred(other, record, tokenizer))["accuracy"], 4)
    return record


def transferred(other, record: dict, tokenizer) -> tuple[Any, torch.Tensor]:
    """(objective, prompt): a discovered prompt as text with the other template. Tokens in front: their text in
    front of it; a whole prompt: its tokens' text at the same place in it, read for the same label words."""
    from peft_softhard.objectives.templates import WholePrompt, place_slot

    if "template" not in record:  # the prompt as a user would paste it, in front
        as_text = tokenizer(record["text"], add_special_tokens=False)["input_ids"]
        return other, torch.tensor(as_text, dtype=torch.long)
    template = record["template"]
    placement = "end" if template.endswith("{prompt}") else "prefix" if template.startswith("{prompt}") else (
        "after_text" if "{text}{prompt}" in template else "before_answer_cue")
    found = WholePrompt(place_slot(other.template, placement), record["label_words"], record["token_ids"])
    return other.for_prompt(found)


def add_missing_predictions(records: dict, base, objectives: Objectives, work: Path) -> None:
    """Each task's manual record gets its eval rows' predictions back if it lacks them (every record is compared
    with the manual prompt row by row). Other records without predictions carry their comparison instead:
    those restored from the results JSON, which leaves predictions out."""
    from peft_softhard import evaluate_prompt

    for key, record in records.items():
        if "eval_predictions" in record or record["method"] != "manual":
            continue
        objective = objectives.get(record["task"], "manual")
        scored = evaluate_prompt(base, objective, torch.tensor([], dtype=torch.long), return_predictions=True)
        if round(scored["accuracy"], 4) != record["eval"]:
            raise RuntimeError(f"{key}: rescoring gave {scored['accuracy']:.4f}, the record says {record['eval']}.")
        record["eval_predictions"] = scored["predictions"]
        (work / "records" / f"{key}.json").write_text(json.dumps(record, indent=1))


# ------------------------------------------------------------------------------------------------ report
def against_manual(records: dict, labels: dict[str, list[int]]) -> list[dict]:
    """Each record's eval accuracy minus the manual prompt's, on the same rows, with its paired 95% interval."""
    from peft_softhard.metrics import accuracy_difference

    rows = []
    order = list(LABELS)  # the methods in the order the tables list them
    for record in sorted(records.values(), key=lambda r: (r["task"], order.index(r["method"]), r["budget"], r["seed"])):
        manual = records.get(record_name(Row(record["task"], "manual"), 0), {})
        if record["method"] == "manual":
            continue
        if "eval_predictions" in record and "eval_predictions" in manual:
            difference, low, high = accuracy_difference(record["eval_predictions"], manual["eval_predictions"],
                                                        labels[record["task"]])
        elif "minus_manual" in record:  # restored without its predictions: the comparison made when it had them
            difference, (low, high) = record["minus_manual"], record["interval_95"]
        else:
            continue
        rows.append({"task": record["task"], "method": record["method"], "budget": record["budget"],
                     "seed": record["seed"], "minus_manual": round(difference, 4),
                     "interval_95": [round(low, 4), round(high, 4)]})
    return rows


def summarise(records: dict) -> list[dict]:
    """Mean and std over seeds of each (task, method, budget)."""
    groups: dict[tuple, list[dict]] = {}
    for record in records.values():
        groups.setdefault((record["task"], record["method"], record["budget"]), []).append(record)
    summary = []
    for (task, method, budget), members in sorted(groups.items()):
        values = [m["eval"] for m in members]
        summary.append({"task": task, "method": method, "budget": budget, "seeds": sorted(m["seed"] for m in members),
                        "eval_mean": round(statistics.mean(values), 4),
                        "eval_std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
                        "validation_mean": round(statistics.mean(m["validation"] for m in members), 4),
                        "search_seconds_mean": round(statistics.mean(m["search_seconds"] for m in members), 1),
                        "eval_rows": members[0]["eval_rows"]})
    return summary


def markdown(records: dict, summary: list[dict], plan: dict, missing: list[str], paired: list[dict]) -> str:
    budgets = sorted({s["budget"] for s in summary if s["budget"]})
    lines = []
    for task, title in (("sst2", "SST-2 (dev set)"), ("ag_news", "AG News (class-balanced test subset)")):
        rows = [s for s in summary if s["task"] == task]
        if not rows:
            continue
        lines += [f"**{title}**, {rows[0]['eval_rows']} rows: eval accuracy % (validation % that chose the step), "
                  "mean ± std where there are several seeds; search seconds (scoring not counted) at the largest "
                  "budget run:", "",
                  "| method | zero-shot | " + " | ".join(f"{b:,} examples" for b in budgets) + " | seconds |",
                  "|---|---|" + "---|" * len(budgets) + "---|"]
        for method in LABELS:
            cells = {s["budget"]: s for s in rows if s["method"] == method}
            if not cells:
                continue
            last = cells[max(cells)]
            lines.append(f"| {LABELS[method]} | " + " | ".join(_cell(cells.get(b)) for b in [0, *budgets]) +
                         f" | {last['search_seconds_mean']:.0f} |")
        lines.append("")
    hard = sorted((r for r in records.values() if r["method"] in HARD and "text" in r),
                  key=lambda r: (r["task"], r["method"], r["seed"], r["budget"]))
    if hard:
        lines += ["**Discovered hard prompts** (eval accuracy with the template they were found for; transfer: the "
                  "same text in front of the other template — the manual one for pez_reference, the task's own for "
                  "the others):", "",
                  "| task | method | seed | examples | eval % | transfer % | perplexity | text |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['method']} | {r['seed']} | {r['budget']:,} | {100 * r['eval']:.1f} | "
                  f"{_percent(r.get('transfer'))} | {r['perplexity'] and round(r['perplexity'])} | {_prompt_text(r)} |"
                  for r in hard]
        lines.append("")
    staged = [r for r in hard if r.get("stages")]
    if staged:
        lines += ["**The whole-prompt searches, stage by stage** (validation % at the stage's start → its best; a "
                  "stage is kept only if its best beats its start; the stage's seconds, validation included):", "",
                  "| task | method | seed | examples | " + " | ".join(STAGE_NAMES.values()) + " |",
                  "|---|---|---|---|" + "---|" * len(STAGE_NAMES)]
        for r in staged:
            done = {stage["stage"]: stage for stage in r["stages"]}
            lines.append(f"| {r['task']} | {r['method']} | {r['seed']} | {r['budget']:,} | " + " | ".join(
                _stage_cell(done.get(name)) for name in STAGE_NAMES) + " |")
        lines.append("")
    if paired:
        lines += ["**Against the manual prompt** (eval accuracy minus the manual template's, on the same rows, in "
                  "points, with the paired 95% interval; an interval that excludes 0 tells the two apart):", "",
                  "| task | method | examples | seed | minus manual | 95% interval |", "|---|---|---|---|---|---|"]
        for r in paired:
            low, high = r["interval_95"]
            lines.append(f"| {r['task']} | {LABELS.get(r['method'], r['method'])} | {r['budget']:,} | {r['seed']} | "
                         f"{100 * r['minus_manual']:+.1f} | {100 * low:+.1f} to {100 * high:+.1f} |")
        lines.append("")
    if missing:
        lines.append(f"Not run yet: {', '.join(missing)}.")
    return "\n".join(lines)


def _stage_cell(stage: dict | None) -> str:
    if stage is None:
        return "—"
    kept = "kept" if stage["kept"] else "not kept"
    return (f"{100 * stage['start_score']:.1f} → {100 * stage['best_score']:.1f}, {kept} ({stage['steps']} steps, "
            f"{stage['seconds']:.0f} s)")


def _prompt_text(record: dict) -> str:
    """A hard prompt's text; a whole prompt's with the label words it is read for."""
    words = record.get("label_words")
    return f"`{record['text']!r}`" + (f" → {' / '.join(f'`{w!r}`' for w in words)}" if words else "")


def _cell(summary: dict | None) -> str:
    if summary is None:
        return "—"
    std = f" ± {100 * summary['eval_std']:.1f}" if summary["eval_std"] is not None else ""
    return f"{100 * summary['eval_mean']:.1f}{std} ({100 * summary['validation_mean']:.1f})"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def plots(records: dict, images: Path, suffix: str) -> list[str]:
    """Eval accuracy against examples seen (each task) and against search seconds (SST-2): at each budget the
    mean over the seeds run there."""
    from peft_softhard.app.plots import line_plot

    written = []
    for task in ("sst2", "ag_news"):
        budgets: dict[tuple[str, int], list[dict]] = {}
        for r in records.values():
            if r["task"] == task and r["budget"]:
                budgets.setdefault((r["method"], r["budget"]), []).append(r)
        for axis, xlabel, scale in (("examples_seen", "examples seen", "log"),
                                    ("search_seconds", "seconds (validation scoring not counted)", "linear")):
            lines = {}
            for method in LABELS:
                points = sorted((statistics.mean(r[axis] for r in runs), statistics.mean(r["eval"] for r in runs))
                                for (m, _), runs in budgets.items() if m == method)
                if points:
                    lines[LABELS[method]] = tuple(zip(*points, strict=True))
            if lines and (axis == "examples_seen" or task == "sst2"):
                path = images / f"quality_{task}_{axis.split('_')[0]}{suffix}.png"
                written.append(str(line_plot(lines, path, xlabel, f"{task}, SmolLM2-135M: eval accuracy vs {xlabel}",
                                             ylabel="eval accuracy", xscale=scale)))
    return written


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    options = parser(__doc__, RESULTS, quick_help="small subsets, one seed (minutes on SmolLM2)")
    options.add_argument("--work-dir", default=str(RUN_STATE / "quality"),
                         help="finished stages and checkpoints (resumable; the full run's are committed)")
    options.add_argument("--images", default=str(IMAGES), help="where the PNG plots go")
    options.add_argument("--report-only", action="store_true", help="write the report from the stages done so far")
    args = options.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    checkpoint_on_kill()
    name = plan_name(args)
    plan, started = PLANS[name], time.time()
    work = Path(args.work_dir) / name
    records = finished_records(work)
    stages = plan_stages(plan)
    if not args.report_only:
        base, tokenizer = load(args.tiny)
        objectives = Objectives(tokenizer, plan)
        add_missing_predictions(records, base, objectives, work)
        for row, budget in stages:
            key = record_name(row, budget)
            if key in records:
                continue
            logger.info("stage %s", key)
            record = run_stage(row, budget, base, tokenizer, objectives, plan, work, records)
            base = strip_adapters(base)
            logger.info("%s: eval %.4f, validation %.4f (step %s), %.0f s", key, record["eval"], record["validation"],
                        record.get("best_step"), record["seconds"])
            records[key] = record
            (work / "records" / f"{key}.json").write_text(json.dumps(record, indent=1))
    missing = [record_name(row, budget) for row, budget in stages if record_name(row, budget) not in records]
    summary = summarise(records)
    labels = {task: task_data(task, plan).evaluation[1] for task in {r["task"] for r in records.values()}}
    paired = against_manual(records, labels)
    report = markdown(records, summary, plan, missing, paired)
    print(report)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(report + "\n")
    images = plots(records, Path(args.images), "" if name == "full" else f"_{name}")
    write_results(output, "prompt-method quality on SST-2 and AG News", started, plan_name=name, plan=plan,
                  summary=summary, against_manual=paired, missing=missing, images=images,
                  records={key: {k: v for k, v in r.items() if k != "eval_predictions"} for key, r in records.items()},
                  seconds_of_all_stages=round(total_seconds(records), 1))


def total_seconds(records: dict) -> float:
    """The CPU seconds of everything done so far: each run's own seconds (a record holds its run's seconds up
    to its budget, the earlier budgets included) and every eval scoring."""
    runs: dict[str, float] = {}
    for r in records.values():  # refine's and distill's seconds include discover's / soft's: their own only
        key = r.get("run", Row(r["task"], r["method"], r["seed"]).name)
        runs[key] = max(runs.get(key, 0.0), r.get("own_seconds", r["seconds"]))
    return sum(runs.values()) + sum(r["eval_seconds"] for r in records.values())


if __name__ == "__main__":
    main()
