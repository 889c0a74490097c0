"""Cross-CRS reads are the plain interpolation at exact coordinates, whatever the window."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling

from btfm_core.grid import Grid
from btfm_preprocessing import reader
from btfm_preprocessing.reader import (
    EXACT_TRANSFORM_TOLERANCE,
    plain_kernel_options,
    read_assets_on_grid,
    read_on_grid,
)


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


def test_bands_of_one_grid_in_another_crs_are_warped_together_as_read_one_by_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    origin = (280_000.0, 5_602_000.0)
    at_10, at_20 = Affine(10, 0, *origin[:1], 0, -10, origin[1]), Affine(20, 0, *origin[:1], 0, -20, origin[1])
    paths = []
    for index, (transform, size) in enumerate([(at_10, 160), (at_10, 160), (at_20, 80), (at_20, 80)]):
        data = (rng.random((size, size)) * 3000 + 500).astype(np.uint16)
        data[:, : size // 3] = 0  # a swath edge: nodata in every band
        data[size // 2, size // 2] = 0 if index == 1 else data[size // 2, size // 2]  # one band at nodata alone
        paths.append(str(write_band(tmp_path / f"band{index}.tif", "EPSG:32632", transform, data)))
    paths.append(str(write_band(tmp_path / "31n.tif", grid_31n(0, 0, 1).crs, Affine(10, 0, 0, 0, -10, 0),
                                np.ones((4, 4), np.uint16))))
    x0, y0 = Transformer.from_crs(32632, 32631, always_xy=True).transform(origin[0] + 200, origin[1] - 200)
    grid = grid_31n(round(x0, -1), round(y0, -1), 120)
    with ThreadPoolExecutor(2) as pool, mock.patch("btfm_preprocessing.reader.WarpedVRT",
                                                    wraps=reader.WarpedVRT) as warps:
        together = read_assets_on_grid(paths, grid, Resampling.bilinear, "uint16", 0, pool)
    # one warp per source grid in 32N (10 m, 20 m), one for the 31N asset
    assert warps.call_count == 3
    alone = [read_on_grid(path, grid, Resampling.bilinear, "uint16", 0) for path in paths]
    assert (alone[0] == 0).sum() > 1000  # the swath edge lies in the grid
    for index in (0, 2, 3, 4):
        np.testing.assert_array_equal(together[index], alone[index])
    # GDAL's several-band warp counts a source pixel as nodata where every band is: the lone nodata
    # pixel of band 1 is a value there, so only the 4 target pixels whose 2 x 2 kernel holds it differ
    rows, cols = np.nonzero(together[1] != alone[1])
    assert len(rows) == 4 and np.ptp(rows) <= 2 and np.ptp(cols) <= 2
