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
import logging
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

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
    instruction: str | None = None  # what a user would type before the template; `--init manual` starts from it
    # Validation rows carved from the train split should be like the eval split's rows. SST-2's train split holds
    # the treebank's sub-sentence phrases besides its sentences (of its rows of 10+ words, 61% are phrases), its
    # dev split only sentences (97% end in . ! or ?): `validation_sentences_only` carves only rows that end a
    # sentence (SST-2: 12,730 rows, none of them a part of another row), `validation_min_words` only rows this long.
    validation_min_words: int = 0
    validation_sentences_only: bool = False

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
        # whole columns at once (`[:]`): formatting SST-2's 67,000 rows one by one through datasets took 3 s
        columns = [rows[c][:] for c in self.text_columns]
        texts = [" ".join(str(value) for value in values) for values in zip(*columns, strict=True)]
        labels = [int(label) - source.label_offset for label in rows[self.label_column][:]]
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
    instruction: str | None = None,
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
    return Task(name, list(label_words), template, columns, label_column, splits, instruction=instruction)


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
    instruction="Classify the sentiment of this movie review as positive or negative.",
    validation_sentences_only=True,
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
    instruction="Classify the topic of this news article: politics, sports, business or technology.",
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


# Validation rows carved from the training data to choose the best step. 500: at 80% accuracy one prompt's
# score then has a standard error of 1.8 points (200 rows: 2.8), and two prompts scored on the same rows
# differ by less noise than that; scoring them costs about a minute for SmolLM2 on 2 cores.
DEFAULT_VALIDATION_ROWS = 500


@dataclass
class TaskData:
    """A task's examples as loaded, each (texts, labels): `train` to train on, `validation` (carved from the
    train split, disjoint from `train`) to choose the best step, `evaluation` to report once."""

    train: tuple[list[str], list[int]]
    validation: tuple[list[str], list[int]] | None
    evaluation: tuple[list[str], list[int]]

    @property
    def has_train(self) -> bool:
        return self.validation is not None


def load_task_data(task: Task, max_train: int | None = None, max_eval: int | None = None, seed: int = 0,
                   data_dir: str | os.PathLike | None = None,
                   validation_rows: int = DEFAULT_VALIDATION_ROWS) -> TaskData:
    """The eval split (a seeded subset of `max_eval` rows; None: all) and, where the task has a train split,
    `validation_rows` rows of it for validation and up to `max_train` others to train on (seeded, disjoint).
    Without a train split only the eval split is loaded (train = eval, to score prompts; nothing to train on)."""
    evaluation = task.load("eval", limit=max_eval, seed=seed, data_dir=data_dir)
    if "train" not in task.splits and "train" not in task.hub_splits:
        return TaskData(evaluation, None, evaluation)
    if not isinstance(validation_rows, int) or validation_rows < 1:
        raise ValueError(f"validation_rows must be a positive integer, got {validation_rows!r}.")
    texts, labels = task.load("train", data_dir=data_dir)
    validation, train = carve_validation(texts, validation_rows, seed, task.validation_min_words,
                                         task.validation_sentences_only)
    if max_train is not None and max_train < len(train):
        train = sorted(random.Random(seed).sample(train, max_train))
    return TaskData(([texts[i] for i in train], [labels[i] for i in train]),
                    ([texts[i] for i in validation], [labels[i] for i in validation]), evaluation)


SENTENCE_ENDS = (".", "!", "?")


def carve_validation(texts: list[str], rows: int, seed: int, min_words: int = 0,
                     sentences_only: bool = False) -> tuple[list[int], list[int]]:
    """(validation indices, the other indices): `rows` seeded rows of at least `min_words` words, and with
    `sentences_only` ending in . ! or ? (at most a fifth of the data, so that most of it is left to train on;
    any rows when none qualify)."""
    if len(texts) < 5:
        raise ValueError(f"The train split has {len(texts)} rows: too few to hold out validation rows; give at "
                         "least 5 training rows.")
    eligible = [i for i, text in enumerate(texts) if len(text.split()) >= min_words and
                (not sentences_only or text.rstrip().endswith(SENTENCE_ENDS))] or list(range(len(texts)))
    share = min(rows, len(texts) // 5, len(eligible))
    if share < rows:
        logger.warning("Holding out %d validation rows, not %d: the train split has %d rows (%d eligible).", share,
                       rows, len(texts), len(eligible))
    chosen = set(random.Random(seed).sample(eligible, share))
    return sorted(chosen), [i for i in range(len(texts)) if i not in chosen]


def task_objective(task: Task, data: TaskData, tokenizer: Any, task_type: str = "CAUSAL_LM",
                   template: str | None = None) -> Any:
    """The task as an objective: a causal LM's template and label words, or a SEQ_CLS model's head."""
    from ..objectives import ClassificationObjective, SequenceClassificationObjective

    splits = {"eval_texts": data.evaluation[0], "eval_labels": data.evaluation[1]}
    if data.validation is not None:
        splits.update(held_out_texts=data.validation[0], held_out_labels=data.validation[1])
    if task_type == "SEQ_CLS":
        return SequenceClassificationObjective(tokenizer, *data.train, num_labels=task.num_labels, **splits)
    return ClassificationObjective(tokenizer, *data.train, template=template or task.template,
                                   label_words=task.label_words, instruction=task.instruction, **splits)


# `--init` choices: where a prompt starts. "manual": the task's instruction (what a user would type), "labels":
# the label words repeated (the PEZ reference init), "soft": a trained soft prompt (its vectors; a hard search
# starts at their reading), the others as `SoftHardConfig.init`.
PROMPT_INITS = ("vocab", "random", "text", "manual", "labels", "soft")


def check_prompt_init(init: str, init_text: str | None = None) -> None:
    """Raise a clear error for a `--init` choice that is wrong whatever the task and the model are."""
    if init not in PROMPT_INITS:
        raise ValueError(f"Unknown init {init!r}: choose one of {', '.join(PROMPT_INITS)}.")
    if init == "text" and not init_text:
        raise ValueError("--init text needs --init-text 'the text the prompt starts from'.")


def prompt_init(task: Task, init: str, tokenizer: Any, length: int, init_text: str | None = None,
                vocabulary: Any = None) -> dict[str, Any]:
    """`SoftHardConfig`'s init fields for a `--init` choice (for "soft" the caller loads the vectors). With
    `vocabulary` (the prompt's SoftHardConfig), the task's instruction or label words keep only the tokens its
    constraints allow (" Class" of " Classify", not "ify" under whole words), unless none is."""
    check_prompt_init(init, init_text)
    if init in ("manual", "labels"):
        if init == "manual":
            text = task.instruction or " ".join((task.manual_template or task.template).replace("{text}", " ").split())
            if not text.strip():
                raise ValueError(f"Task {task.name!r} has no instruction to start from: use --init text --init-text.")
            ids = tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
        else:
            ids = [i for word in task.label_words for i in tokenizer(word, add_special_tokens=False)["input_ids"]]
        if vocabulary is not None:
            from ..method.vocabulary import allowed_token_mask

            allowed = allowed_token_mask(vocabulary, len(tokenizer), tokenizer, among=ids)
            ids = [i for i in ids if allowed[i]] or ids
        return {"init": "token_ids", "init_token_ids": (ids * math.ceil(length / len(ids)))[:length]}
    if init == "soft":
        return {"init": "vocab"}  # replaced by the soft prompt's vectors
    return {"init": init, "init_text": init_text}
