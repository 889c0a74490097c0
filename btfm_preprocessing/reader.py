"""Read one asset's pixels on a target grid: only the needed window, reprojected if necessary.

This is the only module of the preprocessing half that opens rasters. Remote COGs are read
through GDAL's range requests (``/vsicurl/``): a warped VRT onto the tile grid fetches only
the blocks that overlap the tile, never the whole scene. Reads run inside :func:`gdal_env`,
which scopes the GDAL settings (nothing is set process-wide).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import rasterio
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
    # Neighbouring tiles share COG blocks (Earth Search's are 1024 px): keep recently fetched
    # ranges in a bounded in-memory cache so a block is not downloaded once per tile.
    "CPL_VSIL_CURL_CACHE_SIZE": str(256 * 1024 * 1024),
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
