"""Cross-CRS reads are the plain interpolation at exact coordinates, whatever the window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling

from btfm_core.grid import Grid
from btfm_preprocessing.reader import EXACT_TRANSFORM_TOLERANCE, plain_kernel_options, read_on_grid


def write_band(path: Path, crs: str, transform: Affine, data: np.ndarray) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=crs, transform=transform, nodata=0) as dst:
        dst.write(data, 1)
    return path


def grid_31n(x0: float, y0: float, size: int) -> Grid:
    crs = rasterio.crs.CRS.from_epsg(32631).to_wkt()
    return Grid(crs, Affine(10, 0, x0, 0, -10, y0), size, size)


def test_options_by_source_and_target(tmp_path: Path) -> None:
    target = grid_31n(700_000, 5_600_000, 8)
    data = np.ones((8, 8), np.uint16)
    cases = {  # (crs, pixel size) of the source -> options
        ("EPSG:32631", 10): {"XSCALE": "1", "YSCALE": "1"},
        ("EPSG:32631", 20): {"XSCALE": "1", "YSCALE": "1"},
        ("EPSG:32632", 10): {"XSCALE": "1", "YSCALE": "1", "tolerance": EXACT_TRANSFORM_TOLERANCE},
        ("EPSG:32631", 5): {},  # finer than the target: GDAL's anti-aliasing stays
        ("EPSG:4326", 0.0001): {},  # degrees: not comparable with metres
    }
    for (crs, pixel), expected in cases.items():
        path = write_band(tmp_path / f"{crs[5:]}_{pixel}.tif", crs, Affine(pixel, 0, 0, 0, -pixel, 0), data)
        with rasterio.open(path) as src:
            assert plain_kernel_options(src, target) == expected, (crs, pixel)


def test_a_cross_zone_read_is_the_plain_bilinear_in_any_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    source = (rng.random((160, 160)) * 3000 + 500).astype(np.uint16)
    origin_32 = (280_000.0, 5_602_000.0)
    path = write_band(tmp_path / "32n.tif", "EPSG:32632", Affine(10, 0, *origin_32[:1], 0, -10, origin_32[1]),
                      source)
    x0, y0 = Transformer.from_crs(32632, 32631, always_xy=True).transform(origin_32[0] + 300, origin_32[1] - 300)
    whole = grid_31n(round(x0, -1), round(y0, -1), 96)
    read = read_on_grid(str(path), whole, Resampling.bilinear, "uint16", 0)
    # the exact bilinear at every target pixel centre
    cols, rows = np.meshgrid(np.arange(96) + 0.5, np.arange(96) + 0.5)
    x, y = Transformer.from_crs(32631, 32632, always_xy=True).transform(*(whole.transform @ (cols, rows)))
    col, row = ~Affine(10, 0, origin_32[0], 0, -10, origin_32[1]) @ (x, y)
    col, row = np.asarray(col) - 0.5, np.asarray(row) - 0.5
    c0, r0 = np.floor(col).astype(int), np.floor(row).astype(int)
    fx, fy = col - c0, row - r0
    values = source.astype(np.float64)
    plain = (values[r0, c0] * (1 - fx) * (1 - fy) + values[r0, c0 + 1] * fx * (1 - fy)
             + values[r0 + 1, c0] * (1 - fx) * fy + values[r0 + 1, c0 + 1] * fx * fy)
    np.testing.assert_array_equal(read, np.floor(plain + 0.5).astype(np.uint16))
    # a window of it reads the same values: the result does not depend on how the map is cut
    part = read_on_grid(str(path), whole.window(17, 29, 61, 80), Resampling.bilinear, "uint16", 0)
    np.testing.assert_array_equal(part, read[29:80, 17:61])
