"""Classification tasks: where the examples come from, how a text is templated, and the label words.

A task reads its splits through `datasets` from local files (csv, tsv, jsonl) or a hub dataset, so the
same definition works offline on files and online for anyone who names a hub dataset. Built-in: `sst2` and
`ag_news` (templates and label words of the PEZ paper); custom tasks come from a JSON/YAML file or flags.

Example:
    ```py
    >>> task = get_task("sst2")
    >>> texts, labels = task.load("eval", limit=200)  # doctest: +SKIP
    ```
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Where built-in tasks look for local copies of their data before falling back to the hub.
DATA_DIR_ENV = "PEFT_SOFTHARD_DATA"
_SHARED_DATA = Path("..") / "shared" / "data"


@dataclass
class Source:
    """One split: a local file (csv, tsv, jsonl, json) or a hub dataset `hub:NAME[:CONFIG]` with a split."""

    location: str
    split: str = "train"
    column_names: list[str] | None = None  # for header-less csv/tsv files
    label_offset: int = 0  # subtracted from the file's labels (e.g. AG News' test.csv counts from 1)


@dataclass
class Task:
    """A text classification task, usable with a causal LM (template + label words) or a SEQ_CLS head."""

    name: str
    label_words: list[str]  # one per class, in label order; what a causal LM must say
    template: str = "{text}"  # the input after the prompt; {text} is the example's text
    text_columns: list[str] = field(default_factory=lambda: ["text"])  # joined with a space
    label_column: str = "label"
    splits: dict[str, Source] = field(default_factory=dict)  # "train", "eval", optionally "test"
    hub_splits: dict[str, Source] = field(default_factory=dict)  # used when the local files are absent
    manual_template: str | None = None  # a hand-written zero-shot prompt, for comparison

    @property
    def num_labels(self) -> int:
        return len(self.label_words)

    def __post_init__(self) -> None:
        if "{text}" not in self.template:
            raise ValueError(f"Task {self.name!r}: the template must contain '{{text}}', got {self.template!r}.")
        if len(self.label_words) < 2:
            raise ValueError(f"Task {self.name!r}: give at least two label words, got {self.label_words!r}.")
        self.splits = {k: v if isinstance(v, Source) else Source(**v) for k, v in self.splits.items()}
        self.hub_splits = {k: v if isinstance(v, Source) else Source(**v) for k, v in self.hub_splits.items()}

    def source(self, split: str, data_dir: str | os.PathLike | None = None) -> Source:
        """The split's source: the local file when it exists (under `data_dir` for relative paths), else the hub."""
        local = self.splits.get(split)
        if local is not None and not local.location.startswith("hub:"):
            path = Path(local.location)
            if not path.is_absolute():
                path = Path(data_dir or os.environ.get(DATA_DIR_ENV) or _SHARED_DATA) / path
            if path.exists() or split not in self.hub_splits:
                return Source(str(path), local.split, local.column_names, local.label_offset)
        if local is not None and local.location.startswith("hub:"):
            return local
        if split in self.hub_splits:
            return self.hub_splits[split]
        raise ValueError(f"Task {self.name!r} has no {split!r} split (it has {sorted(self.splits)}).")

    def load(
        self,
        split: str,
        limit: int | None = None,
        seed: int = 0,
        balanced: bool = False,
        data_dir: str | os.PathLike | None = None,
    ) -> tuple[list[str], list[int]]:
        """Texts and labels of a split; `limit` keeps a seeded random subset (class-balanced if `balanced`)."""
        source = self.source(split, data_dir)
        try:
            rows = _read(source)
        except (FileNotFoundError, ValueError) as error:
            if isinstance(error, FileNotFoundError) or "Unknown" in str(error):
                raise
            raise ValueError(
                f"Task {self.name!r}: the {split} split ({source.location}) is empty or unreadable ({error})."
            ) from error
        missing = [c for c in [*self.text_columns, self.label_column] if c not in rows.column_names]
        if missing:
            raise ValueError(
                f"Task {self.name!r}, {split} split ({source.location}): no column {missing}; the data has "
                f"{rows.column_names}. Set text_columns / label_column to the right names."
            )
        texts = [" ".join(str(row[c]) for c in self.text_columns) for row in rows]
        labels = [int(row[self.label_column]) - source.label_offset for row in rows]
        if not texts:
            raise ValueError(f"Task {self.name!r}: the {split} split ({source.location}) is empty.")
        unknown = sorted({label for label in labels if not 0 <= label < self.num_labels})
        if unknown:
            raise ValueError(
                f"Task {self.name!r}, {split} split: labels {unknown[:10]} are outside 0..{self.num_labels - 1} "
                f"({self.num_labels} label words). Check label_column, the label words, or the label offset."
            )
        if limit is not None and limit < len(texts):
            keep = _subset(labels, limit, seed, balanced)
            texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
        return texts, labels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Task:
        """A task from a JSON or YAML file with the fields of `Task` (`train`/`eval` may be plain paths)."""
        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text)
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: a task file holds one mapping of task fields.")
        base = Path(path).resolve().parent
        return custom_task(base_dir=base, **spec)


def custom_task(
    name: str = "custom",
    *,
    label_words: list[str],
    train: str | None = None,
    eval: str | None = None,  # noqa: A002 - the split's name
    test: str | None = None,
    template: str = "{text}",
    text_column: str | list[str] = "text",
    label_column: str = "label",
    split: str | None = None,
    base_dir: Path | None = None,
    **extra: Any,
) -> Task:
    """A task from plain settings: each split is a file path (relative to `base_dir`) or `hub:NAME[:CONFIG]`;
    a hub dataset's split name follows a `@` (`hub:glue:sst2@validation`)."""
    if extra:
        raise ValueError(f"Unknown task fields {sorted(extra)}; see peft_softhard.tasks.custom_task.")
    splits = {}
    for split_name, location in (("train", train), ("eval", eval), ("test", test)):
        if location is None:
            continue
        hub_split = split or ("validation" if split_name == "eval" else split_name)
        if "@" in location and location.startswith("hub:"):
            location, hub_split = location.rsplit("@", 1)
        elif not location.startswith("hub:") and base_dir is not None and not Path(location).is_absolute():
            location = str(base_dir / location)
        splits[split_name] = Source(location, hub_split)
    if not splits:
        raise ValueError("A task needs at least one data split (train and/or eval).")
    columns = [text_column] if isinstance(text_column, str) else list(text_column)
    return Task(name, list(label_words), template, columns, label_column, splits)


def _read(source: Source):
    from datasets import load_dataset

    if source.location.startswith("hub:"):
        name, _, config = source.location[4:].partition(":")
        return load_dataset(name, config or None, split=source.split)
    path = Path(source.location)
    if not path.exists():
        raise FileNotFoundError(f"No data file at {path}.")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        try:
            return load_dataset("json", data_files=str(path), split="train")
        except Exception as error:  # datasets' DatasetGenerationError names neither the file's line nor the fix
            raise ValueError(_json_problem(path, error)) from error
    if suffix not in (".csv", ".tsv"):
        raise ValueError(f"{path}: use a .csv, .tsv, .jsonl or .json file.")
    options: dict[str, Any] = {"delimiter": "\t", "quoting": 3} if suffix == ".tsv" else {}
    if source.column_names:
        options["column_names"] = source.column_names
    return load_dataset("csv", data_files=str(path), split="train", **options)


def _json_problem(path: Path, error: Exception) -> str:
    """Where a JSON-lines file stops being one JSON object per line."""
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as problem:
                return f"{path}, line {number}: not valid JSON ({problem.msg}): {line.strip()[:80]!r}"
            if not isinstance(row, dict):
                return f"{path}, line {number}: each line must be one JSON object ({{\"text\": ..., \"label\": ...}})"
    return f"{path} cannot be read as JSON lines ({type(error).__name__}: {error})"


def _subset(labels: list[int], limit: int, seed: int, balanced: bool) -> list[int]:
    generator = random.Random(seed)
    if not balanced:
        return sorted(generator.sample(range(len(labels)), limit))
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    per_class = limit // len(by_class)
    keep = [i for members in by_class.values() for i in generator.sample(members, min(per_class, len(members)))]
    return sorted(keep)


SST2 = Task(
    name="sst2",
    label_words=[" negative", " positive"],
    template="{text} . It was",
    text_columns=["sentence"],
    splits={"train": Source("sst2/train.tsv"), "eval": Source("sst2/dev.tsv")},
    hub_splits={"train": Source("hub:glue:sst2", "train"), "eval": Source("hub:glue:sst2", "validation")},
    manual_template="Review: {text}\nSentiment:",
)

AG_NEWS = Task(
    name="ag_news",
    label_words=[" politics", " sports", " business", " technology"],
    template="{text} It was about",
    text_columns=["text"],
    splits={
        "train": Source("ag_news/train_subset5k.csv", column_names=["text", "label"]),
        "eval": Source("ag_news/dev_subset1k.csv", column_names=["text", "label"]),
    },
    hub_splits={"train": Source("hub:ag_news", "train"), "eval": Source("hub:ag_news", "test")},
    manual_template="Article: {text}\nTopic:",
)

BUILT_IN = {task.name: task for task in (SST2, AG_NEWS)}


def get_task(name_or_path: str) -> Task:
    """A built-in task by name (`sst2`, `ag_news`), or a task file (.json, .yaml)."""
    if name_or_path in BUILT_IN:
        return BUILT_IN[name_or_path]
    if Path(name_or_path).is_file():
        return Task.from_file(name_or_path)
    raise ValueError(
        f"Unknown task {name_or_path!r}: use one of {sorted(BUILT_IN)} or the path of a task .json/.yaml file."
    )


@dataclass
class TaskData:
    """A task's examples as loaded: (texts, labels) to train on and to score on."""

    train: tuple[list[str], list[int]]
    held_out: tuple[list[str], list[int]]


def load_task_data(task: Task, max_train: int | None = None, max_eval: int | None = None, seed: int = 0,
                   data_dir: str | os.PathLike | None = None) -> TaskData:
    """The train split (the eval split where there is none) and the eval split, each a seeded subset."""
    held_out = task.load("eval", limit=max_eval, seed=seed, data_dir=data_dir)
    has_train = "train" in task.splits or "train" in task.hub_splits
    train = task.load("train", limit=max_train, seed=seed, data_dir=data_dir) if has_train else held_out
    return TaskData(train, held_out)


def task_objective(task: Task, data: TaskData, tokenizer: Any, task_type: str = "CAUSAL_LM",
                   template: str | None = None) -> Any:
    """The task as an objective: a causal LM's template and label words, or a SEQ_CLS model's head."""
    from ..objectives import ClassificationObjective, SequenceClassificationObjective

    held_out_texts, held_out_labels = data.held_out
    if task_type == "SEQ_CLS":
        return SequenceClassificationObjective(tokenizer, *data.train, num_labels=task.num_labels,
                                               held_out_texts=held_out_texts, held_out_labels=held_out_labels)
    return ClassificationObjective(tokenizer, *data.train, template=template or task.template,
                                   label_words=task.label_words, held_out_texts=held_out_texts,
                                   held_out_labels=held_out_labels)
