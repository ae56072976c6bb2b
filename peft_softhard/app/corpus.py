"""Corpora for style and domain prompts: reading a user's text, splitting it into documents for training,
validation and report, and showing what a prompt does to the model's writing.

A corpus is plain text (documents separated by blank lines), a `.jsonl` file with a text field, or a hub
dataset `hub:NAME[:CONFIG][@SPLIT]`. Whole documents, never parts of one, are held out (seeded): a share for
validation (it chooses the best step) and a share for the report (scored once, by the chosen prompt).

Example:
    ```py
    >>> documents = read_corpus("stories.txt")                                     # doctest: +SKIP
    >>> splits = split_corpus(documents, validation_share=0.1, report_share=0.1)  # doctest: +SKIP
    >>> objective = corpus_objective(splits, tokenizer, chunk_tokens=128)         # doctest: +SKIP
    ```
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..objectives.corpus import CorpusObjective, chunk_separator_id

# The opening lines `sample_generations` continues: short and neutral, so that what follows shows the style.
OPENING_LINES = ("The", "It was", "I think", "Yesterday", "This is")


def read_corpus(source: str, text_field: str = "text") -> list[str]:
    """The documents of a corpus: a text file (documents separated by blank lines), a .jsonl file (one JSON
    object with a `text_field` per line) or `hub:NAME[:CONFIG][@SPLIT]` (the `text_field` column)."""
    if source.startswith("hub:"):
        documents = _read_hub(source[4:], text_field)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"No corpus file at {path}.")
        text = _read_text(path, text_field)
        documents = _read_jsonl(path, text, text_field) if path.suffix.lower() == ".jsonl" else split_documents(text)
    documents = [document for document in documents if document.strip()]
    if not documents:
        raise ValueError(f"The corpus {source} is empty: it holds no text to train on.")
    return documents


def read_pairs(source: str) -> list[tuple[str, str]]:
    """(message, target) pairs from a .jsonl file: one JSON object with "message" and "target" strings per line."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"No pairs file at {path}: give a .jsonl file of "
                                '{"message": ..., "target": ...} lines.')
    pairs = []
    for number, row in _json_lines(path, _read_text(path, "message")):
        if not isinstance(row, dict) or not all(isinstance(row.get(key), str) and row[key] for key in
                                                ("message", "target")):
            raise ValueError(f"{path}, line {number}: each line must be a JSON object with non-empty \"message\" "
                             "and \"target\" strings.")
        pairs.append((row["message"], row["target"]))
    if not pairs:
        raise ValueError(f"The pairs file {path} is empty.")
    return pairs


def split_documents(text: str) -> list[str]:
    """Plain text's documents: the runs of text between blank lines (a line of only spaces counts as blank)."""
    return [block.strip() for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")) if block.strip()]


def _read_text(path: Path, text_field: str) -> str:
    data = path.read_bytes()
    problem = f"a NUL byte at byte {data.index(0)}" if 0 in data else None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        problem = problem or f"{error.reason} at byte {error.start}"
    if problem:
        raise ValueError(f"{path} is not a text file ({problem}): give UTF-8 text with documents separated by blank "
                         f"lines, or a .jsonl file with a {text_field!r} field.")
    return text


def _json_lines(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of a .jsonl file's `text`; a line that is not JSON is
    refused with its number."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}).") from error


def _read_jsonl(path: Path, text: str, text_field: str) -> list[str]:
    documents = []
    for number, row in _json_lines(path, text):
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise ValueError(f"{path}, line {number}: each line must be a JSON object with a text field "
                             f"{text_field!r} (set another with --text-field).")
        documents.append(row[text_field])
    return documents


def _read_hub(name: str, text_field: str) -> list[str]:
    from datasets import load_dataset

    name, _, split = name.partition("@")
    name, _, config = name.partition(":")
    rows = load_dataset(name, config or None, split=split or "train")
    if text_field not in rows.column_names:
        raise ValueError(f"hub:{name} has no column {text_field!r}; it has {rows.column_names} (set --text-field).")
    return [str(text) for text in rows[text_field]]


@dataclass
class CorpusSplits:
    """A corpus' documents (or (message, target) pairs): `train` to train on, `validation` to choose the step,
    `report` to report once."""

    train: list[str]
    validation: list[str]
    report: list[str]


def split_corpus(documents: Sequence[str], validation_share: float = 0.1, report_share: float = 0.1,
                 seed: int = 0) -> CorpusSplits:
    """Whole documents held out, seeded: `validation_share` of them for validation and `report_share` for the
    report (each at least one document), the rest to train on."""
    for name, share in (("validation_share", validation_share), ("report_share", report_share)):
        if not 0.0 < share < 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {share!r}.")
    if validation_share + report_share >= 0.9:
        raise ValueError(f"validation_share + report_share is {validation_share + report_share}: leave at least a "
                         "tenth of the documents to train on.")
    count = len(documents)
    held = _held_out(count, validation_share, report_share)
    if held is None:
        needed = next(n for n in range(3, 10**7) if _held_out(n, validation_share, report_share))
        raise ValueError(
            f"The corpus has {count} document(s): a validation share of {validation_share} and a report share of "
            f"{report_share} need at least {needed} documents (at least one each, and one to train on). Separate "
            "the text into more documents with blank lines, give more text, or raise the shares.")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    validation, report = order[: held["validation"]], order[held["validation"] : sum(held.values())]
    train = sorted(order[sum(held.values()) :])
    return CorpusSplits([documents[i] for i in train], [documents[i] for i in sorted(validation)],
                        [documents[i] for i in sorted(report)])


def _held_out(count: int, validation_share: float, report_share: float) -> dict[str, int] | None:
    """How many of `count` documents each share holds out; None unless each holds one and one is left."""
    held = {"validation": int(count * validation_share), "report": int(count * report_share)}
    return held if min(held.values()) >= 1 and count - sum(held.values()) >= 1 else None


def corpus_objective(splits: CorpusSplits, tokenizer: Any, chunk_tokens: int = 128) -> CorpusObjective:
    """The corpus as an objective: its training, validation and report documents, cut into chunks."""
    return CorpusObjective(tokenizer, splits.train, held_out_documents=splits.validation,
                           eval_documents=splits.report, chunk_tokens=chunk_tokens)


@torch.no_grad()
def sample_generations(model: Any, tokenizer: Any, count: int, prompt_text: str = "", max_new_tokens: int = 40,
                       seed: int = 0, separator_id: int | None = None) -> list[str]:
    """`count` continuations of `OPENING_LINES` (cycled), sampled with a fixed seed (top-p 0.9, temperature
    0.8) by `model`: a peft model generates after its prompt, a base model after `prompt_text` (if any). As in
    training, the chunk separator (`CorpusObjective`'s, by default) stands between the prompt and the text."""
    separator = [chunk_separator_id(tokenizer) if separator_id is None else separator_id]
    before = tokenizer(prompt_text, add_special_tokens=False)["input_ids"] if prompt_text else []
    device = next(model.parameters()).device
    texts = []
    for index in range(count):
        opening = OPENING_LINES[index % len(OPENING_LINES)]
        ids = torch.tensor([before + separator + tokenizer(opening, add_special_tokens=False)["input_ids"]],
                           device=device)
        torch.manual_seed(seed + index)
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.9,
                                temperature=0.8, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        texts.append(opening + tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))
    return texts


def corpus_metrics(model: Any, objective: CorpusObjective, prompt: torch.Tensor, split: str = "eval") -> dict:
    """Perplexity and bits per token of a corpus split (default: the report documents) after `prompt` (ids [n]
    or vectors [n, d]) and with no prompt, and the number of tokens scored."""
    from ..optimization.loop import frozen

    empty = torch.tensor([], dtype=torch.long)
    with frozen(model):
        nll, baseline = objective.mean_nll(model, prompt, split), objective.mean_nll(model, empty, split)
    return {"perplexity": math.exp(nll), "bits_per_token": nll / math.log(2), "tokens": objective.num_tokens(split),
            "no_prompt_perplexity": math.exp(baseline), "no_prompt_bits_per_token": baseline / math.log(2)}
