"""`softhard demo`: the main job on the embedded default model (SmolLM2-135M) and SST-2.

It scores the manual prompt `Review: {sentence}\\nSentiment:` (label words " negative" / " positive"),
trains a soft prompt and discovers a hard prompt (PEZ) that go in front of that same template, prints both
accuracies, the hard prompt's text and the soft prompt's nearest-token reading (with that reading's own
accuracy), and saves a plot of the training curves. Subsets keep it to a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..files.checkpoint import save_adapter_atomically, write_text_atomically
from ..method.config import SoftHardConfig
from ..optimization.discovery import DiscoveryConfig, run
from ..optimization.training import TrainConfig, train_prompt
from ..reading import project_prompt, waywardness
from .models import DEFAULT_MODEL, load_model
from .plots import plot_training_curves
from .reporting import evaluate_prompt, table
from .tasks import SST2, TaskData, task_objective


def run_demo(args: Any) -> dict:
    """The demo's four steps; `args` are the `softhard demo` options. Returns what it prints as JSON."""
    started, output, quiet = time.time(), Path(args.output_dir), args.json
    say = (lambda *a: None) if quiet else print
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model or DEFAULT_MODEL)
    say(f"Model: {args.model or DEFAULT_MODEL} (loaded in {time.time() - started:.0f} s)")

    train = SST2.load("train", limit=args.train_rows, seed=args.seed, data_dir=args.data_dir)
    dev_texts, dev_labels = SST2.load("eval", data_dir=args.data_dir)
    data = TaskData(train, (dev_texts[: args.eval_rows], dev_labels[: args.eval_rows]))
    objective = task_objective(SST2, data, tokenizer, template=SST2.manual_template)
    say(f"Task: SST-2, template {SST2.manual_template!r}, label words {SST2.label_words}; {len(train[0])} training "
        f"rows (random subset), the first {len(data.held_out[0])} of 872 dev rows scored.\n")

    manual = evaluate_prompt(model, objective, torch.tensor([], dtype=torch.long))
    say(f"[1/4] manual prompt: accuracy {manual['accuracy']:.1%} ({manual['examples_per_second']} rows/s)")
    say(f"[2/4] training a 10-token soft prompt: {args.soft_steps} steps x {args.batch_size} examples")
    soft_model, soft = _train_soft(args, model, objective, output / "soft")
    # the model now holds the best prompt seen during training (scored on these dev rows every few steps)
    soft_metrics = evaluate_prompt(model, objective, soft_model.prompt_encoder["default"].prompt_embeddings().detach())
    say(f"[3/4] discovering a 5-token hard prompt with PEZ: {args.hard_steps} steps x {args.batch_size} examples")
    hard = _discover_hard(args, model, tokenizer, objective, output / "hard")
    hard_metrics = evaluate_prompt(model, objective, torch.tensor(hard.token_ids))
    say("[4/4] reading the soft prompt as tokens and scoring that reading")
    reading = project_prompt(soft_model, tokenizer)
    wayward = waywardness(soft_model, objective)
    plot = plot_training_curves({"soft prompt (10 tokens)": (soft.loss_history, soft.score_history),
                                 "hard prompt, PEZ (5 tokens)": (hard.loss_history, hard.score_history)},
                                output / "training_curves.png")
    payload = {
        "model": args.model or DEFAULT_MODEL, "train_rows": len(train[0]), "eval_rows": len(data.held_out[0]),
        "manual": manual, "soft": soft_metrics, "hard": hard_metrics, "hard_text": hard.text,
        "hard_token_ids": hard.token_ids, "hard_round_trips": hard.round_trips, "soft_reading": reading.text,
        "soft_reading_accuracy": wayward.projected_score, "soft_reading_mean_cosine_distance": reading.mean_distance,
        "plot": str(plot), "seconds": round(time.time() - started, 1),
        "outputs": {"soft": str(output / "soft" / "best"), "hard": str(output / "hard" / "adapter")},
    }
    write_text_atomically(output / "demo.json", json.dumps(payload, indent=2, default=str))
    if quiet:
        print(json.dumps(payload, indent=2, default=str))
    else:
        _report(payload, soft, hard, reading, wayward)
    return payload


def _train_soft(args: Any, model: Any, objective: Any, output: Path):
    from peft import get_peft_model

    soft_model = get_peft_model(model, SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=10, mode="soft",
                                                      init="vocab"))
    interval = max(1, args.soft_steps // 3)
    result = train_prompt(soft_model, objective, TrainConfig(
        steps=args.soft_steps, lr=3e-3, batch_size=args.batch_size, eval_interval=interval,
        checkpoint_interval=interval, seed=args.seed, show_progress=not args.json), output)
    return soft_model, result


def _discover_hard(args: Any, model: Any, tokenizer: Any, objective: Any, output: Path):
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, mode="hard", init="vocab",
                            word_start_only=True, round_trip_only=True)
    config = DiscoveryConfig(method="pez", steps=args.hard_steps, lr=0.03, batch_size=args.batch_size,
                             eval_interval=max(1, args.hard_steps // 2), seed=args.seed, show_progress=not args.json)
    result = run(model, objective, config, prompt, tokenizer, checkpoint_dir=str(output / "checkpoint"))
    save_adapter_atomically(result.to_peft_model(model), output / "adapter")
    return result


def _report(payload: dict, soft: Any, hard: Any, reading: Any, wayward: Any) -> None:
    manual, soft_metrics, hard_metrics = payload["manual"], payload["soft"], payload["hard"]
    rows = [
        ["manual prompt", "Review: … Sentiment:", manual["accuracy"], manual["macro_f1"]],
        ["soft prompt + manual", f"10 vectors, best of {soft.steps} steps (step {soft.best_step})",
         soft_metrics["accuracy"], soft_metrics["macro_f1"]],
        ["hard prompt (PEZ) + manual", f"{hard.text!r} (step {hard.best_step})", hard_metrics["accuracy"],
         hard_metrics["macro_f1"]],
        ["soft prompt's reading + manual", repr(reading.text), wayward.projected_score, None],
    ]
    print("\n" + table(["prompt", "what", "accuracy", "macro-F1"], rows))
    print(f"\nThe soft prompt's vectors sit at mean cosine distance {reading.mean_distance:.2f} from their "
          f"nearest tokens: its reading keeps {wayward.kept:.0%} of its accuracy, so read it with care.")
    print(f"Hard prompt token ids {hard.token_ids}; its text re-tokenizes to them: {hard.round_trips}.")
    print(f"Training curves: {payload['plot']}. Adapters: {payload['outputs']['soft']}, {payload['outputs']['hard']}.")
    print(f"Done in {payload['seconds']:.0f} s (subsets: {payload['train_rows']} training rows, "
          f"{payload['eval_rows']} dev rows; run the benchmarks for full-set numbers).")


__all__ = ["run_demo"]
