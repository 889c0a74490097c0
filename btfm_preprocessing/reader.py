"""Read one asset's pixels on a target grid: only the needed window, reprojected if necessary.

This is the only module of the preprocessing half that opens rasters. Remote COGs are read
through GDAL's range requests (``/vsicurl/``): a warped VRT onto the tile grid fetches only
the blocks that overlap the tile, never the whole scene.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
}


@functools.cache
def _gdal_library() -> ctypes.CDLL | None:
    """The GDAL shared library rasterio uses (already loaded in this process), or None.

    Must be called after ``rasterio`` is imported (this module imports it).
    """
    candidates = []
    maps = Path("/proc/self/maps")
    if maps.is_file():
        loaded = {line.split()[-1] for line in maps.read_text().splitlines()
                  if "libgdal" in line.rsplit("/", 1)[-1]}
        # wheels bundle their own GDAL (pyogrio, fiona): the one rasterio loaded comes first
        candidates = sorted(loaded, key=lambda path: (0 if "rasterio" in path else
                                                      2 if "pyogrio" in path or "fiona" in path else 1, path))
    found = ctypes.util.find_library("gdal")
    for name in [*candidates, *([found] if found else [])]:
        try:
            lib = ctypes.CDLL(name)
            lib.VSINetworkStatsGetAsSerializedJSON.restype = ctypes.c_void_p
            lib.VSINetworkStatsGetAsSerializedJSON.argtypes = [ctypes.c_void_p]
            lib.VSIFree.argtypes = [ctypes.c_void_p]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def _enable_network_stats() -> None:
    """Turn GDAL's network statistics on for the whole process.

    GDAL decides once per process, at its first network-capable file access, whether to collect
    them; setting the option here (at import, before any read) makes that decision "yes" even when
    another library touched GDAL first. Scoped :func:`gdal_env` settings would come too late.
    """
    lib = _gdal_library()
    if lib is not None:
        lib.CPLSetConfigOption(b"CPL_VSIL_NETWORK_STATS_ENABLED", b"YES")


def network_bytes_read() -> int | None:
    """Bytes GDAL has fetched over HTTP in this process (range reads of COGs), or None if unknown.

    Reads GDAL's network statistics (``VSINetworkStatsGetAsSerializedJSON``, GDAL >= 3.2),
    which are collected while :data:`GDAL_COG_OPTIONS` is in effect.
    """
    lib = _gdal_library()
    if lib is None:
        return None
    pointer = lib.VSINetworkStatsGetAsSerializedJSON(None)
    if not pointer:
        return 0
    try:
        stats = json.loads(ctypes.string_at(pointer).decode())
    finally:
        lib.VSIFree(pointer)
    return int(sum(method.get("downloaded_bytes", 0) for method in stats.get("methods", {}).values()))


_enable_network_stats()


@contextmanager
def gdal_env() -> Iterator[None]:
    """Scoped GDAL configuration for COG reads."""
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
