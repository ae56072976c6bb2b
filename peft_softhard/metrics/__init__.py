"""Task metrics through `evaluate`, from metric modules shipped here so they work offline.

Example:
    ```py
    >>> compute_metrics([1, 0, 1], [1, 1, 1])  # doctest: +SKIP
    {'accuracy': 0.666..., 'macro_f1': ...}
    ```
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

METRIC_MODULES = {name: Path(__file__).with_name(f"{name}.py") for name in ("accuracy", "macro_f1")}


@cache
def _metric(name: str):
    import evaluate

    return evaluate.load(str(METRIC_MODULES[name]))


def compute_metrics(predictions: list[int], references: list[int]) -> dict[str, float]:
    """Accuracy and macro-F1 of integer predictions against references."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"Need as many predictions as references (got {len(predictions)} and {len(references)}).")
    results: dict[str, float] = {}
    for name in METRIC_MODULES:
        results.update(_metric(name).compute(predictions=predictions, references=references))
    return results
