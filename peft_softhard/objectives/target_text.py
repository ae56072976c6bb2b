"""`TargetTextObjective`: a prompt after which the model produces a given text; `PairsObjective`: one prompt after
which the model answers each of many messages with its own target (a system prompt, a universal suffix)."""

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
from .templates import check_template, encode_example, text_ids


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


class PairsObjective(Objective):
    """Find one prompt after which the model answers each message with its own target: (message, target) pairs,
    each message put in `template` (with `{text}` and `{prompt}`: `placement.placed_template` writes a chat's
    system turn or the end of its user message as one), its target right after. A universal prompt: the same
    prompt for every message.

    The loss is the mean per-token cross-entropy of the targets; the score is the share of messages whose whole
    target greedy decoding produces (every target token the most likely one, teacher-forced), on the held-out
    pairs (`split="eval"`: pairs scored once, by the chosen prompt).

    Example:
        ```py
        >>> template = placed_template(tokenizer, "{text}", "system")  # the prompt is the system message
        >>> objective = PairsObjective(tokenizer, [("Capital of France?", "Answer: Paris")], template=template,
        ...                            held_out_pairs=[("Capital of Peru?", "Answer: Lima")])  # doctest: +SKIP
        ```
    """

    def __init__(self, tokenizer, pairs: Sequence[tuple[str, str]], *, template: str = "{prompt}{text}",
                 held_out_pairs: Sequence[tuple[str, str]] | None = None,
                 eval_pairs: Sequence[tuple[str, str]] | None = None) -> None:
        check_template(template)
        self.tokenizer, self.template = tokenizer, template
        self.pad_id = getattr(tokenizer, "pad_token_id", None) or 0
        self.train = self._encode(pairs, "pairs")
        self.held_out = self._encode(held_out_pairs, "held_out_pairs") if held_out_pairs else None
        self.evaluation = self._encode(eval_pairs, "eval_pairs") if eval_pairs else None
        self.num_train = len(self.train)
        self.has_held_out = self.held_out is not None

    def _encode(self, pairs, name: str) -> list[tuple[list[int], int, list[int]]]:
        """Each pair as (the message's ids in the template, the prompt's offset in them, the target's ids)."""
        if not pairs:
            raise ValueError(f"Give {name}: a non-empty list of (message, target) pairs.")
        encoded = []
        for message, target in pairs:
            ids, offset = encode_example(self.tokenizer, self.template, message)
            target_ids = text_ids(self.tokenizer, target) if target else []
            if not target_ids:
                raise ValueError(f"The target of {message!r} tokenises to nothing; give every message a target.")
            encoded.append((ids, offset, target_ids))
        return encoded

    def _rows(self, examples) -> tuple[Rows, torch.Tensor]:
        """(the rows, each row's number of target tokens)."""
        rows = [ids + target for ids, _, target in examples]
        targets = [[False] * len(ids) + [True] * len(target) for ids, _, target in examples]
        offsets = [offset for _, offset, _ in examples]
        lengths = torch.tensor([len(target) for _, _, target in examples], dtype=torch.float)
        return pad_rows(rows, targets, self.pad_id, offsets if any(offsets) else None), lengths

    def split(self, split: str = "held_out") -> list[tuple[list[int], int, list[int]]]:
        """The encoded pairs of "held_out" (validation), "train" or "eval"."""
        chosen = {"held_out": self.held_out, "train": self.train, "eval": self.evaluation}[split]
        if chosen is None:
            raise ValueError(f"This objective has no {split!r} pairs; give {split}_pairs.")
        return chosen

    def loss(self, model, prompt_embeds, indices):
        rows, lengths = self._rows([self.train[i] for i in indices])
        log_probs = target_log_probs(model, prompt_embeds, rows)
        return -(log_probs / lengths.to(log_probs.device)).mean()

    def candidate_losses(self, model, prompts, indices, max_rows=DEFAULT_EVAL_ROWS):
        rows, lengths = self._rows([self.train[i] for i in indices])
        log_probs = candidate_target_log_probs(model, prompts, rows, max_rows)
        return -(log_probs / lengths.to(log_probs.device)).mean(1)

    @torch.no_grad()
    def successes(self, model, prompt: torch.Tensor, split: str = "held_out", batch_size: int = 16) -> list[bool]:
        """Whether greedy decoding gives each message's whole target after one prompt (ids [n] or vectors [n, d])."""
        examples, done = self.split(split), []
        for start in range(0, len(examples), batch_size):
            rows, _ = self._rows(examples[start : start + batch_size])
            predicted = row_logits(model, as_prompt_embeds(model, prompt), rows).argmax(-1).cpu()
            wrong = (predicted != rows.input_ids) & rows.target_mask
            done += (~wrong.any(1)).tolist()
        return done

    def success_rate(self, model, prompt: torch.Tensor, split: str = "held_out") -> float:
        successes = self.successes(model, prompt, split)
        return sum(successes) / len(successes)

    def score(self, model, prompt):
        return self.success_rate(model, prompt, "held_out" if self.has_held_out else "train")
