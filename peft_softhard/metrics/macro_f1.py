"""Macro-averaged F1, as an `evaluate` metric module shipped with peft-softhard."""

import datasets
import evaluate


class MacroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="F1 of each label present in references or predictions, averaged without weights.",
            citation="",
            inputs_description="predictions and references: lists of integer labels",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        scores = []
        for label in sorted(set(references) | set(predictions)):
            true_positive = sum(p == label and r == label for p, r in zip(predictions, references, strict=True))
            predicted = sum(p == label for p in predictions)
            actual = sum(r == label for r in references)
            precision = true_positive / predicted if predicted else 0.0
            recall = true_positive / actual if actual else 0.0
            scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        return {"macro_f1": sum(scores) / len(scores)}
