"""The embedded sample catalog (data/demo_belgium): layout, metadata, values against the source cube,
determinism of scripts/make_demo_catalog.py, and STAC search on it.

Tests that need the source netCDF skip when ``../shared`` is absent (a fresh clone outside our
workplace); tests that only read data/demo_belgium always run.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from shapely.geometry import shape

from btfm_core.errors import SourceError
from btfm_core.roi import open_roi
from btfm_preprocessing.period import Period
from btfm_preprocessing.sources import SourceOptions
from btfm_preprocessing.sources.stac_api import local_source, search_items

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO_ROOT / "data" / "demo_belgium"
CATALOG = DEMO_DIR / "catalog.json"
CUBE = REPO_ROOT.parent / "shared" / "data" / "demo_cube_belgium" / "worldcereal_preprocessed_inputs.nc"
needs_cube = pytest.mark.skipif(
    not CUBE.is_file(), reason=f"source cube {CUBE} not available (../shared/data is only in the BTFM workplace)")

YEAR = Period(dt.date(2020, 11, 1), dt.date(2021, 10, 31))
BBOX = (4.0, 50.0, 6.0, 51.5)
DATES = [f"{year}{month:02d}01" for year, month in [(2020, 11), (2020, 12)] + [(2021, m) for m in range(1, 11)]]
NO_DATA_MONTHS = {"20201201", "20210101"}
S2_10M = {"red", "green", "blue", "nir"}
S2_20M = {"rededge1", "rededge2", "rededge3", "nir08", "swir16", "swir22", "scl"}
GRID10 = Affine(10, 0, 664000, 0, -10, 5612120)
COG_MEDIA = "image/tiff; application=geotiff; profile=cloud-optimized"


def load_script() -> ModuleType:
    """scripts/make_demo_catalog.py as a module (scripts/ is not a package)."""
    name = "make_demo_catalog"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / "make_demo_catalog.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return sys.modules[name]


def items(collection: str) -> list[pystac.Item]:
    return search_items(str(CATALOG), collection, BBOX, YEAR)


def by_date(collection: str) -> dict[str, pystac.Item]:
    return {item.id.rsplit("_", 1)[1]: item for item in items(collection)}


def read(item: pystac.Item, key: str) -> np.ndarray:
    with rasterio.open(item.assets[key].get_absolute_href()) as src:
        return src.read(1)


def open_cube() -> dict[str, np.ndarray]:
    netcdf4 = pytest.importorskip("netCDF4")
    with netcdf4.Dataset(CUBE) as ds:
        ds.set_auto_mask(False)
        return {name: np.asarray(ds[name][:]) for name in ds.variables if ds[name].ndim == 3}


# --- always: the committed sample alone ------------------------------------------------------


def test_catalog_opens_with_relative_links_and_two_collections() -> None:
    catalog = pystac.read_file(str(CATALOG))
    assert isinstance(catalog, pystac.Catalog) and catalog.id == "btfm-demo-belgium"
    collections = {c.id: c for c in catalog.get_children()}
    assert set(collections) == {"sentinel-2-l2a", "sentinel-1-rtc"}
    for coll in collections.values():
        assert isinstance(coll, pystac.Collection) and coll.license == "MIT" and coll.description
        assert coll.extent.spatial.bboxes[0][0] == pytest.approx(5.3189, abs=1e-3)
        start, end = coll.extent.temporal.intervals[0]
        assert (start, end) == (dt.datetime(2020, 11, 1, 12, tzinfo=dt.timezone.utc),
                                dt.datetime(2021, 10, 1, 12, tzinfo=dt.timezone.utc))
        assert len(list(coll.get_items())) == 12
    for path in DEMO_DIR.rglob("*.json"):  # self-contained: works from any clone location
        text = path.read_text()
        assert '"created"' not in text and '"updated"' not in text, path
        doc = json.loads(text)
        hrefs = [link["href"] for link in doc.get("links", [])] + [a["href"] for a in doc.get("assets", {}).values()]
        assert all(h.startswith(("./", "../")) for h in hrefs), (path, hrefs)
    assert (DEMO_DIR / "LICENSE").read_text().count("Copyright (c) 2024 ESA WorldCereal") == 1
    readme = (DEMO_DIR / "README.md").read_text()
    assert "6c574425857177d9476bcf0876895e368ce445bb" in readme and "B8A" in readme and "make_demo_catalog" in readme


def test_s2_items_have_all_assets_at_native_resolution() -> None:
    s2 = by_date("sentinel-2-l2a")
    assert sorted(s2) == DATES
    for date, item in s2.items():
        assert item.id == f"S2_DEMO_BE_{date}"
        assert item.datetime == dt.datetime.strptime(date, "%Y%m%d").replace(hour=12, tzinfo=dt.timezone.utc)
        props = item.properties
        assert (props["platform"], props["constellation"]) == ("sentinel-2", "sentinel-2")
        assert props["proj:code"] == "EPSG:32631"  # pystac drops proj:epsg on read (projection v2 migration)
        raw = json.loads(Path(item.get_self_href()).read_text())["properties"]
        assert (raw["proj:code"], raw["proj:epsg"]) == ("EPSG:32631", 32631)
        assert (props["btfm:composite"], props["btfm:b8a_substitute"]) == ("monthly", "B08")
        assert props["btfm:note"] and props["eo:cloud_cover"] == (100.0 if date in NO_DATA_MONTHS else 0.0)
        assert set(item.assets) == S2_10M | S2_20M
        for key, asset in item.assets.items():
            assert asset.media_type == COG_MEDIA and asset.roles == ["data"]
            band = asset.extra_fields["raster:bands"][0]
            with rasterio.open(asset.get_absolute_href()) as src:
                res = 10.0 if key in S2_10M else 20.0
                assert src.res == (res, res) and src.crs.to_epsg() == 32631, key
                assert src.transform == GRID10 @ Affine.scale(res / 10), key
                assert list(src.shape) == asset.extra_fields["proj:shape"] == [int(1000 / res)] * 2
                assert list(src.transform)[:6] == asset.extra_fields["proj:transform"]
                assert src.dtypes[0] == band["data_type"] == ("uint8" if key == "scl" else "uint16")
                assert src.nodata == band["nodata"] == 0 and band["spatial_resolution"] == res
                assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"


def test_s2_values_no_data_and_scl_agree() -> None:
    for date, item in by_date("sentinel-2-l2a").items():
        scl, red, swir = read(item, "scl"), read(item, "red"), read(item, "swir16")
        if date in NO_DATA_MONTHS:
            assert (scl == 0).all() and (red == 0).all() and (swir == 0).all()
        else:  # no gaps in the other months: SCL unclassified (valid), reflectances >= 1
            assert (scl == 7).all() and red.min() >= 1 and swir.min() >= 1
            assert 300 < np.median(read(item, "nir")) < 8000  # plausible reflectance x 1e4


def test_s1_items_are_ascending_sigma0_linear_power() -> None:
    s1 = by_date("sentinel-1-rtc")
    assert sorted(s1) == DATES
    for date, item in s1.items():
        props = item.properties
        assert item.id == f"S1_DEMO_BE_{date}"
        assert props["sat:orbit_state"] == "ascending" and props["sar:polarizations"] == ["VV", "VH"]
        assert (props["sar:instrument_mode"], props["sar:product_type"]) == ("IW", "GRD")
        assert (props["platform"], props["btfm:backscatter"], props["proj:code"]) == (
            "sentinel-1", "sigma0", "EPSG:32631")
        assert set(item.assets) == {"vv", "vh"}
        for key, asset in item.assets.items():
            with rasterio.open(asset.get_absolute_href()) as src:
                assert src.res == (10.0, 10.0) and src.transform == GRID10 and src.dtypes[0] == "float32"
                assert src.nodata == asset.extra_fields["raster:bands"][0]["nodata"] == -32768
                linear = src.read(1)
            db = 10 * np.log10(linear)
            assert (linear > 0).all() and db.min() > -30 and db.max() < 10, key  # linear power, not dB


def test_roi_of_sample() -> None:
    roi = open_roi(DEMO_DIR / "roi.tiff")
    mask = roi.read_mask()
    assert roi.grid.shape == (100, 100) and roi.grid.resolution == (10.0, 10.0)
    assert roi.grid.transform == GRID10 and roi.grid.rasterio_crs.to_epsg() == 32631
    assert 0.8 < mask.mean() < 1
    assert not mask[0, 0] and not mask[60, 65] and mask[99, 99] and mask[0, 99]  # corner, hole, inside
    footprint = shape(items("sentinel-2-l2a")[0].geometry)
    polygon = shape(json.loads((DEMO_DIR / "roi.geojson").read_text())["features"][0]["geometry"])
    assert footprint.contains(polygon) and polygon.area > 0.7 * footprint.area


def test_block_mean_and_s1_conversion_helpers() -> None:
    script = load_script()
    data = np.array([[1, 3, 0, 0], [5, 7, 0, 9], [0, 0, 2, 2], [0, 0, 2, 3]], np.uint16)
    np.testing.assert_array_equal(script.block_mean(data, data > 0), [[4, 9], [0, 2]])  # 2.25 -> 2
    dn = np.array([[65535, 0, 1000, 10 ** 4]], np.uint16)
    np.testing.assert_allclose(script.s1_linear(dn), [[-32768, -32768, 10 ** -2.3, 10 ** -0.3]], rtol=1e-6)


# --- local source and search (the pipeline's view of the sample) ------------------------------


def test_search_filters_dates_place_and_cloud() -> None:
    winter = Period(dt.date(2020, 12, 1), dt.date(2021, 1, 31))
    assert len(search_items(str(CATALOG), "sentinel-2-l2a", BBOX, winter)) == 2
    assert search_items(str(CATALOG), "sentinel-2-l2a", BBOX, winter, {"eo:cloud_cover": {"lte": 90}}) == []
    assert search_items(str(CATALOG), "sentinel-2-l2a", (10.0, 40.0, 11.0, 41.0), YEAR) == []
    with pytest.raises(SourceError, match="does not exist"):
        search_items(str(DEMO_DIR / "missing.json"), "sentinel-2-l2a", BBOX, YEAR)


def test_local_source_parses_scenes() -> None:
    roi = open_roi(DEMO_DIR / "roi.tiff")
    source = local_source(SourceOptions(catalog=f"file://{CATALOG}"))
    scenes = source.search_s2(roi.grid, YEAR, max_cloud=90)
    assert len(scenes) == 10  # Dec and Jan are 100 % no data
    assert set(scenes[0].assets) == {"B04", "B02", "B03", "B08", "B8A", "B05", "B06", "B07", "B11", "B12", "SCL"}
    assert scenes[0].properties["btfm:b8a_substitute"] == "B08"
    s1 = source.search_s1(roi.grid, YEAR)
    assert len(s1) == 12 and {s.orbit_state for s in s1} == {"ascending"}
    assert s1[0].properties["btfm:backscatter"] == "sigma0"


# --- with the source cube (skipped without ../shared) -----------------------------------------


@needs_cube
def test_values_round_trip_to_the_cube() -> None:
    cube = open_cube()
    s2, s1 = by_date("sentinel-2-l2a"), by_date("sentinel-1-rtc")
    for t, date in enumerate(DATES):
        if date in NO_DATA_MONTHS:
            assert (cube["S2-L2A-B04"][t] == 65535).all()
            assert (read(s2[date], "red") == 0).all() and (read(s2[date], "scl") == 0).all()
            continue
        red = read(s2[date], "red")
        np.testing.assert_array_equal(red, np.maximum(cube["S2-L2A-B04"][t], 1))
        assert red[37, 42] == cube["S2-L2A-B04"][t][37, 42]
        for key, variable in (("nir08", "S2-L2A-B08"), ("rededge1", "S2-L2A-B05"), ("swir22", "S2-L2A-B12")):
            mean = cube[variable][t].astype(np.float64).reshape(50, 2, 50, 2).mean(axis=(1, 3))
            np.testing.assert_array_equal(read(s2[date], key), np.round(mean), err_msg=f"{date} {key}")
    for t, date in enumerate(DATES):
        for key, variable in (("vv", "S1-SIGMA0-VV"), ("vh", "S1-SIGMA0-VH")):
            db = 10 * np.log10(read(s1[date], key).astype(np.float64))
            expected = 20 * np.log10(cube[variable][t].astype(np.float64)) - 83
            np.testing.assert_allclose(db, expected, atol=1e-3, err_msg=f"{date} {key}")


@needs_cube
def test_script_regenerates_the_committed_sample_byte_for_byte(tmp_path: Path) -> None:
    pytest.importorskip("netCDF4")
    out = tmp_path / "demo"
    assert load_script().main(["--source", str(CUBE), "--out", str(out), "-q"]) == 0
    made = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(DEMO_DIR) for p in DEMO_DIR.rglob("*") if p.is_file())
    assert made == committed
    changed = [str(p) for p in made if (out / p).read_bytes() != (DEMO_DIR / p).read_bytes()]
    assert not changed, f"data/demo_belgium is stale; rerun scripts/make_demo_catalog.py ({changed[:5]})"
    assert sum((out / p).stat().st_size for p in made) < 4e6


def test_script_reports_a_missing_source(tmp_path: Path) -> None:
    assert load_script().main(["--source", str(tmp_path / "nope.nc"), "--out", str(tmp_path / "o"), "-q"]) == 2
    assert not (tmp_path / "o").exists()
