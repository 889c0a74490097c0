"""A STAC API source over HTTP: search with paging, windowed COG reads, same tiles as the local source.

The "remote" is a loopback server (127.0.0.1) serving the embedded sample as a STAC API, so
the network stays closed to everything else.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine

from btfm_core.grid import Grid
from btfm_core.loopback import LoopbackServer
from btfm_core.tiles import read_tile
from btfm_preprocessing import pipeline
from btfm_preprocessing.reader import gdal_env, read_on_grid
from btfm_preprocessing.sources import SourceOptions
from btfm_preprocessing.sources.stac_api import earthsearch_source
from tests.conftest import DEMO_DIR

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]
PAGE = 5
DATES = ["2020-11-01", "2021-10-31", "2020-11-01", "2021-10-31", "1"]


ES_TO_PC = {"red": "B04", "blue": "B02", "green": "B03", "nir": "B08", "nir08": "B8A", "rededge1": "B05",
            "rededge2": "B06", "rededge3": "B07", "swir16": "B11", "swir22": "B12", "scl": "SCL"}


def stac_api(base: str, planetary_keys: bool = False, root: Path = DEMO_DIR) -> object:
    """Serve the items of the static catalog in ``root`` (default: the embedded sample) like a STAC
    API's /search (POST, paged with a 'next' token); with ``planetary_keys`` the S2 assets carry
    Planetary Computer's names (B04, ..., SCL)."""
    catalog = pystac.read_file(str(root / "catalog.json"))
    catalog.make_all_asset_hrefs_absolute()
    items = []
    for item in catalog.get_items(recursive=True):
        data = item.to_dict(include_self_link=False, transform_hrefs=False)
        for asset in data["assets"].values():
            asset["href"] = f"{base}/{Path(asset['href']).relative_to(root).as_posix()}"
        data["links"] = []
        if planetary_keys and data["collection"] == "sentinel-2-l2a":
            data["assets"] = {ES_TO_PC[key]: asset for key, asset in data["assets"].items()}
        items.append(data)
    landing = {"type": "Catalog", "id": "loopback", "stac_version": "1.0.0", "description": "test API",
               "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search",
                              "https://api.stacspec.org/v1.0.0/item-search#query"],
               "links": [{"rel": "self", "href": f"{base}/api"}, {"rel": "root", "href": f"{base}/api"},
                         {"rel": "search", "href": f"{base}/api/search", "method": "POST",
                          "type": "application/geo+json"}]}

    def handle(method: str, path: str, body: bytes | None) -> object | None:
        if path == "/api":
            return landing
        if path != "/api/search" or method != "POST":
            return None
        query = json.loads(body or b"{}")
        start, end = (dt.datetime.fromisoformat(v.replace("Z", "+00:00")) for v in query["datetime"].split("/"))
        found = [i for i in items if i["collection"] in query["collections"]
                 and start <= dt.datetime.fromisoformat(i["properties"]["datetime"].replace("Z", "+00:00")) <= end
                 and i["properties"].get("eo:cloud_cover", 0) <= query.get("query", {}).get(
                     "eo:cloud_cover", {}).get("lte", 100)]
        offset = int(query.get("next", 0))
        page = {"type": "FeatureCollection", "features": found[offset:offset + PAGE], "links": []}
        if offset + PAGE < len(found):
            page["links"].append({"rel": "next", "href": f"{base}/api/search", "method": "POST",
                                  "body": {**query, "next": str(offset + PAGE)}, "merge": False})
        return page

    return handle


@pytest.fixture
def server() -> LoopbackServer:
    srv = LoopbackServer(DEMO_DIR)
    srv.api = stac_api(srv.url)  # type: ignore[assignment]
    with srv:
        yield srv


def test_api_source_gives_the_same_tiles_as_the_static_catalog(server: LoopbackServer, tmp_path: Path) -> None:
    for name in ("local", "remote"):
        (tmp_path / name).mkdir()
        shutil.copy(DEMO_DIR / "roi.tiff", tmp_path / name / "roi.tiff")
    assert pipeline.main([str(tmp_path / "local" / "roi.tiff"), *DATES, "--tile-size", "50", "-q"]) == 0
    assert pipeline.main([str(tmp_path / "remote" / "roi.tiff"), *DATES, "--source", "earthsearch",
                          "--s1-source", "none", "--catalog", f"{server.url}/api", "--tile-size", "50", "-q"]) == 0
    for tile in ("0_0_50_50", "50_50_100_100"):
        local = read_tile(tmp_path / "local" / "retiled_d_pixel" / tile)
        remote = read_tile(tmp_path / "remote" / "retiled_d_pixel" / tile)
        np.testing.assert_array_equal(remote.bands, local.bands)
        np.testing.assert_array_equal(remote.masks, local.masks)
        np.testing.assert_array_equal(remote.doys, local.doys)
        assert remote.sar_ascending.shape[0] == 0 and remote.sar_descending.shape[0] == 0
    assert server.bytes_served["red.tif"] > 0  # pixels really came over HTTP


def test_paging_collects_every_item(server: LoopbackServer) -> None:
    grid = Grid("EPSG:32631", Affine(10, 0, 664000, 0, -10, 5612120), 100, 100)
    source = earthsearch_source(SourceOptions(catalog=f"{server.url}/api"))
    from btfm_preprocessing.period import Period

    scenes = source.search_s2(grid, Period(dt.date(2020, 11, 1), dt.date(2021, 10, 31)), max_cloud=100)
    assert len(scenes) == 12 and len({s.id for s in scenes}) == 12  # 3 pages of 5, 5, 2


def test_window_read_fetches_a_small_part_of_a_cog(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(1, 10000, (2048, 2048), dtype=np.uint16)  # incompressible
    transform = Affine(10, 0, 600000, 0, -10, 5700000)
    path = tmp_path / "big.tif"
    with rasterio.open(path, "w", driver="COG", width=2048, height=2048, count=1, dtype="uint16",
                       crs="EPSG:32631", transform=transform, nodata=0, compress="DEFLATE",
                       blocksize=256) as dst:
        dst.write(data, 1)
    with LoopbackServer(tmp_path) as srv, gdal_env():
        window = Grid("EPSG:32631", transform @ Affine.translation(700, 900), 64, 64)
        out = read_on_grid(f"{srv.url}/big.tif", window, rasterio.enums.Resampling.nearest, "uint16", 0)
        np.testing.assert_array_equal(out, data[900:964, 700:764])
        assert srv.bytes_served["big.tif"] < path.stat().st_size / 4


def test_planetary_source_signs_hrefs_and_reads_s1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from btfm_preprocessing.sources import stac_api as stac_module

    monkeypatch.setattr(stac_module, "planetary_sign", lambda href: f"{href}?sv=2024&sig=test-signature")
    for name in ("local", "remote"):
        (tmp_path / name).mkdir()
        shutil.copy(DEMO_DIR / "roi.tiff", tmp_path / name / "roi.tiff")
    srv = LoopbackServer(DEMO_DIR)
    srv.api = stac_api(srv.url, planetary_keys=True)  # type: ignore[assignment]
    with srv:
        assert pipeline.main([str(tmp_path / "local" / "roi.tiff"), *DATES, "--tile-size", "50", "-q"]) == 0
        assert pipeline.main([str(tmp_path / "remote" / "roi.tiff"), *DATES, "--source", "planetary",
                              "--catalog", f"{srv.url}/api", "--tile-size", "50", "-q"]) == 0
    assert srv.queries == {"sv=2024&sig=test-signature"}  # every asset was read through a signed URL
    local = read_tile(tmp_path / "local" / "retiled_d_pixel" / "50_0_100_50")
    remote = read_tile(tmp_path / "remote" / "retiled_d_pixel" / "50_0_100_50")
    np.testing.assert_array_equal(remote.bands, local.bands)
    np.testing.assert_array_equal(remote.sar_ascending, local.sar_ascending)
    meta = json.loads((tmp_path / "remote" / "retiled_d_pixel" / "run_metadata.json").read_text())
    assert meta["source"] == "planetary" and meta["s1_backscatter"].startswith("gamma0 RTC")


def test_search_retries_a_503(server: LoopbackServer) -> None:
    handle = server.api
    calls = {"search": 0}

    def flaky(method: str, path: str, body: bytes | None) -> object | None:
        if path == "/api/search":
            calls["search"] += 1
            if calls["search"] == 1:
                return 503
        return handle(method, path, body)  # type: ignore[misc,operator]

    server.api = flaky  # type: ignore[assignment]
    from btfm_preprocessing.period import Period

    grid = Grid("EPSG:32631", Affine(10, 0, 664000, 0, -10, 5612120), 100, 100)
    scenes = earthsearch_source(SourceOptions(catalog=f"{server.url}/api")).search_s2(
        grid, Period(dt.date(2021, 5, 1), dt.date(2021, 5, 31)), max_cloud=100)
    assert len(scenes) == 1 and calls["search"] == 2


def test_s1_source_defaults() -> None:
    from btfm_preprocessing.sources import S1_SOURCES, default_s1_source

    assert default_s1_source("local") == "local"
    assert default_s1_source("planetary") == "planetary"
    assert default_s1_source("earthsearch") == "planetary"  # Earth Search serves no S1 backscatter
    assert default_s1_source("sentinelhub") == "planetary"
    assert S1_SOURCES["none"](SourceOptions()).search_s1(None, None) == []  # type: ignore[arg-type]


def test_run_summary_counts_scenes_and_network_bytes(server: LoopbackServer, tmp_path: Path) -> None:
    shutil.copy(DEMO_DIR / "roi.tiff", tmp_path / "roi.tiff")
    args = pipeline.build_parser().parse_args([str(tmp_path / "roi.tiff"), *DATES, "--source", "earthsearch",
                                               "--s1-source", "none", "--catalog", f"{server.url}/api",
                                               "--tile-size", "50", "--max-cloud", "100"])
    summary = pipeline.run(pipeline.settings_from_args(args))
    served = sum(server.bytes_served.values())
    assert summary.network_bytes is not None and served * 0.9 <= summary.network_bytes <= served * 1.1
    lines = "\n".join(summary.lines(tmp_path))
    assert "Sentinel-2 scenes (earthsearch): 12 found, 10 with data in the tiles" in lines  # Dec/Jan: no data
    assert "Sentinel-1 scenes (none): 0 found" in lines
    resumed = pipeline.run(pipeline.settings_from_args(args))
    assert resumed.tiles_skipped == 4 and resumed.scenes_used == summary.scenes_used


@pytest.mark.parametrize(("argv", "s1_root"), [
    (["--source", "sentinelhub", "--catalog", "cdse"], "https://planetarycomputer.microsoft.com/api/stac/v1"),
    (["--source", "earthsearch", "--catalog", "https://mirror.example/v1"],
     "https://planetarycomputer.microsoft.com/api/stac/v1"),
    (["--source", "planetary", "--catalog", "https://pc-mirror.example/v1"], "https://pc-mirror.example/v1"),
    (["--source", "earthsearch", "--s1-catalog", "https://s1.example/v1"], "https://s1.example/v1"),
])
def test_s1_source_gets_its_own_root(argv: list[str], s1_root: str, tmp_path: Path) -> None:
    from btfm_preprocessing.sources import S1_SOURCES

    shutil.copy(DEMO_DIR / "roi.tiff", tmp_path / "roi.tiff")
    settings = pipeline.settings_from_args(pipeline.build_parser().parse_args([str(tmp_path / "roi.tiff"), *DATES,
                                                                                *argv]))
    source = S1_SOURCES[settings.s1_source](SourceOptions(catalog=settings.catalog, s1_catalog=settings.s1_catalog))
    assert settings.s1_source == "planetary" and source.root == s1_root  # type: ignore[attr-defined]
