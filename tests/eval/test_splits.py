"""Splits on real labels (the Slovenia LULC crop): groups and blocks never leak, bottom third, fractions."""

from __future__ import annotations

import numpy as np
import pytest

from btfm_eval.dataset import EvalData
from btfm_eval.eolearn import load_bundle
from btfm_eval.errors import TooFewSamplesError
from btfm_eval.splits import bottom_third, drop_rare_classes, make_folds, subsample_train
from tests.eval.conftest import SLOVENIA


def lulc_data(block: int = 8, parcel: int = 4) -> EvalData:
    """Every labelled pixel of the crop; groups = 4 x 4 px 'parcels', blocks = 8 x 8 px."""
    lulc = load_bundle(SLOVENIA)["lulc"]
    rows, cols = np.nonzero(lulc > 0)
    target = lulc[rows, cols].astype(str).astype(object)
    groups = np.char.add(np.char.add((rows // parcel).astype(str), "_"), (cols // parcel).astype(str))
    blocks = np.char.add(np.char.add((rows // block).astype(str), "_"), (cols // block).astype(str))
    feats = {"x": np.column_stack([rows, cols]).astype(np.float32)}
    return EvalData(features=feats, target=target, groups=groups.astype(object), blocks=blocks.astype(object),
                    rows=rows.astype(float), task="classification")


def test_spatial_folds_never_split_blocks_or_groups() -> None:
    data = lulc_data()
    folds = make_folds(data, "spatial", 4, seed=0)
    assert len(folds) == 4
    seen = np.concatenate([f.test for f in folds])
    assert np.array_equal(np.sort(seen), np.arange(len(data)))  # every sample tested exactly once
    for fold in folds:
        assert not set(data.blocks[fold.train]) & set(data.blocks[fold.test])
        assert not set(data.groups[fold.train]) & set(data.groups[fold.test])


def test_kfold_keeps_groups_and_stratifies() -> None:
    data = lulc_data()
    folds = make_folds(data, "kfold", 5, seed=0)
    for fold in folds:
        assert not set(data.groups[fold.train]) & set(data.groups[fold.test])
    share = [np.mean(data.target[f.test] == "2") for f in folds]  # forest, the majority class
    assert max(share) - min(share) < 0.2


def test_too_few_blocks_for_folds() -> None:
    data = lulc_data(block=32)  # one block
    with pytest.raises(TooFewSamplesError, match="spatial blocks for 3 folds"):
        make_folds(data, "spatial", 3, seed=0)


def test_bottom_third_is_the_southern_third() -> None:
    data = lulc_data()
    fold = bottom_third(data.rows, data.groups)
    assert data.rows[fold.test].min() > data.rows[fold.train].max() - 4  # groups 4 rows high move as a whole
    assert 0.25 < len(fold.test) / len(data) < 0.4
    assert not set(data.groups[fold.train]) & set(data.groups[fold.test])
    plain = bottom_third(np.arange(9.0))
    assert plain.test.tolist() == [6, 7, 8] and plain.train.tolist() == list(range(6))


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.3, 1.0])
def test_training_fraction_keeps_every_class(fraction: float) -> None:
    data = lulc_data()
    train = make_folds(data, "spatial", 4, seed=0)[0].train
    pick = subsample_train(train, data.target, fraction, np.random.default_rng(0), "classification")
    assert set(pick) <= set(train) and len(set(pick)) == len(pick)
    assert len(pick) == max(round(fraction * len(train)), len(np.unique(data.target[train])))
    assert set(data.target[pick]) == set(data.target[train])


def test_drop_rare_classes() -> None:
    data = lulc_data()
    per_class = {c: len(np.unique(data.groups[data.target == c])) for c in np.unique(data.target)}
    rarest = min(per_class, key=per_class.get)
    k = per_class[rarest] + 1
    kept = drop_rare_classes(data, k)
    assert set(kept.target) == {c for c, n in per_class.items() if n >= k}
    assert rarest not in set(kept.target) and f"{rarest} ({per_class[rarest]})" in kept.notes[-1]
    with pytest.raises(TooFewSamplesError, match="lower --folds"):
        drop_rare_classes(data, max(per_class.values()) + 1)
