"""Scores of one fold: OA, macro-F1, per-class F1 and confusion matrix; R², RMSE and MAE."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)

#: The headline metric of each task (used for the summary line and the sweep plot).
PRIMARY = {"classification": "macro_f1", "regression": "r2"}


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, object]:
    """Overall accuracy, macro-F1 over ``classes``, per-class F1 and the confusion matrix.

    Args:
        y_true: (N,) true class names.
        y_pred: (N,) predicted class names.
        classes: all classes of the evaluation (rows/columns of the confusion matrix, in order).

    Returns:
        ``{"oa", "macro_f1", "per_class_f1": {class: f1}, "confusion": [[int]] (true x predicted)}``;
        macro-F1 averages over the classes present in ``y_true`` (absent ones would score 0).
    """
    present = [c for c in classes if c in set(y_true.tolist())]
    per_class = f1_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    return {
        "oa": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class_f1": {c: float(f) for c, f in zip(classes, per_class, strict=True) if c in present},
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, object]:
    """R², RMSE and MAE (in the target's units)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    return {
        "r2": float(r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan"),
        "rmse": float(np.sqrt(mean_squared_error(y_true, y_pred))),
        "mae": float(mean_absolute_error(y_true, y_pred)),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation, ignoring NaN; NaN when nothing is left."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())
