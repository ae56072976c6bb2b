"""`softhard demo`: the main job on the embedded default model (SmolLM2-135M) and SST-2 (or AG News, `--task`).

It scores the task's manual prompt (SST-2: `Review: {sentence}\\nSentiment:`, label words " negative" /
" positive"), trains a soft prompt in front of that same template, discovers a hard prompt with `softhard
discover`'s own search (`DiscoveryConfig()`: label words, tokens at a slot of the template, template edits, each
starting from the manual prompt and kept only if it wins on validation), and reads the soft prompt back as
tokens. Each prompt's step is chosen on validation rows carved from the task's train split; the dev rows are
scored once, by the chosen prompts, and the demo says by how much the hard prompt beats (or misses) the manual
one there. Subsets keep it to 5-13 minutes on 2 CPU cores. `DemoConfig` holds its settings (the command's options
are built from its fields), so docs/quickstart.md's Python runs the same steps with the same numbers.
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
from ..optimization.discovery import DiscoveryConfig, DiscoveryResult, run
from ..optimization.training import TrainConfig, TrainResult, train_prompt
from ..reading import project_prompt
from .models import DEFAULT_MODEL, load_model, resolve_device
from .plots import plot_training_curves
from .reporting import evaluate_prompt, table
from .tasks import BUILT_IN, Task, load_task_data, prompt_init, task_objective


@dataclass
class DemoConfig:
    """`softhard demo`'s settings besides the hard-prompt search (that is `DiscoveryConfig()`, discover's own).

    Example:
        ```py
        >>> settings = DemoConfig()  # what `softhard demo` runs with no options
        >>> settings.soft_training().eval_interval, settings.soft_prompt_length
        (30, 10)
        ```
    """

    task: str = field(default="sst2", metadata={"help": "A built-in task with a manual template."})
    train_rows: int = field(default=1000, metadata={"help": "Training subset."})
    validation_rows: int = field(
        default=150, metadata={"help": "Rows carved from the train split that choose each prompt's step."}
    )
    eval_rows: int = field(default=300, metadata={"help": "A seeded subset of the dev rows, scored once at the end."})
    soft_steps: int = field(default=60, metadata={"help": "The soft prompt's training steps."})
    soft_batch_size: int = field(default=8, metadata={"help": "The soft prompt's examples per step."})
    seed: int = field(default=0, metadata={"help": "Seeds the rows drawn, the soft prompt's batches and the search."})

    soft_prompt_length = 10
    soft_init = "manual"  # the task's instruction; chosen on validation rows by benchmarks/settings.py

    def __post_init__(self) -> None:
        if self.task not in BUILT_IN:
            raise ValueError(f"DemoConfig.task is {self.task!r}: the demo runs a built-in task, {list(BUILT_IN)}.")

    def soft_prompt(self, task: Task, tokenizer: Any) -> SoftHardConfig:
        """The soft prompt's config: `soft_prompt_length` vectors from `task`'s instruction."""
        return SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.soft_prompt_length, mode="soft",
                              **prompt_init(task, self.soft_init, tokenizer, self.soft_prompt_length))

    def soft_training(self, show_progress: bool = True) -> TrainConfig:
        """The soft prompt's training: scored (and checkpointed) at step 0, half way and the end (a score costs
        about 8 steps)."""
        interval = max(1, self.soft_steps // 2)
        return TrainConfig(steps=self.soft_steps, batch_size=self.soft_batch_size, eval_interval=interval,
                           checkpoint_interval=interval, seed=self.seed, show_progress=show_progress)


def run_demo(args: Any, settings: DemoConfig, search: DiscoveryConfig) -> dict:
    """The demo's four steps with `settings` and `search` (the hard-prompt search: discover's `DiscoveryConfig`,
    as its options set it); `args` holds the `softhard demo` options that are not settings (model, data folder,
    device, output folder, --json). Returns what it prints as JSON."""
    started, output, quiet = time.time(), Path(args.output_dir), args.json
    say = (lambda *a: None) if quiet else print
    torch.manual_seed(settings.seed)
    device = resolve_device(args.device)  # a wrong --device is refused before the model loads
    model, tokenizer = load_model(args.model or DEFAULT_MODEL)
    model.to(device)
    say(f"Model: {args.model or DEFAULT_MODEL} (loaded in {time.time() - started:.0f} s)")

    task = BUILT_IN[settings.task]
    data = load_task_data(task, settings.train_rows, settings.eval_rows, settings.seed, args.data_dir,
                          settings.validation_rows)
    objective = task_objective(task, data, tokenizer, template=task.manual_template)
    rows = {"train": len(data.train[0]), "validation": len(data.validation[0]), "eval": len(data.evaluation[0])}
    say(f"Task: {task.name}, template {task.manual_template!r}, label words {task.label_words}; "
        f"{rows['train']} training rows, {rows['validation']} validation rows (from the train split; they choose "
        f"each prompt's step), {rows['eval']} dev rows (scored once, at the end).\n")

    say(f"[1/4] training a {settings.soft_prompt_length}-token soft prompt: {settings.soft_steps} steps x "
        f"{settings.soft_batch_size} examples")
    soft_model, soft = train_soft(model, tokenizer, objective, output / "soft", settings, task,
                                  show_progress=not quiet)
    soft_vectors = soft_model.prompt_encoder["default"].prompt_embeddings().detach()  # the best step's
    token_search = search.token_method(task.manual_template)
    say(f"[2/4] discovering a hard prompt: stages {', '.join(search.stages)}; tokens ({token_search}) at the "
        f"template's {search.placement}")
    hard = discover_hard(model, tokenizer, objective, output / "hard", search)
    found = hard.whole_prompt
    say("[3/4] reading the soft prompt as tokens")
    reading = project_prompt(soft_model, tokenizer)
    say(f"[4/4] scoring the manual, soft, hard prompts and the reading on the {rows['eval']} dev rows")
    results, gain, low, high = _score_on_dev(model, objective, soft_vectors, found, reading)
    results["manual"]["validation"] = hard.start_score
    results["soft"]["validation"], results["hard"]["validation"] = soft.best_score, hard.best_score
    results["reading"]["validation"] = None
    curves = {"soft prompt (10 tokens)": (soft.loss_history, soft.score_history),
              "hard prompt (all stages)": (hard.loss_history, hard.score_history)}
    plot = plot_training_curves(curves, output / "training_curves.png")
    payload = {
        "model": args.model or DEFAULT_MODEL, "task": task.name, "template": task.manual_template,
        "label_words": task.label_words, **{f"{split}_rows": count for split, count in rows.items()}, **results,
        "hard_prompt": found.filled(tokenizer), "hard_template": found.template, "hard_label_words": found.label_words,
        "hard_text": hard.text, "hard_token_ids": hard.token_ids, "hard_round_trips": hard.round_trips,
        "hard_stages": [{"stage": r.stage, "start": r.start_score, "best": r.best_score, "kept": r.kept}
                        for r in hard.stages],
        "soft_step": soft.best_step, "hard_minus_manual": round(gain, 4),
        "hard_minus_manual_95": [round(low, 4), round(high, 4)], "soft_reading": reading.text, "plot": str(plot),
        "soft_reading_mean_cosine_distance": reading.mean_distance, "seconds": round(time.time() - started, 1),
        "outputs": {"soft": str(output / "soft" / "best"), "hard": str(output / "hard" / "prompt.json")},
    }
    write_text_atomically(output / "demo.json", json.dumps(payload, indent=2, default=str))
    if quiet:
        print(json.dumps(payload, indent=2, default=str))
    else:
        _report(payload, soft, hard, reading)
    return payload


def _score_on_dev(model: Any, objective: Any, soft_vectors: torch.Tensor, found: Any, reading: Any):
    """Each prompt's metrics on the dev rows (the hard one with its own template and label words), and the hard
    prompt's accuracy minus the manual one's there with its paired 95% interval."""
    hard_objective, hard_ids = objective.for_prompt(found)
    scored = {"manual": (objective, torch.tensor([], dtype=torch.long)), "soft": (objective, soft_vectors),
              "hard": (hard_objective, hard_ids), "reading": (objective, torch.tensor(reading.token_ids))}
    results = {name: evaluate_prompt(model, scoring, prompt, return_predictions=True)
               for name, (scoring, prompt) in scored.items()}
    predictions = {name: result.pop("predictions") for name, result in results.items()}
    return results, *accuracy_difference(predictions["hard"], predictions["manual"], objective.labels("eval"))


def train_soft(model: Any, tokenizer: Any, objective: Any, output: Path, settings: DemoConfig, task: Task,
               *, show_progress: bool = True) -> tuple[Any, TrainResult]:
    """The demo's soft prompt (`settings.soft_prompt`, trained with `settings.soft_training()`) on the task
    `objective` scores: (the peft model, holding the best step's prompt, and the training result)."""
    from peft import get_peft_model

    soft_model = get_peft_model(model, settings.soft_prompt(task, tokenizer))
    result = train_prompt(soft_model, objective, settings.soft_training(show_progress), output)
    return soft_model, result


def discover_hard(model: Any, tokenizer: Any, objective: Any, output: Path, search: DiscoveryConfig) -> DiscoveryResult:
    """The demo's hard prompt: `run` with `search` (discover's own search) from the task's manual prompt
    (`objective`); the whole prompt is saved as `output`/prompt.json (`softhard eval --prompt-file` scores it)."""
    result = run(model, objective, search, tokenizer=tokenizer, checkpoint_dir=str(output / "checkpoint"))
    write_text_atomically(output / "prompt.json", result.whole_prompt.to_json(tokenizer, validation=result.best_score))
    if result.token_ids:  # also a SOFTHARD adapter: the tokens at their place in the template
        save_adapter_atomically(result.to_peft_model(model), output / "adapter")
    return result


def _report(payload: dict, soft: Any, hard: DiscoveryResult, reading: Any) -> None:
    manual, soft_metrics, hard_metrics, read = (payload[k] for k in ("manual", "soft", "hard", "reading"))
    words = " / ".join(repr(word) for word in payload["hard_label_words"])
    rows = [  # the reading's validation score is not measured (None)
        ["manual prompt", repr(payload["template"]), manual["validation"], manual["accuracy"], manual["macro_f1"]],
        ["soft prompt + manual", f"10 vectors, step {soft.best_step} of {soft.steps}", soft_metrics["validation"],
         soft_metrics["accuracy"], soft_metrics["macro_f1"]],
        ["hard prompt (discovered)", f"{payload['hard_prompt']!r} -> {words}", hard_metrics["validation"],
         hard_metrics["accuracy"], hard_metrics["macro_f1"]],
        ["soft prompt's reading + manual", repr(reading.text), read["validation"], read["accuracy"], read["macro_f1"]],
    ]
    print("\n" + table(["prompt", "what", "validation", "dev accuracy", "dev macro-F1"], rows))
    for stage in hard.stages:
        print(f"  hard search, {stage.stage}: validation {stage.start_score:.4f} -> {stage.best_score:.4f} "
              f"({'kept' if stage.kept else 'not kept: no better than its start'}; {stage.steps} steps, "
              f"{stage.seconds:.0f} s)")
    gain, (low, high) = payload["hard_minus_manual"], payload["hard_minus_manual_95"]
    verdict = "better than" if low > 0 else "worse than" if high < 0 else "not told apart from"
    print(f"\nOn the {payload['eval_rows']} dev rows, which chose nothing, the hard prompt is "
          f"{abs(gain):.1%} {'above' if gain >= 0 else 'BELOW'} the manual prompt (95% interval {low:+.1%} to "
          f"{high:+.1%}: {verdict} it on these rows); the soft prompt "
          f"{soft_metrics['accuracy'] - manual['accuracy']:+.1%}.")
    print(f"The soft prompt's vectors sit at mean cosine distance {reading.mean_distance:.2f} from their nearest "
          f"tokens; its reading scores {read['accuracy']:.1%} against the soft prompt's {soft_metrics['accuracy']:.1%}"
          ", so read it with care.")
    print(f"The hard prompt is text you can paste: {payload['hard_prompt']!r}, read for {words}; it re-tokenizes to "
          f"what was scored: {hard.round_trips}.")
    print(f"Training curves: {payload['plot']}. Prompts: {payload['outputs']['soft']}, {payload['outputs']['hard']}.")
    print(f"Done in {payload['seconds']:.0f} s (subsets: {payload['train_rows']} training rows, "
          f"{payload['validation_rows']} validation rows, {payload['eval_rows']} dev rows; run the benchmarks for "
          "full-set numbers).")


__all__ = ["DemoConfig", "discover_hard", "run_demo", "train_soft"]
