"""``--s1-source asf``: ASF search replayed from recorded CMR answers, Earthdata-authenticated downloads,
local geocoding of the zips (resumable), all over a loopback server (127.0.0.1).

The search answers are real ``asf_search`` test-suite records (``tests/data/asf``, see PROVENANCE.md)
served at CMR's granule search path and parsed by the real ``asf_search`` library. Where a test needs a
download, the record's URL, size and MD5 are pointed at the file the loopback serves (said in each test).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine

from btfm_core.errors import CredentialsError, DownloadError
from btfm_core.grid import Grid
from btfm_core.loopback import LoopbackServer, Reply
from btfm_preprocessing.download import PART_SUFFIX
from btfm_preprocessing.period import Period
from btfm_preprocessing.sources import S1_SOURCES, SourceEnvironment, SourceOptions, asf
from tests.conftest import write_raster

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

ASF_DATA = Path(__file__).resolve().parents[1] / "data" / "asf"
GRD_ID = "S1B_IW_GRDH_1SDV_20211110T032039_20211110T032104_029520_0385E6_60DB"
PASSWORD = "s3cret-Pa55word"
TOKEN = "edl-bearer-token-for-tests"
#: a grid somewhere; the replayed answers do not depend on it
GRID = Grid("EPSG:32631", Affine(10, 0, 664000, 0, -10, 5612000), 20, 30)
PERIOD = Period(dt.date(2021, 11, 1), dt.date(2021, 11, 30))


@functools.cache
def _record(name: str) -> dict[str, Any]:
    return dict(yaml.load((ASF_DATA / name).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def recorded_item(name: str) -> dict[str, Any]:
    """One recorded CMR granule (its ``meta`` and ``umm``, as CMR's umm_json search returns them)."""
    record = copy.deepcopy(_record(name))
    return {"meta": record["meta"], "umm": record["umm"]}


def _attribute(item: dict[str, Any], name: str) -> dict[str, Any]:
    return next(a for a in item["umm"]["AdditionalAttributes"] if a["Name"] == name)


def pointed_at(item: dict[str, Any], url: str, data: bytes, md5: str | None = None) -> dict[str, Any]:
    """The recorded item with its download URL, BYTES and MD5SUM changed to a file the loopback serves."""
    item = copy.deepcopy(item)
    for link in item["umm"]["RelatedUrls"]:
        if link["Type"] == "GET DATA":
            link["URL"] = url
    _attribute(item, "BYTES")["Values"] = [str(len(data))]
    _attribute(item, "MD5SUM")["Values"] = [md5 or hashlib.md5(data).hexdigest()]
    return item


@dataclass
class FakeAsf:
    """CMR granule search (paged with ``CMR-Search-After``) and Earthdata login, as the loopback's API."""

    pages: Sequence[Sequence[dict[str, Any]]]
    server: LoopbackServer | None = None
    searches: int = 0
    logins: int = 0
    bodies: list[bytes] | None = None

    def __call__(self, method: str, path: str, body: bytes | None) -> object | None:
        assert self.server is not None
        headers = self.server.request_headers[-1]
        if method == "POST" and path.startswith("/search/granules.umm_json"):
            self.searches += 1
            self.bodies = [*(self.bodies or []), body or b""]
            after = headers.get("CMR-Search-After") or "0"
            index = int(after)
            page = list(self.pages[index]) if self.pages else []
            extra = {"CMR-Search-After": str(index + 1)} if index + 1 < len(self.pages) else {}
            hits = sum(len(p) for p in self.pages)
            return Reply(json.dumps({"hits": hits, "took": 3, "items": page}).encode(),
                         content_type="application/json", headers={"CMR-Hits": str(hits), **extra})
        if method == "POST" and path == "/api/users/find_or_create_token":
            if not headers.get("Authorization", "").startswith("Basic "):
                return Reply(b'{"error": "invalid_credentials"}', status=401, content_type="application/json")
            self.logins += 1
            return {"access_token": TOKEN, "token_type": "Bearer", "expiration_date": "12/31/2099"}
        if method == "GET" and path.startswith("/oauth/authorize"):
            return Reply(b"", headers={"Set-Cookie": "asf-urs=test-session; Path=/"})
        return None


@contextmanager
def fake_asf(root: Path, pages: Sequence[Sequence[dict[str, Any]]] = ()) -> Iterator[tuple[LoopbackServer, FakeAsf]]:
    """A loopback server with the fake CMR and Earthdata routes; files under ``root`` are served too."""
    api = FakeAsf(pages)
    with LoopbackServer(root, api) as srv:
        api.server = srv
        yield srv, api


@pytest.fixture
def served(tmp_path: Path) -> Path:
    root = tmp_path / "served"
    (root / "GRD_HD").mkdir(parents=True)
    return root


@pytest.fixture
def earthdata(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A NASA Earthdata login in the environment (and no ~/.netrc)."""
    monkeypatch.setenv("EARTHDATA_USERNAME", "btfm-tester")
    monkeypatch.setenv("EARTHDATA_PASSWORD", PASSWORD)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads retry without waiting."""
    original = asf.download

    def quick(*args: Any, **kwargs: Any) -> Path:
        return original(*args, **kwargs, sleep=lambda seconds: None)

    monkeypatch.setattr(asf, "download", quick)


def grd_zip(root: Path, payload: bytes = b"") -> bytes:
    """A zip standing in for a GRD product (the fake geocoder never opens it): written under ``root``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{GRD_ID}.SAFE/manifest.safe", payload or b"<xfdu/>" * 100000)
    data = buffer.getvalue()
    (root / "GRD_HD" / f"{GRD_ID}.zip").write_bytes(data)
    return data


def source_for(srv: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               **fields: Any) -> asf.AsfSource:
    """``--s1-source asf`` with search (``--s1-catalog``) and login (``$BTFM_EARTHDATA_URL``) on the loopback."""
    monkeypatch.setenv(asf.EARTHDATA_URL_ENV, srv.url)
    source = S1_SOURCES["asf"](SourceOptions(s1_catalog=srv.url, work_dir=tmp_path / "work", workers=2,
                                             environment=SourceEnvironment.capture(os.environ)))
    assert isinstance(source, asf.AsfSource)
    for key, value in fields.items():
        setattr(source, key, value)
    return source


# --- search -----------------------------------------------------------------------------------------------


def test_search_parses_the_recorded_grd_scene(served: Path) -> None:
    with fake_asf(served, [[recorded_item("S1_response.yml")]]) as (srv, api):
        scenes = asf.search_grd(GRID, PERIOD, srv.url)
    assert [s.id for s in scenes] == [GRD_ID]
    scene = scenes[0]
    assert scene.acquired == dt.datetime(2021, 11, 10, 3, 20, 39, tzinfo=dt.timezone.utc)
    assert scene.orbit_state == "ascending"  # from the record's ASCENDING_DESCENDING attribute
    assert scene.properties["bytes"] == 885840896
    assert scene.properties["md5sum"] == "ae94d5f09bb00118e2c1429de067fad4"
    assert scene.assets["GRD"] == f"https://datapool.asf.alaska.edu/GRD_HD/SB/{GRD_ID}.zip"
    assert scene.properties["btfm:backscatter"] == asf.GRD_BACKSCATTER
    body = (api.bodies or [b""])[0].decode()
    assert "GRD_HIGH" in body and "bounding_box" in body and "temporal=2021-11-01" in body


def test_search_follows_pages_and_skips_other_products(served: Path, caplog: pytest.LogCaptureFixture) -> None:
    pages = [[recorded_item("S1_response.yml")], [recorded_item("Fairbanks_SLC.yml")]]
    with fake_asf(served, pages) as (srv, api), caplog.at_level(logging.WARNING):
        scenes = asf.search_grd(GRID, PERIOD, srv.url)
        second = srv.request_headers[-1]
    assert api.searches == 2 and second.get("CMR-Search-After") == "1"
    assert [s.id for s in scenes] == [GRD_ID]
    assert "SLC product, not GRD_HD: skipped" in caplog.text


def test_empty_search(served: Path) -> None:
    with fake_asf(served, []) as (srv, api):
        assert asf.search_grd(GRID, PERIOD, srv.url) == []
    assert api.searches == 1


def test_malformed_entry_is_skipped_with_a_warning(served: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = recorded_item("S1_response.yml")  # the real record with two attributes removed
    broken["umm"]["AdditionalAttributes"] = [a for a in broken["umm"]["AdditionalAttributes"]
                                             if a["Name"] not in ("ASCENDING_DESCENDING", "MD5SUM")]
    with fake_asf(served, [[broken]]) as (srv, _), caplog.at_level(logging.WARNING):
        assert asf.search_grd(GRID, PERIOD, srv.url) == []
    assert GRD_ID in caplog.text and "flightDirection" in caplog.text and "md5sum" in caplog.text


# --- download ---------------------------------------------------------------------------------------------


def test_download_logs_in_to_earthdata_and_resumes_after_a_cut(
        served: Path, tmp_path: Path, earthdata: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    data = grd_zip(served)
    with fake_asf(served) as (srv, api), caplog.at_level(logging.DEBUG):
        api.pages = [[pointed_at(recorded_item("S1_response.yml"), f"{srv.url}/GRD_HD/{GRD_ID}.zip", data)]]
        source = source_for(srv, tmp_path, monkeypatch)
        [scene] = source.search_s1(GRID, PERIOD)
        srv.cut_next[f"{GRD_ID}.zip"] = len(data) // 3
        path = source.download_scene(scene)
        headers = list(srv.request_headers)
    assert path.read_bytes() == data and not path.with_name(path.name + PART_SUFFIX).exists()
    assert api.logins == 1
    zip_gets = [h for h in headers if h.get("Authorization") == f"Bearer {TOKEN}" and "Range" in h]
    assert zip_gets and int(zip_gets[-1]["Range"].removeprefix("bytes=").rstrip("-")) > 0  # resumed, logged in
    assert PASSWORD not in caplog.text and TOKEN not in caplog.text
    assert PASSWORD not in repr(source) and PASSWORD not in json.dumps(source.describe())


def test_md5_mismatch_is_rejected(served: Path, tmp_path: Path, earthdata: None,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = grd_zip(served)
    with fake_asf(served) as (srv, api):
        api.pages = [[pointed_at(recorded_item("S1_response.yml"), f"{srv.url}/GRD_HD/{GRD_ID}.zip", data,
                                 md5="0" * 32)]]
        source = source_for(srv, tmp_path, monkeypatch)
        [scene] = source.search_s1(GRID, PERIOD)
        with pytest.raises(DownloadError, match="MD5"):
            source.download_scene(scene)
    assert not list((tmp_path / "work" / "downloads").glob("*"))


def test_missing_credentials_name_the_variables(served: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EARTHDATA_USERNAME", raising=False)
    monkeypatch.delenv("EARTHDATA_PASSWORD", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    data = grd_zip(served)
    with fake_asf(served) as (srv, api):
        api.pages = [[pointed_at(recorded_item("S1_response.yml"), f"{srv.url}/GRD_HD/{GRD_ID}.zip", data)]]
        source = source_for(srv, tmp_path, monkeypatch)
        scenes = source.search_s1(GRID, PERIOD)  # searching needs no login
        with pytest.raises(CredentialsError) as error:
            source.prepare_s1(scenes, GRID)
    message = str(error.value)
    assert "EARTHDATA_USERNAME" in message and "EARTHDATA_PASSWORD" in message and ".netrc" in message
    assert srv.bytes_served[f"{GRD_ID}.zip"] == 0


# --- prepare: geocode, split, resume ----------------------------------------------------------------------


@dataclass(frozen=True)
class FakeGrdResult:
    path: Path
    orbit_direction: str
    acquired: dt.datetime
    backscatter: str
    coverage: float


class FakeGeocoder:
    """Stands in for ``grd.geocode_grd``: writes a 2-band (VV, VH) float32 GeoTIFF on the grid."""

    def __init__(self, coverage: float = 0.8) -> None:
        self.calls: list[Path] = []
        self.coverage = coverage

    def __call__(self, product: Path, grid: Grid, out_path: Path) -> FakeGrdResult:
        assert zipfile.is_zipfile(product)
        self.calls.append(product)
        vv = np.full(grid.shape, 0.1, np.float32)
        vh = np.full(grid.shape, 0.01, np.float32)
        vv[0, :] = vh[0, :] = np.nan  # a row the scene does not cover
        write_raster(out_path, np.stack([vv, vh]), crs=grid.crs, transform=grid.transform, nodata=float("nan"))
        return FakeGrdResult(out_path, "ASCENDING", dt.datetime(2021, 11, 10, 3, 20, 39, tzinfo=dt.timezone.utc),
                             "sigma0 (test geocoder)", self.coverage)


def test_prepare_geocodes_splits_deletes_the_zip_and_resumes(
        served: Path, tmp_path: Path, earthdata: None, monkeypatch: pytest.MonkeyPatch) -> None:
    data = grd_zip(served)
    geocoder = FakeGeocoder()
    with fake_asf(served) as (srv, api):
        api.pages = [[pointed_at(recorded_item("S1_response.yml"), f"{srv.url}/GRD_HD/{GRD_ID}.zip", data)]]
        source = source_for(srv, tmp_path, monkeypatch, geocode=geocoder)
        scenes = source.search_s1(GRID, PERIOD)
        [prepared] = source.prepare_s1(scenes, GRID)
        again = source.prepare_s1(scenes, GRID)  # a resumed run: nothing downloaded or geocoded again
        served_bytes = srv.bytes_served[f"{GRD_ID}.zip"]
        assert again == [prepared] and len(geocoder.calls) == 1 and served_bytes == len(data)
        other_roi = GRID.window(0, 0, 10, 10)  # another ROI in the same data folder: geocoded afresh
        [elsewhere] = source.prepare_s1(scenes, other_roi)
    assert len(geocoder.calls) == 2 and elsewhere.assets["VV"] != prepared.assets["VV"]
    with rasterio.open(elsewhere.assets["VV"]) as src:
        assert src.shape == other_roi.shape
    assert not list((tmp_path / "work" / "downloads").glob("*.zip"))  # the zip is deleted after processing
    assert sorted(prepared.assets) == ["VH", "VV"]
    for band, value in (("VV", 0.1), ("VH", 0.01)):
        with rasterio.open(prepared.assets[band]) as src:
            assert src.count == 1 and src.shape == GRID.shape and src.crs.to_string() == GRID.crs
            pixels = src.read(1)
        assert np.isnan(pixels[0]).all() and np.allclose(pixels[1:], value)
    assert not list((tmp_path / "work" / "processed").rglob("*VVVH*"))  # the 2-band file is gone
    assert source.backscatter == "sigma0 (test geocoder)" == source.describe()["backscatter"]
    assert prepared.orbit_state == "ascending" and prepared.properties["btfm:coverage"] == 0.8

    from btfm_preprocessing.encoding import encode_s1_db
    from btfm_preprocessing.stack import group_by_day

    [day] = group_by_day([prepared])
    with ThreadPoolExecutor(2) as pool:
        codes = source.read_s1_day(day, GRID, pool)
    assert codes is not None and codes.shape == (*GRID.shape, 2)
    assert (codes[0] == 0).all()
    assert (codes[1:, :, 0] == encode_s1_db(np.float32(0.1))).all()
    assert (codes[1:, :, 1] == encode_s1_db(np.float32(0.01))).all()


def test_scene_without_coverage_is_dropped_and_not_fetched_again(
        served: Path, tmp_path: Path, earthdata: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    data = grd_zip(served)
    geocoder = FakeGeocoder(coverage=0.0)
    with fake_asf(served) as (srv, api), caplog.at_level(logging.WARNING):
        api.pages = [[pointed_at(recorded_item("S1_response.yml"), f"{srv.url}/GRD_HD/{GRD_ID}.zip", data)]]
        source = source_for(srv, tmp_path, monkeypatch, geocode=geocoder)
        scenes = source.search_s1(GRID, PERIOD)
        assert source.prepare_s1(scenes, GRID) == []
        assert source.prepare_s1(scenes, GRID) == []
    assert len(geocoder.calls) == 1 and "does not cover the ROI" in caplog.text
    assert not list((tmp_path / "work").rglob("*.tif")) and not list((tmp_path / "work").rglob("*.zip"))


# --- with the real GRD geocoder, once it exists -----------------------------------------------------------

GRD_FIXTURES = Path(__file__).resolve().parents[1] / "data" / "s1_grd"


def _gcp_centre(product: Path) -> tuple[float, float]:
    """(lon, lat) centre of the VV measurement's ground control points (where the pixels really are)."""
    with zipfile.ZipFile(product) as archive:
        member = next(m for m in archive.namelist() if "/measurement/" in m and "-vv-" in m)
    with rasterio.open(f"/vsizip/{product}/{member}") as src:
        gcps, _ = src.gcps
    return (sum(g.x for g in gcps) / len(gcps), sum(g.y for g in gcps) / len(gcps))


def _zipped_safe(tmp_path: Path) -> Path | None:
    zips = sorted(GRD_FIXTURES.glob("*.zip"))
    if zips:
        return zips[0]
    safes = sorted(GRD_FIXTURES.glob("*.SAFE"))
    if not safes:
        return None
    out = tmp_path / f"{safes[0].stem}.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(safes[0].rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(safes[0].parent).as_posix())
    return out


def test_prepare_with_the_real_grd_geocoder(served: Path, tmp_path: Path, earthdata: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    product = _zipped_safe(tmp_path)
    assert product is not None, "the GRD test product tests/data/s1_grd is missing"
    data = product.read_bytes()
    (served / "GRD_HD" / f"{GRD_ID}.zip").write_bytes(data)
    from pyproj import Transformer

    lon, lat = _gcp_centre(product)
    epsg = (32600 if lat >= 0 else 32700) + int((lon + 180) // 6) + 1
    x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
    # a 10 m grid at the product's centre: this checks the plumbing (download, geocode, split, read),
    # not the geocoder's accuracy (its own tests do that)
    grid = Grid(f"EPSG:{epsg}", Affine(10, 0, round(x) - 320, 0, -10, round(y) + 320), 64, 64)
    with fake_asf(served) as (srv, api):
        api.pages = [[pointed_at(recorded_item("S1_response.yml"), f"{srv.url}/GRD_HD/{GRD_ID}.zip", data)]]
        source = source_for(srv, tmp_path, monkeypatch)
        scenes = source.search_s1(grid, PERIOD)
        prepared = source.prepare_s1(scenes, grid)
    assert not list((tmp_path / "work" / "downloads").glob("*.zip"))
    [scene] = prepared
    assert scene.properties["btfm:coverage"] == 1.0 and scene.orbit_state in ("ascending", "descending")
    for band in ("VV", "VH"):
        with rasterio.open(scene.assets[band]) as src:
            assert src.count == 1 and src.shape == grid.shape
            assert np.isfinite(src.read(1)).all()
    assert source.backscatter != asf.GRD_BACKSCATTER  # the geocoder said what it made
    from btfm_preprocessing.stack import group_by_day

    with ThreadPoolExecutor(2) as pool:
        codes = source.read_s1_day(group_by_day([scene])[0], grid, pool)
    assert codes is not None and (codes != 0).all()


def test_registry_builds_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(asf.SEARCH_URL_ENV, raising=False)
    source = S1_SOURCES["asf"](SourceOptions(work_dir=tmp_path, workers=3,
                                             environment=SourceEnvironment.capture(os.environ)))
    assert isinstance(source, asf.AsfSource) and source.search_url == asf.ASF_SEARCH_URL
    assert source.describe()["product_type"] == "IW GRD_HD" and source.name == "asf"
    monkeypatch.setenv(asf.SEARCH_URL_ENV, "http://127.0.0.1:9/")
    options = SourceOptions(work_dir=tmp_path, environment=SourceEnvironment.capture(os.environ))
    assert S1_SOURCES["asf"](options).search_url == "http://127.0.0.1:9"




def _relocated_s2_catalog(root: Path, grid: Grid, day: str) -> Path:
    """A one-item static S2 catalog on ``grid``: the demo sample's May pixels, re-labelled to ``grid``'s place
    and ``day`` (the pipeline needs S2 where the GRD fixture is; only the S1 side is under test here)."""
    import pystac

    item_dir = Path(__file__).resolve().parents[2] / "data" / "demo_belgium" / "sentinel-2-l2a" / "S2_DEMO_BE_20210501"
    west, south, east, north = grid.lonlat_bounds()
    item = pystac.Item("S2_RELOCATED", {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                       [west, north], [west, south]]]}, [west, south, east, north],
                       dt.datetime.fromisoformat(f"{day}T10:00:00+00:00"), {"eo:cloud_cover": 0.0})
    folder = root / "sentinel-2-l2a" / item.id  # where normalize_and_save puts the item
    folder.mkdir(parents=True)
    for tif in sorted(item_dir.glob("*.tif")):
        with rasterio.open(tif) as src:
            data, scale = src.read(1), src.transform.a
        write_raster(folder / tif.name, data, crs=str(grid.crs), nodata=0,
                     transform=Affine(scale, 0, grid.transform.c, 0, -scale, grid.transform.f))
        item.add_asset(tif.stem, pystac.Asset(str(folder / tif.name)))
    collection = pystac.Collection("sentinel-2-l2a", "relocated demo pixels", pystac.Extent(
        pystac.SpatialExtent([[west, south, east, north]]), pystac.TemporalExtent([[item.datetime, item.datetime]])))
    collection.add_item(item)
    catalog = pystac.Catalog("relocated", "test catalog")
    catalog.add_child(collection)
    catalog.normalize_and_save(str(root), pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def test_pipeline_with_asf_s1_end_to_end(served: Path, tmp_path: Path, earthdata: None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from pyproj import Transformer

    from btfm_core.tiles import read_tile
    from btfm_preprocessing import pipeline

    product = _zipped_safe(tmp_path)
    assert product is not None
    data = product.read_bytes()
    (served / "GRD_HD" / f"{GRD_ID}.zip").write_bytes(data)
    lon, lat = _gcp_centre(product)
    epsg = 32600 + int((lon + 180) // 6) + 1
    x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
    grid = Grid(f"EPSG:{epsg}", Affine(10, 0, round(x) - 500, 0, -10, round(y) + 500), 100, 100)
    (tmp_path / "run").mkdir()
    roi = write_raster(tmp_path / "run" / "roi.tiff", np.ones(grid.shape, np.uint8), crs=str(grid.crs),
                       transform=grid.transform)
    catalog = _relocated_s2_catalog(tmp_path / "s2", grid, "2021-11-10")
    with fake_asf(served) as (srv, api):
        api.pages = [[pointed_at(recorded_item("S1_response.yml"), f"{srv.url}/GRD_HD/{GRD_ID}.zip", data)]]
        monkeypatch.setenv(asf.EARTHDATA_URL_ENV, srv.url)
        assert pipeline.main([str(roi), "2021-11-01", "2021-11-30", "2021-11-01", "2021-11-30", "1",
                              "--source", "local", "--catalog", str(catalog), "--s1-source", "asf",
                              "--s1-catalog", srv.url, "--tile-size", "50", "-q"]) == 0
    tiles = tmp_path / "run" / "retiled_d_pixel"
    meta = json.loads((tiles / "run_metadata.json").read_text())
    assert meta["s1_source"] == "asf" and meta["s1_backscatter"].startswith("sigma0")
    for name in ("0_0_50_50", "50_50_100_100"):
        tile = read_tile(tiles / name)
        sar = np.concatenate([tile.sar_ascending, tile.sar_descending])
        assert sar.shape[0] == 1 and (sar != 0).all()  # the one GRD, geocoded over the whole tile
        assert tile.bands.shape[0] == 1
    assert not list(tmp_path.rglob("*.zip.part")) and PASSWORD not in (tmp_path / "run" / "logs" /
                                                                      "preprocess.log").read_text()
