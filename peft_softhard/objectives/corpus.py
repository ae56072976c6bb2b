"""`CorpusObjective`: a prompt that makes the model write like a body of text (a style, a genre, a domain).

This is what the local-LLM community trains soft prompts for (KoboldAI's mkultra trained them on a text
file): the prompt goes before each chunk of the user's text and the loss is the language-modelling loss of
the chunk's tokens. Documents are cut into chunks of at most `chunk_tokens` tokens on token boundaries; a
chunk never spans two documents, and every chunk starts with a separator token (the tokenizer's BOS, else its
EOS) that the loss does not count, so that its first real token is predicted too, with or without a prompt:

    [prompt] [separator] [chunk tokens ...]      loss: the chunk tokens only

`loss` and `candidate_losses` are the mean negative log-likelihood per chunk token over the rows given
(weighted by tokens, as a causal LM's own loss over a padded batch); `score` is minus that on the held-out
documents' chunks, so the loop keeps the prompt of lowest validation loss. `perplexity` and
`bits_per_token` report a split.

Example:
    ```py
    >>> objective = CorpusObjective(tokenizer, train_documents, held_out_documents=validation_documents,
    ...                             eval_documents=report_documents, chunk_tokens=128)  # doctest: +SKIP
    >>> objective.perplexity(model, prompt, "eval")                                    # doctest: +SKIP
    ```
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .interface import Objective
from .scoring import Rows, candidate_target_log_probs, pad_rows, target_log_probs

CORPUS_SPLITS = ("train", "held_out", "eval")
# Rows per forward when scoring without gradients. Every position's full-vocabulary logits are kept (a
# classification objective keeps one position's): 16 rows of 128 tokens of a 49,152-token vocabulary are 400 MB.
CORPUS_EVAL_ROWS = 16


def chunk_separator_id(tokenizer) -> int:
    """The token between the prompt and each chunk by default: the tokenizer's BOS, else its EOS."""
    separator_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if separator_id is None:
        raise ValueError("The tokenizer has neither a BOS nor an EOS token: give separator_id, the token that "
                         "starts every chunk.")
    return separator_id


class CorpusObjective(Objective):
    """Language modelling of a corpus' chunks after the prompt (see the module docstring).

    Args:
        tokenizer: the model's tokenizer.
        documents: the training documents (text).
        held_out_documents: validation documents: `score` (the choice of step) reads their chunks.
        eval_documents: documents reported once, by the chosen prompt (`perplexity(..., "eval")`).
        chunk_tokens: the longest chunk, in tokens (a document's last chunk may be shorter).
        separator_id: the token before every chunk (default: the tokenizer's BOS, else its EOS).
    """

    def __init__(self, tokenizer, documents: Sequence[str], *, held_out_documents: Sequence[str] | None = None,
                 eval_documents: Sequence[str] | None = None, chunk_tokens: int = 128,
                 separator_id: int | None = None) -> None:
        if not isinstance(chunk_tokens, int) or isinstance(chunk_tokens, bool) or chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be at least 1 token, got {chunk_tokens!r}.")
        self.tokenizer, self.chunk_tokens = tokenizer, chunk_tokens
        self.separator_id = chunk_separator_id(tokenizer) if separator_id is None else separator_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.separator_id
        self.train = self._chunks(documents, "training")
        self.held_out = self._chunks(held_out_documents, "validation") if held_out_documents else None
        self.evaluation = self._chunks(eval_documents, "report") if eval_documents else None
        self.num_train = len(self.train)
        self.has_held_out = self.held_out is not None

    def _chunks(self, documents: Sequence[str], what: str) -> list[list[int]]:
        """Each document's tokens cut into chunks of at most `chunk_tokens` (never across documents)."""
        chunks = []
        for document in documents:
            ids = self.tokenizer(document, add_special_tokens=False)["input_ids"]
            chunks += [ids[start : start + self.chunk_tokens] for start in range(0, len(ids), self.chunk_tokens)]
        if not chunks:
            raise ValueError(f"The {what} documents hold no text (they tokenize to nothing).")
        return chunks

    def split(self, split: str = "held_out") -> list[list[int]]:
        """The token chunks of "train", "held_out" (validation) or "eval" (report)."""
        if split not in CORPUS_SPLITS:
            raise ValueError(f"Unknown split {split!r}: choose one of {', '.join(CORPUS_SPLITS)}.")
        chunks = {"train": self.train, "held_out": self.held_out, "eval": self.evaluation}[split]
        if chunks is None:
            raise ValueError(f"This objective has no {split!r} documents.")
        return chunks

    def rows(self, chunks: Sequence[Sequence[int]]) -> Rows:
        """[separator; chunk] rows, right-padded, whose targets are the chunk's tokens."""
        return pad_rows([[self.separator_id, *chunk] for chunk in chunks],
                        [[False] + [True] * len(chunk) for chunk in chunks], self.pad_id)

    def loss(self, model, prompt_embeds, indices):
        rows = self.rows([self.train[i] for i in indices])
        return -target_log_probs(model, prompt_embeds, rows).sum() / rows.target_mask.sum()

    def candidate_losses(self, model, prompt_ids, indices, max_rows=CORPUS_EVAL_ROWS):
        rows = self.rows([self.train[i] for i in indices])
        log_probs = candidate_target_log_probs(model, prompt_ids, rows, max_rows)  # [C, R]
        return -log_probs.sum(1) / rows.target_mask.sum()

    @torch.no_grad()
    def mean_nll(self, model: nn.Module, prompt: torch.Tensor, split: str = "held_out") -> float:
        """Mean negative log-likelihood (nats) per chunk token of `split` after one prompt (ids [n] or
        vectors [n, d]; an empty prompt: none)."""
        rows = self.rows(self.split(split))
        log_probs = candidate_target_log_probs(model, prompt[None], rows, CORPUS_EVAL_ROWS)
        return (-log_probs.sum() / rows.target_mask.sum()).item()

    def perplexity(self, model: nn.Module, prompt: torch.Tensor, split: str = "held_out") -> float:
        return math.exp(self.mean_nll(model, prompt, split))

    def bits_per_token(self, model: nn.Module, prompt: torch.Tensor, split: str = "held_out") -> float:
        return self.mean_nll(model, prompt, split) / math.log(2)

    def num_tokens(self, split: str = "held_out") -> int:
        return sum(len(chunk) for chunk in self.split(split))

    def score(self, model, prompt):
        return -self.mean_nll(model, prompt, "held_out" if self.has_held_out else "train")
