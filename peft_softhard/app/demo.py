"""`softhard demo`: the main job on the embedded default model (SmolLM2-135M) and SST-2 (or AG News, `--task`).

It scores the task's manual prompt (SST-2: `Review: {sentence}\\nSentiment:`, label words " negative" /
" positive"), trains a soft prompt and discovers a hard prompt that go in front of that same template, and reads
the soft prompt back as tokens. Each prompt's step is chosen on validation rows carved from the task's train
split; the dev rows are scored once, by the chosen prompts, and the demo says by how much the hard prompt beats
(or misses) the manual one there. Subsets keep it to about 7 minutes on 2 CPU cores (AG News's longer rows:
about 10).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..files.checkpoint import save_adapter_atomically, write_text_atomically
from ..method.config import SoftHardConfig
from ..metrics import accuracy_difference
from ..objectives import DistillationObjective
from ..optimization.discovery import DiscoveryConfig, DiscoveryResult, run
from ..optimization.training import TrainConfig, TrainResult, train_prompt
from ..reading import project_prompt
from .models import DEFAULT_MODEL, load_model, resolve_device
from .plots import plot_training_curves
from .reporting import evaluate_prompt, table
from .tasks import BUILT_IN, Task, load_task_data, prompt_init, task_objective


def run_demo(args: Any) -> dict:
    """The demo's four steps; `args` are the `softhard demo` options. Returns what it prints as JSON."""
    started, output, quiet = time.time(), Path(args.output_dir), args.json
    say = (lambda *a: None) if quiet else print
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)  # a wrong --device is refused before the model loads
    model, tokenizer = load_model(args.model or DEFAULT_MODEL)
    model.to(device)
    say(f"Model: {args.model or DEFAULT_MODEL} (loaded in {time.time() - started:.0f} s)")

    task = BUILT_IN[args.task]
    data = load_task_data(task, args.train_rows, args.eval_rows, args.seed, args.data_dir, args.validation_rows)
    objective = task_objective(task, data, tokenizer, template=task.manual_template)
    rows = {"train": len(data.train[0]), "validation": len(data.validation[0]), "eval": len(data.evaluation[0])}
    say(f"Task: {task.name}, template {task.manual_template!r}, label words {task.label_words}; "
        f"{rows['train']} training rows, {rows['validation']} validation rows (from the train split; they choose "
        f"each prompt's step), {rows['eval']} dev rows (scored once, at the end).\n")

    empty = torch.tensor([], dtype=torch.long)
    say(f"[1/4] training a 10-token soft prompt: {args.soft_steps} steps x {args.batch_size} examples")
    soft_model, soft = train_soft(model, tokenizer, objective, output / "soft", args.soft_steps, args.batch_size,
                                  args.seed, show_progress=not quiet, task=task)
    soft_vectors = soft_model.prompt_encoder["default"].prompt_embeddings().detach()  # the best step's
    hard_settings = HardSearch()
    start = {"text": repr(hard_settings.init_text), "soft": "the soft prompt's vectors"}.get(hard_settings.init,
                                                                                          hard_settings.init)
    say(f"[2/4] discovering a {hard_settings.length}-token hard prompt: {args.hard_steps} steps x "
        f"{args.batch_size} examples, {hard_settings.search['method']} from {start}")
    hard = discover_hard(model, tokenizer, objective, output / "hard", args.hard_steps,
                         args.batch_size, args.seed, soft_vectors, hard_settings, show_progress=not quiet, task=task)
    say("[3/4] reading the soft prompt as tokens")
    reading = project_prompt(soft_model, tokenizer)
    say(f"[4/4] scoring the manual, soft, hard prompts and the reading on the {rows['eval']} dev rows")
    prompts = {"manual": empty, "soft": soft_vectors, "hard": torch.tensor(hard.token_ids),
               "reading": torch.tensor(reading.token_ids)}
    results = {name: evaluate_prompt(model, objective, prompt, return_predictions=True)
               for name, prompt in prompts.items()}
    predictions = {name: result.pop("predictions") for name, result in results.items()}
    gain, low, high = accuracy_difference(predictions["hard"], predictions["manual"], objective.labels("eval"))
    results["manual"]["validation"] = evaluate_prompt(model, objective, empty, "held_out")["accuracy"]
    results["soft"]["validation"], results["hard"]["validation"] = soft.best_score, hard.best_score
    results["reading"]["validation"] = None
    curves = {"soft prompt (10 tokens)": (soft.loss_history, soft.score_history),
              f"hard prompt ({hard_settings.length} tokens)": (hard.loss_history, hard.score_history)}
    plot = plot_training_curves(curves, output / "training_curves.png")
    payload = {
        "model": args.model or DEFAULT_MODEL, "task": task.name, "template": task.manual_template,
        **{f"{split}_rows": count for split, count in rows.items()}, **results, "hard_text": hard.text,
        "hard_token_ids": hard.token_ids, "hard_round_trips": hard.round_trips, "hard_step": hard.best_step,
        "soft_step": soft.best_step, "hard_minus_manual": round(gain, 4),
        "hard_minus_manual_95": [round(low, 4), round(high, 4)], "soft_reading": reading.text, "plot": str(plot),
        "soft_reading_mean_cosine_distance": reading.mean_distance, "seconds": round(time.time() - started, 1),
        "outputs": {"soft": str(output / "soft" / "best"), "hard": str(output / "hard" / "adapter")},
    }
    write_text_atomically(output / "demo.json", json.dumps(payload, indent=2, default=str))
    if quiet:
        print(json.dumps(payload, indent=2, default=str))
    else:
        _report(payload, soft, hard, reading)
    return payload


SOFT_INIT = "manual"  # chosen on validation rows by benchmarks/settings.py


# A question a user might type: 7 whole-word tokens (the task's instruction, "Classify the sentiment ...", is
# not whole words, and in front of the template it scores below no prompt). The demo's hard prompt used to start
# from it; it now starts from the soft prompt it has just trained (see `HardSearch`).
HARD_START = " Is this movie review positive or negative"


@dataclass
class HardSearch:
    """How the demo searches for its hard prompt. The default is the setting `benchmarks/demo_settings.py`
    chose on 600 training rows the demo never uses (never on the dev rows the demo reports): PEZ from the first
    7 vectors of the soft prompt the demo trains first. Chosen on SST-2; `--task ag_news` runs it unchanged."""

    length: int = 7
    init: str = "soft"  # a `--init` choice; "soft": the first `length` vectors of the trained soft prompt
    init_text: str | None = None  # the start with init="text" (e.g. HARD_START)
    search: dict[str, Any] = field(default_factory=lambda: {"method": "pez", "optimizer": "adafactor", "lr": 0.3,
                                                            "weight_decay": 0.0})  # `DiscoveryConfig` fields
    distilled: bool = False  # match the soft prompt's answers instead of the labels


def train_soft(model: Any, tokenizer: Any, objective: Any, output: Path, steps: int, batch_size: int, seed: int,
               *, task: Task, show_progress: bool = True) -> tuple[Any, TrainResult]:
    """The demo's 10-token soft prompt, from `task`'s instruction (the task `objective` scores): (the peft
    model, holding the best step's prompt, and the training result)."""
    from peft import get_peft_model

    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=10, mode="soft",
                            **prompt_init(task, SOFT_INIT, tokenizer, 10))
    soft_model = get_peft_model(model, prompt)
    interval = max(1, steps // 2)  # scored at 0, half, all: a score costs about 8 steps
    result = train_prompt(soft_model, objective, TrainConfig(
        steps=steps, batch_size=batch_size, eval_interval=interval, checkpoint_interval=interval, seed=seed,
        show_progress=show_progress), output)
    return soft_model, result


def discover_hard(model: Any, tokenizer: Any, objective: Any, output: Path, steps: int, batch_size: int, seed: int,
                  soft_vectors: torch.Tensor | None = None, settings: HardSearch | None = None, *, task: Task,
                  show_progress: bool = True) -> DiscoveryResult:
    """The demo's hard prompt for `task` (the one `objective` scores): `settings.search` from `settings.init`,
    on the labels or (`settings.distilled`) on the answers of the soft prompt `soft_vectors` [10, d]; its
    adapter is saved under `output`/adapter."""
    settings = settings or HardSearch()
    if (settings.init == "soft" or settings.distilled) and soft_vectors is None:
        raise ValueError("This hard-prompt setting starts from or distils the soft prompt: pass soft_vectors.")
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=settings.length, mode="hard",
                            word_start_only=True, round_trip_only=True,
                            **prompt_init(task, settings.init, tokenizer, settings.length, settings.init_text))
    config = DiscoveryConfig(steps=steps, batch_size=batch_size, eval_interval=max(1, steps // 2), seed=seed,
                             show_progress=show_progress, **settings.search)
    if settings.distilled:
        objective = DistillationObjective(objective, soft_vectors)
    start = soft_vectors[:settings.length] if settings.init == "soft" else None
    result = run(model, objective, config, prompt, tokenizer, checkpoint_dir=str(output / "checkpoint"),
                 init_prompt=start)
    save_adapter_atomically(result.to_peft_model(model), output / "adapter")
    return result


def _report(payload: dict, soft: Any, hard: Any, reading: Any) -> None:
    manual, soft_metrics, hard_metrics, read = (payload[k] for k in ("manual", "soft", "hard", "reading"))
    rows = [  # the reading's validation score is not measured (None)
        ["manual prompt", repr(payload["template"]), manual["validation"], manual["accuracy"], manual["macro_f1"]],
        ["soft prompt + manual", f"10 vectors, step {soft.best_step} of {soft.steps}", soft_metrics["validation"],
         soft_metrics["accuracy"], soft_metrics["macro_f1"]],
        ["hard prompt + manual", f"{hard.text!r} (step {hard.best_step} of {hard.steps})", hard_metrics["validation"],
         hard_metrics["accuracy"], hard_metrics["macro_f1"]],
        ["soft prompt's reading + manual", repr(reading.text), read["validation"], read["accuracy"], read["macro_f1"]],
    ]
    print("\n" + table(["prompt", "what", "validation", "dev accuracy", "dev macro-F1"], rows))
    gain, (low, high) = payload["hard_minus_manual"], payload["hard_minus_manual_95"]
    verdict = "better than" if low > 0 else "worse than" if high < 0 else "not told apart from"
    print(f"\nOn the {payload['eval_rows']} dev rows, which chose nothing, the hard prompt is "
          f"{abs(gain):.1%} {'above' if gain >= 0 else 'BELOW'} the manual prompt (95% interval {low:+.1%} to "
          f"{high:+.1%}: {verdict} it on these rows); the soft prompt "
          f"{soft_metrics['accuracy'] - manual['accuracy']:+.1%}.")
    print(f"The soft prompt's vectors sit at mean cosine distance {reading.mean_distance:.2f} from their nearest "
          f"tokens; its reading scores {read['accuracy']:.1%} against the soft prompt's {soft_metrics['accuracy']:.1%}"
          ", so read it with care.")
    print(f"Hard prompt token ids {hard.token_ids}; its text re-tokenizes to them: {hard.round_trips}.")
    print(f"Training curves: {payload['plot']}. Adapters: {payload['outputs']['soft']}, {payload['outputs']['hard']}.")
    print(f"Done in {payload['seconds']:.0f} s (subsets: {payload['train_rows']} training rows, "
          f"{payload['validation_rows']} validation rows, {payload['eval_rows']} dev rows; run the benchmarks for "
          "full-set numbers).")


__all__ = ["HARD_START", "HardSearch", "discover_hard", "run_demo", "train_soft"]
