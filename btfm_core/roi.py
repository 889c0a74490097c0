"""Open and validate the user's ROI raster (10 m, projected, one band, non-zero = inside).

Pixels equal to the band's nodata value, and NaN pixels, are outside like zeros.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.errors import CRSError, RasterioIOError
from rasterio.windows import Window

from btfm_core.errors import InvalidROIError
from btfm_core.grid import Grid

__all__ = ["Roi", "inside_mask", "open_roi"]

log = logging.getLogger(__name__)

ROI_RESOLUTION_M = 10.0
_RES_TOLERANCE = 1e-6


def inside_mask(data: np.ndarray, nodata: float | None) -> npt.NDArray[np.bool_]:
    """Boolean inside mask of ROI values: non-zero, not NaN and not the ``nodata`` value."""
    inside: npt.NDArray[np.bool_] = data != 0
    if np.issubdtype(data.dtype, np.floating):
        inside &= ~np.isnan(data)
    if nodata is not None and not math.isnan(nodata):
        inside &= data != nodata
    return inside


@dataclass(frozen=True)
class Roi:
    """A validated ROI raster on disk.

    Attributes:
        path: the GeoTIFF file.
        grid: its grid (10 m, projected CRS).
        inside_pixels: number of pixels inside (non-zero, not nodata, not NaN).
        nodata: the band's nodata value (None: none set); such pixels are outside.
    """

    path: Path
    grid: Grid
    inside_pixels: int
    nodata: float | None = None

    def inside(self, data: np.ndarray) -> np.ndarray:
        """Boolean inside mask of values read from this ROI's band (see :func:`inside_mask`)."""
        return inside_mask(data, self.nodata)

    def read_mask(self, window: Grid | None = None) -> np.ndarray:
        """Read the ROI as a (H, W) uint8 0/1 mask, for the whole grid or a sub-grid of it."""
        with rasterio.open(self.path) as src:
            if window is None:
                data = src.read(1)
            else:
                col, row = ~self.grid.transform @ (window.transform.c, window.transform.f)
                win = Window(round(col), round(row), window.width, window.height)
                data = src.read(1, window=win)
        return self.inside(data).astype(np.uint8)


def _check_crs(src: rasterio.DatasetReader, path: Path) -> None:
    """Refuse a missing, geographic or non-metric CRS."""
    if src.crs is None:
        raise InvalidROIError(f"ROI file {path} has no CRS; expected a projected (UTM) CRS.")
    if src.crs.is_geographic:
        raise InvalidROIError(
            f"ROI file {path} is in a geographic CRS ({src.crs.to_string()}); expected a "
            "projected CRS in metres, e.g. the local UTM zone. Re-make it with "
            "convert_shp_to_tiff.py or reproject it with gdalwarp -t_srs EPSG:326xx -tr 10 10."
        )
    if not src.crs.is_projected:
        return  # engineering/local CRSs state no unit rasterio can read: checked by pixel size only
    try:
        unit, factor = src.crs.linear_units_factor
    except CRSError:
        return
    if abs(factor - 1.0) > 1e-9:
        raise InvalidROIError(
            f"ROI file {path} is in {src.crs.to_string()}, whose unit is the {unit} ({factor:g} m), "
            "not the metre; pixel sizes must be 10 m. Reproject it to a metric CRS such as the local "
            "UTM zone (gdalwarp -t_srs EPSG:326xx -tr 10 10 -r near) or re-make it with convert_shp_to_tiff.py."
        )


def _count_inside(src: rasterio.DatasetReader) -> tuple[int, int]:
    """(pixels inside, non-zero pixels outside because they are nodata or NaN), block by block."""
    nodata = src.nodata
    inside = masked = 0
    for _, window in src.block_windows(1):
        data = src.read(1, window=window)
        n_inside = int(np.count_nonzero(inside_mask(data, nodata)))
        inside += n_inside
        masked += int(np.count_nonzero(data)) - n_inside  # NaN != 0, so NaNs count as non-zero here
    return inside, masked


def open_roi(path: str | os.PathLike[str]) -> Roi:
    """Open and validate an ROI GeoTIFF.

    Raises:
        InvalidROIError: if the file is missing or unreadable, not a GeoTIFF, multi-band,
            rotated, in a geographic or non-metric CRS, not 10 m, or has no pixel inside.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidROIError(f"ROI file {path} does not exist. Give the path of a 0/1 GeoTIFF "
                              "(make one from a shapefile with convert_shp_to_tiff.py).")
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise InvalidROIError(f"ROI file {path} is not a raster GDAL can read ({exc}).") from exc
    with src:
        if src.driver != "GTiff":
            raise InvalidROIError(f"ROI file {path} is a {src.driver} raster; expected a GeoTIFF.")
        if src.count != 1:
            raise InvalidROIError(f"ROI file {path} has {src.count} bands; expected one band "
                                  "(non-zero = inside the region).")
        _check_crs(src, path)
        t = src.transform
        if t.b != 0 or t.d != 0:
            raise InvalidROIError(f"ROI file {path} has a rotated transform; expected north-up.")
        xres, yres = abs(t.a), abs(t.e)
        if abs(xres - ROI_RESOLUTION_M) > _RES_TOLERANCE or abs(yres - ROI_RESOLUTION_M) > _RES_TOLERANCE:
            raise InvalidROIError(
                f"ROI file {path} has {xres:g} x {yres:g} m pixels; expected 10 x 10 m. "
                "Resample it with gdalwarp -tr 10 10 -r near, or re-make it with "
                "convert_shp_to_tiff.py --resolution 10."
            )
        grid = Grid.from_dataset(src)
        nodata = None if src.nodata is None else float(src.nodata)
        inside, masked = _count_inside(src)
    if masked:
        log.info("ROI %s: %d pixel(s) treated as outside because they are nodata (%s) or NaN", path, masked,
                 "none set" if nodata is None else f"{nodata:g}")
    if inside == 0:
        why = f" or nodata ({masked} px)" if masked else ""
        raise InvalidROIError(f"ROI file {path} has no pixel inside the region (all zero{why}). "
                              "Check the shapefile or the burn value.")
    return Roi(path=path.resolve(), grid=grid, inside_pixels=inside, nodata=nodata)
