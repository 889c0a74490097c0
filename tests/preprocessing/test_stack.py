"""Windowed reads onto the ROI grid and per-day mosaicking, on small synthetic COGs."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.enums import Resampling

from btfm_core.grid import Grid
from btfm_core.tiles import S2_BANDS
from btfm_preprocessing.reader import read_on_grid
from btfm_preprocessing.sources import AcquisitionDay, Scene
from btfm_preprocessing.sources.cog import read_s1_day, read_s2_day
from btfm_preprocessing.stack import group_by_day, split_by_orbit
from tests.conftest import write_raster

ORIGIN = Affine(10, 0, 664000, 0, -10, 5612000)
GRID = Grid("EPSG:32631", ORIGIN, 20, 30)


@pytest.fixture
def pool() -> ThreadPoolExecutor:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def test_same_grid_read_is_an_exact_window(tmp_path: Path) -> None:
    data = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) + 1
    path = write_raster(tmp_path / "b.tif", data, transform=ORIGIN, nodata=0)
    window = GRID.window(5, 7, 25, 17)
    out = read_on_grid(str(path), window, Resampling.bilinear, "uint16", 0)
    np.testing.assert_array_equal(out, data[7:17, 5:25])


def test_20m_band_is_resampled_to_10m(tmp_path: Path) -> None:
    coarse = np.full((10, 15), 1000, np.uint16)
    coarse[:, 8:] = 3000
    path = write_raster(tmp_path / "b.tif", coarse, transform=Affine(20, 0, 664000, 0, -20, 5612000), nodata=0)
    out = read_on_grid(str(path), GRID, Resampling.bilinear, "uint16", 0)
    assert out.shape == (20, 30)
    assert out[:, :14].max() == 1000 and out[:, 18:].min() == 3000
    assert 1000 < out[5, 15] < 3000  # interpolated across the edge


def test_area_outside_the_scene_is_nodata(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "b.tif", np.full((10, 10), 500, np.uint16), transform=ORIGIN, nodata=0)
    out = read_on_grid(str(path), GRID, Resampling.nearest, "uint16", 0)
    assert (out[:10, :10] == 500).all() and (out[10:, :] == 0).all() and (out[:, 10:] == 0).all()


def test_cross_utm_zone_read_reprojects(tmp_path: Path) -> None:
    # a scene in UTM 31N read onto a grid of the same place in UTM 32N (5.95 E, near the zone edge)
    from pyproj import Transformer

    x31, y31 = Transformer.from_crs(4326, 32631, always_xy=True).transform(5.95, 50.0)
    x32, y32 = Transformer.from_crs(4326, 32632, always_xy=True).transform(5.95, 50.0)
    data = np.tile(np.arange(1, 101, dtype=np.uint16), (100, 1))  # value rises eastwards
    source = Affine(10, 0, round(x31) - 500, 0, -10, round(y31) + 500)
    path = write_raster(tmp_path / "b.tif", data, transform=source, nodata=0)
    target = Grid("EPSG:32632", Affine(10, 0, round(x32) - 200, 0, -10, round(y32) + 200), 40, 40)
    out = read_on_grid(str(path), target, Resampling.bilinear, "uint16", 0)
    assert (out > 0).all()
    # eastward still increases on the rotated grid, around the scene's centre value
    assert out[20, 35] > out[20, 5] and 30 < out[20, 20] < 70


def _s2_scene(tmp_path: Path, name: str, value: int, scl_value: int, day: dt.date) -> Scene:
    assets = {}
    for band in S2_BANDS:
        assets[band] = str(write_raster(tmp_path / f"{name}_{band}.tif", np.full((20, 30), value, np.uint16),
                                        transform=ORIGIN, nodata=0))
    scl = np.full((20, 30), scl_value, np.uint8)
    scl[:, :10] = 4  # left third is always clear
    assets["SCL"] = str(write_raster(tmp_path / f"{name}_scl.tif", scl, transform=ORIGIN, nodata=0))
    return Scene(id=name, collection="sentinel-2-l2a", assets=assets,
                 acquired=dt.datetime(day.year, day.month, day.day, 10, tzinfo=dt.timezone.utc))


def test_same_day_granules_mosaic_valid_first(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    day = dt.date(2021, 6, 1)
    cloudy = _s2_scene(tmp_path, "a", 1100, 9, day)   # cloud (9) outside the left third
    clear = _s2_scene(tmp_path, "b", 2200, 4, day)
    result = read_s2_day(AcquisitionDay(day, (cloudy, clear)), GRID, pool)
    assert result is not None
    bands, mask = result.bands, result.mask
    assert mask.all() and result.covered.all()
    assert (bands[:, :10] == 1100).all()          # first granule, valid there
    assert (bands[:, 10:] == 2200).all()          # second granule fills the cloudy part


def test_offset_of_new_baseline_removed(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    day = dt.date(2022, 6, 1)
    scene = _s2_scene(tmp_path, "c", 1500, 4, day)
    result = read_s2_day(AcquisitionDay(day, (scene,)), GRID, pool)
    assert result is not None and (result.bands == 500).all()


def test_s1_day_encodes_db(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    vv = np.full((20, 30), 0.1, np.float32)
    vv[0, 0] = -32768
    assets = {"VV": str(write_raster(tmp_path / "vv.tif", vv, transform=ORIGIN, nodata=-32768)),
              "VH": str(write_raster(tmp_path / "vh.tif", np.full((20, 30), 0.01, np.float32),
                                     transform=ORIGIN, nodata=-32768))}
    scene = Scene("s1", "sentinel-1-rtc", dt.datetime(2021, 1, 2, tzinfo=dt.timezone.utc), assets,
                  orbit_state="descending")
    codes = read_s1_day(AcquisitionDay(scene.day, (scene,)), GRID, pool)
    assert codes is not None and codes.dtype == np.int16
    assert codes[5, 5].tolist() == [6000, 2000]     # -10 dB and -20 dB
    assert codes[0, 0, 0] == 0                      # nodata stays 0
    assert split_by_orbit([scene])["descending"] == [scene]


def test_days_sorted_by_day_of_year() -> None:
    def scene(day: dt.date, name: str) -> Scene:
        return Scene(name, "c", dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc), {})

    days = group_by_day([scene(dt.date(2020, 12, 1), "dec"), scene(dt.date(2021, 3, 1), "mar"),
                         scene(dt.date(2021, 3, 1), "mar2")])
    assert [d.doy for d in days] == [60, 336]
    assert [s.id for s in days[0].scenes] == ["mar", "mar2"]


def test_ordered_map_keeps_order_and_bounds_work_in_flight() -> None:
    import threading
    import time

    from btfm_preprocessing.stack import ordered_map

    lock, state = threading.Lock(), {"running": 0, "peak": 0}

    def slow_square(x: int) -> int:
        with lock:
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
        time.sleep(0.02 if x % 3 == 0 else 0.001)  # out-of-order finishes
        with lock:
            state["running"] -= 1
        return x * x

    with ThreadPoolExecutor(8) as executor:
        assert list(ordered_map(executor, slow_square, range(20), ahead=3)) == [x * x for x in range(20)]
    assert 1 < state["peak"] <= 3
    assert list(ordered_map(None, slow_square, range(5), ahead=3)) == [0, 1, 4, 9, 16]
