"""Read assets' pixels on a target grid: only the needed window, reprojected if necessary.

This is the only module of the preprocessing half that opens rasters. Remote COGs are read
through GDAL's range requests (``/vsicurl/``): a warped VRT onto the tile grid fetches only
the blocks that overlap the tile, never the whole scene. Reads run inside :func:`gdal_env`,
which scopes the GDAL settings (nothing is set process-wide).

:func:`read_on_grid` reads one asset; :func:`read_assets_on_grid` reads a granule's bands, and
warps the bands that share a source grid in another CRS together (one exact coordinate
transform for all of them, :func:`plain_kernel_options`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT

from btfm_core.errors import SourceError
from btfm_core.grid import Grid

log = logging.getLogger(__name__)

#: GDAL settings for reading cloud-optimised GeoTIFFs over HTTP.
GDAL_COG_OPTIONS: dict[str, object] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "VSI_CACHE": "TRUE",
    # Recently fetched ranges (headers, blocks that two reads share) in a bounded in-memory cache;
    # the tiles of a read group share a day's blocks through one read on their union, so 128 MB
    # serve as well as 256 (measured: the same bytes in the rehearsal, 130 MB less RSS).
    "CPL_VSIL_CURL_CACHE_SIZE": str(128 * 1024 * 1024),
    # Bytes fetched, for btfm_preprocessing.traffic.NetworkCounter. GDAL decides once per process,
    # at its first network access, whether to collect them: that access is inside this scope.
    "CPL_VSIL_NETWORK_STATS_ENABLED": "YES",
}


@contextmanager
def gdal_env() -> Iterator[None]:
    """Scoped GDAL configuration for COG reads (:data:`GDAL_COG_OPTIONS`).

    Every function that reads enters it in its own thread: outside the main thread rasterio's
    ``Env`` sets the options for the calling thread only, so a scope entered by a Dask worker's
    task thread is not seen by the read threads it starts (measured: no VSI cache, no merged
    ranges and no network statistics on a cluster worker). Nesting is cheap.
    """
    with rasterio.Env(**GDAL_COG_OPTIONS):
        yield


#: Error (target pixels) allowed to GDAL's approximate transformer between different CRSs: none that
#: can change a value (rasterio refuses 0, GDAL's "exact").
EXACT_TRANSFORM_TOLERANCE = 1e-9


def plain_kernel_options(src: rasterio.DatasetReader, grid: Grid) -> dict[str, object]:
    """WarpedVRT options that make a read the plain interpolation (2 x 2 for bilinear) at every pixel.

    Between two UTM zones a 10 m source lands on a 10 m target slightly rotated and scaled, and
    GDAL then (a) estimates a source/target scale below 1 from each warp chunk's extent and widens
    its kernel by it (a blur that depends on the chunking: up to 374 DN from the plain bilinear on
    the rehearsal's 32N granules), and (b) approximates the transform to 0.125 px per chunk. When the
    source pixel is not finer than the target (S2 10/20 m, S1 10 m onto our 10 m grid; no
    anti-aliasing is needed) the scale is fixed at 1, and between different CRSs the transform
    is computed exactly; a same-CRS read is unchanged. Measured on the rehearsal's cross-zone
    granules: equal, pixel for pixel, to a NumPy bilinear at pyproj's exact coordinates.
    """
    options: dict[str, object] = {}
    target = grid.rasterio_crs
    if src.crs is None or not (src.crs.is_projected and target.is_projected) or \
            src.crs.linear_units != target.linear_units:
        return options
    source_res, target_res = min(src.res), min(abs(v) for v in grid.resolution)
    if source_res >= 0.99 * target_res:
        options.update(XSCALE="1", YSCALE="1")
    if src.crs != target:
        options["tolerance"] = EXACT_TRANSFORM_TOLERANCE
    return options


def read_on_grid(href: str, grid: Grid, resampling: Resampling, dtype: str,
                 nodata: float) -> np.ndarray:
    """Read band 1 of ``href`` resampled onto ``grid``.

    Args:
        href: local path or URL of a (cloud-optimised) GeoTIFF.
        grid: target grid (tile window of the ROI grid).
        resampling: ``bilinear`` for reflectance/backscatter, ``nearest`` for classes.
        dtype: output dtype.
        nodata: value for target pixels the source does not cover or marks as nodata.

    Returns:
        (H, W) array of ``dtype``.

    Raises:
        SourceError: if the asset cannot be opened or read.
    """
    try:
        with gdal_env(), rasterio.open(href) as src, WarpedVRT(
                src, crs=grid.rasterio_crs, transform=grid.transform, width=grid.width, height=grid.height,
                resampling=resampling, nodata=nodata, src_nodata=src.nodata, dtype=dtype,
                **plain_kernel_options(src, grid)) as vrt:
            return np.asarray(vrt.read(1))
    except RasterioIOError as exc:
        raise SourceError(f"cannot read {href}: {exc}") from exc


#: GDAL's name of each dtype a band may be stacked with others in (:func:`stacked_vrt`).
GDAL_TYPE_NAMES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
                   "int32": "Int32", "float32": "Float32", "float64": "Float64"}


@dataclass(frozen=True)
class SourceGrid:
    """What an asset's header says about its pixels: where they lie and how they are stored.

    Attributes:
        path: the path GDAL opened (``/vsicurl/...`` for a URL).
        crs: the asset's CRS (None if it has none).
        transform: its GDAL geotransform.
        width, height: its size in pixels.
        dtype: its band 1's dtype.
        nodata: its band 1's nodata value (None: none).
    """

    path: str
    crs: CRS | None
    transform: tuple[float, ...]
    width: int
    height: int
    dtype: str
    nodata: float | None

    @property
    def layout(self) -> tuple[object, ...]:
        """Everything but the path: assets with the same layout can be stacked as bands of one raster."""
        return (self.crs.to_wkt() if self.crs else "", self.transform, self.width, self.height, self.dtype,
                "nan" if self.nodata is not None and np.isnan(self.nodata) else self.nodata)


def source_grid(href: str) -> SourceGrid:
    """The :class:`SourceGrid` of ``href`` (one header read).

    Raises:
        SourceError: if the asset cannot be opened.
    """
    try:
        with gdal_env(), rasterio.open(href) as src:
            return SourceGrid(src.name, src.crs, tuple(src.transform.to_gdal()),
                              src.width, src.height, src.dtypes[0], src.nodata)
    except RasterioIOError as exc:
        raise SourceError(f"cannot read {href}: {exc}") from exc


def stacked_vrt(sources: Sequence[SourceGrid]) -> str:
    """A VRT (XML) with band ``i`` = band 1 of ``sources[i]``; they share one :attr:`SourceGrid.layout`."""
    first = sources[0]
    nodata = "" if first.nodata is None else f"<NoDataValue>{first.nodata!r}</NoDataValue>"
    size = f'xOff="0" yOff="0" xSize="{first.width}" ySize="{first.height}"'
    bands = "".join(
        f'<VRTRasterBand dataType="{GDAL_TYPE_NAMES[first.dtype]}" band="{index}">{nodata}<SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{escape(source.path)}</SourceFilename><SourceBand>1</SourceBand>'
        f"<SrcRect {size}/><DstRect {size}/></SimpleSource></VRTRasterBand>"
        for index, source in enumerate(sources, start=1))
    srs = escape(first.crs.to_wkt() if first.crs else "")
    return (f'<VRTDataset rasterXSize="{first.width}" rasterYSize="{first.height}"><SRS>{srs}</SRS>'
            f"<GeoTransform>{', '.join(repr(v) for v in first.transform)}</GeoTransform>{bands}</VRTDataset>")


def _read_stacked(sources: Sequence[SourceGrid], grid: Grid, resampling: Resampling, dtype: str,
                  nodata: float) -> list[np.ndarray]:
    """Band 1 of each of ``sources`` (one layout) warped onto ``grid`` in one warp operation."""
    try:
        with gdal_env(), rasterio.open(stacked_vrt(sources)) as src, WarpedVRT(
                src, crs=grid.rasterio_crs, transform=grid.transform, width=grid.width, height=grid.height,
                resampling=resampling, nodata=nodata, src_nodata=src.nodata, dtype=dtype,
                **plain_kernel_options(src, grid)) as vrt:
            return list(np.asarray(vrt.read()))
    except RasterioIOError as exc:
        raise SourceError(f"cannot read {', '.join(s.path for s in sources)}: {exc}") from exc


def read_assets_on_grid(hrefs: Sequence[str], grid: Grid, resampling: Resampling, dtype: str, nodata: float,
                        pool: Executor) -> list[np.ndarray]:
    """Band 1 of each of ``hrefs`` on ``grid``, as :func:`read_on_grid` reads it; the reads run on ``pool``.

    Assets in another CRS than ``grid`` that share a source grid (a granule's 10 m bands, its 20 m
    bands) are warped together, as the bands of one VRT: GDAL computes the exact coordinate
    transform once for all of them instead of once per band (the transform is most of the CPU a
    cross-zone read takes; measured 3.5x less for a granule's ten bands). The values are those of
    one read per band, with one nuance of GDAL's warper for several bands: a source pixel counts
    as nodata when all the bands are nodata there (``UNIFIED_SRC_NODATA``'s default), not when one
    of them is; an S2 L2A or S1 pixel without data has every band at nodata, so the two differ only
    at a valid pixel where a band is exactly the nodata value (an L2A reflectance clipped at 0
    before baseline 04.00), which the grouped warp interpolates as a value. Same-CRS assets are
    read one by one (no transform to share).

    Returns:
        One (H, W) array of ``dtype`` per href, in their order.

    Raises:
        SourceError: if an asset cannot be opened or read.
    """
    sources = list(pool.map(source_grid, hrefs))
    groups: dict[tuple[object, ...], list[int]] = {}
    for index, source in enumerate(sources):
        shared = source.crs is not None and source.crs != grid.rasterio_crs and source.dtype in GDAL_TYPE_NAMES
        groups.setdefault(source.layout if shared else ("alone", index), []).append(index)

    def read(indices: list[int]) -> list[np.ndarray]:
        if len(indices) == 1:
            return [read_on_grid(sources[indices[0]].path, grid, resampling, dtype, nodata)]
        return _read_stacked([sources[i] for i in indices], grid, resampling, dtype, nodata)

    out: list[np.ndarray | None] = [None] * len(hrefs)
    for indices, arrays in zip(groups.values(), pool.map(read, list(groups.values())), strict=True):
        for index, array in zip(indices, arrays, strict=True):
            out[index] = array
    return [array for array in out if array is not None]
