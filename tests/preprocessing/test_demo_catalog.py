"""The embedded sample catalog: layout, values against the source cube, and STAC search on it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pystac
import pytest
import rasterio

from btfm_core.errors import SourceError
from btfm_core.roi import open_roi
from btfm_preprocessing.period import Period
from btfm_preprocessing.sources import local_source
from btfm_preprocessing.stac import search_items
from tests.conftest import DEMO_DIR, SHARED_DATA

CATALOG = DEMO_DIR / "catalog.json"
CUBE = SHARED_DATA / "demo_cube_belgium" / "worldcereal_preprocessed_inputs.nc"
YEAR = Period(dt.date(2020, 11, 1), dt.date(2021, 10, 31))
BBOX = (4.0, 50.0, 6.0, 51.5)


def items(collection: str) -> list[pystac.Item]:
    return search_items(str(CATALOG), collection, BBOX, YEAR)


def test_catalog_layout() -> None:
    s2, s1 = items("sentinel-2-l2a"), items("sentinel-1-rtc")
    assert len(s2) == 12 and len(s1) == 12
    assert set(s2[0].assets) == {"red", "blue", "green", "nir", "nir08", "rededge1", "rededge2", "rededge3",
                                 "swir16", "swir22", "scl"}
    with rasterio.open(s2[0].assets["red"].get_absolute_href()) as red, \
            rasterio.open(s2[0].assets["swir16"].get_absolute_href()) as swir:
        assert red.res == (10.0, 10.0) and swir.res == (20.0, 20.0)
    assert {i.properties["sat:orbit_state"] for i in s1} == {"ascending"}


def test_search_filters_dates_place_and_cloud() -> None:
    winter = Period(dt.date(2020, 12, 1), dt.date(2021, 1, 31))
    assert len(search_items(str(CATALOG), "sentinel-2-l2a", BBOX, winter)) == 2
    assert search_items(str(CATALOG), "sentinel-2-l2a", BBOX, winter, {"eo:cloud_cover": {"lte": 90}}) == []
    assert search_items(str(CATALOG), "sentinel-2-l2a", (10.0, 40.0, 11.0, 41.0), YEAR) == []
    with pytest.raises(SourceError, match="does not exist"):
        search_items(str(DEMO_DIR / "missing.json"), "sentinel-2-l2a", BBOX, YEAR)


def test_local_source_parses_scenes() -> None:
    roi = open_roi(DEMO_DIR / "roi.tiff")
    source = local_source(f"file://{CATALOG}")
    scenes = source.search_s2(roi.grid, YEAR, max_cloud=90)
    assert len(scenes) == 10  # Dec and Jan are 100 % no data
    assert set(scenes[0].assets) == {"B04", "B02", "B03", "B08", "B8A", "B05", "B06", "B07", "B11", "B12", "SCL"}
    s1 = source.search_s1(roi.grid, YEAR)
    assert {s.orbit_state for s in s1} == {"ascending"}
    assert s1[0].properties["btfm:backscatter"] == "sigma0"


def test_roi_of_sample() -> None:
    roi = open_roi(DEMO_DIR / "roi.tiff")
    mask = roi.read_mask()
    assert roi.grid.shape == (100, 100) and 0 < mask.mean() < 1


@pytest.mark.skipif(not CUBE.is_file(), reason="source cube (../shared/data) not available")
def test_values_round_trip_to_the_cube() -> None:
    netcdf4 = pytest.importorskip("netCDF4")
    cube = netcdf4.Dataset(CUBE)
    cube.set_auto_mask(False)
    b04, vv = np.asarray(cube["S2-L2A-B04"][:]), np.asarray(cube["S1-SIGMA0-VV"][:])
    s2 = {i.id: i for i in items("sentinel-2-l2a")}
    s1 = {i.id: i for i in items("sentinel-1-rtc")}
    with rasterio.open(s2["S2_DEMO_BE_20210601"].assets["red"].get_absolute_href()) as src:
        np.testing.assert_array_equal(src.read(1), np.maximum(b04[7], 1))
    with rasterio.open(s2["S2_DEMO_BE_20201201"].assets["scl"].get_absolute_href()) as src:
        assert (src.read(1) == 0).all()  # fully no-data month -> SCL no data
    with rasterio.open(s1["S1_DEMO_BE_20210601"].assets["vv"].get_absolute_href()) as src:
        db = 10 * np.log10(src.read(1).astype(np.float64))
    np.testing.assert_allclose(db, 20 * np.log10(vv[7].astype(np.float64)) - 83, atol=1e-3)
