"""Label-word search: which word the model should be read for, per class, after the template and its prompt.

A strategy on the one loop (`loop.optimize`). Each step runs its batch once with the prompt fixed and keeps each
row's log-distribution over the allowed vocabulary at the answer position (where a label word's first token is
predicted). Candidates per class are ranked by RLPrompt's gap: a token's mean log-probability on that class's
rows minus its largest mean on another class's rows. The words in use are the candidates that classify the rows
seen so far best, scored exactly from the kept distributions (every pair of the `CANDIDATES` best per class for
two classes; coordinate ascent over the classes for more), ties to the larger mean margin (the true class's
log-probability minus the best other's). Step 0 is the user's own words (which may be several tokens each); the
loop keeps whichever words score best on validation.

Example:
    ```py
    >>> search = LabelWordSearch(model, objective, prompt_ids, allowed_ids)   # doctest: +SKIP
    >>> state, _ = optimize(lambda restart: search, objective, LoopConfig(steps=20),
    ...                     score=lambda words: score_whole_prompt(words))     # doctest: +SKIP
    ```
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from ..distributed import global_mean, shard, sum_over_ranks
from ..objectives.templates import WholePrompt

CANDIDATES = 8  # per class, by gap: the words whose combinations are scored exactly


class LabelWordSearch:
    """The strategy (see the module docstring).

    Args:
        model: the frozen causal LM.
        objective: a `ClassificationObjective` (its template and label words are the start).
        prompt_ids: [n] the prompt's tokens, fixed during this search.
        allowed: [A] the token ids a label word may be (whole words that re-tokenize as themselves).
    """

    def __init__(self, model: nn.Module, objective: Any, prompt_ids: torch.Tensor, allowed: torch.Tensor) -> None:
        self.model, self.objective, self.prompt_ids = model, objective, prompt_ids
        self.allowed = allowed.cpu()
        self.classes = len(objective.label_words)
        self.seen = torch.zeros(0, len(self.allowed), dtype=torch.float16)  # [rows seen here, A] (this rank's)
        self.seen_labels = torch.zeros(0, dtype=torch.long)
        self.words = list(objective.label_words)  # the user's words until the first step

    def step(self, indices: list[int]) -> float:
        local = shard(indices)
        log_probs = self.objective.answer_log_probs(self.model, self.prompt_ids, local).cpu()  # [B, V]
        labels = torch.tensor([self.objective.train[1][i] for i in local])
        loss = self.batch_loss(log_probs, labels)
        self.seen = torch.cat([self.seen, log_probs[:, self.allowed].half()])
        self.seen_labels = torch.cat([self.seen_labels, labels])
        self.words = self.choose()
        return global_mean(loss, len(local), len(indices))

    def batch_loss(self, log_probs: torch.Tensor, labels: torch.Tensor) -> float:
        """The cross-entropy over classes of the words in use, from their first tokens' log-probabilities."""
        tokenizer = self.objective.tokenizer
        first = torch.tensor([tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in self.words])
        return torch.nn.functional.cross_entropy(log_probs[:, first].double(), labels).item()

    def choose(self) -> list[str]:
        """The words that classify the rows seen best (see the module docstring), counted over the rows every
        rank has seen."""
        counts = sum_over_ranks(torch.bincount(self.seen_labels, minlength=self.classes).double())
        if not bool((counts > 0).all()):  # a class no rank has seen yet keeps its word
            return self.words
        rows = self.seen.float()
        candidates = self.candidates(rows, counts)

        def quality(combos: list[tuple[int, ...]]) -> torch.Tensor:
            """[n, 2] (rows classified right, mean margin) of each combination, over every rank's rows."""
            picked = rows[:, torch.tensor(combos).T]  # [N, C, n]
            true = picked.gather(1, self.seen_labels[:, None, None].expand(-1, 1, len(combos)))[:, 0]
            others = picked.scatter(1, self.seen_labels[:, None, None].expand(-1, 1, len(combos)), -torch.inf)
            margin = true - others.max(1).values
            return sum_over_ranks(torch.stack([(margin > 0).double().sum(0), margin.double().sum(0)], 1))

        def best_of(combos: list[tuple[int, ...]]) -> tuple[int, ...]:
            scores = quality(combos)
            return combos[max(range(len(combos)), key=lambda i: tuple(scores[i].tolist()))]

        if self.classes <= 2:
            chosen = best_of([c for c in itertools.product(*candidates) if len(set(c)) == self.classes])
        else:  # coordinate ascent from the best of each class's list
            chosen = tuple(column[0] for column in candidates)
            for _ in range(2):
                for label in range(self.classes):
                    others = chosen[:label] + chosen[label + 1 :]
                    chosen = best_of([chosen[:label] + (c,) + chosen[label + 1 :] for c in candidates[label]
                                      if c not in others])
        return [self.objective.tokenizer.decode([int(self.allowed[column])]) for column in chosen]

    def candidates(self, rows: torch.Tensor, counts: torch.Tensor) -> list[list[int]]:
        """Per class, the `CANDIDATES` allowed columns with the largest gap of mean log-probabilities (`counts`:
        each class's rows over every rank)."""
        sums = sum_over_ranks(torch.stack([rows[self.seen_labels == label].double().sum(0)
                                           for label in range(self.classes)]))
        means = sums / counts[:, None]
        gaps = torch.stack([means[c] - torch.cat([means[:c], means[c + 1 :]]).max(0).values
                            for c in range(self.classes)])
        return gaps.topk(min(CANDIDATES, gaps.shape[1]), dim=1).indices.tolist()

    def prompt(self) -> WholePrompt:
        return WholePrompt(self.objective.template, self.words, self.prompt_ids.tolist())

    def tensors(self) -> dict[str, torch.Tensor]:
        # the words as token ids, one row per class (-1 pads a shorter word): a checkpoint holds no strings
        rows = [self.objective.tokenizer(w, add_special_tokens=False)["input_ids"] for w in self.words]
        width = max(len(row) for row in rows)
        return {"label_word_ids": torch.tensor([row + [-1] * (width - len(row)) for row in rows])}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        rows = [[i for i in row if i >= 0] for row in tensors["label_word_ids"].tolist()]
        starts = {tuple(self.objective.tokenizer(w, add_special_tokens=False)["input_ids"]): w
                  for w in self.objective.label_words}  # the user's own spelling where it is theirs
        self.words = [starts.get(tuple(row), self.objective.tokenizer.decode(row)) for row in rows]

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen.clone(), "seen_labels": self.seen_labels.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen, self.seen_labels = state["seen"].clone(), state["seen_labels"].clone()


class LabelWordScores:
    """Validation accuracy of any single-token label words after one prompt, from one forward over the validation
    rows (the answer position's distribution over the vocabulary, kept): what scoring a label-word search's
    choices costs. Exactly `objective.score` with those words, for words of one token."""

    def __init__(self, model: nn.Module, objective: Any, start: WholePrompt) -> None:
        self.tokenizer, self.template, self.token_ids = objective.tokenizer, start.template, list(start.token_ids)
        prompt = torch.tensor(start.token_ids, dtype=torch.long)
        self.log_probs = objective.answer_log_probs(model, prompt, split="held_out").cpu()  # [N, V]
        self.labels = torch.tensor(objective.labels("held_out"))

    def covers(self, prompt: WholePrompt) -> bool:
        """Whether `prompt` differs from the start in its label words only, each one token."""
        ids = [self.tokenizer(word, add_special_tokens=False)["input_ids"] for word in prompt.label_words]
        return (prompt.template, list(prompt.token_ids)) == (self.template, self.token_ids) and all(
            len(word) == 1 for word in ids)

    def accuracy(self, words: list[str]) -> float:
        ids = [self.tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in words]
        predictions = self.log_probs[:, ids].argmax(-1)
        return (predictions == self.labels).double().mean().item()
