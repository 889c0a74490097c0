"""Linear-probe evaluation: how well a logistic regression separates classes from features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from btfm_core.pixel_series import PixelSeries
from btfm_infer.embed import embed_pixels
from btfm_infer.model import BTFM
from btfm_infer.sampling import S1_MEAN, S1_STD, S2_MEAN, S2_STD


@dataclass(frozen=True)
class ProbeResult:
    """Scores on the held-out pixels."""

    accuracy: float
    macro_f1: float
    n_train: int
    n_test: int
    n_classes: int


def embed_series(model: BTFM, data: PixelSeries, seed: int = 0, repeat: int = 1) -> np.ndarray:
    """(N, 128) embeddings of a pixel set, through the same path as tile inference."""
    n = len(data)
    empty = np.zeros((n, 0, 2), np.int16)
    return embed_pixels(model, data.s2_bands, data.s2_masks, data.s2_doys, data.s1, data.s1_doys, empty,
                        np.zeros((n, 0), np.int32), seed=seed, repeat=repeat)


def raw_band_series(data: PixelSeries) -> np.ndarray:
    """Standardised per-date S2 bands (0 where masked) and S1 bands, flattened: the raw-band baseline."""
    s2 = (data.s2_bands.astype(np.float32) - S2_MEAN) / S2_STD * data.s2_masks[..., None]
    s1 = np.where(data.s1 != 0, (data.s1.astype(np.float32) - S1_MEAN) / S1_STD, 0)
    return np.concatenate([s2.reshape(len(data), -1), s1.reshape(len(data), -1)], axis=1)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 seed: int = 0) -> ProbeResult:
    """Fit a standardised multinomial logistic regression and score it on the test pixels."""
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0, random_state=seed))
    classifier.fit(train_x, train_y)
    predicted = classifier.predict(test_x)
    return ProbeResult(accuracy=float(accuracy_score(test_y, predicted)),
                       macro_f1=float(f1_score(test_y, predicted, average="macro")),
                       n_train=len(train_y), n_test=len(test_y), n_classes=len(np.unique(train_y)))


def probe_split(data: PixelSeries, eval_mask: np.ndarray, min_per_class: int = 5
                ) -> tuple[PixelSeries, PixelSeries]:
    """Labelled train/test pixels for the probe: classes with ``min_per_class`` pixels on both sides."""
    labelled = (data.labels != "") & (data.labels != "ignore")
    train, test = labelled & ~eval_mask, labelled & eval_mask
    classes = [c for c in np.unique(data.labels[labelled])
               if (data.labels[train] == c).sum() >= min_per_class and (data.labels[test] == c).sum() >= min_per_class]
    keep = np.isin(data.labels, classes)
    return data.subset(train & keep), data.subset(test & keep)
