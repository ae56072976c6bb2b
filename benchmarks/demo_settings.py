"""Which search `softhard discover` (and so the demo) runs by default: each candidate `DiscoveryConfig` on the
demo's own rows (1,000 training rows, 150 validation rows of the train split that choose each stage's step), on
SST-2 and on AG News (`softhard demo --task ag_news`), compared on 600 other rows of the task's train split that
the demo neither trains nor validates on ("settings rows"). The demo's validation rows cannot rank settings:
each setting's score there is the best of its steps on those rows. The dev rows the demo reports are not
touched here, so choosing the default with this table leaves them unbiased.

    python benchmarks/demo_settings.py                 # every setting on SST-2 and AG News: hours on 2 cores
    python benchmarks/demo_settings.py --task sst2 --only "tokens only"   # some settings on one task
    python benchmarks/demo_settings.py --tiny          # a tiny random GPT-2 (smoke run)

Writes benchmarks/results/demo_settings.json; a run of some settings (`--only`) replaces their rows there and
keeps the others.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from reporting import write_results
from subjects import SHARED, load, parser

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "demo_settings.json"

# name -> the `DiscoveryConfig` fields that differ from its defaults ({}: the default search)
SETTINGS: dict[str, dict] = {
    "default": {},
    "label words only": {"stages": ["label_words"]},
    "tokens only, grow at the end": {"stages": ["tokens"]},
    "tokens only, grow before the answer cue": {"stages": ["tokens"], "placement": "before_answer_cue"},
    "tokens only, grow after the text": {"stages": ["tokens"], "placement": "after_text"},
    "tokens only, grow in front": {"stages": ["tokens"], "placement": "prefix", "method": "grow"},
    "tokens only, pez in front (5 tokens)": {"stages": ["tokens"], "placement": "prefix", "num_virtual_tokens": 5},
    "tokens only, gcg at the end (3 tokens)": {"stages": ["tokens"], "method": "gcg", "num_virtual_tokens": 3,
                                               "steps": 8, "gcg_candidates": 32, "gcg_top_k": 32, "buffer_size": 4},
    "template edits only": {"stages": ["template_edits"]},
}
SETTINGS_ROWS = 600  # a paired difference of two prompts on 600 rows has a standard error of about 1 point
TINY = {"steps": 2, "label_steps": 1, "edit_steps": 1, "batch_size": 4, "eval_interval": 1, "pool_size": 4,
        "race_steps": 1, "edit_candidates": 2, "gcg_candidates": 4, "gcg_top_k": 4, "whole_words": False}


def settings_rows(data, rows: int, task=None):
    """`data` with its validation rows replaced by `rows` rows of the task's train split (default SST-2) that are
    neither in its train nor in its validation rows, carved as validation rows are (seeded; SST-2: whole
    sentences)."""
    from peft_softhard.app.tasks import SST2, TaskData, carve_validation

    task = task or SST2
    texts, labels = task.load("train", data_dir=str(SHARED / "data"))
    used = set(data.train[0]) | set(data.validation[0])
    unused = [i for i, text in enumerate(texts) if text not in used]
    carved, _ = carve_validation([texts[i] for i in unused], rows, 7, task.validation_min_words,
                                 task.validation_sentences_only)
    chosen = [unused[j] for j in carved]
    return TaskData(data.train, ([texts[i] for i in chosen], [labels[i] for i in chosen]), data.evaluation)


def main() -> None:
    from peft_softhard.app.demo import DemoConfig

    demo = DemoConfig()  # the demo's own rows: the settings are compared on them
    options = parser(__doc__.split("\n\n")[0], RESULTS, "unused")
    options.add_argument("--only", action="append", default=[],
                         help="only the settings whose name starts with this (repeatable)")
    options.add_argument("--task", action="append", choices=["sst2", "ag_news"],
                         help="the demo's task(s) (repeatable; default both)")
    options.add_argument("--work-dir", help="the searches' checkpoints (default out/benchmarks/demo_settings/...)")
    args = options.parse_args()
    from peft_softhard.app.tasks import BUILT_IN

    started = time.time()
    model, tokenizer = load(args.tiny)
    work = Path(args.work_dir or HERE.parent / "out" / "benchmarks" / "demo_settings" / ("tiny" if args.tiny else
                                                                                         "full"))
    chosen = {name: fields for name, fields in SETTINGS.items() if name.startswith(tuple(args.only or [""]))}
    rows = []
    for task in args.task or ["sst2", "ag_news"]:
        rows += compare(BUILT_IN[task], chosen, model, tokenizer, demo, args.tiny, work / task)
    output = Path(args.output)
    if output.exists():  # a run of some settings (--only, --task) keeps the other settings' rows
        done = {(row.get("task", "sst2"), row["setting"]) for row in rows}
        rows += [row for row in json.loads(output.read_text())["rows"]
                 if (row.get("task", "sst2"), row["setting"]) not in done]
    write_results(output, "discover's settings on the demo's rows: steps chosen on its validation rows, compared "
                  "on the settings rows", started, rows=rows)


def compare(task, chosen: dict, model, tokenizer, demo, small: bool, work: Path) -> list[dict]:
    """The manual template and each chosen setting on `task`'s demo rows, judged on its settings rows."""
    from peft_softhard import DiscoveryConfig, run
    from peft_softhard.app.tasks import load_task_data, task_objective

    data = load_task_data(task, 16 if small else demo.train_rows, 8 if small else demo.eval_rows, 0,
                          str(SHARED / "data"), 6 if small else demo.validation_rows)
    objective = task_objective(task, data, tokenizer, template=task.manual_template)
    judge = task_objective(task, settings_rows(data, 12 if small else SETTINGS_ROWS, task), tokenizer,
                           template=task.manual_template)  # its held-out rows: the settings rows
    empty = torch.tensor([], dtype=torch.long)
    rows = [{"task": task.name, "setting": "manual template alone", "validation": objective.score(model, empty),
             "settings_rows": judge.score(model, empty)}]
    for name, fields in chosen.items():
        config = DiscoveryConfig(show_progress=False, **{**(TINY if small else {}), **fields})
        found = run(model, objective, config, tokenizer=tokenizer, checkpoint_dir=str(work / name.replace(" ", "_")),
                    resume=True)
        judged, ids = judge.for_prompt(found.whole_prompt)
        rows.append({"task": task.name, "setting": name, "fields": fields, "settings_rows": judged.score(model, ids),
                     "validation": found.best_score, "start": found.start_score,
                     "prompt": found.whole_prompt.filled(tokenizer), "label_words": found.label_words,
                     "stages": [{"stage": s.stage, "start": s.start_score, "best": s.best_score, "kept": s.kept,
                                 "steps": s.steps, "seconds": s.seconds} for s in found.stages],
                     "steps": found.steps, "seconds": round(found.seconds, 1)})
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
