"""Task metrics: plain functions, and the same through `evaluate` from metric modules shipped here (they work
offline; each module's `_compute` calls the function below, so there is one definition of each metric).

Example:
    ```py
    >>> compute_metrics([1, 0, 1], [1, 1, 1])  # doctest: +SKIP
    {'accuracy': 0.666..., 'macro_f1': ...}
    ```
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

METRIC_MODULES = {name: Path(__file__).with_name(f"{name}.py") for name in ("accuracy", "macro_f1")}


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """The share of predictions equal to their references."""
    return sum(int(p == r) for p, r in zip(predictions, references, strict=True)) / len(references)


def macro_f1(predictions: Sequence[int], references: Sequence[int]) -> float:
    """F1 of each label present in references or predictions, averaged without weights."""
    scores = []
    for label in sorted(set(references) | set(predictions)):
        true_positive = sum(p == label and r == label for p, r in zip(predictions, references, strict=True))
        predicted = sum(p == label for p in predictions)
        actual = sum(r == label for r in references)
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores)


def accuracy_difference(predictions_a: Sequence[int], predictions_b: Sequence[int],
                        references: Sequence[int]) -> tuple[float, float, float]:
    """Accuracy of a minus accuracy of b on the same rows, with its 95% interval (low, high): the normal
    approximation of the paired per-row differences, which is tighter than comparing two unpaired accuracies
    because both are scored on the same rows."""
    differences = [int(a == r) - int(b == r) for a, b, r in zip(predictions_a, predictions_b, references, strict=True)]
    count = len(differences)
    mean = sum(differences) / count
    variance = sum((d - mean) ** 2 for d in differences) / max(1, count - 1)
    half_width = 1.96 * (variance / count) ** 0.5
    return mean, mean - half_width, mean + half_width


@cache
def _metric(name: str):
    import evaluate

    return evaluate.load(str(METRIC_MODULES[name]))


def compute_metrics(predictions: list[int], references: list[int]) -> dict[str, float]:
    """Accuracy and macro-F1 of integer predictions against references, through `evaluate`."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"Need as many predictions as references (got {len(predictions)} and {len(references)}).")
    results: dict[str, float] = {}
    for name in METRIC_MODULES:
        results.update(_metric(name).compute(predictions=predictions, references=references))
    return results
