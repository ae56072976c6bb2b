"""The task metrics, against values worked out by hand."""

from __future__ import annotations

import pytest

from peft_softhard.metrics import accuracy, accuracy_difference, compute_metrics, macro_f1


def test_accuracy_and_macro_f1_by_hand():
    predictions, references = [1, 0, 1, 1], [1, 1, 1, 0]
    assert accuracy(predictions, references) == 0.5
    # label 1: precision 2/3, recall 2/3 -> F1 2/3; label 0: no true positive -> 0
    assert macro_f1(predictions, references) == pytest.approx(1 / 3)
    assert compute_metrics(predictions, references) == pytest.approx({"accuracy": 0.5, "macro_f1": 1 / 3})


def test_accuracy_difference_is_the_paired_mean_with_its_interval():
    references = [0, 1, 0, 1, 0, 1, 0, 1]
    a = [0, 1, 0, 1, 0, 1, 1, 0]  # 6 right
    b = [0, 1, 1, 0, 1, 1, 0, 1]  # 5 right; a and b disagree on rows 2-7
    difference, low, high = accuracy_difference(a, b, references)
    assert difference == pytest.approx(1 / 8) == accuracy(a, references) - accuracy(b, references)
    # per-row differences [0, 0, 1, 1, 1, 0, -1, -1]: sample sd 0.8345, standard error 0.2950
    assert (low, high) == pytest.approx((1 / 8 - 1.96 * 0.29505, 1 / 8 + 1.96 * 0.29505), abs=1e-4)
    assert accuracy_difference(a, a, references) == (0.0, 0.0, 0.0)  # the same prompt: no doubt at all
    with pytest.raises(ValueError):
        accuracy_difference(a, b[:-1], references)
