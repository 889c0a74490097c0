"""Loaders of per-pixel time series (:class:`~btfm_core.pixel_series.PixelSeries`) for training and evaluation.

Sources: tile folders (``retiled_d_pixel``) and WorldCereal extraction tables (parquet, long
format with one row per sample and month, or wide format with ``-ts<i>-`` columns). Everything
becomes a :class:`PixelSeries` with the dtypes of the tile contract, so training, evaluation
and tile inference feed the model through the same sampling code.
"""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from btfm_core.errors import InputDataError
from btfm_core.pixel_series import PixelSeries, concat
from btfm_core.tiles import S2_BANDS, list_tiles, read_tile

log = logging.getLogger(__name__)

WORLDCEREAL_NODATA = 65535
MONTHS = 12


def worldcereal_s1_to_code(dn: np.ndarray) -> np.ndarray:
    """WorldCereal uint16 backscatter (``dB = 20 log10(DN) - 83``) to the tile's int16 code."""
    dn = np.asarray(dn, dtype=np.float64)
    valid = (dn > 0) & (dn != WORLDCEREAL_NODATA)
    db = 20 * np.log10(np.where(valid, dn, 1)) - 83
    code = np.clip(np.round(400 * db + 10000), 0, 30000)
    return np.where(valid, code, 0).astype(np.int16)


def _series_from_cube(s2: np.ndarray, s1: np.ndarray, dates: np.ndarray, labels: np.ndarray,
                      groups: np.ndarray) -> PixelSeries:
    """Build a PixelSeries from (N, T, 10) S2 DN, (N, T, 2) S1 DN and (N, T) datetime64 dates."""
    invalid = (s2 == WORLDCEREAL_NODATA).any(axis=-1) | (s2 == 0).all(axis=-1)
    bands = np.where(invalid[..., None], 0, s2).astype(np.uint16)
    doys = pd.DatetimeIndex(dates.ravel()).day_of_year.to_numpy().reshape(dates.shape)
    order = np.argsort(doys, axis=1, kind="stable")  # tile contract: ascending day of year

    def take(a: np.ndarray) -> np.ndarray:
        return np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)

    return PixelSeries(
        s2_bands=take(bands), s2_masks=take((~invalid).astype(np.uint8)), s2_doys=take(doys).astype(np.uint16),
        s1=take(worldcereal_s1_to_code(s1)), s1_doys=take(doys).astype(np.int32),
        labels=labels.astype(str), groups=groups.astype(str))


def _label_names(codes: pd.Series, mapping: dict[str, str] | None) -> np.ndarray:
    if mapping is None:
        return np.full(len(codes), "", dtype=object)
    return codes.astype("int64").astype(str).map(lambda c: mapping.get(c, "ignore")).to_numpy()


def load_worldcereal_long(path: Path, mapping: dict[str, str] | None = None) -> PixelSeries:
    """A long-format WorldCereal table (one row per sample and month), first 12 months per sample.

    B8A is a 65535 placeholder in these tables: B08 stands in for it (as in the demo sample).
    """
    table = pd.read_parquet(path).sort_values(["sample_id", "timestamp"])
    table = table.groupby("sample_id", sort=True).head(MONTHS)
    counts = table.groupby("sample_id").size()
    table = table[table["sample_id"].isin(counts[counts == MONTHS].index)]
    n = table["sample_id"].nunique()
    columns = {band: f"S2-L2A-{band}" for band in S2_BANDS}
    columns["B8A"] = "S2-L2A-B08"
    s2 = np.stack([table[columns[b]].to_numpy() for b in S2_BANDS], axis=-1).reshape(n, MONTHS, len(S2_BANDS))
    s1 = np.stack([table["S1-SIGMA0-VV"].to_numpy(), table["S1-SIGMA0-VH"].to_numpy()], -1).reshape(n, MONTHS, 2)
    dates = table["timestamp"].to_numpy().reshape(n, MONTHS)
    first = table.groupby("sample_id", sort=True).head(1)
    return _series_from_cube(s2, s1, dates, _label_names(first["ewoc_code"], mapping), first["sample_id"].to_numpy())


def load_worldcereal_wide(path: Path, mapping: dict[str, str] | None = None) -> PixelSeries:
    """A wide-format WorldCereal table (``OPTICAL-B02-ts0-10m`` ... columns, monthly steps)."""
    table = pd.read_parquet(path)
    if "sample_id" not in table.columns:
        table = table.reset_index()
    steps = sorted({int(m.group(1)) for c in table.columns if (m := re.search(r"OPTICAL-B02-ts(\d+)-", c))})
    if not steps:
        raise InputDataError(f"{path}: no OPTICAL-B02-ts<i>- columns; not a wide WorldCereal table")
    steps = steps[:MONTHS]

    def column(prefix: str, band: str, res: str, t: int) -> np.ndarray:
        return table[f"{prefix}-{band}-ts{t}-{res}"].to_numpy()

    def s2_column(band: str, t: int) -> np.ndarray:
        if band == "B8A" and (column("OPTICAL", "B8A", "20m", t) == WORLDCEREAL_NODATA).all():
            return column("OPTICAL", "B08", "10m", t)  # B8A is a placeholder: B08 stands in
        return column("OPTICAL", band, "10m" if band in ("B02", "B03", "B04", "B08") else "20m", t)

    s2 = np.stack([np.stack([s2_column(b, t) for b in S2_BANDS], -1) for t in steps], axis=1)
    s1 = np.stack([np.stack([column("SAR", p, "20m", t) for p in ("VV", "VH")], -1) for t in steps], axis=1)
    start = pd.to_datetime(table["start_date"]).to_numpy().astype("datetime64[M]")
    dates = (start[:, None] + np.arange(len(steps))[None, :]).astype("datetime64[D]")
    has_codes = "ewoc_code" in table
    labels = _label_names(table["ewoc_code" if has_codes else "sample_id"], mapping if has_codes else None)
    return _series_from_cube(s2, s1, dates, labels, table["sample_id"].to_numpy())


def load_tiles(tiles_dir: Path, max_pixels: int | None = None, seed: int = 0) -> PixelSeries:
    """ROI pixels of tile folders (unlabelled), optionally a random subset of them."""
    parts: list[PixelSeries] = []
    for tile in list_tiles(tiles_dir):
        arrays = read_tile(tiles_dir / tile.name, mmap=False)
        rows, cols = np.nonzero(arrays.roi)
        n = len(rows)
        sar = np.concatenate([arrays.sar_ascending, arrays.sar_descending])[:, rows, cols].swapaxes(0, 1)
        sar_doys = np.concatenate([arrays.sar_ascending_doy, arrays.sar_descending_doy])
        order = np.argsort(sar_doys, kind="stable")
        parts.append(PixelSeries(
            s2_bands=arrays.bands[:, rows, cols].swapaxes(0, 1), s2_masks=arrays.masks[:, rows, cols].T,
            s2_doys=np.broadcast_to(arrays.doys, (n, len(arrays.doys))).copy(), s1=sar[:, order],
            s1_doys=np.broadcast_to(sar_doys[order], (n, len(sar_doys))).astype(np.int32),
            labels=np.full(n, "", dtype=object),
            groups=np.array([f"{tile.name}/{r}_{c}" for r, c in zip(rows, cols, strict=True)])))
    series = concat(parts)
    if max_pixels is not None and len(series) > max_pixels:
        pick = np.sort(np.random.default_rng(seed).choice(len(series), max_pixels, replace=False))
        series = series.subset(pick)
    return series


def group_split(groups: np.ndarray, eval_fraction: float, salt: str = "btfm") -> np.ndarray:
    """Boolean mask of the evaluation part: a stable hash of each group id decides, so the split
    never changes between runs and never separates pixels of one parcel."""
    scores = np.array([zlib.crc32(f"{salt}:{g}".encode()) % 10_000 for g in groups]) / 10_000
    return scores < eval_fraction
