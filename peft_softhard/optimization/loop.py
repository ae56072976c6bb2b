"""The one optimisation loop: steps, the evaluation schedule, the best prompt, checkpoints and resume.

Every method (soft prompt training, PEZ, projected SGD, GCG, and the benchmarks' stock baselines) is a small
`Strategy`: how one step changes the prompt. `optimize()` does the rest, the same way for all of them:
- seeded, replayable mini-batches (`batches`), so a resumed run sees the batches it would have seen;
- the starting prompt (step 0), then every `eval_interval` steps (and the last step) the prompt in use is
  scored, and the best one kept (`BestPrompt`: highest score, then highest tie-break, then the first): a run
  never returns a prompt that scores worse than the one it started from;
- every `checkpoint_interval` steps, and on Ctrl-C or a crash, the state before the step is written to
  `checkpoint_dir` (`LoopState`, the strategy's tensors and state, the random-number state), so a resumed
  run ends where an uninterrupted one would;
- under data parallelism every rank takes its share of each batch (`gradient_step`) and checks at the end of
  each restart that its prompt is still identical to the others'.

Example:
    ```py
    >>> state = optimize(lambda restart: PromptTraining(...), objective, LoopConfig(steps=100),
    ...                  score=lambda prompt: objective.score(model, prompt))  # doctest: +SKIP
    >>> state.best.score, state.best.step                                    # doctest: +SKIP
    ```
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import average_gradients, check_batch_size, check_identical_across_ranks, global_mean, shard
from ..files.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adafactor")


@dataclass
class LoopConfig:
    """The schedule every method shares; `TrainConfig` and `DiscoveryConfig` add their own settings."""

    steps: int = field(default=200, metadata={"help": "Optimisation steps (per restart)."})
    batch_size: int = field(default=16, metadata={"help": "Training examples per step."})
    eval_interval: int = field(default=50, metadata={"help": "Score the prompt in use every this many steps."})
    grad_clip: float | None = field(default=1.0, metadata={"help": "Gradient-norm clip (None: off)."})
    seed: int = field(default=0, metadata={"help": "Seeds the batches (and what the method seeds itself)."})
    max_seconds: float | None = field(
        default=None,
        metadata={"help": "Stop once the run has taken this long, all restarts together (time spent scoring not "
                  "counted): compare methods at equal wall time. None: run every step."},
    )
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    optimizer: str = field(
        default="adamw",
        metadata={"help": "'adamw', or 'adafactor' at a constant lr (no relative step, no parameter scaling, no "
                  "warm-up: the setting of Lester et al. and of the PEZ language-model code)."},
    )
    lr: float = field(default=1e-3, metadata={"help": "Learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the trained tensors."})
    checkpoint_interval: int = field(default=50, metadata={"help": "Write a resumable checkpoint this often (steps)."})

    def __post_init__(self) -> None:
        check_positive_ints(self, "steps", "batch_size", "eval_interval", "checkpoint_interval")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}.")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive (or None for no limit), got {self.max_seconds!r}.")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive (or None for no clipping), got {self.grad_clip!r}.")


def make_optimizer(config: LoopConfig, parameters: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    """The optimiser `config` names, over `parameters`."""
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(list(parameters), lr=config.lr, weight_decay=config.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    return torch.optim.AdamW(list(parameters), lr=config.lr, weight_decay=config.weight_decay)


def check_positive_ints(config: Any, *names: str) -> None:
    """Raise a clear error unless each of the config's `names` is a positive integer."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


class Strategy(Protocol):
    """One optimisation method. `optimize` calls `step` once per mini-batch and does everything else."""

    def step(self, batch: list[int]) -> float:
        """One update from the global mini-batch `batch` (example indices); returns its mean training loss."""

    def prompt(self) -> torch.Tensor:
        """The prompt in use now, as it is scored: token ids [n] or vectors [n, d]."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything that defines the prompt (copied into checkpoints and the best prompt)."""

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """The method's own state (an optimiser's, a random generator's)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class BestPrompt:
    """The best prompt seen: the highest score, then (on equal scores) the highest `tie_break`, then the first."""

    score: float = -math.inf
    tie_break: float = -math.inf
    step: int = -1
    restart: int = -1
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # copies of `Strategy.tensors()`

    def update(self, tensors: dict[str, torch.Tensor], score: float, step: int, restart: int = 0,
               tie_break: float = 0.0) -> bool:
        if (score, tie_break) > (self.score, self.tie_break):
            self.score, self.tie_break, self.step, self.restart = score, tie_break, step, restart
            self.tensors = {name: tensor.detach().clone() for name, tensor in tensors.items()}
            return True
        return False

    @property
    def token_ids(self) -> list[int] | None:
        """The best hard prompt's tokens (None before any score, or for a soft prompt)."""
        ids = self.tensors.get("token_ids")
        return None if ids is None else ids.tolist()


@dataclass
class LoopState:
    """Where a run is: everything a checkpoint holds besides the strategy's own tensors and state."""

    restart: int = 0
    step: int = 0  # steps taken in this restart
    losses: list[float] = field(default_factory=list)  # every step's training loss, all restarts
    scores: list[tuple[int, float]] = field(default_factory=list)  # (step over all restarts, score)
    score_seconds: list[float] = field(default_factory=list)  # run seconds (scoring not counted) at each score
    seconds: float = 0.0  # wall time, scoring included
    scoring_seconds: float = 0.0
    best: BestPrompt = field(default_factory=BestPrompt)
    resumed_from: int | None = None  # the step this process resumed from (None: started from scratch)
    started: int = -1  # the last restart whose starting prompt (step 0) was scored

    def to_dict(self) -> dict[str, Any]:
        """A copy to checkpoint (the best prompt's tensors are replaced, never changed in place: not copied)."""
        state = {f.name: copy.copy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "best"}
        best = {f.name: copy.copy(getattr(self.best, f.name)) for f in dataclasses.fields(BestPrompt)}
        return {**state, "best": best}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> LoopState:
        state = cls(**{**saved, "best": BestPrompt(**saved["best"])})
        state.scores = [tuple(score) for score in state.scores]
        return state


def optimize(
    start: Callable[[int], Strategy],
    objective: Any,
    config: LoopConfig,
    score: Callable[[torch.Tensor], float],
    *,
    tie_break: Callable[[torch.Tensor], float] | None = None,
    restarts: int = 1,
    checkpoint_dir: str | Path | None = None,
    checkpoint_interval: int = 50,
    resume: bool = False,
    on_best: Callable[[Strategy], None] | None = None,
    description: str = "optimize",
) -> tuple[LoopState, Strategy]:
    """Run `restarts` independent searches, each `config.steps` steps of `start(restart)`'s strategy on
    `objective`'s training examples; return the final state and the last strategy.

    Args:
        start: builds the strategy of one restart (seeding, a fresh prompt).
        score: the prompt's held-out score (higher is better); `tie_break` orders equal scores.
        checkpoint_dir: where checkpoints go (none if None); `resume=True` continues from the one there.
        on_best: called when a new best prompt is scored (e.g. to save it).
    """
    check_batch_size(config.batch_size)
    state, saved = LoopState(), None
    if resume and checkpoint_dir is not None and has_checkpoint(checkpoint_dir):
        saved = load_checkpoint(checkpoint_dir)
        if "loop" not in saved:
            raise ValueError(f"The checkpoint in {checkpoint_dir} was written by peft-softhard 0.1.0, whose layout "
                             "this version does not read: finish that run with 0.1.0, or delete it to start over.")
        state = LoopState.from_dict(saved["loop"])
        state.resumed_from = state.step
        logger.info("Resuming from step %d of restart %d", state.step, state.restart + 1)
    elif resume:
        logger.info("No checkpoint in %s: starting from scratch", checkpoint_dir)
    clock = _Clock(state)
    strategy = None
    for restart in range(state.restart, restarts):
        strategy = start(restart)
        if saved is not None and restart == state.restart:
            strategy.load_tensors(saved["prompt"])
            strategy.load_state_dict(saved["method"])
            torch.set_rng_state(saved["rng"])
        else:
            state.restart, state.step = restart, 0
        run = _Restart(strategy, objective, config, state, clock, score, tie_break, on_best,
                       checkpoint_dir, checkpoint_interval)
        out_of_time = run.steps(f"{description} restart {restart + 1}/{restarts}" if restarts > 1 else description)
        check_identical_across_ranks(list(strategy.tensors().values()), "prompt")
        if out_of_time:
            break
    state.seconds = clock.seconds()
    return state, strategy


class _Clock:
    """The run's seconds so far, carried across a resume, and the share spent scoring."""

    def __init__(self, state: LoopState) -> None:
        self.state, self.started = state, time.time() - state.seconds

    def seconds(self) -> float:
        return time.time() - self.started

    def run_seconds(self) -> float:
        return self.seconds() - self.state.scoring_seconds


@dataclass
class _Restart:
    """The steps of one restart (see `optimize`)."""

    strategy: Strategy
    objective: Any
    config: LoopConfig
    state: LoopState
    clock: _Clock
    score: Callable[[torch.Tensor], float]
    tie_break: Callable[[torch.Tensor], float] | None
    on_best: Callable[[Strategy], None] | None
    checkpoint_dir: str | Path | None
    checkpoint_interval: int

    def steps(self, description: str) -> bool:
        """Take the restart's remaining steps; True if `max_seconds` stopped them."""
        config, state = self.config, self.state
        stream = batches(self.objective.num_train, config.batch_size, config.seed + state.restart)
        for _ in range(state.step):  # replay the batches already used
            next(stream)
        bar = tqdm(total=config.steps, initial=state.step, disable=not config.show_progress, desc=description)
        if state.step == 0 and not self.scored_start():
            self.evaluate()  # the starting prompt competes too: a run never returns worse than where it began
            self.state.started = self.state.restart
        out_of_time = False
        while state.step < config.steps and not out_of_time:
            before = self.snapshot()  # what a Ctrl-C or a crash inside the step saves (prompts are small)
            try:
                state.losses.append(self.strategy.step(next(stream)))
                state.step += 1
                out_of_time = config.max_seconds is not None and self.clock.run_seconds() >= config.max_seconds
                if state.step % config.eval_interval == 0 or state.step == config.steps or out_of_time:
                    self.evaluate()
            except BaseException:
                if self.checkpoint_dir is not None:  # (rank 0 writes; see files/checkpoint.py)
                    save_checkpoint(self.checkpoint_dir, before)
                    logger.warning("Interrupted at step %d; resume from the checkpoint in %s",
                                   before["loop"]["step"], self.checkpoint_dir)
                bar.close()
                raise
            if self.checkpoint_dir is not None and (  # out of time: so that a longer run can continue from here
                    state.step % self.checkpoint_interval == 0 or state.step == config.steps or out_of_time):
                save_checkpoint(self.checkpoint_dir, self.snapshot())
            bar.update(1)
            bar.set_postfix(loss=f"{state.losses[-1]:.3f}", best=f"{state.best.score:.3f}")
        bar.close()
        if out_of_time:
            logger.info("Stopping at step %d of restart %d: max_seconds=%s reached", state.step, state.restart + 1,
                        config.max_seconds)
        return out_of_time

    def scored_start(self) -> bool:
        """Whether this restart's step 0 is scored already (a run interrupted in its first step)."""
        return self.state.started == self.state.restart

    def evaluate(self) -> None:
        state, started = self.state, time.time()
        state.score_seconds.append(self.clock.run_seconds())
        prompt = self.strategy.prompt()
        score = self.score(prompt)
        state.scores.append((state.restart * self.config.steps + state.step, score))
        tie_break = self.tie_break(prompt) if self.tie_break is not None else 0.0
        improved = state.best.update(self.strategy.tensors(), score, state.step, state.restart, tie_break)
        if improved and self.on_best is not None:
            self.on_best(self.strategy)
        state.scoring_seconds += time.time() - started

    def snapshot(self) -> dict[str, Any]:
        """Everything a resumed run needs, copied (the live objects keep changing)."""
        self.state.seconds = self.clock.seconds()
        return {
            "loop": self.state.to_dict(),
            "prompt": {name: tensor.detach().clone() for name, tensor in self.strategy.tensors().items()},
            "method": copy.deepcopy(self.strategy.state_dict()),  # an optimiser's state_dict holds live tensors
            "rng": torch.get_rng_state(),
        }


def gradient_step(
    optimizer: torch.optim.Optimizer,
    parameters: Sequence[torch.Tensor],
    batch: list[int],
    losses: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]],
    grad_clip: float | None,
) -> float:
    """One data-parallel optimiser step: `losses(local)` gives (the loss to minimise, the loss to report) on this
    rank's share of `batch`; gradients are averaged over the global batch, clipped, applied. Returns the
    reported loss's global mean."""
    optimizer.zero_grad()
    local = shard(batch)  # this process's share of the global batch (all of it without parallelism)
    loss, reported = losses(local)
    loss.backward()
    average_gradients(parameters, len(local), len(batch))
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    return global_mean(reported.item(), len(local), len(batch))


def batches(num_examples: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless shuffled mini-batches (epochs without replacement), seeded."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(num_examples, generator=generator).tolist()
        for start in range(0, num_examples, batch_size):
            batch = order[start : start + batch_size]
            if len(batch) == batch_size or num_examples < batch_size:
                yield batch


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No gradient for the model's own weights while searching or scoring (restored afterwards); eval mode
    likewise."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.requires_grad_(False).eval()
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)
