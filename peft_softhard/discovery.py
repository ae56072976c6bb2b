"""Hard-prompt discovery: PEZ, and the projected-SGD and GCG baselines, behind one `run()`.

PEZ (Wen et al. 2023, Algorithm 1): a continuous prompt P is kept; each step the loss is taken at P's
projection onto the allowed tokens and its gradient is applied to P itself (straight-through), so P can
drift between tokens until a better one becomes nearest. The best *projected* prompt seen is returned.
Projected SGD ("AutoPrompt_SGD" in the paper) is the same step followed by P <- projection(P).
GCG (Zou et al. 2023): rank token swaps by the gradient at the one-hot prompt, score a batch of random
single swaps exactly, keep the best.

Example:
    ```py
    >>> from peft_softhard.discovery import DiscoveryConfig, run
    >>> from peft_softhard.objectives import TargetTextObjective
    >>> objective = TargetTextObjective(tokenizer, target=" Paris")
    >>> result = run(model, objective, DiscoveryConfig(method="pez", steps=200))  # doctest: +SKIP
    >>> result.text, result.best_score                                            # doctest: +SKIP
    ```
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from .config import SoftHardConfig
from .distributed import (
    average_gradients,
    check_batch_size,
    check_identical_across_ranks,
    combine,
    global_mean,
    shard,
)
from .encoder import SoftHardPromptEncoder
from .objectives import Objective
from .projection import module_device, nearest_tokens

logger = logging.getLogger(__name__)

METHODS = ("pez", "psgd", "gcg")
OPTIMIZERS = ("adamw", "adafactor")


@dataclass
class DiscoveryConfig:
    """How to search. What the prompt may be (length, init, metric, vocabulary) is a `SoftHardConfig`."""

    method: str = field(default="pez", metadata={"help": "'pez', 'psgd' (projected SGD) or 'gcg'."})
    steps: int = field(default=500, metadata={"help": "Optimisation steps per restart."})
    lr: float = field(default=0.1, metadata={"help": "Learning rate (PEZ, projected SGD)."})
    weight_decay: float = field(default=0.1, metadata={"help": "Weight decay of the continuous prompt."})
    optimizer: str = field(default="adamw", metadata={"help": "'adamw' or 'adafactor' (constant lr)."})
    batch_size: int = field(default=16, metadata={"help": "Training examples per step."})
    num_restarts: int = field(default=1, metadata={"help": "Independent runs from new initial prompts."})
    eval_interval: int = field(default=50, metadata={"help": "Score the projected prompt every this many steps."})
    seed: int = field(default=0, metadata={"help": "Seeds initialisation, batches and GCG's sampling."})
    fluency_weight: float = field(
        default=0.0, metadata={"help": "λ: loss = λ·LM loss of the prompt's own tokens + (1-λ)·task loss."}
    )
    grad_clip: float | None = field(default=1.0, metadata={"help": "Gradient-norm clip (None: off)."})
    gcg_top_k: int = field(default=64, metadata={"help": "GCG: candidate tokens per position from the gradient."})
    gcg_candidates: int = field(default=64, metadata={"help": "GCG: swaps scored exactly per step."})
    max_seconds: float | None = field(
        default=None,
        metadata={"help": "Stop once the search has run this long, all restarts together (time spent scoring "
                  "held-out prompts not counted): compare methods at equal wall time. None: run every step."},
    )
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}: choose one of {', '.join(METHODS)}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}.")
        for name in ("steps", "batch_size", "num_restarts", "eval_interval", "gcg_top_k", "gcg_candidates"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}.")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive (or None for no limit), got {self.max_seconds!r}.")
        if not 0.0 <= self.fluency_weight < 1.0:
            raise ValueError(f"fluency_weight must be in [0, 1), got {self.fluency_weight}.")


@dataclass
class DiscoveryResult:
    """The best projected prompt found, and how the search went."""

    token_ids: list[int]
    text: str | None
    best_score: float
    best_step: int
    best_restart: int
    loss_history: list[float]  # training loss at each step (all restarts, in order)
    score_history: list[tuple[int, float]]  # (step, score of the projected prompt then), all restarts
    steps: int  # taken, all restarts (fewer than configured when max_seconds stopped the search)
    seconds: float
    score_seconds: list[float]  # search seconds (scoring not counted) at each score_history entry
    method: str
    perplexity: float | None  # of the prompt's own tokens under the model (causal LMs)
    round_trips: bool | None  # tokenizer(text) gives back token_ids exactly
    notes: list[str]
    prompt_config: SoftHardConfig = field(repr=False)

    def to_peft_model(self, base_model: nn.Module, adapter_name: str = "default"):
        """A SOFTHARD hard-mode adapter on `base_model` whose prompt is exactly these tokens."""
        from peft import get_peft_model

        config = dataclasses.replace(self.prompt_config, mode="hard", init="token_ids", init_token_ids=self.token_ids)
        model = get_peft_model(base_model, config, adapter_name=adapter_name)
        model.prompt_encoder[adapter_name].set_token_ids(torch.tensor(self.token_ids))
        return model


class BestPrompt:
    """The best prompt seen: the highest score, then (on equal scores) the highest `tie_break`, then the first."""

    def __init__(self) -> None:
        self.score = self.tie_break = -math.inf
        self.token_ids: list[int] | None = None
        self.step = self.restart = -1

    def update(self, token_ids: torch.Tensor, score: float, step: int, restart: int = 0, tie_break: float = 0.0):
        if (score, tie_break) > (self.score, self.tie_break):
            self.score, self.tie_break, self.token_ids = score, tie_break, token_ids.tolist()
            self.step, self.restart = step, restart
            return True
        return False


def run(
    model: nn.Module,
    objective: Objective,
    config: DiscoveryConfig | None = None,
    prompt: SoftHardConfig | None = None,
    tokenizer=None,
    checkpoint_dir: str | None = None,
    checkpoint_interval: int = 50,
    resume: bool = False,
) -> DiscoveryResult:
    """Search for the hard prompt that does best on `objective`; the model's weights are never changed.

    Args:
        model: a causal LM (a peft model is unwrapped to its base model).
        objective: e.g. `ClassificationObjective` or `TargetTextObjective`.
        config: the search (method, steps, optimiser, ...); default `DiscoveryConfig()`.
        prompt: the prompt's length, initialisation, metric and vocabulary constraints; default 10 tokens.
        tokenizer: for the vocabulary constraints and the result's text (default: the objective's).
        checkpoint_dir: where to write a resumable checkpoint every `checkpoint_interval` steps and on
            Ctrl-C or a crash; with `resume=True` the search continues from it and ends as an uninterrupted
            search with the same seed would.
    """
    config = config or DiscoveryConfig()
    check_batch_size(config.batch_size)
    prompt = dataclasses.replace(
        prompt or SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=10), mode="hard", inference_mode=False
    )
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    tokenizer = tokenizer if tokenizer is not None else getattr(objective, "tokenizer", None)
    progress = {"restart": 0, "step": 0, "losses": [], "scores": [], "seconds": 0.0, "best": BestPrompt().__dict__,
                "score_seconds": [], "scoring_seconds": 0.0}
    saved = load_checkpoint(checkpoint_dir) if resume and checkpoint_dir and has_checkpoint(checkpoint_dir) else None
    if saved is not None:
        progress = {k: saved.get(k, v) for k, v in progress.items()}
        progress["scores"] = [tuple(s) for s in progress["scores"]]
    best = BestPrompt()
    best.__dict__.update(progress["best"])
    started = time.time() - progress["seconds"]

    def search_seconds() -> float:
        return time.time() - started - progress["scoring_seconds"]

    out_of_time = False
    with frozen(model):
        for restart in range(progress["restart"], config.num_restarts):
            torch.manual_seed(config.seed + restart)
            encoder = SoftHardPromptEncoder.for_model(dataclasses.replace(prompt), model, tokenizer)
            encoder.to(module_device(model))
            search = (_GCGSearch if config.method == "gcg" else _GradientSearch)(config, model, objective, encoder)
            first_step = progress["step"] + 1 if restart == progress["restart"] else 1
            if saved is not None and restart == saved["restart"]:
                encoder._load_adapter_state_dict(saved["encoder"])
                search.load_state_dict(saved["search"])
                torch.set_rng_state(saved["rng"])
            stream = batches(objective.num_train, config.batch_size, config.seed + restart)
            for _ in range(first_step - 1):  # replay the batches already used
                next(stream)
            bar = tqdm(range(first_step, config.steps + 1), disable=not config.show_progress,
                       desc=f"{config.method} restart {restart + 1}/{config.num_restarts}")
            for step in bar:
                # the state before this step: what a Ctrl-C or a crash inside the step saves (prompts are small)
                before = _snapshot(progress, best, restart, step - 1, encoder, search, started)
                try:
                    progress["losses"].append(search.step(next(stream)))
                    out_of_time = config.max_seconds is not None and search_seconds() >= config.max_seconds
                    if step % config.eval_interval == 0 or step == config.steps or out_of_time:
                        scoring_started = time.time()
                        progress["score_seconds"].append(search_seconds())
                        ids = encoder.current_token_ids().clone()
                        progress["scores"].append((restart * config.steps + step, objective.score(model, ids)))
                        # with a fluency weight, the more natural of two equally good prompts wins
                        fluency = -prompt_lm_losses(model, ids[None])[0].item() if config.fluency_weight else 0.0
                        best.update(ids, progress["scores"][-1][1], step, restart, tie_break=fluency)
                        progress["scoring_seconds"] += time.time() - scoring_started
                except BaseException:
                    if checkpoint_dir:  # (rank 0 writes; see checkpoint.py)
                        save_checkpoint(checkpoint_dir, before)
                    raise
                if checkpoint_dir and (step % checkpoint_interval == 0 or step == config.steps):
                    save_checkpoint(checkpoint_dir, _snapshot(progress, best, restart, step, encoder, search, started))
                bar.set_postfix(loss=f"{progress['losses'][-1]:.3f}", best=f"{best.score:.3f}")
                if out_of_time:
                    logger.info("Stopping at step %d of restart %d: max_seconds=%s reached", step, restart + 1,
                                config.max_seconds)
                    break
            check_identical_across_ranks([encoder.embedding.weight, encoder.current_token_ids()], "continuous prompt")
            progress["step"] = 0
            if out_of_time:
                break
        token_ids = torch.tensor(best.token_ids, device=module_device(model))
        perplexity = _perplexity(model, token_ids)
    text, round_trips, notes = _read_back(tokenizer, best.token_ids, prompt)
    return DiscoveryResult(
        token_ids=best.token_ids, text=text, best_score=best.score, best_step=best.step, best_restart=best.restart,
        loss_history=progress["losses"], score_history=progress["scores"], steps=len(progress["losses"]),
        seconds=time.time() - started, score_seconds=progress["score_seconds"], method=config.method,
        perplexity=perplexity, round_trips=round_trips, notes=notes, prompt_config=prompt,
    )


def _snapshot(progress, best, restart, step, encoder, search, started) -> dict:
    """Everything a resumed search needs, copied (the live objects keep changing)."""
    return {
        "losses": list(progress["losses"]), "scores": list(progress["scores"]), "restart": restart, "step": step,
        "best": dict(best.__dict__), "seconds": time.time() - started,
        "score_seconds": list(progress["score_seconds"]), "scoring_seconds": progress["scoring_seconds"],
        "encoder": encoder.adapter_state_dict(),  # clones
        "search": copy.deepcopy(search.state_dict()),  # an optimizer's state_dict holds live tensors
        "rng": torch.get_rng_state(),
    }


# ---------------------------------------------------------------------------------------------- the steps
class _GradientSearch:
    """PEZ, or projected SGD when the method is "psgd": P is replaced by its projection after every step."""

    def __init__(self, config: DiscoveryConfig, model: nn.Module, objective: Objective, encoder) -> None:
        self.config, self.model, self.objective, self.encoder = config, model, objective, encoder
        self.prompt = encoder.embedding.weight
        self.prompt.requires_grad_(True)
        self.optimizer = _optimizer(config, self.prompt)

    def step(self, indices: list[int]) -> float:
        config, encoder = self.config, self.encoder
        self.optimizer.zero_grad()
        local = shard(indices)  # this process's share of the global batch (all of it without parallelism)
        seen = encoder.prompt_embeddings()  # the projected tokens' embeddings, gradient straight through to P
        task_loss = self.objective.loss(self.model, seen, local)
        loss = task_loss
        if config.fluency_weight:
            loss = _with_fluency(config, task_loss, prompt_lm_loss(self.model, seen, encoder.current_token_ids()))
        loss.backward()
        average_gradients([self.prompt], len(local), len(indices))
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_([self.prompt], config.grad_clip)
        self.optimizer.step()
        if config.method == "psgd":  # the baseline: the continuous copy is replaced by its projection
            encoder.set_token_ids(encoder.current_token_ids())
        return global_mean(task_loss.item(), len(local), len(indices))

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class _GCGSearch:
    """GCG: gradient-ranked single-token swaps, a batch of them scored exactly, the best one kept."""

    def __init__(self, config: DiscoveryConfig, model: nn.Module, objective: Objective, encoder) -> None:
        self.config, self.model, self.objective, self.encoder = config, model, objective, encoder
        self.embed = model.get_input_embeddings()
        self.allowed = encoder.allowed_token_ids().to(module_device(model))
        self.generator = torch.Generator().manual_seed(config.seed)
        self.top_k = min(config.gcg_top_k, self.allowed.numel())

    def step(self, indices: list[int]) -> float:
        config, model = self.config, self.model
        ids = self.encoder.current_token_ids().clone()
        local = shard(indices)
        one_hot_point = self.embed(ids).detach().requires_grad_(True)
        task_loss = self.objective.loss(model, one_hot_point, local)
        loss = task_loss
        if config.fluency_weight:
            loss = _with_fluency(config, task_loss, prompt_lm_loss(model, one_hot_point, ids))
        (gradient,) = torch.autograd.grad(loss, one_hot_point)
        gradient = combine(gradient, len(local), len(indices))
        # d loss / d one_hot[i, v] = gradient[i] . E_v: the most promising swaps have the largest -gradient . E_v
        ranked, _ = nearest_tokens(-gradient, self.embed, self.allowed, metric="dot", top_k=self.top_k)
        count = config.gcg_candidates
        positions = torch.randint(ids.numel(), (count,), generator=self.generator)
        picks = torch.randint(self.top_k, (count,), generator=self.generator)
        candidates = ids.repeat(count, 1)
        candidates[torch.arange(count), positions] = ranked[positions.to(ranked.device), picks.to(ranked.device)]
        candidate_losses = combine(self.objective.candidate_losses(model, candidates, local), len(local), len(indices))
        if config.fluency_weight:
            candidate_losses = _with_fluency(config, candidate_losses, prompt_lm_losses(model, candidates))
        self.encoder.set_token_ids(candidates[candidate_losses.argmin()])
        return global_mean(task_loss.item(), len(local), len(indices))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def _optimizer(config: DiscoveryConfig, parameter: torch.Tensor) -> torch.optim.Optimizer:
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor([parameter], lr=config.lr, weight_decay=config.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    return torch.optim.AdamW([parameter], lr=config.lr, weight_decay=config.weight_decay)


# --------------------------------------------------------------------------------------------- fluency
def _with_fluency(config: DiscoveryConfig, task_loss: torch.Tensor, fluency_loss: torch.Tensor) -> torch.Tensor:
    """The PEZ fluency variant: λ · (LM loss of the prompt's own tokens) + (1 − λ) · task loss."""
    return config.fluency_weight * fluency_loss + (1 - config.fluency_weight) * task_loss


def prompt_lm_loss(model: nn.Module, prompt_embeds: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of the prompt's own tokens (differentiable w.r.t. `prompt_embeds`)."""
    if token_ids.numel() < 2:
        return prompt_embeds.sum() * 0.0
    logits = model(inputs_embeds=prompt_embeds[None].to(module_device(model))).logits[0, :-1]
    return F.cross_entropy(logits.float(), token_ids[1:].to(logits.device))


@torch.no_grad()
def prompt_lm_losses(model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """[C] the same loss for C token prompts at once."""
    if token_ids.shape[1] < 2:
        return torch.zeros(token_ids.shape[0], device=token_ids.device)
    logits = model(input_ids=token_ids.to(module_device(model))).logits[:, :-1].float()
    targets = token_ids[:, 1:].to(logits.device)
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(1)


@torch.no_grad()
def _perplexity(model: nn.Module, token_ids: torch.Tensor) -> float | None:
    if token_ids.numel() < 2:
        return None
    return math.exp(prompt_lm_losses(model, token_ids[None])[0].item())


# --------------------------------------------------------------------------------------------- helpers
def _read_back(tokenizer, token_ids: list[int], prompt: SoftHardConfig) -> tuple[str | None, bool | None, list[str]]:
    """The prompt's text, and whether that text tokenizes back to exactly these ids."""
    notes = []
    if prompt.round_trip_only:
        notes.append("search restricted to tokens that survive decode -> encode (round_trip_only=True)")
    if tokenizer is None:
        return None, None, notes + ["no tokenizer: no text"]
    text = tokenizer.decode(token_ids)
    round_trips = tokenizer(text, add_special_tokens=False)["input_ids"] == token_ids
    if not round_trips:
        notes.append(
            "the text does NOT tokenize back to these ids: use token_ids (or a SOFTHARD adapter), not the text; "
            "search with round_trip_only=True and word_start_only=True for a text that does"
        )
        logger.warning("Discovered prompt %r does not re-tokenize to the same ids; see DiscoveryResult.notes", text)
    return text, round_trips, notes


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
    """No gradient for the model's own weights while searching (restored afterwards); eval mode likewise."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.requires_grad_(False).eval()
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)
