"""Classification objectives: a causal LM with a template and label words (`ClassificationObjective`), or an
encoder's classification head (`SequenceClassificationObjective`). Both score accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..method.projection import module_device
from ..peft_boundary.adapters import adapter_prompt
from ..prompt_layout import is_decoder, prepend_prompts
from .interface import ClassifierObjective
from .scoring import (
    DEFAULT_EVAL_ROWS,
    Rows,
    as_prompt_embeds,
    candidate_target_log_probs,
    embed_ids,
    pad_rows,
    row_logits,
    target_log_probs,
)


class ClassificationObjective(ClassifierObjective):
    """Classify texts with a causal LM through a template and label words (a verbalizer).

    Each example reads `<prompt>` + `template.format(text=...)`, and class c scores the summed log-probability
    of all tokens of `label_words[c]` after it (a label word may be several tokens). The loss is the
    cross-entropy over classes; the score is accuracy.

    Example:
        ```py
        >>> objective = ClassificationObjective(
        ...     tokenizer, texts, labels, template=" {text} It was", label_words=[" bad", " good"],
        ...     held_out_texts=validation_texts, held_out_labels=validation_labels,  # choose the step
        ...     eval_texts=test_texts, eval_labels=test_labels)                       # report once  # doctest: +SKIP
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
        eval_texts: Sequence[str] | None = None,
        eval_labels: Sequence[int] | None = None,
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
        self.evaluation = self._encode(eval_texts, eval_labels, template) if eval_texts else None
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

    def _rows(self, examples: list[list[int]]) -> Rows:
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
        return pad_rows(rows, targets, self.pad_id)

    def _label_log_probs(self, model, prompt_embeds, rows: Rows) -> torch.Tensor:
        """[R, classes] for single-token label words: the label distribution at each row's label position."""
        position = rows.target_mask.to(torch.long).argmax(1)
        label_logits = row_logits(model, prompt_embeds, rows, positions=position).float()
        return label_logits.log_softmax(-1)[:, self.first_label_ids.to(label_logits.device)]

    def _class_log_probs(self, model, prompt_embeds, examples) -> torch.Tensor:
        """[examples, classes] log-probabilities of every label word after one prompt [n, d]."""
        rows = self._rows(examples)
        if self.single_token:
            return self._label_log_probs(model, prompt_embeds, rows)
        return target_log_probs(model, prompt_embeds, rows).view(len(examples), len(self.label_ids))

    def loss(self, model, prompt_embeds, indices):
        examples, labels = self.training_batch(indices, module_device(model))
        return F.cross_entropy(self._class_log_probs(model, prompt_embeds, examples), labels)

    def class_log_probs(self, model, prompt_embeds: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """[examples, classes] log-probabilities over the classes of the training examples `indices` after one
        prompt [n, d] (differentiable)."""
        examples, _ = self.training_batch(indices, module_device(model))
        return self._class_log_probs(model, prompt_embeds, examples).float().log_softmax(-1)

    def candidate_class_log_probs(self, model, prompts: torch.Tensor, indices: Sequence[int],
                                  max_rows: int = DEFAULT_EVAL_ROWS) -> torch.Tensor:
        """[C, examples, classes] the same for C token prompts [C, n], without gradients."""
        examples, _ = self.training_batch(indices, module_device(model))
        return self._candidate_class_log_probs(model, prompts, examples, max_rows).float().log_softmax(-1)

    def _candidate_class_log_probs(self, model, prompts, examples, max_rows, **speed: bool) -> torch.Tensor:
        """[C, examples, classes] for C prompts; `speed`: the switches of `candidate_target_log_probs`."""
        rows = self._rows(examples)
        if self.single_token:
            return candidate_target_log_probs(model, prompts, rows, max_rows, reduce=self._label_log_probs, **speed)
        log_probs = candidate_target_log_probs(model, prompts, rows, max_rows, **speed)
        return log_probs.view(len(prompts), len(examples), len(self.label_ids))

    def candidate_losses(self, model, prompts, indices, max_rows=DEFAULT_EVAL_ROWS):
        examples, labels = self.training_batch(indices, module_device(model))
        log_probs = self._candidate_class_log_probs(model, prompts, examples, max_rows)
        classes = log_probs.shape[-1]
        losses = F.cross_entropy(log_probs.reshape(-1, classes), labels.repeat(prompts.shape[0]), reduction="none")
        return losses.view(prompts.shape[0], len(examples)).mean(1)

    @torch.no_grad()
    def predictions(self, model, prompt: torch.Tensor, split: str = "held_out", *, by_length: bool = True,
                    reuse_prompt: bool = True) -> list[int]:
        """Predicted classes of one prompt (ids [n] or vectors [n, d]) on the held-out (or "train") examples.
        The switches (see `candidate_target_log_probs`) only change the speed; both off is the naive loop."""
        examples, _ = self.split(split)
        log_probs = self._candidate_class_log_probs(model, prompt[None], examples, DEFAULT_EVAL_ROWS,
                                                    by_length=by_length, reuse_prompt=reuse_prompt)[0]
        return log_probs.argmax(-1).cpu().tolist()

    @torch.no_grad()
    def member_log_probs(self, peft_model, adapter_names: Sequence[str], split: str = "held_out") -> torch.Tensor:
        """[adapters, examples, classes] class log-probabilities (normalised over the classes) of each adapter's
        prompt ("__base__": none) on the held-out (or "train") examples, all prompts mixed in the same batches."""
        examples, _ = self.split(split)
        prompts = [adapter_prompt(peft_model, name).detach() for name in adapter_names]
        model = peft_model.get_base_model()
        log_probs = self._candidate_class_log_probs(model, prompts, examples, DEFAULT_EVAL_ROWS)
        return log_probs.float().log_softmax(-1)

    def score(self, model, prompt):
        if self.has_held_out:
            return self.accuracy(model, prompt)
        return -self.candidate_losses(model, prompt[None], range(self.num_train))[0].item()


class SequenceClassificationObjective(ClassifierObjective):
    """Classify texts with an encoder's classification head (a SEQ_CLS model); loss: cross-entropy, score:
    accuracy. The prompt is prepended to the embedded input, as a SEQ_CLS SOFTHARD adapter does."""

    def __init__(self, tokenizer, texts, labels, *, num_labels: int, held_out_texts=None, held_out_labels=None,
                 eval_texts=None, eval_labels=None, max_length: int = 128) -> None:
        self.tokenizer, self.num_labels, self.max_length = tokenizer, num_labels, max_length
        self.train = self._encode(texts, labels)
        self.held_out = self._encode(held_out_texts, held_out_labels) if held_out_texts else None
        self.evaluation = self._encode(eval_texts, eval_labels) if eval_texts else None
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
        row_embeds = embed_ids(model, batch["input_ids"])
        prompted = prepend_prompts(as_prompt_embeds(model, prompt_embeds), row_embeds,
                                   batch["attention_mask"].to(device), padding_left=is_decoder(model))
        return model(inputs_embeds=prompted.inputs_embeds, attention_mask=prompted.attention_mask).logits

    def loss(self, model, prompt_embeds, indices):
        texts, labels = self.training_batch(indices, module_device(model))
        return F.cross_entropy(self._logits(model, prompt_embeds, texts).float(), labels)

    @torch.no_grad()
    def predictions(self, model, prompt, split: str = "held_out", batch_size: int = 32) -> list[int]:
        texts, _ = self.split(split)
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
        texts, _ = self.split(split)
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
        return self.accuracy(model, prompt, "held_out" if self.has_held_out else "train")
