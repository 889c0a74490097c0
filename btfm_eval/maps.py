"""Embedding maps with raster or vector labels -> :class:`~btfm_eval.dataset.EvalData`.

The map is our 128-band embedding GeoTIFF (``convert_npy2tiff.py``; NaN outside the ROI) or a
stitched ``.npy`` with its ROI GeoTIFF. Labels are a raster (read on the map grid, or
reprojected onto it by nearest neighbour) or a vector file (GeoPackage, GeoJSON, shapefile) whose
features are rasterised onto the grid (pixel centres inside a polygon; points mark their pixel).
Raw-feature baselines come from a feature raster on the same grid, or from the run's tile folder
(per-date bands + seasonal statistics, and the untrained-model embeddings).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.warp import reproject

from btfm_core.errors import InputDataError
from btfm_core.grid import Grid
from btfm_core.pixel_series import PixelSeries
from btfm_core.roi import open_roi
from btfm_core.tiles import list_tiles, read_tile, read_tile_metadata
from btfm_eval.dataset import CLASSIFICATION, EvalData
from btfm_eval.errors import GridMismatchError, LabelError
from btfm_infer.embedding_map import EmbeddingMap
from btfm_infer.export_common import dequantise

log = logging.getLogger(__name__)

_GRID_TOL = 1e-6


@dataclass(frozen=True)
class LoadedMap:
    """An embedding map read whole into memory for evaluation (from a GeoTIFF, or a stitched
    :class:`~btfm_infer.embedding_map.EmbeddingMap`).

    Attributes:
        data: (H, W, C) float32 embeddings.
        valid: (H, W) bool, True where the pixel has an embedding (finite, not all zero).
        grid: the map's grid.
        path: where it came from.
    """

    data: np.ndarray
    valid: np.ndarray
    grid: Grid
    path: Path


def _open_raster(path: Path, what: str, flag: str) -> rasterio.DatasetReader:
    if not path.exists():
        raise InputDataError(f"{what} {path} does not exist ({flag})")
    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        raise InputDataError(f"{what} {path} is not a raster GDAL can read ({exc}); check {flag}") from exc


def read_embedding_map(path: Path, roi: Path | None = None) -> LoadedMap:
    """Read an embedding GeoTIFF, or a stitched ``.npy`` with ``roi`` (its ROI GeoTIFF).

    Raises:
        InputDataError: unreadable file, a ``.npy`` without ``--roi``, or shapes that do not fit.
    """
    if path.suffix == ".npy":
        if roi is None:
            raise InputDataError(f"{path} is a .npy without georeference: pass its ROI GeoTIFF with --roi")
        stitched = EmbeddingMap.open(path, open_roi(roi))
        data = np.asarray(stitched.read(np.s_[:]), dtype=np.float32)
        valid = stitched.roi.read_mask().astype(bool) & (np.abs(data).sum(-1) > 0)
        return LoadedMap(data, valid, stitched.grid, path)
    with _open_raster(path, "embedding map", "--embeddings") as src:
        grid = Grid.from_dataset(src)
        if src.crs is None:
            raise InputDataError(f"embedding map {path} has no CRS; export it with convert_npy2tiff.py")
        data = np.moveaxis(src.read(out_dtype=np.float32), 0, -1)
        if src.dtypes[0] == "int8":  # quantised export: embedding = value x per-pixel scale
            data = dequantise(data, _int8_scales(path, grid), src.nodata)
        elif src.nodata is not None and np.isfinite(src.nodata):
            data[(data == src.nodata).all(-1)] = np.nan
    valid = np.isfinite(data).all(-1) & (np.abs(np.nan_to_num(data)).sum(-1) > 0)
    data = np.nan_to_num(data)
    if not valid.any():
        raise InputDataError(f"embedding map {path} has no valid pixel (all NaN or zero)")
    return LoadedMap(data, valid, grid, path)


def _int8_scales(path: Path, grid: Grid) -> np.ndarray:
    """The per-pixel scales of an int8 embedding GeoTIFF (``<name>_scales.tif`` beside it), (H, W)."""
    from btfm_infer.export_cog import scales_path

    scales = scales_path(path)
    if not scales.is_file():
        raise InputDataError(f"{path} holds int8 codes but its scales {scales.name} are not beside it; pass the "
                             "float32 GeoTIFF, the .npy with --roi, or put the scales file back")
    with _open_raster(scales, "int8 scale raster", "--embeddings") as src:
        if not Grid.from_dataset(src).same_as(grid, _GRID_TOL):
            raise InputDataError(f"{scales} is not on the grid of {path}; re-export both with convert_npy2tiff.py")
        return src.read(1, out_dtype=np.float32)


def read_label_raster(path: Path, grid: Grid) -> np.ndarray:
    """Labels on the map grid: (H, W) float64, NaN where the raster has no value.

    A raster on another grid (or CRS) is reprojected by nearest neighbour.

    Raises:
        LabelError: unreadable, multi-band, no CRS, or no label on the map.
    """
    with _open_raster(path, "label raster", "--labels") as src:
        if src.count != 1:
            raise LabelError(f"label raster {path} has {src.count} bands; expected one band of class ids or values")
        if src.crs is None:
            raise LabelError(f"label raster {path} has no CRS; georeference it on the map's grid")
        nodata = src.nodata
        source_grid = Grid.from_dataset(src)
        if source_grid.same_as(grid, _GRID_TOL):
            labels = src.read(1).astype(np.float64)
        else:
            log.info("label raster %s is on another grid: reprojecting (nearest) onto the map", path)
            labels = np.full(grid.shape, np.nan)
            reproject(rasterio.band(src, 1), labels, dst_transform=grid.transform, dst_crs=grid.rasterio_crs,
                      dst_nodata=np.nan, resampling=Resampling.nearest, src_nodata=nodata)
    if nodata is not None:
        labels[labels == nodata] = np.nan
    if not np.isfinite(labels).any():
        raise LabelError(f"label raster {path} has no label on the map's grid ({grid.width} x {grid.height} px, "
                         f"bounds {tuple(round(v) for v in grid.bounds)}): the labels lie outside the map, or are "
                         "all nodata")
    return labels


@dataclass(frozen=True)
class VectorLabels:
    """Vector features burnt onto a grid.

    Attributes:
        feature_id: (H, W) int32, 1-based index of the feature covering each pixel (0 = none).
        values: (F,) the label column of each feature (index ``feature_id - 1``).
    """

    feature_id: np.ndarray
    values: np.ndarray


def rasterize_vector(path: Path, column: str, grid: Grid, all_touched: bool = False) -> VectorLabels:
    """Burn a vector file's features onto ``grid``, remembering which feature covers each pixel.

    Features are reprojected to the grid's CRS; later features win where they overlap.

    Raises:
        LabelError: unreadable file, missing ``column``, no CRS, or no feature on the map.
    """
    import pyogrio
    import shapely
    from pyproj import Transformer

    if not path.exists():
        raise LabelError(f"label file {path} does not exist (--labels)")
    try:
        info = pyogrio.read_info(path)
    except Exception as exc:  # pyogrio raises DataSourceError and friends
        raise LabelError(f"{path} is not a vector file pyogrio can read ({exc}); pass a GeoPackage, GeoJSON "
                         "or shapefile, or a label raster") from exc
    fields = [str(f) for f in info["fields"]]
    if column not in fields:
        raise LabelError(f"{path} has no column {column!r}; --label-column must be one of: {', '.join(fields)}")
    meta, _, geometry, field_data = pyogrio.raw.read(path, columns=[column])
    values = np.asarray(field_data[0])
    geoms = shapely.from_wkb(geometry)
    if meta.get("crs") is None:
        raise LabelError(f"{path} has no CRS; save it with one (e.g. EPSG:4326)")
    transformer = Transformer.from_crs(meta["crs"], grid.rasterio_crs.to_wkt(), always_xy=True)
    geoms = shapely.transform(geoms, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
    keep = [i for i, g in enumerate(geoms) if g is not None and not g.is_empty]
    shapes = [(shapely.geometry.mapping(geoms[i]), i + 1) for i in keep]
    feature_id = rasterio.features.rasterize(shapes, out_shape=grid.shape, transform=grid.transform, fill=0,
                                             dtype="int32", all_touched=all_touched) if shapes else \
        np.zeros(grid.shape, np.int32)
    if not feature_id.any():
        raise LabelError(f"no feature of {path} covers a pixel centre of the map (bounds "
                         f"{tuple(round(v) for v in grid.bounds)} in {grid.rasterio_crs.to_string()}): the "
                         "labels lie outside the map, or polygons are smaller than a pixel (try --all-touched)")
    return VectorLabels(feature_id, values)


def read_feature_raster(path: Path, grid: Grid) -> np.ndarray:
    """A raw-feature raster on the map grid: (H, W, B) float32 (NaN -> 0).

    Raises:
        GridMismatchError: the raster is not on the map's grid.
    """
    with _open_raster(path, "raw-feature raster", "--raw-features") as src:
        other = Grid.from_dataset(src)
        if not other.same_as(grid, _GRID_TOL):
            raise GridMismatchError(
                f"raw-feature raster {path} ({other.width} x {other.height} px, {other.transform[:6]}) is not on the "
                f"embedding map's grid ({grid.width} x {grid.height} px, {grid.transform[:6]}); resample it onto "
                "the map (gdalwarp -te/-tr/-t_srs of the map), or pass the run's tile folder instead")
        return np.nan_to_num(np.moveaxis(src.read(out_dtype=np.float32), 0, -1))


def tile_series(tiles_dir: Path, grid: Grid, rows: np.ndarray, cols: np.ndarray) -> PixelSeries:
    """Time series of the map pixels (``rows``, ``cols``) from the run's tile folders.

    Pixels that no tile covers get empty (masked) series. S1 ascending and descending are merged.

    Raises:
        GridMismatchError: the tiles were made for another grid than the map's.
    """
    order = np.full(len(rows), -1)
    parts: list[tuple[np.ndarray, PixelSeries]] = []
    for tile in list_tiles(tiles_dir):
        folder = tiles_dir / tile.name
        meta = read_tile_metadata(folder)
        if meta.get("transform") is not None:
            expected = list(tile.grid(grid).transform)[:6] if tile.x1 <= grid.width and tile.y1 <= grid.height \
                else None
            if expected is None or not np.allclose(meta["transform"], expected, atol=1e-6 * max(grid.resolution)):
                raise GridMismatchError(f"tile {folder} (transform {meta['transform']}) does not lie on the "
                                        f"embedding map's grid; pass the tile folder of the run that made the map")
        inside = (rows >= tile.y0) & (rows < tile.y1) & (cols >= tile.x0) & (cols < tile.x1)
        if not inside.any():
            continue
        arrays = read_tile(folder, mmap=True)
        r, c = rows[inside] - tile.y0, cols[inside] - tile.x0
        n = len(r)
        sar = np.concatenate([arrays.sar_ascending[:, r, c], arrays.sar_descending[:, r, c]]).swapaxes(0, 1)
        sar_doys = np.concatenate([arrays.sar_ascending_doy, arrays.sar_descending_doy])
        by_time = np.argsort(sar_doys, kind="stable")
        parts.append((np.flatnonzero(inside), PixelSeries(
            s2_bands=np.asarray(arrays.bands[:, r, c]).swapaxes(0, 1), s2_masks=np.asarray(arrays.masks[:, r, c]).T,
            s2_doys=np.broadcast_to(arrays.doys, (n, len(arrays.doys))).astype(np.uint16),
            s1=np.asarray(sar[:, by_time]),
            s1_doys=np.broadcast_to(sar_doys[by_time], (n, len(sar_doys))).astype(np.int32),
            labels=np.full(n, "", dtype=object), groups=np.full(n, "", dtype=object))))
        order[inside] = 1
    if not parts:
        raise GridMismatchError(f"no tile of {tiles_dir} covers a labelled pixel of the map")
    from btfm_core.pixel_series import concat

    index = np.concatenate([i for i, _ in parts])
    series = concat([s for _, s in parts])
    missing = np.flatnonzero(order < 0)
    if missing.size:
        log.warning("%d labelled pixels lie in no tile of %s; their raw features are zero", missing.size, tiles_dir)
        empty = series.subset(np.zeros(missing.size, np.int64))
        empty = PixelSeries(np.zeros_like(empty.s2_bands), np.zeros_like(empty.s2_masks), empty.s2_doys,
                            np.zeros_like(empty.s1), empty.s1_doys, empty.labels, empty.groups)
        series = concat([series, empty])
        index = np.concatenate([index, missing])
    return series.subset(np.argsort(index))


def label_names(path: Path | None) -> dict[str, str]:
    """``{"value": "name"}`` from a JSON file (object, or a list indexed by value); {} without a file.

    Raises:
        LabelError: unreadable JSON.
    """
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LabelError(f"--label-names {path}: not a readable JSON file ({exc})") from exc
    if isinstance(data, list):
        return {str(i): str(v) for i, v in enumerate(data)}
    return {str(k): str(v) for k, v in data.items()}


def _value_key(value: object) -> str:
    """A label value as text: 3.0 -> "3", "maize" -> "maize"."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class MapLabels:
    """Per-pixel labels of a map and the unit each pixel belongs to.

    Attributes:
        value: (H, W) object array of label text ("" = unlabelled) or float (NaN = unlabelled).
        unit: (H, W) int64 polygon id (vector labels) or -1 (raster labels: every pixel is its own unit).
    """

    value: np.ndarray
    unit: np.ndarray


def map_labels(path: Path, grid: Grid, task: str, column: str | None = None, all_touched: bool = False) -> MapLabels:
    """Labels of the map pixels from a raster or a vector file (chosen by whether GDAL sees a raster).

    Raises:
        LabelError: see :func:`read_label_raster` and :func:`rasterize_vector`; a vector file
            without ``--label-column``.
    """
    is_raster = path.suffix.lower() in (".tif", ".tiff", ".vrt", ".img", ".nc") or (
        path.is_file() and path.suffix.lower() not in (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".parquet"))
    if is_raster:
        values = read_label_raster(path, grid)
        unit = np.full(grid.shape, -1, np.int64)
        if task == CLASSIFICATION:
            text = np.full(grid.shape, "", dtype=object)
            finite = np.isfinite(values)
            text[finite] = [_value_key(v) for v in values[finite]]
            return MapLabels(text, unit)
        return MapLabels(values, unit)
    if not column:
        raise LabelError(f"{path} is a vector file: name its class or value column with --label-column")
    vec = rasterize_vector(path, column, grid, all_touched)
    ids = vec.feature_id
    if task == CLASSIFICATION:
        table = np.array([""] + [_value_key(v) if v is not None else "" for v in vec.values], dtype=object)
    else:
        try:
            table = np.concatenate([[np.nan], vec.values.astype(np.float64)])
        except (TypeError, ValueError) as exc:
            raise LabelError(f"column {column!r} of {path} is not numeric; regression needs numeric values "
                             "(or use --task classification)") from exc
    return MapLabels(table[ids], np.where(ids > 0, ids.astype(np.int64), -1))


def map_eval_data(emap: LoadedMap, labels: MapLabels, task: str, *, names: dict[str, str] | None = None,
                  ignore: tuple[str, ...] = (), block_size: int = 10, aggregate: bool = False,
                  extra: dict[str, np.ndarray] | None = None) -> tuple[EvalData, np.ndarray, np.ndarray]:
    """Labelled pixels (or parcels) of a map as :class:`EvalData`.

    Args:
        emap: the embedding map.
        labels: per-pixel labels on its grid.
        task: ``classification`` or ``regression``.
        names: label value -> class name (raster class ids); values without a name keep their text.
        ignore: label values or names to leave out (e.g. ``0`` = no data).
        block_size: spatial block side in pixels; a parcel's block is that of its mean pixel.
        aggregate: one sample per parcel (vector feature) with the mean of each feature set.
        extra: more per-pixel feature sets, name -> (H, W, F) on the map grid.

    Returns:
        (data, rows, cols): the samples, and the map row/column of every labelled pixel used
        (before any aggregation), for callers that add features from the tiles.

    Raises:
        LabelError: no labelled pixel with an embedding, or aggregation without parcels.
    """
    names = names or {}
    if task == CLASSIFICATION:
        text = np.vectorize(lambda v: names.get(v, v), otypes=[object])(labels.value) if names else labels.value
        labelled = (labels.value != "") & ~np.isin(labels.value, list(ignore)) & ~np.isin(text, list(ignore))
    else:
        text = labels.value
        labelled = np.isfinite(labels.value.astype(np.float64))
    use = labelled & emap.valid
    if not use.any():
        raise LabelError(f"none of the {int(labelled.sum())} labelled pixels has an embedding in {emap.path} "
                         "(labels outside the ROI, or all ignored with --ignore-labels)")
    if labelled.sum() > use.sum():
        log.info("%d labelled pixels lie outside the embedded area and are skipped", int(labelled.sum() - use.sum()))
    rows, cols = np.nonzero(use)
    unit = labels.unit[rows, cols]
    target = text[rows, cols]
    target = target.astype(np.float64) if task != CLASSIFICATION else target.astype(str).astype(object)
    features = {"embeddings": emap.data[rows, cols]}
    for name, cube in (extra or {}).items():
        features[name] = cube[rows, cols]
    has_units = (unit >= 0).any()
    groups = np.where(unit >= 0, np.char.add("parcel", unit.astype(str)),
                      np.char.add("px", (rows * emap.grid.width + cols).astype(str))).astype(object)
    # a unit's block and position are those of its mean pixel, so parcels never straddle blocks
    mean_row, mean_col = rows.astype(np.float64), cols.astype(np.float64)
    if has_units:
        _uniq, inverse = np.unique(groups, return_inverse=True)
        counts = np.bincount(inverse)
        mean_row = (np.bincount(inverse, rows) / counts)[inverse]
        mean_col = (np.bincount(inverse, cols) / counts)[inverse]
    blocks = np.char.add(np.char.add((mean_row // block_size).astype(int).astype(str), "_"),
                         (mean_col // block_size).astype(int).astype(str)).astype(object)
    data = EvalData(features={k: v.astype(np.float32) for k, v in features.items()}, target=target, groups=groups,
                    blocks=blocks, rows=mean_row, task=task)
    if aggregate:
        if not has_units:
            raise LabelError("--aggregate parcel needs vector labels (polygons); a label raster has no parcels")
        data = aggregate_parcels(data)
    return data, rows, cols


def aggregate_parcels(data: EvalData) -> EvalData:
    """One sample per group: the mean of every feature set; target, block and row of the group.

    Groups must have one target each (a polygon has one label); the first is kept otherwise.
    """
    uniq, first, inverse = np.unique(data.groups, return_index=True, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    feats = {}
    for name, x in data.features.items():
        sums = np.zeros((len(uniq), x.shape[1]), np.float64)
        np.add.at(sums, inverse, x)
        feats[name] = (sums / counts[:, None]).astype(np.float32)
    rows = np.bincount(inverse, data.rows) / counts
    return EvalData(features=feats, target=data.target[first], groups=data.groups[first], blocks=data.blocks[first],
                    rows=rows, task=data.task, notes=[*data.notes, f"aggregated {len(data)} pixels into "
                                                      f"{len(uniq)} parcels (mean feature vector per polygon)"])
