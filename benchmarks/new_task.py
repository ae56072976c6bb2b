"""A task the defaults have never seen, run as a new user would: `softhard discover` and `softhard train` with
their defaults on CSV files, through the command line, timed by the wall clock (model loading included).

The aim (issue 15): `softhard discover` with its defaults finishes within 15 minutes on 2 cores, lands at
least 15 points above the zero-shot score of the task's template on its test split, and within 10 points of
`softhard train` given the same search time (`--max-seconds`).

The task is AG News, which chose none of the defaults (they were chosen on SST-2's validation rows), written
out as a user's files: `text` (title and description), `label` (0-3), the user's own template and label words
(not the built-in task's). Training rows: the provided 5,000-row training subset (the commands carve their
validation rows from it); test rows: a seeded class-balanced subset of the official test set, scored once by
each command's chosen prompt.

    python benchmarks/new_task.py            # ~40 min on 2 cores: zero-shot, discover, train
    python benchmarks/new_task.py --tiny     # a tiny random GPT-2 (smoke run)

Each finished command's output is kept in --work-dir; a rerun does the commands not yet done (an interrupted
command starts again: its wall time is the number measured). Writes benchmarks/results/new_task.json.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import random
import time
from pathlib import Path

from reporting import write_results
from subjects import SHARED, load, parser

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "new_task.json"
TEMPLATE = "News: {text}\nThe topic is"  # what a user might write; not a built-in template
LABEL_WORDS = [" world", " sports", " business", " science"]
AIM = {"discover_seconds": 900, "discover_minus_zero_shot": 0.15, "train_minus_discover": 0.10}
PLANS = {
    # "task": options of every command; "command": of discover and train (the full plan: their defaults)
    "full": {"train_rows": 5000, "test_rows": 1000, "task": [], "command": [], "discover": []},
    "tiny": {"train_rows": 60, "test_rows": 16, "task": ["--validation-rows", "8"],
             "command": ["--steps", "3", "--batch-size", "4", "--eval-interval", "3", "--num-virtual-tokens", "2"],
             "discover": ["--label-steps", "1", "--edit-steps", "1", "--pool-size", "4", "--race-steps", "1",
                          "--edit-candidates", "2"]},
}

logger = logging.getLogger("new_task")


def write_task_files(folder: Path, plan: dict, seed: int = 0) -> tuple[Path, Path]:
    """AG News as a user's two CSV files (text, label): the training subset, and a class-balanced test subset."""
    folder.mkdir(parents=True, exist_ok=True)
    source = SHARED / "data" / "ag_news"
    with open(source / "train_subset5k.csv", newline="") as handle:  # text, label (0-3)
        train = [(text, int(label)) for text, label in csv.reader(handle)][:plan["train_rows"]]
    with open(source / "test.csv", newline="") as handle:  # label (1-4), title, description: joined as in train
        test = [(f"{title} {description}", int(label) - 1) for label, title, description in csv.reader(handle)]
    rng = random.Random(seed)
    per_class = plan["test_rows"] // len(LABEL_WORDS)
    balanced = [row for label in range(len(LABEL_WORDS))
                for row in rng.sample([r for r in test if r[1] == label], per_class)]
    rng.shuffle(balanced)
    paths = folder / "train.csv", folder / "test.csv"
    for path, rows in zip(paths, (train, balanced), strict=True):
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return paths


def softhard(argv: list[str]) -> tuple[dict, float]:
    """Run `softhard ARGV --json` (in this process: each command loads its own model, as in a fresh shell; only
    Python's imports are not timed); (its JSON output, wall-clock seconds)."""
    from peft_softhard.app.cli import main as cli

    started, printed = time.time(), io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli([*argv, "--json"])
    if code != 0:
        raise RuntimeError(f"softhard {' '.join(argv)} exited with {code}")
    return json.loads(printed.getvalue()), round(time.time() - started, 1)


def cached(path: Path, run) -> dict:
    """The record at `path`, else `run()`'s, written there at once."""
    if path.exists():
        return json.loads(path.read_text())
    record = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))
    return record


def main() -> None:
    arguments = parser("A task the defaults never saw, through the CLI.", RESULTS, "the same as the full plan")
    arguments.add_argument("--work-dir", default="out/benchmarks/new_task", help="records and the commands' outputs")
    options = arguments.parse_args()
    work, name = Path(options.work_dir), "tiny" if options.tiny else "full"
    plan = PLANS[name]
    started = time.time()
    train_file, test_file = write_task_files(work / "data", plan)
    task = ["--train-file", str(train_file), "--eval-file", str(test_file), "--template", TEMPLATE,
            *[f"--label-word={word}" for word in LABEL_WORDS], *plan["task"]]
    if options.tiny:
        model_dir = work / "tiny-model"
        if not model_dir.exists():
            model, tokenizer = load(tiny=True)
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
        task += ["--model", str(model_dir)]
    records = work / "records"

    def zero_shot() -> dict:
        out, seconds = softhard(["eval", *task])
        return {"accuracy": out["accuracy"], "wall_seconds": seconds}

    def discover() -> dict:
        out, seconds = softhard(["discover", *task, *plan["command"], *plan["discover"], "--output-dir",
                                 str(work / "discover")])
        return {"accuracy": out["eval"]["accuracy"], "validation": out["validation_accuracy"],
                "start_validation": out["start_validation_accuracy"], "best_step": out["best_step"],
                "text": out["text"], "prompt": out.get("prompt"), "label_words": out.get("label_words"),
                "stages": out["stages"], "search_seconds": out["seconds"],
                "test_scoring_seconds": out["eval"]["seconds"], "wall_seconds": seconds}

    zero = cached(records / "zero_shot.json", zero_shot)
    found = cached(records / "discover.json", discover)

    def train() -> dict:  # the same search time as discover took
        out, seconds = softhard(["train", *task, *plan["command"], "--max-seconds", str(found["search_seconds"]),
                                 "--output-dir", str(work / "train")])
        run = out["runs"][0]
        return {"accuracy": run["eval"]["accuracy"], "validation": run["validation_accuracy"],
                "best_step": run["best_step"], "search_seconds": run["seconds"],
                "test_scoring_seconds": run["eval"]["seconds"], "wall_seconds": seconds}

    trained = cached(records / "train.json", train)
    reached = {"discover_seconds": found["wall_seconds"] <= AIM["discover_seconds"],
               "discover_minus_zero_shot": found["accuracy"] - zero["accuracy"] >= AIM["discover_minus_zero_shot"],
               "train_minus_discover": trained["accuracy"] - found["accuracy"] <= AIM["train_minus_discover"]}
    payload = write_results(Path(options.output), f"a task the defaults never saw (AG News as CSV files), "
                            f"{name} plan", started, plan=plan, template=TEMPLATE,
                            label_words=LABEL_WORDS, zero_shot=zero, discover=found, train=trained, aim=AIM,
                            aim_reached=reached)
    logger.info("zero-shot %.3f, discover %.3f (%.0f s wall), train %.3f; aims reached: %s", zero["accuracy"],
                found["accuracy"], found["wall_seconds"], trained["accuracy"], reached)
    print(json.dumps({k: payload[k] for k in ("zero_shot", "discover", "train", "aim_reached")}, indent=2))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
