"""Open and validate the user's ROI raster (10 m, projected, one band, non-zero = inside)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from btfm_core.errors import InvalidROIError
from btfm_core.grid import Grid

ROI_RESOLUTION_M = 10.0
_RES_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Roi:
    """A validated ROI raster on disk.

    Attributes:
        path: the GeoTIFF file.
        grid: its grid (10 m, projected CRS).
        inside_pixels: number of non-zero pixels.
    """

    path: Path
    grid: Grid
    inside_pixels: int

    def read_mask(self, window: Grid | None = None) -> np.ndarray:
        """Read the ROI as a (H, W) uint8 0/1 mask, for the whole grid or a sub-grid of it."""
        with rasterio.open(self.path) as src:
            if window is None:
                data = src.read(1)
            else:
                col, row = ~self.grid.transform @ (window.transform.c, window.transform.f)
                win = Window(round(col), round(row), window.width, window.height)
                data = src.read(1, window=win)
        return (data != 0).astype(np.uint8)


def open_roi(path: str | os.PathLike[str]) -> Roi:
    """Open and validate an ROI GeoTIFF.

    Raises:
        InvalidROIError: if the file is missing or unreadable, not a GeoTIFF, multi-band,
            rotated, in a geographic CRS, not 10 m, or has no pixel inside.
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
        if src.crs is None:
            raise InvalidROIError(f"ROI file {path} has no CRS; expected a projected (UTM) CRS.")
        if src.crs.is_geographic:
            raise InvalidROIError(
                f"ROI file {path} is in a geographic CRS ({src.crs.to_string()}); expected a "
                "projected CRS in metres, e.g. the local UTM zone. Re-make it with "
                "convert_shp_to_tiff.py or reproject it with gdalwarp -t_srs EPSG:326xx -tr 10 10."
            )
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
        inside = 0
        for _, window in src.block_windows(1):
            inside += int(np.count_nonzero(src.read(1, window=window)))
    if inside == 0:
        raise InvalidROIError(f"ROI file {path} has no pixel inside the region (all zero). "
                              "Check the shapefile or the burn value.")
    return Roi(path=path.resolve(), grid=grid, inside_pixels=inside)
