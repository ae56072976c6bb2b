"""Macro-averaged F1, as an `evaluate` metric module shipped with peft-softhard."""

import datasets
import evaluate

from peft_softhard.metrics import macro_f1

FEATURES = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})


class MacroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=macro_f1.__doc__, citation="", features=FEATURES,
                                   inputs_description="predictions and references: lists of integer labels")

    def _compute(self, predictions, references):
        return {"macro_f1": macro_f1(predictions, references)}
