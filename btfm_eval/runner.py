"""Cross-validate every feature set x model x split, and sweep the training fraction."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits
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
        n_jobs: model fits run side by side (0: every usable core); does not change the numbers.
    """

    splits: tuple[str, ...] = ("kfold", "spatial")
    folds: int = 5
    models: tuple[str, ...] = ()
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    seed: int = 0
    n_jobs: int = field(default=0, compare=False)
    progress: bool = field(default=True, compare=False)


@dataclass(frozen=True)
class FitJob:
    """One model fit: train ``model`` on the rows ``train`` of feature set ``feature``, predict ``test``.

    Attributes:
        feature: feature-set name (a key of :attr:`EvalData.features`).
        model: model name (see :data:`btfm_eval.models.MODELS`).
        train: (n_train,) int64 sample indices to fit on.
        test: (n_test,) int64 sample indices to predict.
    """

    feature: str
    model: str
    train: np.ndarray
    test: np.ndarray


def _fit_predict(task: str, model_name: str, seed: int, x: np.ndarray, y: np.ndarray, xt: np.ndarray) -> np.ndarray:
    model = build_model(task, model_name, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return model.predict(xt)


def run_fits(data: EvalData, jobs: list[FitJob], seed: int, n_jobs: int = 0,
             bar: tqdm | None = None) -> list[np.ndarray]:
    """The test-set predictions of every job, in order.

    Fits run side by side on ``n_jobs`` threads (0: every usable core), each limited to one
    BLAS/OpenMP thread. Multi-threaded BLAS on these small matrices is what made evaluations
    slow: on 2 cores its threads spin against each other and against scikit-learn's and torch's
    OpenMP pools (on the demo map a logistic regression fit took 20x, an MLP 5-10x longer than
    on one thread).
    One thread per fit also makes the numbers independent of the machine's core count.
    """
    workers = min(len(jobs), effective_n_jobs(n_jobs or -1)) or 1
    tasks = (delayed(_fit_predict)(data.task, job.model, seed, data.features[job.feature][job.train],
                                   data.target[job.train], data.features[job.feature][job.test]) for job in jobs)
    preds = []
    with threadpool_limits(limits=1):
        for pred in Parallel(n_jobs=workers, backend="threading", return_as="generator")(tasks):
            preds.append(pred)
            if bar is not None:
                bar.update(1)
    return preds


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
    result: dict[str, Any] = {
        "task": task, "n_samples": len(data), "n_groups": len(np.unique(data.groups)),
        "n_blocks": len(np.unique(data.blocks)), "classes": classes, "feature_sets": {
            k: int(v.shape[1]) for k, v in data.features.items()}, "models": models, "splits": list(config.splits),
        "folds": config.folds, "seed": config.seed, "primary_metric": PRIMARY[task], "notes": list(data.notes),
        "cv": {}, "predictions": {}, "sweep": {}, "fractions": list(config.fractions)}
    if task == CLASSIFICATION:
        result["class_counts"] = {c: int((data.target == c).sum()) for c in classes}
    cells = [(s, f, m) for s in config.splits for f in data.features for m in models]
    cv_jobs = [FitJob(f, m, fold.train, fold.test) for s, f, m in cells for fold in folds[s]]
    plan = _sweep_plan(data, folds[config.splits[0]], models, config)
    sweep_jobs = [job for _, job, fitted in plan if fitted]
    bar = tqdm(total=len(cv_jobs) + len(plan), desc="evaluate", unit="fit", file=sys.stderr,
               disable=not config.progress or None)
    if skipped := len(plan) - len(sweep_jobs):
        bar.update(skipped)
    preds = iter(run_fits(data, cv_jobs + sweep_jobs, config.seed, config.n_jobs, bar))
    bar.close()
    for split, feat, model_name in cells:
        tests = [fold.test for fold in folds[split]]
        fold_preds = [next(preds) for _ in tests]
        _record_cv(result, data, classes, (split, feat, model_name), tests, fold_preds)
    result["sweep"] = _sweep_summary(data, plan, preds)
    return result


def _record_cv(result: dict[str, Any], data: EvalData, classes: list[str], cell: tuple[str, str, str],
               tests: list[np.ndarray], preds: list[np.ndarray]) -> None:
    """Score one (split, feature, model) cell's folds into ``result["cv"]`` (and ``predictions``)."""
    split, feat, model_name = cell
    task, primary = data.task, result["primary_metric"]
    scores = [_score(task, data.target[test], pred, classes) for test, pred in zip(tests, preds, strict=True)]
    summary = _summarise(task, scores, classes)
    result["cv"].setdefault(split, {}).setdefault(feat, {})[model_name] = summary
    log.info("%s %s+%s: %s %.3f ± %.3f", split, feat, model_name, primary, summary[primary]["mean"],
             summary[primary]["std"])
    if split == result["splits"][0] and task != CLASSIFICATION:
        result["predictions"].setdefault(feat, {})[model_name] = {
            "y": np.concatenate([data.target[t] for t in tests]).tolist(),
            "pred": np.concatenate(preds).astype(float).tolist()}


#: One step of the sweep: (fraction, job, whether it is fitted); not fitted where the subsample has one class.
_SweepStep = tuple[float, FitJob, bool]


def _sweep_plan(data: EvalData, folds: list[Fold], models: list[str], config: EvalConfig) -> list[_SweepStep]:
    """The fits of the training-fraction sweep, fraction by feature set by model by fold."""
    plan: list[_SweepStep] = []
    for fraction in config.fractions:
        for feat in data.features:
            for model_name in models:
                for i, fold in enumerate(folds):
                    rng = np.random.default_rng([config.seed, i, round(fraction * 1e6)])
                    train = subsample_train(fold.train, data.target, fraction, rng, data.task)
                    one_class = data.task == CLASSIFICATION and len(np.unique(data.target[train])) < 2
                    plan.append((fraction, FitJob(feat, model_name, train, fold.test), not one_class))
    return plan


def _sweep_summary(data: EvalData, plan: list[_SweepStep],
                   preds: Iterator[np.ndarray]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{feature: {model: {str(fraction): {"mean", "std", "n_train"}}}}`` from the plan's predictions."""
    classes = sorted(np.unique(data.target).tolist()) if data.task == CLASSIFICATION else []
    primary = PRIMARY[data.task]
    cells: dict[tuple[float, str, str], tuple[list[float], list[int]]] = {}
    for fraction, job, fitted in plan:
        scores, sizes = cells.setdefault((fraction, job.feature, job.model), ([], []))
        scores.append(_score(data.task, data.target[job.test], next(preds), classes)[primary] if fitted
                      else float("nan"))
        sizes.append(len(job.train))
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for (fraction, feat, model_name), (scores, sizes) in cells.items():
        mean, std = mean_std(scores)
        out.setdefault(feat, {}).setdefault(model_name, {})[str(fraction)] = {
            "mean": mean, "std": std, "n_train": float(np.mean(sizes))}
    return out
