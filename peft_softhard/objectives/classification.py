"""Classification objectives: a causal LM with a template and label words (`ClassificationObjective`), or an
encoder's classification head (`SequenceClassificationObjective`). Both score accuracy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..method.projection import module_device
from ..peft_boundary.adapters import adapter_prompt
from ..prompt_layout import insert_prompts, is_decoder
from .interface import ClassifierObjective
from .scoring import (
    DEFAULT_EVAL_ROWS,
    CachedHeads,
    Rows,
    as_prompt_embeds,
    cache_heads,
    candidate_target_log_probs,
    embed_ids,
    pad_rows,
    row_logits,
    target_log_probs,
)
from .templates import WholePrompt, check_template, encode_example

# Content-free inputs for contextual calibration (Zhao et al. 2021): the label bias they show is divided out.
CONTENT_FREE = ("N/A", "", "[MASK]")


class ClassificationObjective(ClassifierObjective):
    """Classify texts with a causal LM through a template and label words (a verbalizer).

    Each example reads `template` with its text at `{text}` and the prompt at `{prompt}` (without a slot: in
    front of the template), and class c scores the summed log-probability of all tokens of `label_words[c]`
    after it (a label word may be several tokens). The loss is the cross-entropy over classes; the score is
    accuracy.

    Example:
        ```py
        >>> objective = ClassificationObjective(
        ...     tokenizer, texts, labels, template=" {text} It was{prompt}", label_words=[" bad", " good"],
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
        instruction: str | None = None,
    ) -> None:
        check_template(template)
        self.tokenizer, self.template, self.label_words = tokenizer, template, list(label_words)
        self.instruction = instruction  # what a user would type to ask for the task: phrases a template edit adds
        self.label_ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in label_words]
        empty = [word for word, ids in zip(label_words, self.label_ids, strict=True) if not ids]
        if empty:
            raise ValueError(f"Label words {empty} tokenise to nothing; choose words the tokenizer can encode.")
        if len(set(map(tuple, self.label_ids))) < len(self.label_ids):
            raise ValueError(f"Label words {list(label_words)} tokenise to the same ids; make them distinct.")
        self.single_token = all(len(ids) == 1 for ids in self.label_ids)
        self.first_label_ids = torch.tensor([ids[0] for ids in self.label_ids])
        self.texts = {"train": texts, "held_out": held_out_texts, "eval": eval_texts}  # to re-template (`replace`)
        self.train = self._encode(texts, labels)
        self.held_out = self._encode(held_out_texts, held_out_labels) if held_out_texts else None
        self.evaluation = self._encode(eval_texts, eval_labels) if eval_texts else None
        self.num_train = len(self.train[0])
        self.has_held_out = self.held_out is not None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._reused_heads: dict[str, Any] | None = None  # see `reusing_heads`

    def replace(self, *, template: str | None = None, label_words: Sequence[str] | None = None
                ) -> ClassificationObjective:
        """The same examples and splits with another template and/or other label words (a whole-prompt search's
        step changes them)."""
        labels = {split: (self.split(split)[1] if self.texts[split] is not None else None) for split in self.texts}
        return type(self)(self.tokenizer, self.texts["train"], labels["train"],
                          template=self.template if template is None else template,
                          label_words=self.label_words if label_words is None else label_words,
                          held_out_texts=self.texts["held_out"], held_out_labels=labels["held_out"],
                          eval_texts=self.texts["eval"], eval_labels=labels["eval"], instruction=self.instruction)

    def for_prompt(self, prompt: WholePrompt) -> tuple[ClassificationObjective, torch.Tensor]:
        """(this objective with the whole prompt's template and label words, the tokens at its slot)."""
        objective = self
        if prompt.template != self.template or list(prompt.label_words) != self.label_words:
            objective = self.replace(template=prompt.template, label_words=prompt.label_words)
        return objective, torch.tensor(prompt.token_ids, dtype=torch.long)

    def _encode(self, texts, labels) -> tuple[list[tuple[list[int], int]], list[int]]:
        """(examples, labels); an example is (its template's token ids, the prompt's offset in them)."""
        if texts is None or labels is None or len(texts) != len(labels) or not len(texts):
            raise ValueError("Give texts and labels of the same, non-zero length.")
        bad = sorted({label for label in labels if not 0 <= label < len(self.label_ids)})
        if bad:
            raise ValueError(f"Labels {bad} have no label word ({len(self.label_ids)} label words given).")
        return [encode_example(self.tokenizer, self.template, text) for text in texts], list(labels)

    def _rows(self, examples: list[tuple[list[int], int]]) -> Rows:
        """Single-token label words: one row per example, ending in a placeholder label token whose position
        gives every class at once. Otherwise one row per example and class, ending in that class's word."""
        if self.single_token:
            words = [self.label_ids[0]]
        else:
            words = self.label_ids
        rows, targets, offsets = [], [], []
        for text_ids, offset in examples:
            for word in words:
                rows.append(text_ids + word)
                targets.append([False] * len(text_ids) + [True] * len(word))
                offsets.append(offset)
        return pad_rows(rows, targets, self.pad_id, offsets if any(offsets) else None)

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
                                  max_rows: int = DEFAULT_EVAL_ROWS, **speed: bool) -> torch.Tensor:
        """[C, examples, classes] the same for C token prompts [C, n], without gradients; `speed`: the switches
        of `candidate_target_log_probs` (they change only the speed)."""
        examples, _ = self.training_batch(indices, module_device(model))
        return self._candidate_class_log_probs(model, prompts, examples, max_rows, **speed).float().log_softmax(-1)

    def _candidate_class_log_probs(self, model, prompts, examples, max_rows, **speed: Any) -> torch.Tensor:
        """[C, examples, classes] for C prompts; `speed`: the switches (and heads) of `candidate_target_log_probs`."""
        rows = self._rows(examples)
        if self.single_token:
            return candidate_target_log_probs(model, prompts, rows, max_rows, reduce=self._label_log_probs, **speed)
        log_probs = candidate_target_log_probs(model, prompts, rows, max_rows, **speed)
        return log_probs.view(len(prompts), len(examples), len(self.label_ids))

    def candidate_losses(self, model, prompts, indices, max_rows=DEFAULT_EVAL_ROWS):
        examples, labels = self.training_batch(indices, module_device(model))
        log_probs = self._candidate_class_log_probs(model, prompts, examples, max_rows)
        classes = log_probs.shape[-1]
        losses = F.cross_entropy(log_probs.reshape(-1, classes), labels.repeat(len(prompts)), reduction="none")
        return losses.view(len(prompts), len(examples)).mean(1)

    @torch.no_grad()
    def template_losses(self, model, templates: Sequence[str], prompt_ids: torch.Tensor, indices: Sequence[int],
                        max_rows: int = DEFAULT_EVAL_ROWS) -> torch.Tensor:
        """[T] the training loss of each of T templates (this objective's label words, the tokens `prompt_ids` [n]
        at each template's slot, or in front) on the training examples `indices`, all in the same batches."""
        texts = [self.texts["train"][i] for i in indices]
        labels = torch.tensor([self.train[1][i] for i in indices], device=module_device(model))
        examples = [encode_example(self.tokenizer, template, text) for template in templates for text in texts]
        log_probs = self._candidate_class_log_probs(model, prompt_ids[None], examples, max_rows)[0].float()
        losses = F.cross_entropy(log_probs, labels.repeat(len(templates)), reduction="none")
        return losses.view(len(templates), len(texts)).mean(1)

    @torch.no_grad()
    def answer_log_probs(self, model, prompt: torch.Tensor, indices: Sequence[int] | None = None,
                         split: str = "train") -> torch.Tensor:
        """[examples, V] the log-distribution over the whole vocabulary where the answer's first token is
        predicted, for the examples `indices` of `split` (None: all of them) after one prompt (ids [n] or vectors
        [n, d]): what every candidate label word scores, in one forward."""
        examples = self.split(split)[0]
        examples = examples if indices is None else [examples[i] for i in indices]
        rows = pad_rows([ids + [self.pad_id] for ids, _ in examples],
                        [[False] * len(ids) + [True] for ids, _ in examples], self.pad_id,
                        [offset for _, offset in examples] if any(o for _, o in examples) else None)

        def answer(model, prompt, chunk: Rows) -> torch.Tensor:  # the placeholder's position: where the answer starts
            positions = chunk.target_mask.long().argmax(1)
            return row_logits(model, prompt, chunk, positions=positions).float().log_softmax(-1)

        return candidate_target_log_probs(model, prompt[None], rows, reduce=answer)[0]

    @torch.no_grad()
    def content_free_log_probs(self, model, prompt: torch.Tensor) -> torch.Tensor:
        """[classes] contextual calibration's label bias (Zhao et al. 2021): the class distribution after the
        prompt and template with content-free texts ("N/A", "", "[MASK]"), averaged."""
        examples = [encode_example(self.tokenizer, self.template, text) for text in CONTENT_FREE]
        log_probs = self._candidate_class_log_probs(model, prompt[None], examples, DEFAULT_EVAL_ROWS)[0]
        return log_probs.float().log_softmax(-1).exp().mean(0).log()

    @contextlib.contextmanager
    def reusing_heads(self, model) -> Iterator[None]:
        """Within: the validation rows' tokens before the template's slot are run through `model` once, and their
        keys/values reused by every prompt scored there (a search scores many; `model` must not change)."""
        self._reused_heads = {"model": model}
        try:
            yield
        finally:
            self._reused_heads = None

    def _validation_heads(self, model, split: str, examples) -> CachedHeads | None:
        reused = self._reused_heads
        if split != "held_out" or reused is None or reused["model"] is not model or "{prompt}" not in self.template:
            return None
        if "heads" not in reused:
            reused["heads"] = cache_heads(model, self._rows(examples))
        return reused["heads"]

    @torch.no_grad()
    def predictions(self, model, prompt: torch.Tensor, split: str = "held_out", *, calibrate: bool = False,
                    by_length: bool = True, reuse_prompt: bool = True) -> list[int]:
        """Predicted classes of one prompt (ids [n] or vectors [n, d]) on the held-out (or "train") examples;
        with `calibrate`, contextual calibration divides out the label bias `content_free_log_probs` shows.
        The switches (see `candidate_target_log_probs`) only change the speed; both off is the naive loop."""
        examples, _ = self.split(split)
        heads = self._validation_heads(model, split, examples)
        log_probs = self._candidate_class_log_probs(model, prompt[None], examples, DEFAULT_EVAL_ROWS,
                                                    by_length=by_length, reuse_prompt=reuse_prompt, heads=heads)[0]
        if calibrate:
            bias = self.content_free_log_probs(model, prompt).to(log_probs.device)
            log_probs = log_probs.float().log_softmax(-1) - bias
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
        prompted = insert_prompts(as_prompt_embeds(model, prompt_embeds), row_embeds,  # a head's input: in front
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
