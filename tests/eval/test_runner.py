"""The evaluation runner: every cell scores its own fits, parallel fits change nothing, one BLAS thread per fit."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import ClassVar

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from threadpoolctl import threadpool_info, threadpool_limits

from btfm_eval import models
from btfm_eval.dataset import CLASSIFICATION, REGRESSION, EvalData
from btfm_eval.metrics import classification_metrics, mean_std, regression_metrics
from btfm_eval.runner import EvalConfig, FitJob, evaluate, run_fits
from btfm_eval.splits import make_folds, subsample_train


def toy_data(task: str, n_side: int = 12) -> EvalData:
    """A 12 x 12 px map: two feature sets, targets that depend on them, 4 x 4 px blocks, one pixel per group."""
    rng = np.random.default_rng(0)
    rows, cols = np.divmod(np.arange(n_side * n_side), n_side)
    good = rng.normal(size=(len(rows), 4)).astype(np.float32)
    noisy = (good + rng.normal(scale=2.0, size=good.shape)).astype(np.float32)
    score = good[:, 0] + 0.5 * good[:, 1]
    target = (np.digitize(score, [-0.5, 0.5]).astype(str).astype(object) if task == CLASSIFICATION
              else score.astype(np.float64))
    blocks = np.char.add(np.char.add((rows // 4).astype(str), "_"), (cols // 4).astype(str)).astype(object)
    return EvalData(features={"good": good, "noisy": noisy}, target=target, groups=np.char.add(
        "px", np.arange(len(rows)).astype(str)).astype(object), blocks=blocks, rows=rows.astype(float), task=task)


def direct_predict(data: EvalData, feat: str, model: str, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """The reference: one model fitted alone, on one BLAS thread."""
    with threadpool_limits(limits=1):
        estimator = models.build_model(data.task, model, 0).fit(data.features[feat][train], data.target[train])
        return estimator.predict(data.features[feat][test])


@pytest.mark.parametrize(("task", "model"), [(CLASSIFICATION, "logreg"), (REGRESSION, "ridge")])
def test_every_cell_scores_its_own_fits(task: str, model: str) -> None:
    data = toy_data(task)
    config = EvalConfig(splits=("spatial", "kfold"), folds=3, models=(model,), fractions=(0.3,), seed=0,
                        n_jobs=2, progress=False)
    result = evaluate(data, config)
    classes = sorted(set(data.target.tolist())) if task == CLASSIFICATION else []
    for split in config.splits:
        folds = make_folds(data, split, 3, 0)
        for feat in data.features:
            preds = [direct_predict(data, feat, model, f.train, f.test) for f in folds]
            scores = [classification_metrics(data.target[f.test], p, classes) if task == CLASSIFICATION
                      else regression_metrics(data.target[f.test], p) for f, p in zip(folds, preds, strict=True)]
            got = result["cv"][split][feat][model]["folds"]
            assert got == [{k: v for k, v in s.items() if k != "confusion"} for s in scores]
            if task == REGRESSION and split == "spatial":
                assert result["predictions"][feat][model]["y"] == np.concatenate(
                    [data.target[f.test] for f in folds]).tolist()
                assert result["predictions"][feat][model]["pred"] == np.concatenate(preds).tolist()
    assert result["cv"]["spatial"]["good"][model]["folds"] != result["cv"]["spatial"]["noisy"][model]["folds"]
    primary = "macro_f1" if task == CLASSIFICATION else "r2"
    folds = make_folds(data, "spatial", 3, 0)
    for feat in data.features:  # the sweep: each fold's training set subsampled with its documented seed
        sub = [subsample_train(f.train, data.target, 0.3, np.random.default_rng([0, i, 300_000]), task)
               for i, f in enumerate(folds)]
        scores = []
        for f, train in zip(folds, sub, strict=True):
            pred = direct_predict(data, feat, model, train, f.test)
            scores.append(classification_metrics(data.target[f.test], pred, classes)[primary]
                          if task == CLASSIFICATION else regression_metrics(data.target[f.test], pred)[primary])
        mean, std = mean_std(scores)
        assert result["sweep"][feat][model]["0.3"] == {"mean": mean, "std": std,
                                                       "n_train": float(np.mean([len(t) for t in sub]))}


def test_parallel_fits_give_the_sequential_numbers() -> None:
    data = toy_data(CLASSIFICATION)
    data = replace(data, features={"noisy": data.features["noisy"]})
    config = EvalConfig(splits=("kfold",), folds=3, models=("logreg", "rf"), fractions=(), seed=1, progress=False)
    sequential = evaluate(data, EvalConfig(**{**config.__dict__, "n_jobs": 1}))
    parallel = evaluate(data, EvalConfig(**{**config.__dict__, "n_jobs": 2}))
    assert json.dumps(parallel, sort_keys=True) == json.dumps(sequential, sort_keys=True)


class _ThreadProbe(ClassifierMixin, BaseEstimator):
    """Predicts the majority class and records how many BLAS threads it was given to fit with."""

    seen: ClassVar[list[int]] = []

    def fit(self, x: np.ndarray, y: np.ndarray) -> _ThreadProbe:
        blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
        type(self).seen.append(max(blas))
        values, counts = np.unique(y, return_counts=True)
        self.majority_ = values[counts.argmax()]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.majority_, dtype=object)


def test_fits_run_on_one_blas_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(models.MODELS[CLASSIFICATION], "probe", lambda seed: _ThreadProbe())
    monkeypatch.setattr(_ThreadProbe, "seen", [])
    data = toy_data(CLASSIFICATION)
    jobs = [FitJob("good", "probe", np.arange(0, 100), np.arange(100, 144)) for _ in range(4)]
    with threadpool_limits(limits=2, user_api="blas"):  # as numpy starts on a 2-core machine
        assert max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas") == 2
        preds = run_fits(data, jobs, seed=0, n_jobs=2)
    assert _ThreadProbe.seen == [1, 1, 1, 1]
    assert len(preds) == 4 and all(len(p) == 44 for p in preds)
