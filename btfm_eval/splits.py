"""Train/test splits that never separate a group: stratified k-fold, spatial blocks, bottom third.

Every split is a list of :class:`Fold` (integer indices into the samples). Groups (parcels,
sample ids) are never split by any of them; spatial folds additionally keep whole blocks
together, so neighbouring pixels do not leak between train and test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from btfm_eval.dataset import CLASSIFICATION, EvalData
from btfm_eval.errors import EvaluationError, TooFewSamplesError

log = logging.getLogger(__name__)

KFOLD = "kfold"
SPATIAL = "spatial"
BOTTOM_THIRD = "bottom-third"
SPLITS = (KFOLD, SPATIAL, BOTTOM_THIRD)


@dataclass(frozen=True)
class Fold:
    """One train/test partition: (n_train,) and (n_test,) int64 sample indices."""

    train: np.ndarray
    test: np.ndarray


def _group_folds(target: np.ndarray, units: np.ndarray, k: int, seed: int, task: str, what: str) -> list[Fold]:
    """k folds over ``units`` (group or block ids), stratified by class for classification."""
    n_units = len(np.unique(units))
    if k < 2:
        raise EvaluationError(f"--folds must be at least 2, got {k}")
    if n_units < k:
        raise TooFewSamplesError(f"only {n_units} {what} for {k} folds; lower --folds"
                                 + (" or --block-size" if what == "spatial blocks" else ""))
    index = np.arange(len(target))
    if task == CLASSIFICATION:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = splitter.split(index, target, units)
    else:
        parts = GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(index, target, units)
    folds = [Fold(np.asarray(tr, np.int64), np.asarray(te, np.int64)) for tr, te in parts]
    if any(len(f.test) == 0 or len(f.train) == 0 for f in folds):
        raise TooFewSamplesError(f"a fold over {what} came out empty; lower --folds")
    return folds


def make_folds(data: EvalData, split: str, k: int, seed: int) -> list[Fold]:
    """The folds of one split kind.

    Args:
        data: the samples (uses ``target``, ``groups``, ``blocks``, ``rows``).
        split: ``kfold`` (stratified, by group), ``spatial`` (by block) or ``bottom-third``.
        k: number of folds (ignored by ``bottom-third``).
        seed: shuffling seed.

    Raises:
        TooFewSamplesError: fewer groups/blocks than folds, or an empty side.
        EvaluationError: unknown split.
    """
    if split == KFOLD:
        return _group_folds(data.target, data.groups, k, seed, data.task, "groups (parcels / samples)")
    if split == SPATIAL:
        return _group_folds(data.target, data.blocks, k, seed, data.task, "spatial blocks")
    if split == BOTTOM_THIRD:
        return [bottom_third(data.rows, data.groups)]
    raise EvaluationError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")


def bottom_third(rows: np.ndarray, groups: np.ndarray | None = None) -> Fold:
    """Test = the southern third of the samples (largest ``rows``), train = the rest.

    A group goes to the side of its southernmost sample, so groups are never split.

    Raises:
        TooFewSamplesError: fewer than 3 distinct positions.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if len(np.unique(rows)) < 3:
        raise TooFewSamplesError(f"bottom-third needs samples on at least 3 rows, got {len(np.unique(rows))}")
    cut = np.quantile(rows, 2 / 3)
    test = rows > cut
    if groups is not None:
        test = np.isin(groups, np.unique(groups[test]))
    if test.all() or not test.any():
        raise TooFewSamplesError("bottom-third split left one side empty (all samples on a few rows)")
    index = np.arange(len(rows))
    return Fold(index[~test], index[test])


def subsample_train(train: np.ndarray, target: np.ndarray, fraction: float, rng: np.random.Generator,
                    task: str) -> np.ndarray:
    """A random ``fraction`` of the training indices (at least 2; one per class first for classification).

    Raises:
        EvaluationError: ``fraction`` outside (0, 1].
    """
    if not 0 < fraction <= 1:
        raise EvaluationError(f"training fractions must be in (0, 1], got {fraction}")
    size = max(2, round(fraction * len(train)))
    if size >= len(train):
        return train
    if task != CLASSIFICATION:
        return np.sort(rng.choice(train, size, replace=False))
    labels = target[train]
    first = np.array([rng.choice(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    rest = np.setdiff1d(np.arange(len(train)), first)
    extra = rng.choice(rest, max(0, size - len(first)), replace=False)
    return np.sort(train[np.concatenate([first, extra]).astype(np.int64)])


def drop_rare_classes(data: EvalData, k: int, unit: str = "groups") -> EvalData:
    """Classification only: drop classes with fewer than ``k`` groups (they cannot be in every fold).

    Raises:
        TooFewSamplesError: fewer than two classes remain.
    """
    if data.task != CLASSIFICATION:
        return data
    units = data.groups if unit == "groups" else data.blocks
    classes, keep = np.unique(data.target), []
    dropped = []
    for c in classes:
        n = len(np.unique(units[data.target == c]))
        (keep if n >= k else dropped).append((str(c), n))
    if len(keep) < 2:
        counts = ", ".join(f"{c}: {n}" for c, n in keep + dropped)
        raise TooFewSamplesError(f"fewer than 2 classes have at least {k} {unit} for {k} folds ({counts}); "
                                 "lower --folds, add labelled samples, or merge classes")
    if not dropped:
        return data
    note = (f"dropped {len(dropped)} class(es) with fewer than {k} {unit} (needed for {k} folds): "
            + ", ".join(f"{c} ({n})" for c, n in dropped))
    log.warning("%s", note)
    return data.subset(np.isin(data.target, [c for c, _ in keep])).with_note(note)
