"""Train a SOFTHARD adapter on an objective: the `PromptTraining` strategy on the one loop (`loop.optimize`).

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

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files.checkpoint import save_adapter_atomically, write_text_atomically
from ..objectives import Objective
from ..peft_boundary.adapters import adapter_parameters
from .loop import LoopConfig, frozen, gradient_step, make_optimizer, optimize


@dataclass
class TrainConfig(LoopConfig):
    # AdamW 3e-2 from the task's instruction: the best soft prompt on validation rows (benchmarks/settings.py)
    lr: float = field(default=3e-2, metadata={"help": "Learning rate."})
    dropout: bool = field(
        default=False,
        metadata={"help": "Keep the frozen model's dropout active while training. Off by default: the prompt's "
                  "gradient is then deterministic, and 1 or N processes give the same result."},
    )
    load_best_at_end: bool = field(
        default=True, metadata={"help": "Leave the best-scoring prompt (not the last) in the model when done."}
    )


@dataclass
class TrainResult:
    best_score: float
    best_step: int
    loss_history: list[float]
    score_history: list[tuple[int, float]]
    steps: int
    seconds: float
    score_seconds: list[float] = field(default_factory=list)  # training seconds (scoring not counted) at each score
    resumed_from: int | None = None


class PromptTraining:
    """The gradient strategy: the configured optimiser on some trainable tensors that make a prompt (a soft
    prompt and its task head, a stock PROMPT_TUNING embedding, LoRA weights with no prompt at all).

    Args:
        model: what `objective.loss` runs (the base model, or a LoRA model).
        parameters: the trainable tensors by name.
        prompt: gives the prompt vectors [n, d] the model sees now (differentiable).
        before_step: called before every step (e.g. to set dropout on or off).
    """

    def __init__(self, model: nn.Module, objective: Objective, parameters: dict[str, torch.Tensor],
                 prompt: Callable[[], torch.Tensor], config: TrainConfig,
                 before_step: Callable[[], None] | None = None) -> None:
        self.model, self.objective, self.parameters, self.prompt_of = model, objective, parameters, prompt
        self.grad_clip, self.before_step = config.grad_clip, before_step
        self.optimizer = make_optimizer(config, list(parameters.values()))

    def step(self, batch: list[int]) -> float:
        if self.before_step is not None:
            self.before_step()

        def losses(local: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            loss = self.objective.loss(self.model, self.prompt_of(), local)
            return loss, loss

        return gradient_step(self.optimizer, list(self.parameters.values()), batch, losses, self.grad_clip)

    def prompt(self) -> torch.Tensor:
        return self.prompt_of().detach()

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.parameters)

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.parameters) - set(tensors))
        if missing:
            raise ValueError(f"The checkpoint does not match this model/adapter (no {missing[:3]}); delete it to "
                             "restart.")
        for name, parameter in self.parameters.items():
            parameter.copy_(tensors[name])

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def train_prompt(
    peft_model: Any, objective: Objective, config: TrainConfig, output_dir: str | Path, resume: bool = False
) -> TrainResult:
    """Train the active adapter's prompt (and any task head peft trains with it) on `objective`."""
    output_dir = Path(output_dir)
    adapter = peft_model.active_adapter
    encoder = peft_model.prompt_encoder[adapter]
    base = peft_model.get_base_model()

    def start(restart: int) -> PromptTraining:
        return PromptTraining(base, objective, adapter_parameters(peft_model, adapter), encoder.prompt_embeddings,
                              config, before_step=lambda: peft_model.train(config.dropout))

    def score(prompt: torch.Tensor) -> float:
        with frozen(base):
            return objective.score(base, prompt)

    state, strategy = optimize(
        start, objective, config, score, checkpoint_dir=output_dir / "checkpoint",
        checkpoint_interval=config.checkpoint_interval, resume=resume, description="train",
        on_best=lambda _: save_adapter_atomically(peft_model, output_dir / "best", adapter),
    )
    save_adapter_atomically(peft_model, output_dir / "adapter", adapter)
    if config.load_best_at_end and state.best.tensors:
        strategy.load_tensors(state.best.tensors)
    result = TrainResult(state.best.score, state.best.step, state.losses, state.scores, state.step, state.seconds,
                         state.score_seconds, state.resumed_from)
    write_text_atomically(output_dir / "history.json", json.dumps(asdict(result), indent=1))
    return result

