"""The downstream models, as scikit-learn pipelines with fixed seeds.

Each model fits on one thread: :func:`btfm_eval.runner.run_fits` runs fits side by side instead.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from btfm_eval.dataset import CLASSIFICATION
from btfm_eval.errors import EvaluationError


def _logreg(seed: int) -> BaseEstimator:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))


def _rf_classifier(seed: int) -> BaseEstimator:
    return RandomForestClassifier(n_estimators=200, random_state=seed)


def _mlp(seed: int) -> BaseEstimator:
    mlp = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-3, max_iter=200, tol=1e-3, random_state=seed)
    return make_pipeline(StandardScaler(), mlp)


def _ridge(seed: int) -> BaseEstimator:
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))


def _rf_regressor(seed: int) -> BaseEstimator:
    return RandomForestRegressor(n_estimators=200, max_features=1 / 3, min_samples_leaf=2, random_state=seed)


#: task -> model name -> factory(seed).
MODELS: dict[str, dict[str, Callable[[int], BaseEstimator]]] = {
    "classification": {"logreg": _logreg, "rf": _rf_classifier, "mlp": _mlp},
    "regression": {"ridge": _ridge, "rf": _rf_regressor},
}


def default_models(task: str) -> list[str]:
    """All model names of a task."""
    return list(MODELS[task])


def build_model(task: str, name: str, seed: int) -> BaseEstimator:
    """A fresh, unfitted model.

    Raises:
        EvaluationError: the model is not defined for the task.
    """
    if name not in MODELS[task]:
        raise EvaluationError(f"model {name!r} is not available for {task}; choose from "
                              f"{', '.join(MODELS[task])} (--models)")
    return MODELS[task][name](seed)


def is_classification(task: str) -> bool:
    """Whether ``task`` is classification."""
    return task == CLASSIFICATION
