"""Accuracy, as an `evaluate` metric module shipped with peft-softhard (hub metrics need network access)."""

import datasets
import evaluate

from peft_softhard.metrics import accuracy

FEATURES = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=accuracy.__doc__, citation="", features=FEATURES,
                                   inputs_description="predictions and references: lists of integer labels")

    def _compute(self, predictions, references):
        return {"accuracy": accuracy(predictions, references)}
