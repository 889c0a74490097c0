"""Cross-validate every feature set x model x split, and sweep the training fraction."""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from tqdm import tqdm

from btfm_eval.dataset import CLASSIFICATION, EvalData
from btfm_eval.errors import EvaluationError
from btfm_eval.metrics import PRIMARY, classification_metrics, mean_std, regression_metrics
from btfm_eval.models import build_model, default_models
from btfm_eval.splits import Fold, make_folds, subsample_train

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.01, 0.05, 0.3)


@dataclass(frozen=True)
class EvalConfig:
    """What to run.

    Attributes:
        splits: split kinds (``kfold``, ``spatial``, ``bottom-third``); the first one is used for the
            training-fraction sweep and the plots.
        folds: k of the k-fold splits.
        models: model names (default: all of the task's).
        fractions: training fractions of the sweep (empty: no sweep).
        seed: seed of folds, subsamples and models.
    """

    splits: tuple[str, ...] = ("kfold", "spatial")
    folds: int = 5
    models: tuple[str, ...] = ()
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    seed: int = 0
    progress: bool = field(default=True, compare=False)


def _fit_predict(task: str, model_name: str, seed: int, x: np.ndarray, y: np.ndarray, xt: np.ndarray) -> np.ndarray:
    model = build_model(task, model_name, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return model.predict(xt)


def _score(task: str, y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    return classification_metrics(y, pred, classes) if task == CLASSIFICATION else regression_metrics(y, pred)


def _summarise(task: str, fold_scores: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    keys = ("oa", "macro_f1") if task == CLASSIFICATION else ("r2", "rmse", "mae")
    out: dict[str, Any] = {"n_folds": len(fold_scores)}
    for key in keys:
        out[key] = dict(zip(("mean", "std"), mean_std([s[key] for s in fold_scores]), strict=True))
    if task == CLASSIFICATION:
        out["per_class_f1"] = {c: dict(zip(("mean", "std"), mean_std(
            [s["per_class_f1"][c] for s in fold_scores if c in s["per_class_f1"]]), strict=True)) for c in classes}
        out["confusion"] = np.sum([s["confusion"] for s in fold_scores], axis=0).tolist()
    out["folds"] = [{k: v for k, v in s.items() if k != "confusion"} for s in fold_scores]
    return out


def evaluate(data: EvalData, config: EvalConfig) -> dict[str, Any]:
    """Run the evaluation.

    Returns:
        A JSON-ready dict: ``task``, ``n_samples``, ``classes``, ``feature_sets``, ``models``,
        ``cv[split][feature][model]`` (mean/std of each metric, per-fold scores, summed confusion
        matrix, per-class F1), ``predictions[feature][model]`` (out-of-fold y/ŷ of the first split,
        regression), ``sweep[feature][model][fraction]`` (mean/std of the primary metric).

    Raises:
        EvaluationError: no feature set, unknown model or split, bad fractions.
        TooFewSamplesError: not enough groups/blocks for the folds.
    """
    if not data.features:
        raise EvaluationError("no feature set to evaluate")
    task = data.task
    models = list(config.models) or default_models(task)
    for name in models:
        build_model(task, name, 0)  # fail early on unknown names
    classes = sorted(np.unique(data.target).tolist()) if task == CLASSIFICATION else []
    folds = {split: make_folds(data, split, config.folds, config.seed) for split in config.splits}
    primary = PRIMARY[task]
    result: dict[str, Any] = {
        "task": task, "n_samples": len(data), "n_groups": len(np.unique(data.groups)),
        "n_blocks": len(np.unique(data.blocks)), "classes": classes, "feature_sets": {
            k: int(v.shape[1]) for k, v in data.features.items()}, "models": models, "splits": list(config.splits),
        "folds": config.folds, "seed": config.seed, "primary_metric": primary, "notes": list(data.notes),
        "cv": {}, "predictions": {}, "sweep": {}, "fractions": list(config.fractions)}
    if task == CLASSIFICATION:
        result["class_counts"] = {c: int((data.target == c).sum()) for c in classes}
    jobs = [(s, f, m) for s in config.splits for f in data.features for m in models]
    bar = tqdm(total=len(jobs) * config.folds + len(config.fractions) * len(data.features) * len(models)
               * len(folds[config.splits[0]]), desc="evaluate", unit="fit", file=sys.stderr,
               disable=not config.progress or None)
    for split, feat, model_name in jobs:
        x = data.features[feat]
        scores, oof_true, oof_pred = [], [], []
        for fold in folds[split]:
            pred = _fit_predict(task, model_name, config.seed, x[fold.train], data.target[fold.train], x[fold.test])
            scores.append(_score(task, data.target[fold.test], pred, classes))
            oof_true.append(data.target[fold.test])
            oof_pred.append(pred)
            bar.update(1)
        if len(folds[split]) < config.folds:
            bar.update(config.folds - len(folds[split]))
        summary = _summarise(task, scores, classes)
        result["cv"].setdefault(split, {}).setdefault(feat, {})[model_name] = summary
        log.info("%s %s+%s: %s %.3f ± %.3f", split, feat, model_name, primary, summary[primary]["mean"],
                 summary[primary]["std"])
        if split == config.splits[0] and task != CLASSIFICATION:
            result["predictions"].setdefault(feat, {})[model_name] = {
                "y": np.concatenate(oof_true).tolist(), "pred": np.concatenate(oof_pred).astype(float).tolist()}
    result["sweep"] = sweep(data, folds[config.splits[0]], models, config, bar)
    bar.close()
    return result


def sweep(data: EvalData, folds: list[Fold], models: list[str], config: EvalConfig,
          bar: tqdm | None = None) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Primary metric vs training fraction: each fold's training set subsampled (test set unchanged).

    Returns:
        ``{feature: {model: {str(fraction): {"mean", "std", "n_train"}}}}``.
    """
    task = data.task
    classes = sorted(np.unique(data.target).tolist()) if task == CLASSIFICATION else []
    primary = PRIMARY[task]
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for fraction in config.fractions:
        for feat, x in data.features.items():
            for model_name in models:
                scores, sizes = [], []
                for i, fold in enumerate(folds):
                    rng = np.random.default_rng([config.seed, i, round(fraction * 1e6)])
                    train = subsample_train(fold.train, data.target, fraction, rng, task)
                    sizes.append(len(train))
                    if task == CLASSIFICATION and len(np.unique(data.target[train])) < 2:
                        scores.append(float("nan"))
                    else:
                        pred = _fit_predict(task, model_name, config.seed, x[train], data.target[train], x[fold.test])
                        scores.append(_score(task, data.target[fold.test], pred, classes)[primary])
                    if bar is not None:
                        bar.update(1)
                mean, std = mean_std(scores)
                out.setdefault(feat, {}).setdefault(model_name, {})[str(fraction)] = {
                    "mean": mean, "std": std, "n_train": float(np.mean(sizes))}
    return out
