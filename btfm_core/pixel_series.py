"""Per-pixel time series in the tile encodings: what training, evaluation and tile inference share.

The loaders that make them live with their users (tile folders and WorldCereal tables in
:mod:`btfm_train.data`, labelled tables and maps in :mod:`btfm_eval`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

__all__ = ["PixelSeries", "concat"]


@dataclass(frozen=True)
class PixelSeries:
    """N pixels' time series in the tile encodings (see ``btfm_core.tiles``).

    Attributes:
        s2_bands: (N, T, 10) uint16 reflectance x 1e4, band order ``S2_BANDS``.
        s2_masks: (N, T) uint8, 1 = valid.
        s2_doys: (N, T) uint16 day of year.
        s1: (N, T', 2) int16 VV, VH as ``400 dB + 10000`` (0 = no data).
        s1_doys: (N, T') int32.
        labels: (N,) class names ("" where unlabelled).
        groups: (N,) parcel / sample ids (pixels of one group are never split).
    """

    s2_bands: np.ndarray
    s2_masks: np.ndarray
    s2_doys: np.ndarray
    s1: np.ndarray
    s1_doys: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return int(self.s2_bands.shape[0])

    def subset(self, index: np.ndarray) -> PixelSeries:
        """The pixels selected by a boolean mask or integer index."""
        return PixelSeries(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def concat(series: list[PixelSeries]) -> PixelSeries:
    """Stack pixel sets, padding time axes with invalid (masked, zero) steps."""

    def pad(arrays: list[np.ndarray]) -> np.ndarray:
        t = max(a.shape[1] for a in arrays)
        return np.concatenate([np.pad(a, [(0, 0), (0, t - a.shape[1])] + [(0, 0)] * (a.ndim - 2))
                               for a in arrays])

    return PixelSeries(
        s2_bands=pad([s.s2_bands for s in series]), s2_masks=pad([s.s2_masks for s in series]),
        s2_doys=pad([s.s2_doys for s in series]), s1=pad([s.s1 for s in series]),
        s1_doys=pad([s.s1_doys for s in series]),
        labels=np.concatenate([s.labels for s in series]), groups=np.concatenate([s.groups for s in series]))
