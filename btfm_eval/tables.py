"""Labelled time-series tables -> :class:`~btfm_core.pixel_series.PixelSeries` plus positions.

Two sources:

* WorldCereal parquet extractions (long or wide layout; the loaders of :mod:`btfm_train.data`),
  crop classes through ``class_mappings.json``; positions from the ``lat``/``lon`` columns.
* Presto regression folders (``s1_s2_era5_srtm.npy`` (N, T, 18), ``month.npy`` (N, T) with
  0 = January, ``target.npy``, ``latlon.npy``, optional ``site.npy`` / ``uid.npy``), the layout
  of ``nasaharvest/presto`` ``data/<task>/npy``. Band order there: VV, VH (dB), B2, B3, B4, B5, B6,
  B7, B8, B8A, B9, B11, B12 (reflectance x 1e4), ERA5 temperature and precipitation, SRTM
  elevation and slope, NDVI. Only S1 and the ten contract S2 bands are used.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from btfm_core.pixel_series import PixelSeries, concat
from btfm_eval.errors import LabelError
from btfm_train.data import load_worldcereal_long, load_worldcereal_wide

log = logging.getLogger(__name__)

PRESTO_ARRAY = "s1_s2_era5_srtm.npy"
#: Presto column of each S2 band in the tile order B04, B02, B03, B08, B8A, B05, B06, B07, B11, B12.
PRESTO_S2_INDEX = (4, 2, 3, 8, 9, 5, 6, 7, 11, 12)
PRESTO_S1_INDEX = (0, 1)
#: Day of year of the 15th of each month (non-leap year), for monthly composites.
MID_MONTH_DOY = np.array([15, 46, 74, 105, 135, 166, 196, 227, 258, 288, 319, 349], dtype=np.uint16)


@dataclass(frozen=True)
class TableSamples:
    """Time series of labelled table rows and where they are.

    Attributes:
        series: the time series; ``labels`` hold class names or ``""`` (unlabelled).
        lat: (N,) latitude in degrees (NaN if unknown).
        lon: (N,) longitude in degrees (NaN if unknown).
        target: (N,) float regression target, or None for classification tables.
        blocks: (N,) given spatial units (e.g. fuel-moisture site), or None to derive from lat/lon.
        source: what was loaded, for the report.
    """

    series: PixelSeries
    lat: np.ndarray
    lon: np.ndarray
    target: np.ndarray | None
    blocks: np.ndarray | None
    source: str

    def subset(self, index: np.ndarray) -> TableSamples:
        """The rows selected by a boolean mask or integer index."""
        return TableSamples(self.series.subset(index), self.lat[index], self.lon[index],
                            None if self.target is None else self.target[index],
                            None if self.blocks is None else self.blocks[index], self.source)


def db_to_code(db: np.ndarray) -> np.ndarray:
    """S1 backscatter in dB -> the tile's int16 code ``400 dB + 10000`` (0 = no data, NaN -> 0)."""
    db = np.asarray(db, dtype=np.float64)
    code = np.clip(np.round(400 * np.nan_to_num(db, nan=-1e3) + 10000), 0, 30000)
    return np.where(np.isfinite(db), code, 0).astype(np.int16)


def load_class_mapping(path: Path, key: str) -> dict[str, str]:
    """One legend of a WorldCereal ``class_mappings.json`` (ewoc code -> class name).

    Raises:
        LabelError: the file is missing or lacks ``key``.
    """
    if not path.is_file():
        raise LabelError(f"class mapping {path} does not exist; pass --class-mapping class_mappings.json")
    mappings = json.loads(path.read_text())
    if key not in mappings:
        raise LabelError(f"{path} has no mapping {key!r}; --mapping-key must be one of {', '.join(mappings)}")
    return {str(k): str(v) for k, v in mappings[key].items()}


def _worldcereal_positions(path: Path, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    table = pd.read_parquet(path)
    if "sample_id" not in table.columns:
        table = table.reset_index()
    if not {"lat", "lon"} <= set(table.columns):
        return np.full(len(groups), np.nan), np.full(len(groups), np.nan)
    first = table.groupby("sample_id", sort=False)[["lat", "lon"]].first()
    first.index = first.index.astype(str)
    pos = first.reindex(groups.astype(str))
    return pos["lat"].to_numpy(np.float64), pos["lon"].to_numpy(np.float64)


def load_worldcereal(paths: list[Path], mapping: dict[str, str]) -> TableSamples:
    """WorldCereal tables (long or wide) with their class names and positions.

    Raises:
        LabelError: a table is missing, or none has an ``ewoc_code`` column (tables without one are
            skipped with a warning).
    """
    import pyarrow.parquet as pq

    parts, lats, lons, skipped = [], [], [], []
    for path in paths:
        if not path.is_file():
            raise LabelError(f"table {path} does not exist (--table)")
        columns = pq.read_schema(path).names
        if "ewoc_code" not in columns:
            log.warning("%s has no 'ewoc_code' column (no crop labels): skipped", path.name)
            skipped.append(path.name)
            continue
        loader = load_worldcereal_long if "timestamp" in columns else load_worldcereal_wide
        series = loader(path, mapping)
        lat, lon = _worldcereal_positions(path, series.groups)
        parts.append(series)
        lats.append(lat)
        lons.append(lon)
        log.info("%s: %d samples", path.name, len(series))
    if not parts:
        raise LabelError(f"none of the tables {', '.join(skipped)} has an 'ewoc_code' column with crop labels")
    used = [p.name for p in paths if p.name not in skipped]
    source = "WorldCereal tables " + ", ".join(used)
    if skipped:
        source += f" (skipped, no ewoc_code labels: {', '.join(skipped)})"
    return TableSamples(concat(parts), np.concatenate(lats), np.concatenate(lons), None, None, source)


def is_presto_folder(path: Path) -> bool:
    """Whether ``path`` is a Presto ``npy`` folder."""
    return path.is_dir() and (path / PRESTO_ARRAY).is_file()


def load_presto(folder: Path) -> TableSamples:
    """A Presto regression folder as monthly S1 + S2 series in the tile encodings.

    S2 steps are valid where all ten bands are positive and finite; S1 dB values become the
    ``400 dB + 10000`` code (≤ -25 dB and NaN become 0 = no data). Days of year are the 15th of
    each month and the steps are sorted by them (the tile contract).

    Returns:
        Rows with ``target`` (float) set; ``groups`` = row ids (every row is one observation),
        ``blocks`` = the site (``site.npy``) where there is one, else None.

    Raises:
        LabelError: a required array is missing or shapes disagree.
    """
    needed = (PRESTO_ARRAY, "month.npy", "target.npy", "latlon.npy")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise LabelError(f"{folder} is not a Presto folder: missing {', '.join(missing)}")
    cube = np.load(folder / PRESTO_ARRAY)
    months = np.load(folder / "month.npy").astype(np.int64)
    target = np.load(folder / "target.npy").astype(np.float64)
    latlon = np.load(folder / "latlon.npy").astype(np.float64)
    n, t = cube.shape[:2]
    if cube.ndim != 3 or cube.shape[2] < 13 or months.shape != (n, t) or target.shape != (n,) \
            or latlon.shape != (n, 2):
        raise LabelError(f"{folder}: shapes {cube.shape}, month {months.shape}, target {target.shape}, "
                         f"latlon {latlon.shape} do not fit (N, T, 18), (N, T), (N,), (N, 2)")
    if months.min() < 0 or months.max() > 11:
        raise LabelError(f"{folder}/month.npy must hold months 0 (January) .. 11, got {months.min()}..{months.max()}")
    s2 = cube[..., list(PRESTO_S2_INDEX)]
    valid = np.isfinite(s2).all(-1) & (s2 > 0).all(-1)
    bands = np.where(valid[..., None], np.clip(np.nan_to_num(s2), 0, 65535), 0).astype(np.uint16)
    s1 = db_to_code(cube[..., list(PRESTO_S1_INDEX)])
    doys = MID_MONTH_DOY[months]
    order = np.argsort(doys, axis=1, kind="stable")

    def take(a: np.ndarray) -> np.ndarray:
        return np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)

    ids = np.load(folder / "uid.npy") if (folder / "uid.npy").is_file() else np.arange(n)
    site = np.load(folder / "site.npy").astype(str) if (folder / "site.npy").is_file() else None
    series = PixelSeries(s2_bands=take(bands), s2_masks=take(valid.astype(np.uint8)),
                         s2_doys=take(doys).astype(np.uint16), s1=take(s1), s1_doys=take(doys).astype(np.int32),
                         labels=np.full(n, "", dtype=object), groups=np.array([f"row{i}:{u}" for i, u in
                                                                                  enumerate(ids)], dtype=object))
    return TableSamples(series, latlon[:, 0], latlon[:, 1], target, site,
                        f"Presto folder {folder.name} ({n} rows, {t} monthly steps)")
