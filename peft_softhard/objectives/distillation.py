"""Soft-to-hard distillation: a hard prompt trained to make the model answer as a trained soft prompt does.

A soft prompt usually beats any hard prompt on its task, and its answers carry more than the labels (how
sure it is on each row). `DistillationObjective` keeps a classification task's rows and splits but replaces
its loss by KL(teacher || student): the teacher's class distribution (the soft prompt's) on each training
row against the one the searched prompt gives. Its score is still the task's (validation accuracy), so the
best step is the one that classifies best, not the one that imitates best.

Example:
    ```py
    >>> teacher = soft_model.prompt_encoder["default"].prompt_embeddings().detach()  # doctest: +SKIP
    >>> objective = DistillationObjective(task_objective, teacher)                    # doctest: +SKIP
    >>> result = run(model, objective, DiscoveryConfig(method="pez_refine"),
    ...              init_prompt=teacher)  # start from the soft prompt's reading     # doctest: +SKIP
    ```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .classification import ClassificationObjective
from .interface import ClassifierObjective
from .scoring import DEFAULT_EVAL_ROWS


class DistillationObjective(ClassifierObjective):
    """`task`'s rows and score, with the loss KL(teacher's class distribution || the prompt's) on training rows.

    Args:
        task: a `ClassificationObjective` (a causal LM with label words).
        teacher_prompt: the teacher's prompt vectors [n, d] (a trained soft prompt), put before the same rows.
    """

    def __init__(self, task: ClassificationObjective, teacher_prompt: torch.Tensor) -> None:
        if not isinstance(task, ClassificationObjective):
            raise ValueError("Distillation needs a ClassificationObjective (a causal LM with label words), got "
                             f"{type(task).__name__}.")
        self.task, self.teacher_prompt = task, teacher_prompt.detach()
        self.tokenizer, self.num_train, self.has_held_out = task.tokenizer, task.num_train, task.has_held_out
        self.train, self.held_out, self.evaluation = task.train, task.held_out, task.evaluation
        self._teacher: dict[int, torch.Tensor] = {}  # row index -> the teacher's class log-probabilities

    @torch.no_grad()
    def teacher_log_probs(self, model: nn.Module, indices: Sequence[int]) -> torch.Tensor:
        """[examples, classes] the teacher's class log-probabilities (each row computed once, then kept)."""
        missing = [i for i in indices if i not in self._teacher]
        if missing:
            computed = self.task.class_log_probs(model, self.teacher_prompt, missing)
            self._teacher.update({i: row.cpu() for i, row in zip(missing, computed, strict=True)})
        return torch.stack([self._teacher[i] for i in indices])

    def loss(self, model, prompt_embeds, indices):
        student = self.task.class_log_probs(model, prompt_embeds, indices)
        return _kl(self.teacher_log_probs(model, indices).to(student.device), student).mean()

    def candidate_losses(self, model, prompt_ids, indices, max_rows=DEFAULT_EVAL_ROWS):
        students = self.task.candidate_class_log_probs(model, prompt_ids, indices, max_rows)  # [C, B, K]
        return _kl(self.teacher_log_probs(model, indices).to(students.device)[None], students).mean(-1)

    def score(self, model, prompt):
        return self.task.score(model, prompt)

    def predictions(self, model, prompt, split: str = "held_out") -> list[int]:
        return self.task.predictions(model, prompt, split)

    def member_log_probs(self, peft_model: Any, adapter_names: Sequence[str], split: str = "held_out"):
        return self.task.member_log_probs(peft_model, adapter_names, split)


def _kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over the last dimension, both given as log-probabilities."""
    return (teacher.exp() * (teacher - student)).sum(-1)
