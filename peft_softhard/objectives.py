"""Objectives for prompt discovery on a causal LM: what a prompt, prepended to every input, should achieve.

An objective turns a prompt into numbers, three ways:
- `loss(model, prompt_embeds, indices)`: differentiable training loss of one prompt given as vectors
  ([n, d], what the model sees) on the training examples `indices` — gradient methods (PEZ, projected SGD,
  and GCG's token ranking) use it;
- `candidate_losses(model, prompt_ids, indices)`: the same loss for many token prompts at once ([C, n]),
  without gradients — GCG scores its candidate swaps with it;
- `score(model, prompt)`: how good one prompt (token ids, or vectors for a soft prompt) is on the held-out
  examples (higher is better), or minus its loss on all training examples when there are none.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .mixed_batch import _accepts, adapter_prompt, is_decoder, prepend_prompts
from .projection import module_device

# Prompts for a set of rows: one [n, d] for all, [R, n, d], or a list of R prompts of any lengths.
Prompts = torch.Tensor | Sequence[torch.Tensor]

# Rows (prompt x example x label word) per forward pass when scoring without gradients.
DEFAULT_EVAL_ROWS = 64


@dataclass
class _Rows:
    """Token rows that follow the prompt, right-padded, with the positions whose tokens are scored."""

    input_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor  # [R, L]
    target_mask: torch.Tensor  # [R, L] True where the token is a target (its log-probability is summed)


def _pad_rows(rows: Sequence[Sequence[int]], targets: Sequence[Sequence[bool]], pad_id: int) -> _Rows:
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    target_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, (row, target) in enumerate(zip(rows, targets, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        target_mask[i, : len(row)] = torch.tensor(target)
    return _Rows(input_ids, attention_mask, target_mask)


@dataclass
class CachedPrompt:
    """One prompt run through a decoder once: its keys/values and the logits at its last position. Every row
    after it then costs only its own tokens (a prompt is a fixed prefix at evaluation time)."""

    cache: Any  # a transformers Cache for a batch of one
    last_logits: torch.Tensor  # [V], predicting a row's first token
    length: int


@torch.no_grad()
def cache_prompt(model: nn.Module, prompt_embeds: torch.Tensor) -> CachedPrompt | None:
    """The prompt's keys/values, or None where they cannot be reused (an encoder, no cache, an empty prompt)."""
    if prompt_embeds.shape[0] == 0 or not is_decoder(model):
        return None
    output = model(inputs_embeds=prompt_embeds[None].to(module_device(model)), use_cache=True)
    cache = getattr(output, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    return CachedPrompt(cache, output.logits[0, -1], prompt_embeds.shape[0])


def _row_logits_after_cache(model: nn.Module, cached: CachedPrompt, row_embeds: torch.Tensor, rows: _Rows,
                            positions: torch.Tensor | None):
    """`_row_logits` for rows after a cached prompt: only the rows' own tokens are run."""
    count, length = row_embeds.shape[:2]
    device = row_embeds.device
    cache = copy.deepcopy(cached.cache)  # the forward appends the rows' keys/values to it
    cache.batch_repeat_interleave(count)
    mask = torch.cat([torch.ones(count, cached.length, dtype=torch.long, device=device),
                      rows.attention_mask.to(device)], 1)
    extra = {}
    if _accepts(model, "position_ids"):  # rows are right-padded: token t sits at position n + t
        extra["position_ids"] = (cached.length + torch.arange(length, device=device)).expand(count, -1)
    logits = model(inputs_embeds=row_embeds, attention_mask=mask, past_key_values=cache, use_cache=True,
                   **extra).logits
    first = cached.last_logits.to(logits.dtype).expand(count, 1, -1)
    if positions is not None:  # the token at row position p is predicted at row column p - 1 (p = 0: the prompt)
        positions = positions.to(device)
        chosen = logits[torch.arange(count, device=device), (positions - 1).clamp(min=0)]
        return torch.where((positions == 0)[:, None], first[:, 0], chosen)
    return torch.cat([first, logits[:, :-1]], 1)


def _row_logits(model: nn.Module, prompt_embeds: Prompts | CachedPrompt, rows: _Rows,
                positions: torch.Tensor | None = None):
    """[R, L, V] logits predicting each row token after the prompt: one [n, d] for all rows, [R, n, d], a
    list of R prompts of any lengths (an empty [0, d]: no prompt), or a `CachedPrompt`. With `positions` [R]
    (each at least 1 unless the prompt is cached): [R, V], the logits predicting only the token at each row's
    position.

    Right padding keeps every real token at the position it has alone, so a row's result does not depend on
    the batch it is in (nor on the other rows' prompt lengths).
    """
    device = module_device(model)
    input_ids = rows.input_ids.to(device)
    row_embeds = _embed_ids(model, input_ids)
    if isinstance(prompt_embeds, CachedPrompt):
        return _row_logits_after_cache(model, prompt_embeds, row_embeds, rows, positions)
    batch = prepend_prompts(prompt_embeds, row_embeds, rows.attention_mask.to(device))
    logits = model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask).logits
    width = batch.prompt_width  # the token in row column t is predicted at user-layout column P + t - 1
    if positions is not None:
        return batch.at(logits, width - 1 + positions)
    if width == 0:  # no prompt at all (a manual template alone): nothing predicts a row's first token
        return F.pad(batch.to_user_layout(logits, slice(0, input_ids.shape[1] - 1)), (0, 0, 1, 0))
    return batch.to_user_layout(logits, slice(width - 1, width - 1 + input_ids.shape[1]))


def target_log_probs(model: nn.Module, prompt_embeds: Prompts, rows: _Rows) -> torch.Tensor:
    """[R] sum of log-probabilities of each row's target tokens after the prompt."""
    log_probs = _row_logits(model, prompt_embeds, rows).float().log_softmax(-1)
    device = log_probs.device
    token_log_probs = log_probs.gather(-1, rows.input_ids.to(device).unsqueeze(-1)).squeeze(-1)
    return (token_log_probs * rows.target_mask.to(device)).sum(-1)


@torch.no_grad()
def candidate_target_log_probs(
    model: nn.Module,
    prompts: torch.Tensor | Sequence[torch.Tensor],
    rows: _Rows,
    max_rows: int = DEFAULT_EVAL_ROWS,
    reduce: Callable[[nn.Module, Prompts, _Rows], torch.Tensor] = target_log_probs,
    by_length: bool = True,
    reuse_prompt: bool = True,
) -> torch.Tensor:
    """[C, R, ...] `reduce` (default: target log-probabilities) of every row after each of C prompts
    ([C, n] ids or [C, n, d] vectors, or a list of C prompts of any lengths), `max_rows` rows a forward.

    Two speed-ups, the results the same up to float rounding: `by_length` batches the rows in order of
    length, so a forward carries little padding; `reuse_prompt` runs a single prompt (C = 1) through a
    decoder once and reuses its keys/values for every row."""
    if isinstance(prompts, torch.Tensor):
        prompts = as_prompt_embeds(model, prompts)
    else:
        prompts = [as_prompt_embeds(model, prompt) for prompt in prompts]
    num_prompts, num_rows = len(prompts), rows.input_ids.shape[0]
    order = torch.arange(num_rows)
    if by_length:
        order = rows.attention_mask.sum(1).argsort(descending=True, stable=True)  # longest first: memory fails early
        rows = _Rows(rows.input_ids[order], rows.attention_mask[order], rows.target_mask[order])
    cached = cache_prompt(model, prompts[0]) if reuse_prompt and num_prompts == 1 else None
    results = []
    for start in range(0, num_prompts * num_rows, max_rows):
        flat = torch.arange(start, min(start + max_rows, num_prompts * num_rows))
        row = flat % num_rows
        length = int(rows.attention_mask[row].sum(1).max())  # drop columns that are padding in this chunk
        chunk = _Rows(rows.input_ids[row, :length], rows.attention_mask[row, :length], rows.target_mask[row, :length])
        which = flat // num_rows
        if cached is not None:
            chunk_prompts = cached
        else:
            chunk_prompts = prompts[which] if isinstance(prompts, torch.Tensor) else [prompts[c] for c in which]
        results.append(reduce(model, chunk_prompts, chunk))
    results = torch.cat(results)
    results = results.view(num_prompts, num_rows, *results.shape[1:])
    return results[:, order.argsort()]  # back to the rows' own order


def accuracy_of(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """The share of predictions equal to their labels."""
    return sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)


def _embed_ids(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    embed = model.get_input_embeddings()
    return embed(ids.to(module_device(embed)))


def as_prompt_embeds(model: nn.Module, prompt: torch.Tensor) -> torch.Tensor:
    """A prompt as the vectors the model sees: token ids are embedded by the model, vectors pass through."""
    return prompt if prompt.is_floating_point() else _embed_ids(model, prompt)


class Objective:
    """What a prompt should achieve; see the module docstring for the three methods."""

    num_train: int
    has_held_out: bool

    def loss(self, model: nn.Module, prompt_embeds: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        raise NotImplementedError

    def candidate_losses(
        self, model: nn.Module, prompt_ids: torch.Tensor, indices: Sequence[int], max_rows: int = DEFAULT_EVAL_ROWS
    ) -> torch.Tensor:
        raise NotImplementedError

    def score(self, model: nn.Module, prompt: torch.Tensor) -> float:
        """Held-out quality of one prompt: token ids [n] or vectors [n, d] (a soft prompt); higher is better."""
        raise NotImplementedError


class ClassificationObjective(Objective):
    """Classify texts with a causal LM through a template and label words (a verbalizer).

    Each example reads `<prompt>` + `template.format(text=...)`, and class c scores the summed log-probability
    of all tokens of `label_words[c]` after it (a label word may be several tokens). The loss is the
    cross-entropy over classes; the score is accuracy.

    Example:
        ```py
        >>> objective = ClassificationObjective(
        ...     tokenizer, texts, labels, template=" {text} It was", label_words=[" bad", " good"],
        ...     held_out_texts=dev_texts, held_out_labels=dev_labels)  # doctest: +SKIP
        ```
    """

    def __init__(
        self,
        tokenizer,
        texts: Sequence[str],
        labels: Sequence[int],
        *,
        template: str = "{text}",
        label_words: Sequence[str],
        held_out_texts: Sequence[str] | None = None,
        held_out_labels: Sequence[int] | None = None,
    ) -> None:
        if "{text}" not in template:
            raise ValueError(f"The template must contain '{{text}}', got {template!r}.")
        self.tokenizer = tokenizer
        self.label_ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in label_words]
        empty = [word for word, ids in zip(label_words, self.label_ids, strict=True) if not ids]
        if empty:
            raise ValueError(f"Label words {empty} tokenise to nothing; choose words the tokenizer can encode.")
        if len(set(map(tuple, self.label_ids))) < len(self.label_ids):
            raise ValueError(f"Label words {list(label_words)} tokenise to the same ids; make them distinct.")
        self.single_token = all(len(ids) == 1 for ids in self.label_ids)
        self.first_label_ids = torch.tensor([ids[0] for ids in self.label_ids])
        self.train = self._encode(texts, labels, template)
        self.held_out = self._encode(held_out_texts, held_out_labels, template) if held_out_texts else None
        self.num_train = len(self.train[0])
        self.has_held_out = self.held_out is not None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _encode(self, texts, labels, template) -> tuple[list[list[int]], list[int]]:
        if texts is None or labels is None or len(texts) != len(labels) or not len(texts):
            raise ValueError("Give texts and labels of the same, non-zero length.")
        bad = sorted({label for label in labels if not 0 <= label < len(self.label_ids)})
        if bad:
            raise ValueError(f"Labels {bad} have no label word ({len(self.label_ids)} label words given).")
        encoded = [self.tokenizer(template.format(text=t), add_special_tokens=False)["input_ids"] for t in texts]
        return encoded, list(labels)

    def _rows(self, examples: list[list[int]]) -> _Rows:
        """Single-token label words: one row per example, ending in a placeholder label token whose position
        gives every class at once. Otherwise one row per example and class, ending in that class's word."""
        if self.single_token:
            words = [self.label_ids[0]]
        else:
            words = self.label_ids
        rows, targets = [], []
        for text_ids in examples:
            for word in words:
                rows.append(text_ids + word)
                targets.append([False] * len(text_ids) + [True] * len(word))
        return _pad_rows(rows, targets, self.pad_id)

    def _label_log_probs(self, model, prompt_embeds, rows: _Rows) -> torch.Tensor:
        """[R, classes] for single-token label words: the label distribution at each row's label position."""
        position = rows.target_mask.to(torch.long).argmax(1)
        label_logits = _row_logits(model, prompt_embeds, rows, positions=position).float()
        return label_logits.log_softmax(-1)[:, self.first_label_ids.to(label_logits.device)]

    def _class_log_probs(self, model, prompt_embeds, examples) -> torch.Tensor:
        """[examples, classes] log-probabilities of every label word after one prompt [n, d]."""
        rows = self._rows(examples)
        if self.single_token:
            return self._label_log_probs(model, prompt_embeds, rows)
        return target_log_probs(model, prompt_embeds, rows).view(len(examples), len(self.label_ids))

    def loss(self, model, prompt_embeds, indices):
        examples = [self.train[0][i] for i in indices]
        labels = torch.tensor([self.train[1][i] for i in indices], device=module_device(model))
        return F.cross_entropy(self._class_log_probs(model, prompt_embeds, examples), labels)

    def _candidate_class_log_probs(self, model, prompts, examples, max_rows, **speed: bool) -> torch.Tensor:
        """[C, examples, classes] for C prompts; `speed`: the switches of `candidate_target_log_probs`."""
        rows = self._rows(examples)
        if self.single_token:
            return candidate_target_log_probs(model, prompts, rows, max_rows, reduce=self._label_log_probs, **speed)
        log_probs = candidate_target_log_probs(model, prompts, rows, max_rows, **speed)
        return log_probs.view(len(prompts), len(examples), len(self.label_ids))

    def candidate_losses(self, model, prompts, indices, max_rows=DEFAULT_EVAL_ROWS):
        examples = [self.train[0][i] for i in indices]
        labels = torch.tensor([self.train[1][i] for i in indices], device=module_device(model))
        log_probs = self._candidate_class_log_probs(model, prompts, examples, max_rows)
        classes = log_probs.shape[-1]
        losses = F.cross_entropy(log_probs.reshape(-1, classes), labels.repeat(prompts.shape[0]), reduction="none")
        return losses.view(prompts.shape[0], len(examples)).mean(1)

    @torch.no_grad()
    def predictions(self, model, prompt: torch.Tensor, split: str = "held_out", *, by_length: bool = True,
                    reuse_prompt: bool = True) -> list[int]:
        """Predicted classes of one prompt (ids [n] or vectors [n, d]) on the held-out (or "train") examples.
        The switches (see `candidate_target_log_probs`) only change the speed; both off is the naive loop."""
        examples, _ = self.held_out if split == "held_out" else self.train
        log_probs = self._candidate_class_log_probs(model, prompt[None], examples, DEFAULT_EVAL_ROWS,
                                                    by_length=by_length, reuse_prompt=reuse_prompt)[0]
        return log_probs.argmax(-1).cpu().tolist()

    @torch.no_grad()
    def member_log_probs(self, peft_model, adapter_names: Sequence[str], split: str = "held_out") -> torch.Tensor:
        """[adapters, examples, classes] class log-probabilities (normalised over the classes) of each adapter's
        prompt ("__base__": none) on the held-out (or "train") examples, all prompts mixed in the same batches."""
        examples, _ = self.held_out if split == "held_out" else self.train
        prompts = [adapter_prompt(peft_model, name).detach() for name in adapter_names]
        model = peft_model.get_base_model()
        log_probs = self._candidate_class_log_probs(model, prompts, examples, DEFAULT_EVAL_ROWS)
        return log_probs.float().log_softmax(-1)

    def accuracy(self, model, prompt: torch.Tensor, split: str = "held_out") -> float:
        """Accuracy of one prompt (ids [n] or vectors [n, d]) on the held-out (or "train") examples."""
        labels = (self.held_out if split == "held_out" else self.train)[1]
        predictions = self.predictions(model, prompt, split)
        return accuracy_of(predictions, labels)

    def score(self, model, prompt):
        if self.has_held_out:
            return self.accuracy(model, prompt)
        return -self.candidate_losses(model, prompt[None], range(self.num_train))[0].item()


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

    def _rows(self, prefixes: list[list[int]]) -> _Rows:
        rows = [prefix + self.target_ids for prefix in prefixes]
        targets = [[False] * len(prefix) + [True] * len(self.target_ids) for prefix in prefixes]
        return _pad_rows(rows, targets, self.pad_id)

    def loss(self, model, prompt_embeds, indices):
        prefixes = [self.train[i] for i in indices]
        return -target_log_probs(model, prompt_embeds, self._rows(prefixes)).mean() / len(self.target_ids)

    def candidate_losses(self, model, prompts, indices, max_rows=DEFAULT_EVAL_ROWS):
        rows = self._rows([self.train[i] for i in indices])
        return -candidate_target_log_probs(model, prompts, rows, max_rows).mean(1) / len(self.target_ids)

    @torch.no_grad()
    def score(self, model, prompt):
        rows = self._rows(self.held_out if self.has_held_out else self.train)
        predicted = _row_logits(model, as_prompt_embeds(model, prompt), rows).argmax(-1).cpu()
        correct = (predicted == rows.input_ids) & rows.target_mask
        return (correct.sum() / rows.target_mask.sum()).item()


class SequenceClassificationObjective(Objective):
    """Classify texts with an encoder's classification head (a SEQ_CLS model); loss: cross-entropy, score:
    accuracy. The prompt is prepended to the embedded input, as a SEQ_CLS SOFTHARD adapter does."""

    def __init__(self, tokenizer, texts, labels, *, num_labels: int, held_out_texts=None, held_out_labels=None,
                 max_length: int = 128) -> None:
        self.tokenizer, self.num_labels, self.max_length = tokenizer, num_labels, max_length
        self.train = self._encode(texts, labels)
        self.held_out = self._encode(held_out_texts, held_out_labels) if held_out_texts else None
        self.num_train = len(self.train[0])
        self.has_held_out = self.held_out is not None

    def _encode(self, texts, labels):
        if texts is None or labels is None or len(texts) != len(labels) or not len(texts):
            raise ValueError("Give texts and labels of the same, non-zero length.")
        bad = sorted({label for label in labels if not 0 <= label < self.num_labels})
        if bad:
            raise ValueError(f"Labels {bad} are outside 0..{self.num_labels - 1}.")
        return list(texts), list(labels)

    def _logits(self, model, prompt_embeds, texts) -> torch.Tensor:
        device = module_device(model)
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
        row_embeds = _embed_ids(model, batch["input_ids"])
        prompt = as_prompt_embeds(model, prompt_embeds).to(device=device, dtype=row_embeds.dtype)
        prompt = prompt.unsqueeze(0).expand(len(texts), -1, -1)
        mask = torch.cat([torch.ones(len(texts), prompt.shape[1], dtype=torch.long), batch["attention_mask"]], 1)
        return model(inputs_embeds=torch.cat([prompt, row_embeds], 1), attention_mask=mask.to(device)).logits

    def loss(self, model, prompt_embeds, indices):
        texts = [self.train[0][i] for i in indices]
        labels = torch.tensor([self.train[1][i] for i in indices], device=module_device(model))
        return F.cross_entropy(self._logits(model, prompt_embeds, texts).float(), labels)

    @torch.no_grad()
    def predictions(self, model, prompt, split: str = "held_out", batch_size: int = 32) -> list[int]:
        texts, _ = self.held_out if split == "held_out" else self.train
        chunks = [self._logits(model, prompt, texts[s : s + batch_size]).argmax(-1).cpu()
                  for s in range(0, len(texts), batch_size)]
        return torch.cat(chunks).tolist()

    def candidate_losses(self, model, prompts, indices, max_rows=DEFAULT_EVAL_ROWS):
        with torch.no_grad():
            return torch.stack([self.loss(model, prompt, indices) for prompt in prompts])

    @torch.no_grad()
    def member_log_probs(self, peft_model, adapter_names: Sequence[str], split: str = "held_out",
                         batch_size: int = 32) -> torch.Tensor:
        """[adapters, examples, classes] log-probabilities from each adapter's prompt and head, every batch of
        texts repeated once per adapter and run as one mixed batch (`adapter_names=`)."""
        texts, _ = self.held_out if split == "held_out" else self.train
        members, chunks = len(adapter_names), []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                                   truncation=True, max_length=self.max_length).to(module_device(peft_model))
            rows = len(batch["input_ids"])
            logits = peft_model(input_ids=batch["input_ids"].repeat(members, 1),
                                attention_mask=batch["attention_mask"].repeat(members, 1),
                                adapter_names=[name for name in adapter_names for _ in range(rows)]).logits
            chunks.append(logits.float().log_softmax(-1).view(members, rows, -1))
        return torch.cat(chunks, 1)

    def score(self, model, prompt):
        split = "held_out" if self.has_held_out else "train"
        labels = (self.held_out if self.has_held_out else self.train)[1]
        predictions = self.predictions(model, prompt, split)
        return accuracy_of(predictions, labels)
