"""What an objective is: the methods the optimisation loop, the scoring tools and the ensembles call.

An objective turns a prompt into numbers, three ways:
- `loss(model, prompt_embeds, indices)`: differentiable training loss of one prompt given as vectors
  ([n, d], what the model sees) on the training examples `indices` — gradient methods (PEZ, projected SGD,
  soft training, and GCG's token ranking) use it;
- `candidate_losses(model, prompt_ids, indices)`: the same loss for many token prompts at once ([C, n]),
  without gradients — GCG scores its candidate swaps with it;
- `score(model, prompt)`: how good one prompt (token ids, or vectors for a soft prompt) is on the held-out
  (validation) examples (higher is better), or minus its loss on all training examples when there are none.
  The loop picks its best step by it.
A classification objective has three splits: "train" (the loss), "held_out" (validation: what `score` and
so the choice of step sees) and, optionally, "eval" (scored once, by the chosen prompt, for the number
reported: rows that chose nothing).
A classification objective (`ClassifierObjective`) also gives each example's predicted class, its labels,
and the class log-probabilities of several adapters at once (for ensembles).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..metrics import accuracy
from .scoring import DEFAULT_EVAL_ROWS

SPLITS = ("held_out", "train", "eval")


class Objective:
    """What a prompt should achieve; see the module docstring for the three methods."""

    num_train: int
    has_held_out: bool
    tokenizer: Any = None

    def loss(self, model: nn.Module, prompt_embeds: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        raise NotImplementedError

    def candidate_losses(
        self, model: nn.Module, prompt_ids: torch.Tensor, indices: Sequence[int], max_rows: int = DEFAULT_EVAL_ROWS
    ) -> torch.Tensor:
        """[C] the training loss of each of C token prompts [C, n] on the examples `indices`."""
        raise NotImplementedError

    def score(self, model: nn.Module, prompt: torch.Tensor) -> float:
        """Held-out quality of one prompt: token ids [n] or vectors [n, d] (a soft prompt); higher is better."""
        raise NotImplementedError


class ClassifierObjective(Objective):
    """An objective whose examples are texts with class labels; its score is accuracy.

    Subclasses set `train`, `held_out` and `evaluation` (None where absent) to (examples, labels) and implement
    `predictions` and `member_log_probs`."""

    train: tuple[list[Any], list[int]]
    held_out: tuple[list[Any], list[int]] | None
    evaluation: tuple[list[Any], list[int]] | None = None

    def split(self, split: str = "held_out") -> tuple[list[Any], list[int]]:
        """(examples, labels) of "held_out" (validation), "train" or "eval"."""
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}: choose one of {', '.join(SPLITS)}.")
        chosen = {"held_out": self.held_out, "train": self.train, "eval": self.evaluation}[split]
        if chosen is None:
            given = {"held_out": "held_out_texts and held_out_labels", "eval": "eval_texts and eval_labels"}[split]
            raise ValueError(f"This objective has no {split!r} examples; give {given}.")
        return chosen

    def training_batch(self, indices: Sequence[int], device: torch.device) -> tuple[list[Any], torch.Tensor]:
        """The training examples `indices` and their labels (a tensor on `device`)."""
        examples, labels = self.train
        return [examples[i] for i in indices], torch.tensor([labels[i] for i in indices], device=device)

    def labels(self, split: str = "held_out") -> list[int]:
        return self.split(split)[1]

    def predictions(self, model: nn.Module, prompt: torch.Tensor, split: str = "held_out") -> list[int]:
        """The predicted class of every example of `split` after one prompt (ids [n] or vectors [n, d])."""
        raise NotImplementedError

    def member_log_probs(self, peft_model: Any, adapter_names: Sequence[str], split: str = "held_out") -> torch.Tensor:
        """[adapters, examples, classes] class log-probabilities of each adapter's prompt ("__base__": none)."""
        raise NotImplementedError

    def accuracy(self, model: nn.Module, prompt: torch.Tensor, split: str = "held_out") -> float:
        """Accuracy of one prompt (ids [n] or vectors [n, d]) on the held-out (or "train") examples."""
        return accuracy(self.predictions(model, prompt, split), self.labels(split))
