"""The token searches: the strategies (on the one loop, `loop.optimize`) that find a prompt's tokens.

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
Growth ("grow", after ClaPS, Zhou et al. 2023): the prompt starts empty — the user's own template, step 0 —
and grows one token at a time from a small pool of tokens pruned once, every candidate scored exactly.

The tokens go where the objective puts them: in front of each row, or at its template's `{prompt}` slot, where
exact scoring pays only for each row's tail (`objectives.scoring.cache_heads`).

Each method is a strategy: a class with a `step` registered in `METHODS`. A new method is its step, nothing
else. Every method takes the search's `DiscoveryConfig` (`config`), the frozen model, the objective and a
`SoftHardPromptEncoder` holding the prompt's settings (length, vocabulary, start).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..distributed import combine, global_mean, shard
from ..method.config import SoftHardConfig
from ..method.encoder import SoftHardPromptEncoder
from ..method.projection import module_device, nearest_tokens
from ..objectives import Objective
from ..objectives.fluency import prompt_lm_loss, prompt_lm_losses, with_fluency
from .loop import gradient_step, make_optimizer

logger = logging.getLogger(__name__)


class EncoderSearch:
    """A search over one hard prompt held by a `SoftHardPromptEncoder`: what every discovery method shares
    (the prompt scored is the tokens in use; the tensors kept are the encoder's saved state)."""

    def __init__(self, config: Any, model: nn.Module, objective: Objective,
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


class Grow(EncoderSearch):
    """Growth from nothing (after ClaPS, Zhou et al. 2023), each choice raced over several batches.

    The prompt starts empty, so step 0 is the user's own template. Each token is chosen over `race_steps` steps:
    the round's candidates — the prompt in use, it with each token of a pruned pool appended (while it is shorter
    than the encoder's `num_virtual_tokens`; at that length, `gcg_candidates` random swaps of one position to a
    pool token) — are scored exactly on every step's batch and their losses summed; after each step the worse
    half is dropped (the prompt in use stays), and after the round's last step the lowest summed loss becomes
    the prompt in use. A token is chosen on `race_steps` batches, not one: on a strong template, one batch's
    winner is mostly noise.

    The pool is chosen once, on the first step's batch: the `4 * pool_size` allowed tokens whose first-order
    effect on the loss at the end of the prompt is best (−gradient · embedding at a placeholder, the allowed
    tokens' mean embedding), then the `pool_size` best of those appended alone, scored exactly. No step after
    that needs a backward pass: at a template's slot each candidate costs only its rows' tails."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.allowed = self.encoder.allowed_token_ids().to(module_device(self.model))
        self.longest = self.encoder.config.num_virtual_tokens
        self.ids = torch.zeros(0, dtype=torch.long)
        self.pool = torch.zeros(0, dtype=torch.long)  # empty until the first step chooses it
        self.racing: list[torch.Tensor] = []  # this round's candidates still in the race, the prompt in use first
        self.sums = torch.zeros(0)  # their summed losses over the round's batches so far
        self.raced = 0  # the round's steps taken
        self.generator = torch.Generator().manual_seed(self.config.seed)

    def step(self, indices: list[int]) -> float:
        local = shard(indices)
        if not self.pool.numel():
            self.pool = self.choose_pool(local, len(indices))
        if not self.racing:
            self.racing = self.candidates()
            self.sums, self.raced = torch.zeros(len(self.racing)), 0
        losses = self.exact_losses(self.racing, local, len(indices)).cpu()
        self.sums, self.raced = self.sums + losses, self.raced + 1
        if self.raced >= self.config.race_steps:  # the round ends: its best becomes the prompt in use
            self.ids, self.racing = self.racing[int(self.sums.argmin())], []
        else:  # the better half runs on (the prompt in use always does, so a new token must beat it)
            keep = sorted({0, *self.sums.argsort()[: (len(self.racing) + 1) // 2].tolist()})
            self.racing, self.sums = [self.racing[i] for i in keep], self.sums[keep]
        return losses[0].item()  # the prompt in use

    def exact_losses(self, candidates: list[torch.Tensor], local: list[int], total: int) -> torch.Tensor:
        """[C] each candidate's loss on the global batch (its fluency mixed in, with a fluency weight)."""
        losses = combine(self.objective.candidate_losses(self.model, candidates, local), len(local), total)
        if self.config.fluency_weight:
            fluency = torch.cat([prompt_lm_losses(self.model, ids[None]) for ids in candidates])
            losses = with_fluency(self.config.fluency_weight, losses, fluency.to(losses))
        return losses

    def candidates(self) -> list[torch.Tensor]:
        """The prompt in use (first), and it with each pool token appended, or (at full length) random swaps of
        one position to a pool token."""
        pool, ids = self.pool.cpu(), self.ids
        candidates = [ids]
        if ids.numel() < self.longest:
            candidates += [torch.cat([ids, token[None]]) for token in pool]
        else:
            positions = torch.randint(ids.numel(), (self.config.gcg_candidates,), generator=self.generator)
            picks = torch.randint(pool.numel(), (self.config.gcg_candidates,), generator=self.generator)
            for position, pick in zip(positions.tolist(), picks.tolist(), strict=True):
                swapped = ids.clone()
                swapped[position] = pool[pick]
                candidates.append(swapped)
        unique = {tuple(c.tolist()): c for c in candidates}  # the prompt in use stays first
        return list(unique.values())

    def choose_pool(self, local: list[int], total: int) -> torch.Tensor:
        """[pool_size] the tokens this search appends and swaps in (see the class docstring), from this rank's
        share `local` of a global batch of `total` rows."""
        ranked = ranked_by_gradient(self.model, self.objective, self.ids, self.allowed, local,
                                    4 * self.config.pool_size, total).cpu()
        appended = [torch.cat([self.ids, token[None]]) for token in ranked]
        losses = combine(self.objective.candidate_losses(self.model, appended, local), len(local), total)
        return ranked[losses.cpu().argsort()[: self.config.pool_size]]

    def prompt(self) -> torch.Tensor:
        return self.ids.clone()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"token_ids": self.ids.clone()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.ids = tensors["token_ids"].clone()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "pool": self.pool.clone(), "sums": self.sums.clone(),
                "racing": [ids.clone() for ids in self.racing], "raced": self.raced}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.pool, self.sums, self.raced = state["pool"].clone(), state["sums"].clone(), state["raced"]
        self.racing = [ids.clone() for ids in state["racing"]]


METHODS: dict[str, type[EncoderSearch]] = {"pez": PEZ, "psgd": ProjectedSGD, "gcg": GCG, "pez_refine": PEZRefine,
                                           "grow": Grow}


def ranked_by_gradient(model: nn.Module, objective: Objective, ids: torch.Tensor, allowed: torch.Tensor,
                       indices: list[int], count: int, total: int | None = None) -> torch.Tensor:
    """[count] the allowed tokens whose first-order effect on `objective`'s loss on the examples `indices` is
    best when appended to the prompt `ids` [n]: −gradient · embedding at a placeholder there (the allowed
    tokens' mean embedding). `total`: `indices` are this rank's share of a global batch of that many rows (the
    gradient is averaged over the ranks)."""
    embed = model.get_input_embeddings()
    allowed = allowed.to(module_device(model))
    placeholder = embed.weight[allowed].mean(0, keepdim=True).detach().requires_grad_(True)
    seen = torch.cat([embed(ids.to(allowed.device)).detach(), placeholder])
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(objective.loss(model, seen, indices), placeholder)
    if total is not None:
        gradient = combine(gradient, len(indices), total)
    ranked, _ = nearest_tokens(-gradient, embed, allowed, metric="dot", top_k=min(count, allowed.numel()))
    return ranked[0]


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
