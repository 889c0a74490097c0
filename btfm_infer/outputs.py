"""Open BTFM embedding outputs as lazy, georeferenced xarray objects, and sample them at points.

:func:`open_embedding` reads every output of ``convert_npy2tiff.py`` and the stitched map itself
into one shape: a dask-backed ``xarray.DataArray`` with dimensions ``(y, x, band)``, band names
``A00``…, pixel-centre ``x``/``y`` coordinates in the map's CRS, and the CRS, transform and
nodata set through rioxarray (``da.rio.crs``, ``da.rio.transform()``, ``da.rio.nodata``):

- a GeoTIFF: float32 (NaN outside the ROI), or int8 codes (-128 outside) with the per-pixel scales
  in ``<name>_scales.tif`` beside it (``embedding = code x scale``);
- a Zarr store (``embedding``, and ``scales`` for int8; see :mod:`btfm_infer.export_zarr`);
- a stitched ``.npy`` (H, W, C) with its grid record ``<name>.json`` beside it.

Nothing is read until the values are used. :func:`sample_points` reads only the chunks that hold
the requested pixels.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import rasterio
import rioxarray
import xarray as xr
from affine import Affine
from dask.base import tokenize
from rasterio.errors import RasterioIOError

from btfm_core.errors import InputDataError
from btfm_core.grid import Grid
from btfm_core.roi import inside_mask
from btfm_core.tiles import ROI_FILE
from btfm_infer.embedding_map import read_npy_window, record_path
from btfm_infer.export_common import INT8_NODATA, band_names, dequantise

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CHUNK", "PointTable", "embedding_kind", "is_zarr_store", "npy_grid", "open_embedding",
           "read_points", "sample_points"]

#: Pixels per side of a dask chunk (a multiple of the COG's 256 px tiles and of the Zarr chunks).
DEFAULT_CHUNK = 256
#: Chunk side of a ``.npy`` opened for scattered reads (``chunks=None``): a few rows of a few kB each.
NPY_POINT_CHUNK = 32
#: CRS of longitude/latitude pairs.
LONLAT_CRS = "EPSG:4326"
GEOTIFF_SUFFIXES = (".tif", ".tiff")
#: Name of the per-pixel scale coordinate of int8 codes opened with ``dequantise=False``.
SCALES_COORD = "scales"
_ZARR_MARKERS = (".zmetadata", ".zgroup", "zarr.json")
_FLOAT_DTYPES = ("float32", "float64")


def is_zarr_store(path: Path) -> bool:
    """Whether a folder is a Zarr store (a ``.zarr`` name, or Zarr v2/v3 group metadata inside)."""
    return path.is_dir() and (path.suffix == ".zarr" or any((path / marker).exists() for marker in _ZARR_MARKERS))


def embedding_kind(path: str | os.PathLike[str]) -> str:
    """``geotiff``, ``zarr`` or ``npy``: which kind of embedding output ``path`` is.

    Raises:
        InputDataError: the path does not exist, or is no embedding output.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"embedding {path} does not exist; pass a GeoTIFF, Zarr store or stitched .npy")
    if path.is_dir():
        if is_zarr_store(path):
            return "zarr"
        raise InputDataError(f"{path} is a folder but not a Zarr store; pass an embedding file (e.g. "
                             "<run>/stitched_representation.tif) or a .zarr store")
    suffix = path.suffix.lower()
    if suffix in GEOTIFF_SUFFIXES:
        return "geotiff"
    if suffix == ".npy":
        return "npy"
    raise InputDataError(f"{path}: unknown file type {suffix or '(no suffix)'}; pass a GeoTIFF (.tif), a Zarr "
                         "store (.zarr) or a stitched .npy with its .json grid record")


def open_embedding(path: str | os.PathLike[str], *, dequantise: bool = True,
                   chunks: int | None = DEFAULT_CHUNK) -> xr.DataArray:
    """Open an embedding output lazily as a (y, x, band) DataArray.

    Args:
        path: a GeoTIFF (float32, or int8 with ``<name>_scales.tif``), a Zarr store or a stitched
            ``.npy`` with its ``.json`` grid record (masked with ``roi.tiff`` when it lies beside on
            the same grid, else all-zero vectors are taken as outside).
        dequantise: int8 outputs: return ``code x scale`` as float32 with NaN outside (default);
            False returns the int8 codes with ``_FillValue``/nodata -128 and the scales as the
            ``scales`` (y, x) coordinate.
        chunks: pixels per side of a dask chunk (all bands in each); None: the file's own unit of
            reading (the COG's tile, the Zarr chunk; 32 px for a ``.npy``), best for scattered pixels.

    Returns:
        (H, W, C) dask-backed DataArray named ``embedding``: float32 with NaN where there is no
        embedding (int8 codes with ``dequantise=False``); CRS, transform and nodata set; the
        output's provenance (GeoTIFF tags, Zarr attributes) in ``attrs``.

    Raises:
        InputDataError: the path is missing, of an unknown type, has no georeference, or its parts
            (scales, grid record) are missing or do not fit.
    """
    path = Path(path).expanduser()
    kind = embedding_kind(path)
    opener = {"geotiff": _open_geotiff, "zarr": _open_zarr, "npy": _open_npy}[kind]
    array = opener(path, dequantise, storage_chunk(kind, path) if chunks is None else chunks)
    array.attrs.update({"btfm:source": str(path), "btfm:format": kind})
    return array


def pixel_centres(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) float64 pixel-centre coordinates of a north-up grid, (W,) and (H,)."""
    t = grid.transform
    return t.c + t.a * (np.arange(grid.width) + 0.5), t.f + t.e * (np.arange(grid.height) + 0.5)


def _as_dataarray(data: da.Array, grid: Grid, bands: Sequence[str], nodata: float, attrs: dict[str, Any],
                  scales: da.Array | None = None) -> xr.DataArray:
    """A (y, x, band) DataArray of ``data`` with coordinates, CRS, transform and nodata of ``grid``."""
    x, y = pixel_centres(grid)
    coords: dict[str, Any] = {"y": y, "x": x, "band": list(bands)}
    if scales is not None:
        coords[SCALES_COORD] = (("y", "x"), scales)
    array = xr.DataArray(data, dims=("y", "x", "band"), coords=coords, name="embedding", attrs=attrs)
    array = array.rio.write_crs(grid.rasterio_crs).rio.write_transform(grid.transform)
    described: xr.DataArray = array.rio.write_coordinate_system().rio.write_nodata(nodata, encoded=False)
    return described


def storage_chunk(kind: str, path: Path) -> int:
    """Pixels per side of the smallest unit an output is read in: COG tile, Zarr chunk, or :data:`NPY_POINT_CHUNK`."""
    if kind == "geotiff":
        with rasterio.open(path) as src:
            rows, cols = src.block_shapes[0]
        return rows if rows == cols else DEFAULT_CHUNK  # strips: no square unit
    if kind == "zarr":
        import zarr

        from btfm_infer.export_zarr import EMBEDDING_ARRAY

        try:
            array = zarr.open_group(str(path), mode="r")[EMBEDDING_ARRAY]
            return int(array.chunks[0]) if isinstance(array, zarr.Array) else DEFAULT_CHUNK
        except (KeyError, OSError, ValueError, zarr.errors.BaseZarrError):
            return DEFAULT_CHUNK  # the opener names the problem
    return NPY_POINT_CHUNK


def _chunk_spec(chunks: int) -> dict[str, int]:
    if chunks < 1:
        raise InputDataError(f"chunks must be a positive number of pixels, got {chunks}")
    return {"y": chunks, "x": chunks, "band": -1}


def _raster_band(path: Path, chunks: int) -> da.Array:
    """The (band, y, x) dask array of a raster, read window by window with rioxarray."""
    opened = rioxarray.open_rasterio(path, chunks=_chunk_spec(chunks), mask_and_scale=False)
    assert isinstance(opened, xr.DataArray)
    data: da.Array = opened.data
    return data


def _geotiff_header(path: Path) -> tuple[Grid, str, float | None, list[str], dict[str, str]]:
    """(grid, dtype, nodata, band names, tags) of an embedding GeoTIFF."""
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise InputDataError(f"{path} has no CRS; export the embedding with convert_npy2tiff.py")
            header = (Grid.from_dataset(src), src.dtypes[0], src.nodata,
                      [d or name for d, name in zip(src.descriptions, band_names(src.count), strict=True)],
                      dict(src.tags()))
    except RasterioIOError as exc:
        raise InputDataError(f"{path} is not a raster GDAL can read ({exc})") from exc
    if header[1] not in (*_FLOAT_DTYPES, "int8"):
        raise InputDataError(f"{path} holds {header[1]} pixels, not a BTFM embedding (float32, or int8 with "
                             "<name>_scales.tif); pass the embedding GeoTIFF")
    if path.stem.endswith("_scales") and header[3][0].startswith("scale"):
        raise InputDataError(f"{path} holds the scales of an int8 embedding; pass the embedding "
                             f"{path.name.replace('_scales', '')} beside it")
    return header


def _open_geotiff(path: Path, dequantise_codes: bool, chunks: int) -> xr.DataArray:
    from btfm_infer.export_cog import scales_path

    grid, dtype, nodata, bands, tags = _geotiff_header(path)
    data = _raster_band(path, chunks).transpose(1, 2, 0)
    attrs = {"btfm:storage_dtype": dtype, **tags}
    if dtype != "int8":
        return _embedding_array(data, None, nodata, grid, bands, attrs, dequantise_codes)
    scales_file = scales_path(path)
    if not scales_file.is_file():
        raise InputDataError(f"{path} holds int8 codes but its scales {scales_file.name} are not beside it; put "
                             "the scales file back, or pass the float32 GeoTIFF or the .npy")
    with rasterio.open(scales_file) as src:
        if not Grid.from_dataset(src).same_as(grid):
            raise InputDataError(f"{scales_file} is not on the grid of {path}; re-export both with convert_npy2tiff.py")
    scales = _raster_band(scales_file, chunks)[0]
    return _embedding_array(data, scales, nodata, grid, bands, attrs, dequantise_codes)


def _embedding_array(data: da.Array, scales: da.Array | None, nodata: float | None, grid: Grid, bands: list[str],
                     attrs: dict[str, Any], dequantise_codes: bool) -> xr.DataArray:
    """The DataArray of (H, W, C) float values (NaN at a finite nodata) or int8 codes with (H, W) scales."""
    if data.dtype != np.int8:
        if nodata is not None and np.isfinite(nodata):
            data = da.where(data == nodata, np.float32(np.nan), data)
        return _as_dataarray(data.astype(np.float32), grid, bands, np.nan, attrs)
    assert scales is not None
    scales = scales.astype(np.float32)
    code_nodata = INT8_NODATA if nodata is None else nodata
    if dequantise_codes:
        return _as_dataarray(dequantise(data, scales, code_nodata), grid, bands, np.nan, attrs)
    return _as_dataarray(data, grid, bands, code_nodata, attrs, scales=scales)


def _zarr_grid(path: Path, embedding: xr.DataArray, attrs: dict[str, Any]) -> Grid:
    crs = embedding.rio.crs or (rasterio.crs.CRS.from_user_input(attrs["crs_wkt"]) if attrs.get("crs_wkt") else None)
    if crs is None:
        raise InputDataError(f"Zarr store {path} records no CRS (no grid mapping, no crs_wkt attribute); "
                             "re-export it with convert_npy2tiff.py --zarr")
    transform = embedding.rio.transform()
    if isinstance(attrs.get("transform"), list) and len(attrs["transform"]) == 6:
        transform = Affine(*attrs["transform"])
    return Grid(crs.to_wkt(), transform, int(embedding.sizes["y"]), int(embedding.sizes["x"]))


def _open_zarr(path: Path, dequantise_codes: bool, chunks: int) -> xr.DataArray:
    from btfm_infer.export_zarr import EMBEDDING_ARRAY, SCALES_ARRAY

    try:
        dataset = xr.open_zarr(path, mask_and_scale=False, chunks=_chunk_spec(chunks))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputDataError(f"{path} is not a Zarr store xarray can read ({exc}); re-export it with "
                             "convert_npy2tiff.py --zarr") from exc
    if EMBEDDING_ARRAY not in dataset or set(dataset[EMBEDDING_ARRAY].dims) != {"y", "x", "band"}:
        raise InputDataError(f"Zarr store {path} has no (y, x, band) array '{EMBEDDING_ARRAY}'; it is not a BTFM "
                             "embedding store (or one of an older version: re-export it with convert_npy2tiff.py)")
    embedding = dataset[EMBEDDING_ARRAY].transpose("y", "x", "band")
    grid = _zarr_grid(path, embedding, dict(dataset.attrs))
    bands = [str(b) for b in embedding["band"].values]
    attrs = {"btfm:storage_dtype": str(embedding.dtype), **dataset.attrs}
    scales = None
    if embedding.dtype == np.int8:
        if SCALES_ARRAY not in dataset:
            raise InputDataError(f"Zarr store {path} holds int8 codes but no '{SCALES_ARRAY}' array; re-export it")
        scales = dataset[SCALES_ARRAY].transpose("y", "x").data
    return _embedding_array(embedding.data, scales, embedding.rio.nodata, grid, bands, attrs, dequantise_codes)


class _NpyWindows:
    """Array-like view of a ``.npy`` for dask: each read maps the file only for that window.

    Keeps the process's resident memory bounded by the windows read, however many there are.
    """

    def __init__(self, path: Path) -> None:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
        self.path, self.shape, self.dtype, self.ndim = path, data.shape, data.dtype, data.ndim
        del data

    def __getitem__(self, index: Any) -> np.ndarray:
        return read_npy_window(self.path, index)


def npy_grid(path: Path) -> Grid:
    """The grid of a stitched ``.npy`` from its ``.json`` record (written by ``btfm-stitch``)."""
    record_file = record_path(path)
    if not record_file.is_file():
        raise InputDataError(f"{path} has no grid record {record_file.name} beside it (btfm-stitch writes one); "
                             "pass the GeoTIFF export instead, or re-run btfm-stitch --overwrite")
    try:
        record = json.loads(record_file.read_text())
        grid = Grid.from_record(record)
        grid.rasterio_crs  # noqa: B018  (checks the CRS)
    except (OSError, ValueError, KeyError, TypeError, IndexError, rasterio.errors.CRSError) as exc:
        raise InputDataError(f"grid record {record_file} is unreadable ({exc}); re-run btfm-stitch --overwrite") \
            from exc
    return grid


def _open_npy(path: Path, dequantise_codes: bool, chunks: int) -> xr.DataArray:
    del dequantise_codes  # a stitched map is float32 already
    grid = npy_grid(path)
    try:
        reader = _NpyWindows(path)
    except (ValueError, OSError, EOFError) as exc:
        raise InputDataError(f"{path}: not a readable .npy array ({exc}); re-run btfm-stitch --overwrite") from exc
    if reader.ndim != 3 or tuple(reader.shape[:2]) != grid.shape or reader.dtype.kind != "f":
        raise InputDataError(f"{path} is {reader.dtype} {reader.shape} but its record {record_path(path).name} "
                             f"describes a {grid.height} x {grid.width} grid; expected (H, W, C) floating point")
    mtime = path.stat().st_mtime_ns
    data = da.from_array(reader, chunks=(chunks, chunks, -1), name=f"btfm-npy-{tokenize(str(path), mtime)}")
    roi_file = path.parent / ROI_FILE
    inside = None
    if roi_file.is_file():
        with rasterio.open(roi_file) as src:
            on_grid, roi_nodata = Grid.from_dataset(src).same_as(grid), src.nodata
        if on_grid:
            inside = _raster_band(roi_file, chunks)[0].map_blocks(inside_mask, roi_nodata, dtype=bool)
    if inside is None:
        log.debug("no %s on the grid of %s beside it: all-zero vectors are taken as outside", ROI_FILE, path.name)
        inside = (data != 0).any(axis=-1)
    values = da.where(inside[..., None], data.astype(np.float32), np.float32(np.nan))
    return _as_dataarray(values, grid, band_names(reader.shape[2]), np.nan, {"btfm:storage_dtype": str(reader.dtype)})


@dataclass(frozen=True)
class PointTable:
    """Points to sample, one row each.

    Attributes:
        x: (N,) float64 easting or longitude in ``crs`` (NaN: no geometry).
        y: (N,) float64 northing or latitude.
        crs: the points' CRS (anything pyproj reads).
        attributes: N rows of the input's attributes (lon/lat pairs: ``lon``, ``lat``).
    """

    x: np.ndarray
    y: np.ndarray
    crs: str
    attributes: pd.DataFrame


def read_points(points: Any, layer: str | int | None = None) -> PointTable:
    """Points from lon/lat pairs, an (N, 2) lon/lat array, a vector file or a GeoDataFrame.

    Args:
        points: a list of (lon, lat) tuples or an (N, 2) array in degrees (EPSG:4326); a path to
            a GeoJSON, GeoPackage, shapefile… of points (read with pyogrio), or a CSV with
            ``lon``/``lat`` columns; or a GeoDataFrame (anything with ``.geometry`` and ``.crs``).
        layer: the layer of a multi-layer vector file (default: the first).

    Raises:
        InputDataError: missing or unreadable file, no points, non-point geometries, no CRS.
    """
    if isinstance(points, (str, os.PathLike)):
        return _read_points_file(Path(points).expanduser(), layer)
    if hasattr(points, "geometry") and hasattr(points, "crs"):
        return _from_geodataframe(points)
    try:
        pairs = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputDataError("points must be (lon, lat) pairs, an (N, 2) array, a vector file path or a "
                             f"GeoDataFrame; got {type(points).__name__}") from exc
    if not pairs.size:
        raise InputDataError("no points given: pass at least one (lon, lat) pair")
    if pairs.ndim == 1 and pairs.size == 2:
        pairs = pairs[None]
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise InputDataError(f"points must be (lon, lat) pairs: an (N, 2) array, got shape {pairs.shape}")
    _check_lonlat(pairs[:, 0], pairs[:, 1], "the points")
    return PointTable(pairs[:, 0], pairs[:, 1], LONLAT_CRS, pd.DataFrame({"lon": pairs[:, 0], "lat": pairs[:, 1]}))


def _check_lonlat(lon: np.ndarray, lat: np.ndarray, where: str) -> None:
    if np.any(np.abs(lat[np.isfinite(lat)]) > 90) or np.any(np.abs(lon[np.isfinite(lon)]) > 360):
        raise InputDataError(f"{where} are not longitude/latitude degrees (|lat| > 90 or |lon| > 360): pass "
                             "(lon, lat) pairs, or a vector file or GeoDataFrame that carries its CRS")


def _read_points_file(path: Path, layer: str | int | None) -> PointTable:
    import pyogrio
    import shapely

    if not path.is_file():
        raise InputDataError(f"points file {path} does not exist")
    if path.suffix.lower() == ".csv":
        return _read_points_csv(path)
    try:
        meta, _, geometry, fields = pyogrio.raw.read(path, layer=layer)
    except Exception as exc:  # pyogrio raises DataSourceError, DataLayerError and friends
        raise InputDataError(f"{path} is not a vector file pyogrio can read ({exc}); pass a GeoJSON, GeoPackage "
                             "or shapefile of points, or a CSV with lon and lat columns") from exc
    if geometry is None or not len(geometry):
        raise InputDataError(f"points file {path} holds no points (no feature with a geometry)")
    if meta.get("crs") is None:
        raise InputDataError(f"points file {path} has no CRS (CRS unknown); save it with one, e.g. EPSG:4326")
    attributes = pd.DataFrame({str(name): values for name, values in zip(meta["fields"], fields, strict=True)})
    return _from_geometries(shapely.from_wkb(geometry), str(meta["crs"]), attributes, f"points file {path}")


def _read_points_csv(path: Path) -> PointTable:
    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError) as exc:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise InputDataError(f"points file {path} is not a readable CSV ({exc})") from exc
    by_name = {str(c).lower(): c for c in frame.columns}
    lon = next((by_name[k] for k in ("lon", "lng", "longitude") if k in by_name), None)
    lat = next((by_name[k] for k in ("lat", "latitude") if k in by_name), None)
    if lon is None or lat is None:
        raise InputDataError(f"points file {path} needs lon and lat columns (degrees, EPSG:4326); it has: "
                             f"{', '.join(map(str, frame.columns)) or 'none'}")
    if frame.empty:
        raise InputDataError(f"points file {path} holds no points (no row)")
    x, y = frame[lon].to_numpy(np.float64), frame[lat].to_numpy(np.float64)
    _check_lonlat(x, y, f"the lon/lat columns of {path}")
    return PointTable(x, y, LONLAT_CRS, frame)


def _from_geodataframe(frame: Any) -> PointTable:
    import pyproj

    if frame.crs is None:
        raise InputDataError("the GeoDataFrame has no CRS (CRS unknown); set one with .set_crs(...)")
    name = getattr(frame.geometry, "name", None) or "geometry"
    attributes = pd.DataFrame({str(c): np.asarray(frame[c]) for c in frame.columns if c != name})
    geometries = np.asarray(list(frame.geometry), dtype=object)
    return _from_geometries(geometries, pyproj.CRS.from_user_input(frame.crs).to_wkt(), attributes, "the GeoDataFrame")


def _from_geometries(geometries: np.ndarray, crs: str, attributes: pd.DataFrame, where: str) -> PointTable:
    """Point coordinates of shapely geometries (None and empty: NaN); other geometry types are refused."""
    import shapely

    present = ~shapely.is_missing(geometries) & ~shapely.is_empty(geometries)
    other = present & (shapely.get_type_id(geometries) != shapely.GeometryType.POINT)
    if other.any():
        kind = shapely.get_type_id(geometries[other][0])
        raise InputDataError(f"{where} holds {shapely.GeometryType(kind).name.lower()} geometries; only points can "
                             "be sampled: convert them to points first (e.g. polygon centroids)")
    if not present.any():
        raise InputDataError(f"{where} holds no points (every geometry is empty)")
    x = np.where(present, shapely.get_x(geometries), np.nan).astype(np.float64)
    y = np.where(present, shapely.get_y(geometries), np.nan).astype(np.float64)
    return PointTable(x, y, crs, attributes.reset_index(drop=True))


def to_map_crs(table: PointTable, embedding: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the points in the embedding's CRS (inf or NaN where they cannot be projected).

    Raises:
        InputDataError: the embedding has no CRS, or the points' CRS is unknown to pyproj.
    """
    import pyproj

    map_crs = embedding.rio.crs
    if map_crs is None:
        raise InputDataError("the embedding has no CRS; open it with open_embedding()")
    try:
        source = pyproj.CRS.from_user_input(table.crs)
        target = pyproj.CRS.from_user_input(map_crs.to_wkt())
    except pyproj.exceptions.CRSError as exc:
        raise InputDataError(f"the points' CRS is unknown to pyproj ({exc}); save them with an EPSG code") from exc
    if source == target:
        return table.x, table.y
    x, y = pyproj.Transformer.from_crs(source, target, always_xy=True).transform(table.x, table.y)
    return np.asarray(x, np.float64), np.asarray(y, np.float64)


def pixel_index(embedding: xr.DataArray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, inside): the pixel holding each map-CRS point; ``inside`` False off the map."""
    col, row = ~embedding.rio.transform() @ (x, y)
    finite = np.isfinite(col) & np.isfinite(row)
    rows = np.floor(np.where(finite, row, -1)).astype(np.int64)
    cols = np.floor(np.where(finite, col, -1)).astype(np.int64)
    inside = finite & (rows >= 0) & (rows < embedding.sizes["y"]) & (cols >= 0) & (cols < embedding.sizes["x"])
    return rows, cols, inside


def _read_pixels(embedding: xr.DataArray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """((n, C) float32 vectors, (n,) scales of int8 codes or None); NaN at nodata. Reads only the chunks needed."""
    picked = embedding.isel(y=xr.DataArray(rows, dims="point"), x=xr.DataArray(cols, dims="point"))
    picked = picked.transpose("point", "band")
    scale_data = picked.coords[SCALES_COORD].data if SCALES_COORD in picked.coords else None
    values, scales = da.compute(picked.data, scale_data)  # one pass over the chunks both need
    out = np.asarray(values).astype(np.float32)
    nodata = embedding.rio.nodata
    if nodata is not None and np.isfinite(nodata):
        out[np.asarray(values) == nodata] = np.nan
    return out, None if scales is None else np.asarray(scales, np.float32)


def sample_points(embedding: str | os.PathLike[str] | xr.DataArray, points: Any, *, dequantise: bool = True,
                  layer: str | int | None = None) -> pd.DataFrame:
    """The embedding vectors at points, one row per point in input order.

    Args:
        embedding: an output path (opened in its own unit of reading, see :func:`open_embedding`), or
            a DataArray it returned (read in that array's chunks).
        points: lon/lat pairs, an (N, 2) lon/lat array, a vector file or a GeoDataFrame in any CRS
            (see :func:`read_points`); reprojected to the map's CRS.
        dequantise: int8 outputs: sample ``code x scale`` (default), or the codes and a ``scale`` column.
        layer: the layer of a multi-layer vector file.

    Returns:
        The input's attributes (lon/lat pairs: ``lon``, ``lat``), then ``x``, ``y`` (map CRS),
        ``row``, ``col`` (nullable integers, missing off the map), and one float32 column per band
        (``A00``…): NaN for points off the map or on nodata. An attribute named like one of these
        columns is kept as ``input_<name>``.

    Raises:
        InputDataError: see :func:`open_embedding` and :func:`read_points`.
    """
    array = embedding if isinstance(embedding, xr.DataArray) else \
        open_embedding(embedding, dequantise=dequantise, chunks=None)
    table = read_points(points, layer)
    x, y = to_map_crs(table, array)
    rows, cols, inside = pixel_index(array, x, y)
    bands = [str(b) for b in array["band"].values]
    values = np.full((len(x), len(bands)), np.nan, np.float32)
    scales = np.full(len(x), np.nan, np.float32) if SCALES_COORD in array.coords else None
    if inside.any():
        values[inside], picked_scales = _read_pixels(array, rows[inside], cols[inside])
        if scales is not None and picked_scales is not None:
            scales[inside] = picked_scales
    log.info("sampled %d of %d point(s) on the map; %d off the map, %d on nodata", int(inside.sum()), len(x),
             int((~inside).sum()), int((inside & np.isnan(values).all(axis=1)).sum()))
    columns: dict[str, Any] = {
        "x": x, "y": y,
        "row": pd.arrays.IntegerArray(np.where(inside, rows, 0), ~inside),
        "col": pd.arrays.IntegerArray(np.where(inside, cols, 0), ~inside)}
    if scales is not None:
        columns["scale"] = scales
    attributes = table.attributes.rename(columns={c: f"input_{c}" for c in table.attributes.columns
                                                  if c in columns or c in bands})
    return pd.concat([attributes, pd.DataFrame(columns), pd.DataFrame(values, columns=bands)], axis=1)
