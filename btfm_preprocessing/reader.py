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
    """Scoped GDAL configuration for COG reads (:data:`GDAL_COG_OPTIONS`)."""
    with rasterio.Env(**GDAL_COG_OPTIONS):
        yield


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
        with rasterio.open(href) as src:
            src_nodata = src.nodata
            with WarpedVRT(src, crs=grid.rasterio_crs, transform=grid.transform, width=grid.width,
                           height=grid.height, resampling=resampling, nodata=nodata,
                           src_nodata=src_nodata, dtype=dtype) as vrt:
                return vrt.read(1)
    except RasterioIOError as exc:
        raise SourceError(f"cannot read {href}: {exc}") from exc
