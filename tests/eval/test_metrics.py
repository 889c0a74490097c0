"""Classification and regression metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from btfm_eval.metrics import classification_metrics, mean_std, regression_metrics


def test_classification_metrics_by_hand() -> None:
    y = np.array(["a", "a", "a", "b", "b", "c"], dtype=object)
    p = np.array(["a", "a", "b", "b", "c", "c"], dtype=object)
    m = classification_metrics(y, p, ["a", "b", "c", "d"])
    assert m["oa"] == pytest.approx(4 / 6)
    # a: P 1, R 2/3 -> 0.8; b: P 1/2, R 1/2 -> 0.5; c: P 1/2, R 1 -> 2/3; d is absent from y_true
    assert m["per_class_f1"] == pytest.approx({"a": 0.8, "b": 0.5, "c": 2 / 3})
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["confusion"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_regression_metrics_by_hand() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.0, 2.0, 3.0, 6.0])
    m = regression_metrics(y, p)
    assert m["rmse"] == pytest.approx(1.0)  # sqrt(4 / 4)
    assert m["mae"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(1 - 4 / 5)  # SS_res 4, SS_tot 5


def test_mean_std_ignores_nan() -> None:
    assert mean_std([1.0, float("nan"), 3.0]) == (2.0, 1.0)
    assert all(math.isnan(v) for v in mean_std([float("nan")]))
