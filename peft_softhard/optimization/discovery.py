"""Hard-prompt discovery: PEZ, and the projected-SGD and GCG baselines, behind one `run()`.

PEZ (Wen et al. 2023, Algorithm 1): a continuous prompt P is kept; each step the loss is taken at P's
projection onto the allowed tokens and its gradient is applied to P itself (straight-through), so P can
drift between tokens until a better one becomes nearest. The best *projected* prompt seen is returned.
Projected SGD ("AutoPrompt_SGD" in the paper) is the same step followed by P <- projection(P).
GCG (Zou et al. 2023): rank token swaps by the gradient at the one-hot prompt, score a batch of random
swaps exactly, keep the best; with nanoGCG's `buffer_size` (the best prompts so far, rescored on every
step's batch with the new candidates, the step continuing from the best) and `n_replace` (positions changed
per candidate) it is an exact refinement over a dataset, not one (message, target) pair.
PEZ + refinement ("pez_refine"): PEZ for the first steps, then that refinement from PEZ's prompt — PEZ moves
far cheaply, the exact swaps then fix what the straight-through gradient cannot see.

Each method is a strategy of the one loop (`loop.optimize`: batches, scoring, the best prompt, checkpoints,
resume, time limits): a class with a `step` registered in `METHODS`. A new method is its step, nothing else.

Example:
    ```py
    >>> from peft_softhard import DiscoveryConfig, run
    >>> from peft_softhard import TargetTextObjective
    >>> objective = TargetTextObjective(tokenizer, target=" Paris")
    >>> result = run(model, objective, DiscoveryConfig(method="pez", steps=200))  # doctest: +SKIP
    >>> result.text, result.best_score                                            # doctest: +SKIP
    ```
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..distributed import combine, global_mean, shard
from ..method.config import SoftHardConfig
from ..method.encoder import SoftHardPromptEncoder
from ..method.projection import module_device, nearest_tokens
from ..objectives import Objective
from ..objectives.fluency import perplexity, prompt_lm_loss, prompt_lm_losses, with_fluency
from .loop import LoopConfig, check_positive_ints, frozen, gradient_step, make_optimizer, optimize

logger = logging.getLogger(__name__)


@dataclass
class DiscoveryConfig(LoopConfig):
    """How to search. What the prompt may be (length, init, metric, vocabulary) is a `SoftHardConfig`."""

    method: str = field(
        default="pez", metadata={"help": "'pez', 'psgd' (projected SGD), 'gcg' or 'pez_refine' (PEZ, then GCG's "
                                 "exact refinement)."}
    )
    steps: int = field(default=500, metadata={"help": "Optimisation steps per restart."})
    lr: float = field(default=0.1, metadata={"help": "Learning rate (PEZ, projected SGD)."})
    weight_decay: float = field(default=0.1, metadata={"help": "Weight decay of the continuous prompt."})
    num_restarts: int = field(default=1, metadata={"help": "Independent runs from new initial prompts."})
    fluency_weight: float = field(
        default=0.0, metadata={"help": "λ: loss = λ·LM loss of the prompt's own tokens + (1-λ)·task loss."}
    )
    gcg_top_k: int = field(default=64, metadata={"help": "GCG: candidate tokens per position from the gradient."})
    gcg_candidates: int = field(default=64, metadata={"help": "GCG: swaps scored exactly per step."})
    buffer_size: int = field(
        default=0,
        metadata={"help": "GCG / refinement: the best prompts kept and rescored with each step's candidates (0: "
                  "always take the step's best candidate, as the original GCG)."},
    )
    n_replace: int = field(default=1, metadata={"help": "GCG / refinement: positions changed per candidate."})
    refine_share: float = field(
        default=0.5, metadata={"help": "pez_refine: the share of the steps given to the exact refinement."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}: choose one of {', '.join(METHODS)}.")
        check_positive_ints(self, "num_restarts", "gcg_top_k", "gcg_candidates", "n_replace")
        if not isinstance(self.buffer_size, int) or self.buffer_size < 0:
            raise ValueError(f"buffer_size must be a non-negative integer, got {self.buffer_size!r}.")
        if not 0.0 < self.refine_share <= 1.0:
            raise ValueError(f"refine_share must be in (0, 1], got {self.refine_share!r}.")
        if not 0.0 <= self.fluency_weight < 1.0:
            raise ValueError(f"fluency_weight must be in [0, 1), got {self.fluency_weight}.")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DiscoveryConfig:
        """A named setting (`PRESETS`), with any field overridden."""
        return cls(**{**preset_settings(name), **overrides})


# The PEZ reference language-model setting (YuxinWenRick/hard-prompts-made-easy, prompt_lm/): Adafactor at a
# constant lr 0.3, clip 1.0, 5,000 steps of 16, the projected prompt scored every 100 steps. Its init (the
# label words repeated) and its 5,000 held-out rows are the caller's: `softhard discover --preset` sets them.
PRESETS: dict[str, dict[str, Any]] = {
    "pez-reference": {"method": "pez", "optimizer": "adafactor", "lr": 0.3, "weight_decay": 0.0, "steps": 5000,
                      "batch_size": 16, "eval_interval": 100, "grad_clip": 1.0},
}


def preset_settings(name: str) -> dict[str, Any]:
    """The `DiscoveryConfig` fields of a named setting (`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
    return dict(PRESETS[name])


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


def run(
    model: nn.Module,
    objective: Objective,
    config: DiscoveryConfig | None = None,
    prompt: SoftHardConfig | None = None,
    tokenizer=None,
    checkpoint_dir: str | None = None,
    checkpoint_interval: int = 50,
    resume: bool = False,
    init_prompt: torch.Tensor | None = None,
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
        init_prompt: [n, d] vectors the continuous prompt starts from (e.g. a trained soft prompt: PEZ then
            starts at its vectors, the other methods at their projection, its reading); default `prompt.init`.
    """
    config = config or DiscoveryConfig()
    prompt = dataclasses.replace(
        prompt or SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=10), mode="hard", inference_mode=False
    )
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    tokenizer = tokenizer if tokenizer is not None else getattr(objective, "tokenizer", None)

    def start(restart: int) -> EncoderSearch:
        torch.manual_seed(config.seed + restart)
        encoder = SoftHardPromptEncoder.for_model(dataclasses.replace(prompt), model, tokenizer)
        encoder.to(module_device(model))
        if init_prompt is not None:
            start_from_vectors(encoder, init_prompt)
        return METHODS[config.method](config, model, objective, encoder)

    def fluency(ids: torch.Tensor) -> float:  # with a fluency weight, the more natural of two equal prompts wins
        return -prompt_lm_losses(model, ids[None])[0].item()

    with frozen(model):
        state, _ = optimize(
            start, objective, config, lambda ids: objective.score(model, ids),
            tie_break=fluency if config.fluency_weight else None, restarts=config.num_restarts,
            checkpoint_dir=checkpoint_dir, checkpoint_interval=checkpoint_interval, resume=resume,
            description=config.method,
        )
        best = state.best
        ppl = perplexity(model, torch.tensor(best.token_ids, device=module_device(model)))
    text, round_trips, notes = read_back(tokenizer, best.token_ids, prompt)
    return DiscoveryResult(
        token_ids=best.token_ids, text=text, best_score=best.score, best_step=best.step, best_restart=best.restart,
        loss_history=state.losses, score_history=state.scores, steps=len(state.losses), seconds=state.seconds,
        score_seconds=state.score_seconds, method=config.method, perplexity=ppl, round_trips=round_trips,
        notes=notes, prompt_config=prompt,
    )


# ---------------------------------------------------------------------------------------------- the methods
class EncoderSearch:
    """A search over one hard prompt held by a `SoftHardPromptEncoder`: what every discovery method shares
    (the prompt scored is the tokens in use; the tensors kept are the encoder's saved state)."""

    def __init__(self, config: DiscoveryConfig, model: nn.Module, objective: Objective,
                 encoder: SoftHardPromptEncoder) -> None:
        self.config, self.model, self.objective, self.encoder = config, model, objective, encoder

    def step(self, indices: list[int]) -> float:
        raise NotImplementedError

    def prompt(self) -> torch.Tensor:
        return self.encoder.current_token_ids().clone()

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.encoder.adapter_state_dict()  # clones

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.encoder.load_adapter_state_dict(tensors)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PEZ(EncoderSearch):
    """PEZ: the loss at the projected tokens, its gradient applied to the continuous prompt P (straight through)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.continuous = self.encoder.embedding.weight
        self.continuous.requires_grad_(True)
        self.optimizer = make_optimizer(self.config, [self.continuous])

    def step(self, indices: list[int]) -> float:
        def losses(local: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            seen = self.encoder.prompt_embeddings()  # the projected tokens' embeddings, gradient straight to P
            task_loss = self.objective.loss(self.model, seen, local)
            if not self.config.fluency_weight:
                return task_loss, task_loss
            fluency = prompt_lm_loss(self.model, seen, self.encoder.current_token_ids())
            return with_fluency(self.config.fluency_weight, task_loss, fluency), task_loss

        return gradient_step(self.optimizer, [self.continuous], indices, losses, self.config.grad_clip)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class ProjectedSGD(PEZ):
    """The baseline ("AutoPrompt_SGD" in the PEZ paper): a PEZ step, then P is replaced by its projection."""

    def step(self, indices: list[int]) -> float:
        loss = super().step(indices)
        self.encoder.set_token_ids(self.encoder.current_token_ids())
        return loss


class GCG(EncoderSearch):
    """GCG: gradient-ranked token swaps, a batch of candidates scored exactly, the best kept.

    With `buffer_size` B > 0 the B best prompts are kept: each step's gradient is taken at the best, its
    candidates and the buffer are scored on the same batch, and the B lowest losses stay (so the prompt in
    use never gets worse on the batch that judged it). `n_replace` positions change per candidate."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.embed = self.model.get_input_embeddings()
        self.allowed = self.encoder.allowed_token_ids().to(module_device(self.model))
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.top_k = min(self.config.gcg_top_k, self.allowed.numel())
        self.buffer: list[torch.Tensor] = []  # the best prompts, best first (buffer_size > 0)

    def step(self, indices: list[int]) -> float:
        config, model = self.config, self.model
        ids = self.encoder.current_token_ids().clone()
        local = shard(indices)
        one_hot_point = self.embed(ids).detach().requires_grad_(True)
        task_loss = self.objective.loss(model, one_hot_point, local)
        loss = task_loss
        if config.fluency_weight:
            loss = with_fluency(config.fluency_weight, task_loss, prompt_lm_loss(model, one_hot_point, ids))
        (gradient,) = torch.autograd.grad(loss, one_hot_point)
        gradient = combine(gradient, len(local), len(indices))
        # d loss / d one_hot[i, v] = gradient[i] . E_v: the most promising swaps have the largest -gradient . E_v
        ranked, _ = nearest_tokens(-gradient, self.embed, self.allowed, metric="dot", top_k=self.top_k)
        candidates = self.sample_swaps(ids, ranked)
        if config.buffer_size:  # the buffer competes with its own candidates on this batch
            candidates = torch.cat([torch.stack(self.buffer or [ids]), candidates]).unique(dim=0)
        candidate_losses = combine(self.objective.candidate_losses(model, candidates, local), len(local), len(indices))
        if config.fluency_weight:
            fluency = prompt_lm_losses(model, candidates)
            candidate_losses = with_fluency(config.fluency_weight, candidate_losses, fluency)
        order = candidate_losses.argsort()
        self.buffer = [candidates[i] for i in order[: config.buffer_size].tolist()]
        self.encoder.set_token_ids(candidates[order[0]])
        return global_mean(task_loss.item(), len(local), len(indices))

    def sample_swaps(self, ids: torch.Tensor, ranked: torch.Tensor) -> torch.Tensor:
        """[C, n] copies of `ids` [n], each with `n_replace` random positions set to a random one of their
        `top_k` gradient-ranked tokens (`ranked` [n, top_k])."""
        count, replace = self.config.gcg_candidates, min(self.config.n_replace, ids.numel())
        if replace == 1:
            positions = torch.randint(ids.numel(), (count, 1), generator=self.generator)
        else:  # distinct positions per candidate
            positions = torch.rand(count, ids.numel(), generator=self.generator).argsort(1)[:, :replace]
        picks = torch.randint(self.top_k, (count, replace), generator=self.generator)
        candidates = ids.repeat(count, 1)
        rows = torch.arange(count)[:, None].expand(-1, replace)
        candidates[rows, positions] = ranked[positions.to(ranked.device), picks.to(ranked.device)]
        return candidates

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "buffer": [ids.clone() for ids in self.buffer]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.buffer = list(state.get("buffer", []))


class PEZRefine(EncoderSearch):
    """PEZ for the first `1 - refine_share` of the steps, then GCG's exact refinement (with its buffer and
    n_replace) from the prompt PEZ reached, on the same encoder."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pez: PEZ | None = PEZ(*args)
        self.refine: GCG | None = None
        self.switch_at = round(self.config.steps * (1 - self.config.refine_share))
        self.taken = 0

    def step(self, indices: list[int]) -> float:
        if self.taken >= self.switch_at and self.refine is None:
            self.start_refining()
        self.taken += 1
        return (self.refine or self.pez).step(indices)

    def start_refining(self, from_tokens_in_use: bool = True) -> None:
        if from_tokens_in_use:
            self.encoder.set_token_ids(self.encoder.current_token_ids().clone())  # P becomes the tokens in use
        self.encoder.embedding.weight.requires_grad_(False)  # swaps, not gradient steps, change it now
        self.refine, self.pez = GCG(self.config, self.model, self.objective, self.encoder), None

    def state_dict(self) -> dict[str, Any]:
        phase = self.refine or self.pez
        return {"taken": self.taken, "refining": self.refine is not None, "phase": phase.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.taken = state["taken"]
        if state["refining"]:
            self.start_refining(from_tokens_in_use=False)  # the checkpoint's prompt is loaded already
        (self.refine or self.pez).load_state_dict(state["phase"])


METHODS: dict[str, type[EncoderSearch]] = {"pez": PEZ, "psgd": ProjectedSGD, "gcg": GCG, "pez_refine": PEZRefine}


@torch.no_grad()
def start_from_vectors(encoder: SoftHardPromptEncoder, vectors: torch.Tensor) -> None:
    """Put `vectors` [n, d] (e.g. a trained soft prompt) in the encoder's continuous prompt; the tokens in use
    become their projection onto the allowed tokens."""
    weight = encoder.embedding.weight
    if tuple(vectors.shape) != tuple(weight.shape):
        raise ValueError(f"The starting prompt has shape {tuple(vectors.shape)} but the search's prompt is "
                         f"{tuple(weight.shape)} (tokens x width): give a prompt of the same length for this model.")
    weight.copy_(vectors.to(weight))


def read_back(tokenizer, token_ids: list[int], prompt: SoftHardConfig) -> tuple[str | None, bool | None, list[str]]:
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
