"""What the application prints: plain-text tables, and a prompt's accuracy and macro-F1 on held-out data."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..metrics import compute_metrics
from ..objectives import ClassifierObjective
from ..optimization.loop import frozen


def evaluate_prompt(model: nn.Module, objective: ClassifierObjective, prompt: torch.Tensor,
                    split: str = "eval", return_predictions: bool = False, calibrate: bool = False) -> dict[str, Any]:
    """Accuracy and macro-F1 (through `evaluate`) of one prompt (ids [n] or vectors [n, d]) on the objective's
    `split` ("eval": the rows that chose nothing; "held_out": the validation rows), with the examples scored
    per second (and each row's predicted class, with `return_predictions`). `calibrate`: with contextual
    calibration (a `ClassificationObjective`'s decoding; the prompt is unchanged).

    Example:
        ```py
        >>> evaluate_prompt(model, objective, torch.tensor([], dtype=torch.long))  # no prompt  # doctest: +SKIP
        {'accuracy': 0.61, 'macro_f1': 0.58, 'examples': 200, 'seconds': 3.1, 'examples_per_second': 64.5}
        ```
    """
    started = time.time()
    with frozen(model), torch.no_grad():
        options = {"calibrate": True} if calibrate else {}
        predictions = objective.predictions(model, prompt, split, **options)
    seconds = time.time() - started
    labels = objective.labels(split)
    metrics = {**compute_metrics(predictions, labels), "examples": len(labels), "seconds": round(seconds, 2),
               "examples_per_second": round(len(labels) / seconds, 1)}
    return {**metrics, "predictions": predictions} if return_predictions else metrics


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Rows under headers, columns padded; floats to four places, strings with outer spaces quoted."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return repr(value) if isinstance(value, str) and value != value.strip() else str(value)
