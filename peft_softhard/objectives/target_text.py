"""`TargetTextObjective`: a prompt after which the model produces a given text."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .interface import Objective
from .scoring import (
    DEFAULT_EVAL_ROWS,
    Rows,
    as_prompt_embeds,
    candidate_target_log_probs,
    pad_rows,
    row_logits,
    target_log_probs,
)


class TargetTextObjective(Objective):
    """Find a prompt after which the model produces `target` (optionally after each of several prefixes).
    Target and prefixes are text, or token ids for a model without a tokenizer.

    The loss is the cross-entropy of the target's tokens; the score is the share of target tokens that greedy
    decoding gets right (teacher-forced), so 1.0 means the model generates exactly the target.

    Example:
        ```py
        >>> objective = TargetTextObjective(tokenizer, target=" Paris is lovely")  # doctest: +SKIP
        ```
    """

    def __init__(
        self,
        tokenizer,
        target: str | Sequence[int],
        prefixes: Sequence[str | Sequence[int]] = ("",),
        held_out_prefixes: Sequence[str | Sequence[int]] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.target_ids = self._encode(target)
        if not self.target_ids:
            raise ValueError(f"The target {target!r} tokenises to nothing.")
        if not prefixes:
            raise ValueError("Give at least one prefix (the empty string puts the target right after the prompt).")
        self.train = [self._encode(prefix) for prefix in prefixes]
        self.held_out = [self._encode(prefix) for prefix in held_out_prefixes] if held_out_prefixes else None
        self.num_train = len(self.train)
        self.has_held_out = self.held_out is not None
        self.pad_id = getattr(tokenizer, "pad_token_id", None) or 0

    def _encode(self, text: str | Sequence[int]) -> list[int]:
        """Text through the tokenizer; a sequence of ids as it is (for models without a tokenizer)."""
        if not isinstance(text, str):
            return [int(i) for i in text]
        if not text:
            return []
        if self.tokenizer is None:
            raise ValueError("Give a tokenizer to use text targets and prefixes, or give token ids.")
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _rows(self, prefixes: list[list[int]]) -> Rows:
        rows = [prefix + self.target_ids for prefix in prefixes]
        targets = [[False] * len(prefix) + [True] * len(self.target_ids) for prefix in prefixes]
        return pad_rows(rows, targets, self.pad_id)

    def loss(self, model, prompt_embeds, indices):
        prefixes = [self.train[i] for i in indices]
        return -target_log_probs(model, prompt_embeds, self._rows(prefixes)).mean() / len(self.target_ids)

    def candidate_losses(self, model, prompts, indices, max_rows=DEFAULT_EVAL_ROWS):
        rows = self._rows([self.train[i] for i in indices])
        return -candidate_target_log_probs(model, prompts, rows, max_rows).mean(1) / len(self.target_ids)

    @torch.no_grad()
    def score(self, model, prompt):
        rows = self._rows(self.held_out if self.has_held_out else self.train)
        predicted = row_logits(model, as_prompt_embeds(model, prompt), rows).argmax(-1).cpu()
        correct = (predicted == rows.input_ids) & rows.target_mask
        return (correct.sum() / rows.target_mask.sum()).item()
