"""Train a SOFTHARD adapter on an objective with a plain loop: progress, the best prompt kept, resumable.

`output_dir` receives:
    best/          the adapter with the best held-out score so far (written whenever it improves)
    adapter/       the adapter at the end of training (the model itself is left with the best prompt)
    checkpoint/    everything needed to continue (every `checkpoint_interval` steps, and on Ctrl-C or a crash)
    history.json   losses and scores
All of it is written atomically: an interruption never leaves a half-written adapter where a good one was.
Resuming replays the same batches and random numbers, so an interrupted run ends where an uninterrupted
one would.

Example:
    ```py
    >>> result = train_prompt(peft_model, objective, TrainConfig(steps=200), "out/soft")  # doctest: +SKIP
    >>> result.best_score                                                                 # doctest: +SKIP
    ```
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .checkpoint import (
    has_checkpoint,
    load_checkpoint,
    save_adapter_atomically,
    save_checkpoint,
    write_text_atomically,
)
from .discovery import batches, frozen
from .distributed import average_gradients, check_batch_size, check_identical_across_ranks, global_mean, shard

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = field(default=200, metadata={"help": "Optimisation steps."})
    lr: float = field(default=3e-3, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    batch_size: int = field(default=16, metadata={"help": "Training examples per step."})
    eval_interval: int = field(default=50, metadata={"help": "Score on held-out data every this many steps."})
    checkpoint_interval: int = field(default=50, metadata={"help": "Write a resumable checkpoint this often."})
    grad_clip: float | None = field(default=1.0, metadata={"help": "Gradient-norm clip (None: off)."})
    seed: int = field(default=0, metadata={"help": "Seeds the batches (initialise the prompt before training)."})
    dropout: bool = field(
        default=False,
        metadata={"help": "Keep the frozen model's dropout active while training. Off by default: the prompt's "
                  "gradient is then deterministic, and 1 or N processes give the same result."},
    )
    load_best_at_end: bool = field(
        default=True, metadata={"help": "Leave the best-scoring prompt (not the last) in the model when done."}
    )
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar."})


@dataclass
class TrainResult:
    best_score: float
    best_step: int
    loss_history: list[float]
    score_history: list[tuple[int, float]]
    steps: int
    seconds: float
    resumed_from: int | None = None


def train_prompt(
    peft_model: Any, objective: Any, config: TrainConfig, output_dir: str | Path, resume: bool = False
) -> TrainResult:
    """Train the active adapter's prompt (and any task head peft trains with it) on `objective`."""
    output_dir = Path(output_dir)
    check_batch_size(config.batch_size)
    adapter = peft_model.active_adapter
    encoder = peft_model.prompt_encoder[adapter]
    base = peft_model.get_base_model()
    trainable = _adapter_parameters(peft_model, adapter)
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.lr, weight_decay=config.weight_decay)
    state: dict[str, Any] = {"step": 0, "losses": [], "scores": [], "best_score": -math.inf, "best_step": -1,
                             "seconds": 0.0, "best_parameters": {}}
    resumed_from = None
    if resume and has_checkpoint(output_dir / "checkpoint"):
        state = _restore(load_checkpoint(output_dir / "checkpoint"), trainable, optimizer)
        resumed_from = state["step"]
        logger.info("Resuming from step %d", resumed_from)
    elif resume:
        logger.info("No checkpoint in %s: starting from scratch", output_dir)

    stream = batches(objective.num_train, config.batch_size, config.seed)
    for _ in range(state["step"]):  # replay the batches already used
        next(stream)
    started = time.time() - state["seconds"]

    def snapshot() -> dict[str, Any]:
        """The state now, copied: what a Ctrl-C or a crash inside the next step saves."""
        return {
            **state, "losses": list(state["losses"]), "scores": list(state["scores"]),
            "best_parameters": dict(state["best_parameters"]),  # replaced, never changed in place
            "seconds": time.time() - started,
            "parameters": {name: p.detach().clone() for name, p in trainable.items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "rng": torch.get_rng_state(),
        }

    progress = tqdm(total=config.steps, initial=state["step"], disable=not config.show_progress, desc="train")
    while state["step"] < config.steps:
        before = snapshot()
        try:
            peft_model.train(config.dropout)
            optimizer.zero_grad()
            batch = next(stream)
            local = shard(batch)  # this process's share of the global batch (all of it without parallelism)
            loss = objective.loss(base, encoder.prompt_embeddings(), local)
            loss.backward()
            average_gradients(list(trainable.values()), len(local), len(batch))
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(list(trainable.values()), config.grad_clip)
            optimizer.step()
            state["step"] += 1
            state["losses"].append(global_mean(loss.item(), len(local), len(batch)))
            step = state["step"]
            if step % config.eval_interval == 0 or step == config.steps:
                with frozen(base):
                    score = objective.score(base, encoder.prompt_embeddings().detach())
                state["scores"].append((step, score))
                if score > state["best_score"]:
                    state["best_score"], state["best_step"] = score, step
                    state["best_parameters"] = {name: p.detach().clone() for name, p in trainable.items()}
                    save_adapter_atomically(peft_model, output_dir / "best", adapter)
        except BaseException:  # Ctrl-C or a crash: save the state before this step (the best adapter is on disk)
            save_checkpoint(output_dir / "checkpoint", before)
            progress.close()
            logger.warning("Interrupted at step %d; resume from the checkpoint in %s", before["step"], output_dir)
            raise
        if step % config.checkpoint_interval == 0 or step == config.steps:
            save_checkpoint(output_dir / "checkpoint", snapshot())
        progress.update(1)
        progress.set_postfix(loss=f"{state['losses'][-1]:.3f}", best=f"{state['best_score']:.3f}")
    progress.close()
    check_identical_across_ranks(list(trainable.values()), "trained prompt")
    save_adapter_atomically(peft_model, output_dir / "adapter", adapter)
    if config.load_best_at_end and state["best_parameters"]:
        with torch.no_grad():
            for name, parameter in trainable.items():
                parameter.copy_(state["best_parameters"][name])
    result = TrainResult(state["best_score"], state["best_step"], state["losses"],
                         [tuple(s) for s in state["scores"]], state["step"], time.time() - started, resumed_from)
    write_text_atomically(output_dir / "history.json", json.dumps(asdict(result), indent=1))
    return result


def _adapter_parameters(peft_model: Any, adapter: str) -> dict[str, torch.Tensor]:
    """The trainable parameters of one adapter: its prompt and its own copies of task heads. The model's other
    adapters stay untouched, whatever their requires_grad says."""
    own = (f"prompt_encoder.{adapter}.", f"modules_to_save.{adapter}.")
    return {name: p for name, p in peft_model.named_parameters()
            if p.requires_grad and any(part in name for part in own)}


def _restore(saved: dict[str, Any], trainable: dict[str, torch.Tensor], optimizer) -> dict[str, Any]:
    missing = sorted(set(trainable) - set(saved["parameters"]))
    if missing:
        raise ValueError(f"The checkpoint does not match this model/adapter (no {missing[:3]}); delete it to restart.")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(saved["parameters"][name])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    saved["scores"] = [tuple(s) for s in saved["scores"]]
    return {k: v for k, v in saved.items() if k not in ("parameters", "optimizer", "rng")}
