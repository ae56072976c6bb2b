"""Settings: which optimiser, learning rate, init and search method make soft and hard prompts learn, on
SmolLM2-135M and SST-2, with honest selection. The defaults of `softhard train`, `softhard discover`, the
demo and `TrainConfig` / `DiscoveryConfig` come from this table.

Every row trains on the same 1,000 training rows, chooses its step on 300 validation rows carved from the
rest of SST-2's train split (rows of 10 or more words, as `load_task_data` carved them when this table was
begun: `subjects.sst2_as_recorded`) and is scored
once on the full dev set (872 rows), which chose nothing. The prompt goes before the manual template
(`Review: {text}\\nSentiment:`), as in the demo and the quality benchmark.

    python benchmarks/settings.py                 # every row (~6 min a row on 2 cores)
    python benchmarks/settings.py --rows soft     # only the rows whose name starts so
    python benchmarks/settings.py --tiny          # a tiny random GPT-2 (smoke run)

Each finished row is written to --work-dir/records/ at once; a rerun does the rows not yet done. Writes
benchmarks/results/settings.json and a markdown table next to it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from reporting import write_results
from subjects import SHARED, load, parser, sst2_as_recorded

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "settings.json"

# name -> (kind, settings). Soft rows: optimizer, lr, init; hard rows: DiscoveryConfig fields and init.
ROWS = {
    "soft adamw 3e-3 labels": ("soft", {"optimizer": "adamw", "lr": 3e-3, "init": "labels"}),
    "soft adamw 3e-2 labels": ("soft", {"optimizer": "adamw", "lr": 3e-2, "init": "labels"}),
    "soft adamw 1e-1 labels": ("soft", {"optimizer": "adamw", "lr": 1e-1, "init": "labels"}),
    "soft adafactor 0.3 labels": ("soft", {"optimizer": "adafactor", "lr": 0.3, "init": "labels"}),
    "soft adamw 3e-2 manual": ("soft", {"optimizer": "adamw", "lr": 3e-2, "init": "manual"}),
    "soft adamw 3e-3 manual": ("soft", {"optimizer": "adamw", "lr": 3e-3, "init": "manual"}),
    "soft adamw 3e-2 vocab": ("soft", {"optimizer": "adamw", "lr": 3e-2, "init": "vocab"}),
    "hard pez adamw 0.1 vocab": ("hard", {"method": "pez", "optimizer": "adamw", "lr": 0.1, "init": "vocab"}),
    "hard pez adafactor 0.3 labels": ("hard", {"method": "pez", "optimizer": "adafactor", "lr": 0.3,
                                               "weight_decay": 0.0, "init": "labels"}),
    "hard pez adafactor 0.3 manual": ("hard", {"method": "pez", "optimizer": "adafactor", "lr": 0.3,
                                               "weight_decay": 0.0, "init": "manual"}),
    "hard pez_refine adafactor 0.3 manual": ("hard", {"method": "pez_refine", "optimizer": "adafactor", "lr": 0.3,
                                                      "weight_decay": 0.0, "init": "manual", "buffer_size": 4,
                                                      "n_replace": 2, "gcg_candidates": 16, "gcg_top_k": 32}),
}
PLANS = {
    "full": {"train_rows": 1000, "validation_rows": 300, "eval_rows": None, "steps": 100, "batch": 8,
             "eval_every": 25, "length": 10, "refine_steps": 20},
    "tiny": {"train_rows": 24, "validation_rows": 6, "eval_rows": 16, "steps": 2, "batch": 4, "eval_every": 1,
             "length": 3, "refine_steps": 2},
}

logger = logging.getLogger("settings")


def objective_for(tokenizer, plan: dict):
    from peft_softhard.app.tasks import SST2, load_task_data, task_objective

    data = load_task_data(sst2_as_recorded(), plan["train_rows"], plan["eval_rows"], seed=0,
                          data_dir=str(SHARED / "data"), validation_rows=plan["validation_rows"])
    return task_objective(SST2, data, tokenizer, template=SST2.manual_template)


def run_soft(base, tokenizer, objective, plan: dict, settings: dict, work: Path) -> dict:
    from peft import get_peft_model

    from peft_softhard import SoftHardConfig, TrainConfig, train_prompt
    from peft_softhard.app.tasks import SST2, prompt_init

    torch.manual_seed(0)
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=plan["length"], mode="soft",
                            **prompt_init(SST2, settings["init"], tokenizer, plan["length"]))
    model = get_peft_model(base, prompt)
    config = TrainConfig(steps=plan["steps"], batch_size=plan["batch"], eval_interval=plan["eval_every"],
                         lr=settings["lr"], optimizer=settings["optimizer"], checkpoint_interval=plan["steps"],
                         show_progress=False)
    result = train_prompt(model, objective, config, work, resume=True)
    vectors = model.prompt_encoder["default"].prompt_embeddings().detach()
    return {"vectors": vectors, "validation": result.best_score, "best_step": result.best_step,
            "score_history": result.score_history, "seconds": result.seconds}


def run_hard(base, tokenizer, objective, plan: dict, settings: dict, work: Path) -> dict:
    from peft_softhard import DiscoveryConfig, SoftHardConfig, run
    from peft_softhard.app.tasks import SST2, prompt_init

    search = {k: v for k, v in settings.items() if k != "init"}
    steps = plan["steps"]
    if search["method"] == "pez_refine":  # the refinement's steps score many candidates each: fewer of them
        steps = plan["steps"] + plan["refine_steps"]
        search["refine_share"] = plan["refine_steps"] / steps
    config = DiscoveryConfig(stages=["tokens"], placement="prefix", steps=steps, batch_size=plan["batch"],
                             eval_interval=plan["eval_every"], show_progress=False, **search)  # tokens in front
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=plan["length"], mode="hard",
                            word_start_only=True, round_trip_only=True,
                            **prompt_init(SST2, settings["init"], tokenizer, plan["length"]))
    torch.manual_seed(0)
    result = run(base, objective, config, prompt, tokenizer, checkpoint_dir=str(work / "checkpoint"), resume=True)
    return {"token_ids": result.token_ids, "text": result.text, "validation": result.best_score,
            "best_step": result.best_step, "score_history": result.score_history, "seconds": result.seconds,
            "steps": result.steps}


def main() -> None:
    options = parser("Which settings make soft and hard prompts learn (SmolLM2, SST-2).", RESULTS,
                     "unused (the full plan is the only real-model plan)")
    options.add_argument("--rows", default="", help="only the rows whose name starts with this")
    options.add_argument("--work-dir", default=str(HERE.parent / "out" / "benchmarks" / "settings"))
    args = options.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    name = "tiny" if args.tiny else "full"
    plan, work = PLANS[name], Path(args.work_dir) / name
    (work / "records").mkdir(parents=True, exist_ok=True)
    started = time.time()
    base, tokenizer = load(args.tiny)
    objective = objective_for(tokenizer, plan)
    from peft_softhard import evaluate_prompt

    manual_file = work / "records" / "manual.json"
    if not manual_file.exists():
        manual = evaluate_prompt(base, objective, torch.tensor([], dtype=torch.long))
        validation = evaluate_prompt(base, objective, torch.tensor([], dtype=torch.long), split="held_out")
        manual_file.write_text(json.dumps({"row": "manual template alone", "eval": manual["accuracy"],
                                           "validation": validation["accuracy"]}))
    for row, (kind, settings) in ROWS.items():
        record_file = work / "records" / (row.replace(" ", "_") + ".json")
        if not row.startswith(args.rows) or record_file.exists():
            continue
        logger.info("row %s", row)
        runner = run_soft if kind == "soft" else run_hard
        record = runner(base, tokenizer, objective, plan, settings, work / "runs" / row.replace(" ", "_"))
        prompt = record.pop("vectors", None)
        prompt = prompt if prompt is not None else torch.tensor(record["token_ids"], dtype=torch.long)
        record.update(row=row, kind=kind, settings=settings, eval=evaluate_prompt(base, objective, prompt)["accuracy"])
        record_file.write_text(json.dumps(record))
        logger.info("%s: validation %.4f (step %d), eval %.4f", row, record["validation"], record["best_step"],
                    record["eval"])
    records = [json.loads(f.read_text()) for f in sorted((work / "records").glob("*.json"))]
    write_results(Path(args.output), f"settings sweep (SST-2, {name})", started, plan=plan, records=records)
    if not args.tiny:
        lines = ["| row | validation (chose the step) | dev accuracy (872 rows, scored once) | best step | seconds |",
                 "|---|---|---|---|---|"]
        for r in records:
            lines.append(f"| {r['row']} | {r['validation']:.4f} | {r['eval']:.4f} | {r.get('best_step', '–')} | "
                         f"{round(r.get('seconds', 0))} |")
        Path(args.output).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(records, indent=1)[:4000])


if __name__ == "__main__":
    main()
