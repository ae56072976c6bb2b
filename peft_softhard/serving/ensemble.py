"""Prompt ensembles: score one task with several prompts in one batched pass, then combine their answers.

Every example is repeated once per prompt and the copies run as one mixed batch (each row with its own
adapter, see `peft_boundary.prompted_calls`), so N prompts cost one pass over N times the rows, not N separate
evaluations.
Two ways to combine: "mean" averages the members' class log-probabilities (each normalised over the classes);
"vote" takes the class most members predict, a tie going to the higher mean log-probability.

Example:
    ```py
    >>> from peft_softhard import score_ensemble
    >>> scores = score_ensemble(peft_model, objective, ["soft_1", "soft_2", "hard"])  # doctest: +SKIP
    >>> scores.accuracy("mean"), scores.member_accuracy()                             # doctest: +SKIP
    ```
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..metrics import accuracy
from ..objectives import ClassifierObjective
from ..optimization.loop import frozen
from ..peft_boundary.adapters import check_adapter_names

COMBINE_METHODS = ("mean", "vote")


@dataclass
class EnsembleScores:
    """Each member's class log-probabilities on the same examples, and ways to combine them."""

    adapter_names: list[str]
    log_probs: torch.Tensor  # [members, examples, classes], normalised over the classes
    labels: list[int]

    def member_predictions(self) -> dict[str, list[int]]:
        predicted = self.log_probs.argmax(-1)
        return {name: predicted[i].tolist() for i, name in enumerate(self.adapter_names)}

    def predictions(self, combine: str = "mean") -> list[int]:
        return combine_log_probs(self.log_probs, combine).tolist()

    def accuracy(self, combine: str = "mean") -> float:
        return accuracy(self.predictions(combine), self.labels)

    def member_accuracy(self) -> dict[str, float]:
        return {name: accuracy(p, self.labels) for name, p in self.member_predictions().items()}


def combine_log_probs(log_probs: torch.Tensor, combine: str = "mean") -> torch.Tensor:
    """[examples] predicted classes from members' [members, examples, classes] log-probabilities."""
    if combine not in COMBINE_METHODS:
        raise ValueError(f"Unknown combine method {combine!r}: choose one of {', '.join(COMBINE_METHODS)}.")
    mean = log_probs.mean(0)
    if combine == "mean":
        return mean.argmax(-1)
    votes = torch.nn.functional.one_hot(log_probs.argmax(-1), log_probs.shape[-1]).sum(0)  # [examples, classes]
    most = votes == votes.max(-1, keepdim=True).values
    return mean.masked_fill(~most, -torch.inf).argmax(-1)


def score_ensemble(
    peft_model: Any, objective: ClassifierObjective, adapter_names: Sequence[str], split: str = "held_out"
) -> EnsembleScores:
    """Score every adapter in `adapter_names` ("__base__": no prompt) on the objective's held-out (or "train")
    examples in one batched pass; combine the result with `.predictions("mean" | "vote")`."""
    if not adapter_names:
        raise ValueError("Give at least one adapter name for the ensemble.")
    check_adapter_names(peft_model, list(adapter_names), len(adapter_names))
    with frozen(peft_model):
        log_probs = objective.member_log_probs(peft_model, list(adapter_names), split)
    return EnsembleScores(list(adapter_names), log_probs.cpu(), list(objective.labels(split)))
