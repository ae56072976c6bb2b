"""Label-word search: which word the model should be read for, per class, after the template and its prompt.

A strategy on the one loop (`loop.optimize`). Each step runs its batch once with the prompt fixed and adds
each row's log-distribution over the vocabulary at the answer position (where a label word's first token is
predicted) to its class's sum. The words in use are, per class, the allowed token whose mean log-probability on
that class's rows most exceeds its largest mean on another class's rows (RLPrompt's gap: the true class against
the best other), the classes taking distinct tokens, the most separated first. Step 0 is the user's own
words (which may be several tokens each); the loop keeps whichever words score best on validation.

Example:
    ```py
    >>> search = LabelWordSearch(model, objective, prompt_ids, allowed_ids)   # doctest: +SKIP
    >>> state, _ = optimize(lambda restart: search, objective, LoopConfig(steps=20),
    ...                     score=lambda words: score_whole_prompt(words))     # doctest: +SKIP
    ```
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..distributed import combine, global_mean, shard
from ..objectives.templates import WholePrompt


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
        classes, vocabulary = len(objective.label_words), model.get_input_embeddings().weight.shape[0]
        self.sums = torch.zeros(classes, vocabulary, dtype=torch.float64)
        self.counts = torch.zeros(classes, dtype=torch.float64)
        self.words = list(objective.label_words)  # the user's words until the first step

    def step(self, indices: list[int]) -> float:
        local = shard(indices)
        log_probs = self.objective.answer_log_probs(self.model, self.prompt_ids, local).cpu().double()  # [B, V]
        labels = torch.tensor([self.objective.train[1][i] for i in local])
        loss = self.batch_loss(log_probs, labels)
        sums = torch.zeros_like(self.sums).index_add_(0, labels, log_probs)
        counts = torch.bincount(labels, minlength=len(self.counts)).double()
        # global sums: each rank's mean share, combined, times the global batch (identical on every rank)
        self.sums += combine(sums / len(local), len(local), len(indices)) * len(indices)
        self.counts += combine(counts / len(local), len(local), len(indices)) * len(indices)
        self.words = self.choose()
        return global_mean(loss, len(local), len(indices))

    def batch_loss(self, log_probs: torch.Tensor, labels: torch.Tensor) -> float:
        """The cross-entropy over classes of the words in use, from their first tokens' log-probabilities."""
        tokenizer = self.objective.tokenizer
        first = torch.tensor([tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in self.words])
        return torch.nn.functional.cross_entropy(log_probs[:, first], labels).item()

    def choose(self) -> list[str]:
        """Per class, the allowed token with the largest gap (see the module docstring), all distinct."""
        seen = self.counts > 0
        if not bool(seen.all()):  # a class not yet seen keeps its word
            return self.words
        means = self.sums[:, self.allowed] / self.counts[:, None]  # [C, A]
        gaps = torch.empty_like(means)
        for label in range(len(means)):
            others = torch.cat([means[:label], means[label + 1 :]])
            gaps[label] = means[label] - others.max(0).values
        chosen: dict[int, int] = {}
        taken: set[int] = set()
        for label in gaps.max(1).values.argsort(descending=True).tolist():  # the most separated class first
            for column in gaps[label].argsort(descending=True).tolist():
                token = int(self.allowed[column])
                if token not in taken:
                    chosen[label], taken = token, taken | {token}
                    break
        return [self.objective.tokenizer.decode([chosen[label]]) for label in range(len(means))]

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
        return {"sums": self.sums.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.counts = state["sums"].clone(), state["counts"].clone()


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
