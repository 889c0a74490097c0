"""``--source sentinelhub`` against a loopback Sentinel Hub: the real ``sentinelhub`` client, real answers.

The loopback server (127.0.0.1 only) plays the token endpoint, the Catalog API (real STAC items in
the Catalog API's page shape) and the Process API (the recorded ``img.tar`` of sentinelhub-py, or
tiles rendered from the embedded demo sample for the requested bbox, size, band order and
resampling), so the tiles can be compared with ``--source local`` pixel for pixel.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import pystac
import pytest
from affine import Affine
from rasterio.enums import Resampling
from rasterio.io import MemoryFile

from btfm_core.errors import CredentialsError, SourceError
from btfm_core.grid import Grid
from btfm_core.loopback import LoopbackServer, Reply
from btfm_core.tiles import read_tile
from btfm_preprocessing import pipeline
from btfm_preprocessing.mosaic import S2Day
from btfm_preprocessing.period import Period
from btfm_preprocessing.reader import read_on_grid
from btfm_preprocessing.sources import EARTH_SEARCH_S2_ASSETS, AcquisitionDay, Scene, SourceEnvironment, SourceOptions
from btfm_preprocessing.sources import sentinelhub as shub
from tests.conftest import DEMO_DIR

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

DATA = Path(__file__).resolve().parents[1] / "data"
REAL_TAR = DATA / "sentinelhub" / "img.tar"
REAL_ITEM = DATA / "stac" / "earthsearch_S2B_24MVV_20250731_0_L2A.json"
DATES = ["2020-11-01", "2021-10-31", "2020-11-01", "2021-10-31", "1"]
CLIENT_ID = "test-client-id"
CLIENT_SECRET = "s3cr3t-value-never-logged"
ACCESS_TOKEN = "test-access-token"
TOKEN_PATH = "/auth/realms/main/protocol/openid-connect/token"
SEARCH_PATH = "/api/v1/catalog/1.0.0/search"
PROCESS_PATH = "/api/v1/process"
PAGE = 5
DEMO_GRID = Grid("EPSG:32631", Affine(10, 0, 664000, 0, -10, 5612120), 100, 100)


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials set, fast retries, and plain http allowed for the loopback token endpoint."""
    monkeypatch.setenv(shub.CLIENT_ID_ENV, CLIENT_ID)
    monkeypatch.setenv(shub.CLIENT_SECRET_ENV, CLIENT_SECRET)
    monkeypatch.delenv(shub.BASE_URL_ENV, raising=False)
    monkeypatch.delenv(shub.TOKEN_URL_ENV, raising=False)
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setattr(shub, "DEFAULT_RETRY", shub.RetryPolicy(attempts=3, sleep_s=0.01, rate_limit_tries=5,
                                                                rate_limit_wait_s=0.01, timeout_s=20))


def demo_features() -> list[dict[str, Any]]:
    """The demo sample's S2 items as Catalog API features (id, geometry, properties; no asset hrefs)."""
    catalog = pystac.read_file(str(DEMO_DIR / "catalog.json"))
    features = []
    for item in catalog.get_items(recursive=True):
        if item.collection_id == "sentinel-2-l2a":
            data = item.to_dict(include_self_link=False, transform_hrefs=False)
            features.append({key: data[key] for key in ("type", "stac_version", "id", "geometry", "bbox",
                                                        "properties")})
    return sorted(features, key=lambda f: f["properties"]["datetime"])


def demo_hrefs() -> dict[str, dict[str, str]]:
    """Acquisition day (ISO) -> contract band -> absolute COG path of the demo sample."""
    catalog = pystac.read_file(str(DEMO_DIR / "catalog.json"))
    catalog.make_all_asset_hrefs_absolute()
    out = {}
    for item in catalog.get_items(recursive=True):
        if item.collection_id == "sentinel-2-l2a":
            assert item.datetime is not None
            out[item.datetime.date().isoformat()] = {
                band: item.assets[key].get_absolute_href() or "" for band, key in EARTH_SEARCH_S2_ASSETS.items()}
    return out


def tar_answer(tiff: bytes, userdata: dict[str, Any]) -> Reply:
    """A multi-part Process API answer, laid out like the recorded ``img.tar``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (("default.tif", tiff), ("userdata.json", json.dumps(userdata).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Reply(buffer.getvalue(), content_type="application/tar")


class FakeSentinelHub:
    """Token endpoint, Catalog API search (paged) and Process API of a Sentinel Hub deployment."""

    def __init__(self, features: list[dict[str, Any]] | None = None) -> None:
        self.resampling = {"BILINEAR": Resampling.bilinear, "NEAREST": Resampling.nearest}
        self.features = demo_features() if features is None else features
        self.hrefs = demo_hrefs()
        self.token_bodies: list[dict[str, list[str]]] = []
        self.searches: list[dict[str, Any]] = []
        self.process_bodies: list[dict[str, Any]] = []
        #: answers given (in order) before the normal ones, per route.
        self.queued: dict[str, list[object]] = {TOKEN_PATH: [], SEARCH_PATH: [], PROCESS_PATH: []}

    def __call__(self, method: str, path: str, body: bytes | None) -> object | None:
        if method != "POST" or path not in self.queued:
            return None
        if path == TOKEN_PATH:
            self.token_bodies.append(parse_qs((body or b"").decode()))
        if self.queued[path]:
            return self.queued[path].pop(0)
        if path == TOKEN_PATH:
            return {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 3600}
        request = json.loads(body or b"{}")
        if path == SEARCH_PATH:
            return self.search(request)
        return self.process(request)

    def search(self, request: dict[str, Any]) -> dict[str, Any]:
        self.searches.append(request)
        start, end = (dt.datetime.fromisoformat(v.replace("Z", "+00:00")) for v in request["datetime"].split("/"))
        match = re.fullmatch(r"eo:cloud_cover <= ([\d.]+)", request["filter"])
        assert match, request["filter"]

        def wanted(feature: dict[str, Any]) -> bool:
            props = feature["properties"]
            if props.get("eo:cloud_cover", 0) > float(match.group(1)):
                return False
            return "datetime" not in props or (  # a malformed feature is passed on to the client
                start <= dt.datetime.fromisoformat(props["datetime"].replace("Z", "+00:00")) <= end)

        found = [f for f in self.features if wanted(f)]
        offset = int(request.get("next", 0))
        page = found[offset:offset + PAGE]
        context: dict[str, Any] = {"limit": PAGE, "returned": len(page)}
        if offset + PAGE < len(found):
            context["next"] = offset + PAGE
        return {"type": "FeatureCollection", "features": page, "links": [], "context": context}

    def process(self, request: dict[str, Any]) -> Reply:
        """Render the requested bbox/size from the demo COGs in the evalscript's output order."""
        self.process_bodies.append(request)
        bounds, output = request["input"]["bounds"], request["output"]
        epsg = int(bounds["properties"]["crs"].rsplit("/", 1)[-1])
        left, bottom, right, top = bounds["bbox"]
        width, height = output["width"], output["height"]
        grid = Grid(f"EPSG:{epsg}", Affine((right - left) / width, 0, left, 0, -(top - bottom) / height, top),
                    height, width)
        inputs = {data["id"]: data for data in request["input"]["data"]}
        day = inputs["s2"]["dataFilter"]["timeRange"]["from"][:10]
        returned = re.search(r"return \[(.*?)\];", request["evalscript"], re.S)
        assert returned is not None
        order = [token.strip().split(".") for token in returned.group(1).split(",")]
        image = np.zeros((len(order), height, width), np.uint16)
        if day in self.hrefs:
            for index, (source, band) in enumerate(order):
                resampling = self.resampling[inputs[source]["processing"]["upsampling"]]
                image[index] = read_on_grid(self.hrefs[day][band], grid, resampling, "uint16", 0)
        with MemoryFile() as memfile:
            with memfile.open(driver="GTiff", width=width, height=height, count=len(order), dtype="uint16",
                              crs=f"EPSG:{epsg}", transform=grid.transform, compress="deflate") as dst:
                dst.write(image)
            tiff = memfile.read()
        return tar_answer(tiff, {"norm_factor": 1.0e-4})


@pytest.fixture
def fake() -> FakeSentinelHub:
    return FakeSentinelHub()


@pytest.fixture(scope="module")
def shared_server() -> LoopbackServer:
    """One loopback server for the module (each start/stop costs ~0.5 s); tests swap its ``api``."""
    with LoopbackServer(DEMO_DIR) as srv:
        yield srv


@pytest.fixture
def server(shared_server: LoopbackServer, fake: FakeSentinelHub) -> LoopbackServer:
    shared_server.api = fake
    shared_server.request_headers.clear()
    return shared_server


def source_for(server: LoopbackServer) -> shub.SentinelHubSource:
    options = SourceOptions(catalog=server.url, workers=2, environment=SourceEnvironment.capture(os.environ))
    return shub.sentinelhub_source(options)


def run_pair(tmp_path: Path, server: LoopbackServer, *extra: str) -> tuple[Path, Path]:
    """Run the pipeline on the demo ROI with --source local and --source sentinelhub (loopback)."""
    for name in ("local", "shub"):
        (tmp_path / name).mkdir()
        shutil.copy(DEMO_DIR / "roi.tiff", tmp_path / name / "roi.tiff")
    assert pipeline.main([str(tmp_path / "local" / "roi.tiff"), *DATES, "--tile-size", "50", "-q"]) == 0
    assert pipeline.main([str(tmp_path / "shub" / "roi.tiff"), *DATES, "--source", "sentinelhub", "--s1-source",
                          "none", "--catalog", server.url, "--tile-size", "50", "-q", *extra]) == 0
    return tmp_path / "local", tmp_path / "shub"


def test_tiles_match_the_local_source_pixel_for_pixel(server: LoopbackServer, fake: FakeSentinelHub,
                                                      tmp_path: Path) -> None:
    local, remote = run_pair(tmp_path, server)
    for tile in ("0_0_50_50", "50_0_100_50", "0_50_50_100", "50_50_100_100"):
        expected = read_tile(local / "retiled_d_pixel" / tile)
        got = read_tile(remote / "retiled_d_pixel" / tile)
        np.testing.assert_array_equal(got.doys, expected.doys)
        np.testing.assert_array_equal(got.bands, expected.bands)
        np.testing.assert_array_equal(got.masks, expected.masks)
        assert got.sar_ascending.shape[0] == 0 and got.sar_descending.shape[0] == 0
    assert got.bands.shape[0] == 10 and got.bands.any()  # the 10 demo dates with cloud cover <= 90 %
    # one Process API request per (day, tile), each on the tile's exact 10 m grid, harmonised DN
    assert len(fake.process_bodies) == 4 * 10
    body = fake.process_bodies[0]
    assert body["output"]["width"] == body["output"]["height"] == 50
    assert body["input"]["bounds"]["properties"]["crs"].endswith("/32631")
    assert body["input"]["data"][0]["processing"]["harmonizeValues"] is True
    # --max-cloud (default 90) also keeps cloudier granules out of the server-side mosaic
    assert {d["dataFilter"]["maxCloudCoverage"] for d in body["input"]["data"]} == {90.0}
    assert '"B04", "B02", "B03", "B08", "B8A", "B05", "B06", "B07", "B11", "B12"' in body["evalscript"]
    # authenticated with one token, the secret sent only to the token endpoint and never logged
    assert len(fake.token_bodies) == 1 and fake.token_bodies[0]["grant_type"] == ["client_credentials"]
    assert sum(h.get("Authorization") == f"Bearer {ACCESS_TOKEN}" for h in server.request_headers) >= 41
    log_text = (remote / "logs" / "preprocess.log").read_text()
    assert CLIENT_SECRET not in log_text and ACCESS_TOKEN not in log_text
    meta = json.loads((remote / "retiled_d_pixel" / "run_metadata.json").read_text())
    assert meta["source"] == "sentinelhub" and meta["root"] == server.url
    assert "harmonizeValues=true" in meta["harmonisation"]
    assert CLIENT_SECRET not in json.dumps(meta) and CLIENT_ID not in json.dumps(meta)


def test_catalog_paging_and_cloud_filter(server: LoopbackServer, fake: FakeSentinelHub) -> None:
    period = Period(dt.date(2020, 11, 1), dt.date(2021, 10, 31))
    scenes = source_for(server).search_s2(DEMO_GRID, period, max_cloud=100)
    assert [s.id for s in scenes] == [f["id"] for f in fake.features]  # 12 items over 3 pages of 5
    assert len(fake.searches) == 3 and fake.searches[0]["collections"] == ["sentinel-2-l2a"]
    assert fake.searches[0]["datetime"] == "2020-11-01T00:00:00Z/2021-10-31T23:59:59Z"
    assert all(s.boa_offset_removed is True and s.collection == "sentinel-2-l2a" for s in scenes)
    assert len(source_for(server).search_s2(DEMO_GRID, period, max_cloud=50)) == 10
    assert fake.searches[0]["bbox"] == pytest.approx(list(DEMO_GRID.lonlat_bounds()))  # the ROI in WGS84


def test_real_item_parsed_and_malformed_item_skipped(server: LoopbackServer, caplog: pytest.LogCaptureFixture) -> None:
    item = json.loads(REAL_ITEM.read_text())
    broken = json.loads(REAL_ITEM.read_text())
    broken["id"] = "S2B_MSIL2A_BROKEN"
    del broken["properties"]["datetime"]
    server.api = FakeSentinelHub([broken, item])
    scenes = source_for(server).search_s2(DEMO_GRID, Period(dt.date(2025, 7, 1), dt.date(2025, 7, 31)), 90)
    assert len(scenes) == 1
    scene = scenes[0]
    assert scene.id == "S2B_24MVV_20250731_0_L2A" and scene.day == dt.date(2025, 7, 31)
    assert scene.processing_baseline == "05.11" and scene.cloud_cover == pytest.approx(34.760532)
    assert scene.boa_offset_removed is True and scene.properties["platform"] == "sentinel-2b"
    assert "S2B_MSIL2A_BROKEN has no valid datetime" in caplog.text


def test_baseline_from_product_id() -> None:
    assert shub.baseline_of("S2A_MSIL2A_20220130T104301_N0400_R008_T31UFS_20220130T134422", {}) == "04.00"
    assert shub.baseline_of("anything", {"s2:processing_baseline": "05.10"}) == "05.10"
    assert shub.baseline_of("no-baseline", {}) is None


def test_empty_search_is_a_clear_error(server: LoopbackServer, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    shutil.copy(DEMO_DIR / "roi.tiff", tmp_path / "roi.tiff")
    server.api = FakeSentinelHub([])
    code = pipeline.main([str(tmp_path / "roi.tiff"), *DATES, "--source", "sentinelhub", "--s1-source", "none",
                          "--catalog", server.url, "-q"])
    assert code == 2
    assert "no Sentinel-2 scene found" in caplog.text and "sentinelhub" in caplog.text


@pytest.mark.parametrize("variable", [shub.CLIENT_ID_ENV, shub.CLIENT_SECRET_ENV])
def test_missing_credentials_exit_2_naming_the_variable(variable: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(variable)
    shutil.copy(DEMO_DIR / "roi.tiff", tmp_path / "roi.tiff")
    code = pipeline.main([str(tmp_path / "roi.tiff"), *DATES, "--source", "sentinelhub", "--s1-source", "none",
                          "--catalog", "http://127.0.0.1:9", "-q"])  # never contacted
    assert code == 2
    assert variable in caplog.text and CLIENT_SECRET not in caplog.text


@pytest.mark.parametrize("answer", [
    # what the Keycloak token endpoints of Sentinel Hub and CDSE answer for a wrong secret
    Reply(json.dumps({"error": "unauthorized_client",
                      "error_description": "Invalid client or Invalid client credentials"}).encode(),
          status=401, content_type="application/json"),
    401,  # a bare 401 without an OAuth error body
], ids=["oauth-error-body", "bare-401"])
def test_rejected_credentials(answer: object, fake: FakeSentinelHub, server: LoopbackServer) -> None:
    fake.queued[TOKEN_PATH].append(answer)
    source = source_for(server)
    with pytest.raises(CredentialsError, match="rejected the OAuth client credentials") as info:
        source.search_s2(DEMO_GRID, Period(dt.date(2021, 5, 1), dt.date(2021, 5, 31)), 90)
    assert "SH_CLIENT_ID" in str(info.value)
    assert CLIENT_SECRET not in str(info.value) and CLIENT_SECRET not in repr(source)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def _may_day(server: LoopbackServer) -> tuple[shub.SentinelHubSource, AcquisitionDay]:
    source = source_for(server)
    scenes = source.search_s2(DEMO_GRID, Period(dt.date(2021, 5, 1), dt.date(2021, 5, 31)), 90)
    assert len(scenes) == 1
    return source, AcquisitionDay(scenes[0].day, tuple(scenes))


def _local_day(day: AcquisitionDay, grid: Grid) -> S2Day:
    from concurrent.futures import ThreadPoolExecutor

    from btfm_preprocessing.sources.cog import read_s2_day
    from btfm_preprocessing.sources.stac_api import local_source

    local = local_source(SourceOptions(catalog=str(DEMO_DIR / "catalog.json")))
    scenes = local.search_s2(grid, Period(day.day, day.day), 100)
    with ThreadPoolExecutor(2) as pool:
        result = read_s2_day(AcquisitionDay(day.day, tuple(scenes)), grid, pool)
    assert result is not None
    return result


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limit_and_server_errors_are_retried(status: int, fake: FakeSentinelHub,
                                                  server: LoopbackServer) -> None:
    source, day = _may_day(server)
    fake.queued[PROCESS_PATH].append(Reply(b"{}", status=status, content_type="application/json",
                                           headers={"Retry-After": "10"}))  # Sentinel Hub: milliseconds
    grid = DEMO_GRID.window(10, 20, 40, 45)
    with pytest.warns() if status == 429 else contextlib.nullcontext():
        result = source.read_s2_day(day, grid, pool=None)  # type: ignore[arg-type]
    assert result is not None and len(fake.process_bodies) == 1
    expected = _local_day(day, grid)
    np.testing.assert_array_equal(result.bands, expected.bands)
    np.testing.assert_array_equal(result.mask, expected.mask)
    np.testing.assert_array_equal(result.covered, expected.covered)


def test_rate_limit_that_never_ends_is_a_clear_error(fake: FakeSentinelHub, server: LoopbackServer) -> None:
    source, day = _may_day(server)
    fake.queued[PROCESS_PATH].extend([Reply(b"{}", status=429, headers={"Retry-After": "1"})] * 10)
    with pytest.warns(), pytest.raises(SourceError, match="429"):
        source.read_s2_day(day, DEMO_GRID.window(0, 0, 20, 20), pool=None)  # type: ignore[arg-type]


def test_persistent_server_error_is_a_clear_error(fake: FakeSentinelHub, server: LoopbackServer) -> None:
    source, day = _may_day(server)
    fake.queued[PROCESS_PATH].extend([500] * 5)
    with pytest.raises(SourceError, match=f"Process API request for {day.day} failed"):
        source.read_s2_day(day, DEMO_GRID.window(0, 0, 20, 20), pool=None)  # type: ignore[arg-type]


def test_recorded_process_answer_through_the_real_client(fake: FakeSentinelHub, server: LoopbackServer) -> None:
    """The real img.tar of sentinelhub-py, fetched by the real client: parsed like the library
    decodes it, then refused with a clear message because it is not the requested tile."""
    from sentinelhub.decoding import decode_tar

    content = REAL_TAR.read_bytes()
    tiff, userdata = shub.parse_process_response(content)
    library = decode_tar(content)
    assert userdata == library["userdata.json"] == {"norm_factor": 1.0e-4}
    with MemoryFile(tiff) as memfile, memfile.open() as src:
        np.testing.assert_array_equal(np.moveaxis(src.read(), 0, -1), library["default.tif"])
        assert (src.count, src.height, src.width, src.dtypes[0]) == (3, 856, 512, "uint16")

    source, day = _may_day(server)
    fake.queued[PROCESS_PATH].append(Reply(content, content_type="application/tar"))
    with pytest.raises(SourceError, match=r"512x856 px uint16 image of 3 bands; expected 30x25 px"):
        source.read_s2_day(day, DEMO_GRID.window(0, 0, 30, 25), pool=None)  # type: ignore[arg-type]


def test_answer_on_another_grid_is_refused() -> None:
    grid = DEMO_GRID.window(0, 0, 8, 6)
    shifted = grid.transform @ Affine.translation(1, 0)
    with MemoryFile() as memfile:
        with memfile.open(driver="GTiff", width=8, height=6, count=11, dtype="uint16", crs="EPSG:32631",
                          transform=shifted) as dst:
            dst.write(np.ones((11, 6, 8), np.uint16))
        tiff = memfile.read()
    with pytest.raises(SourceError, match="another grid"):
        shub.decode_tile(tiff, {}, grid)
    with pytest.raises(SourceError, match="norm_factor"):
        shub.decode_tile(tiff, {"norm_factor": 1.0}, grid)
    with pytest.raises(SourceError, match="not a tar"):
        shub.parse_process_response(b"<html>oops</html>")


def test_tile_larger_than_one_request_is_refused(server: LoopbackServer) -> None:
    big = Grid("EPSG:32631", Affine(10, 0, 600000, 0, -10, 5700000), 2501, 100)
    day = AcquisitionDay(dt.date(2021, 5, 1), ())
    with pytest.raises(SourceError, match="--tile-size 2500 or less"):
        source_for(server).read_s2_day(day, big, pool=None)  # type: ignore[arg-type]


def test_mask_and_harmonise_follow_the_tile_contract() -> None:
    image = np.zeros((2, 3, 11), np.uint16)
    image[..., :10] = 1500
    image[..., 10] = [[4, 9, 0], [6, 3, 11]]  # vegetation, cloud, no data / water, shadow, snow
    day = dt.date(2022, 6, 1)
    raw = Scene("raw", "sentinel-2-l2a", dt.datetime(2022, 6, 1, tzinfo=dt.timezone.utc), {},
                processing_baseline="04.00", boa_offset_removed=False)
    harmonised = Scene("h", "sentinel-2-l2a", raw.acquired, {}, processing_baseline="04.00", boa_offset_removed=True)
    result = shub.mask_and_harmonise(image, [harmonised], day)
    assert result is not None
    np.testing.assert_array_equal(result.mask, [[1, 0, 0], [1, 0, 1]])
    np.testing.assert_array_equal(result.covered, [[True, True, False], [True, True, True]])
    assert result.bands[0, 0, 0] == 1500 and result.bands[0, 2].max() == 0  # Sentinel Hub already harmonised
    result = shub.mask_and_harmonise(image, [raw], day)
    assert result is not None and result.bands[0, 0, 0] == 500  # raw baseline 04.00: the +1000 offset removed once
    image[..., 10] = 0
    assert shub.mask_and_harmonise(image, [raw], day) is None


@pytest.mark.parametrize(("catalog", "env", "base", "token"), [
    (None, {}, shub.SENTINEL_HUB_URL, shub.SENTINEL_HUB_TOKEN_URL),
    ("cdse", {}, shub.CDSE_URL, shub.CDSE_TOKEN_URL),
    (None, {"SH_BASE_URL": "https://sh.dataspace.copernicus.eu/"}, shub.CDSE_URL, shub.CDSE_TOKEN_URL),
    ("https://services-uswest2.sentinel-hub.com", {"SH_BASE_URL": "cdse"},
     "https://services-uswest2.sentinel-hub.com", shub.SENTINEL_HUB_TOKEN_URL),
    ("http://127.0.0.1:8080", {"SH_TOKEN_URL": "http://127.0.0.1:8080/token"}, "http://127.0.0.1:8080",
     "http://127.0.0.1:8080/token"),
])
def test_endpoint_from_flag_or_environment(catalog: str | None, env: dict[str, str], base: str, token: str) -> None:
    endpoint = shub.resolve_endpoint(catalog, env)
    assert (endpoint.base_url, endpoint.token_url) == (base, token)


def test_bad_endpoint_and_collection_are_refused() -> None:
    with pytest.raises(SourceError, match="not a Sentinel Hub base URL"):
        shub.resolve_endpoint("data/demo_belgium/catalog.json", {})
    with pytest.raises(SourceError, match="only the collection sentinel-2-l2a"):
        shub.sentinelhub_source(SourceOptions(s2_collection="sentinel-2-c1-l2a"))


def test_describe_has_no_secrets() -> None:
    source = shub.sentinelhub_source(SourceOptions(catalog="cdse", environment=SourceEnvironment.capture(os.environ)))
    described = json.dumps(source.describe())
    assert "Copernicus Data Space Ecosystem" in described and shub.CDSE_URL in described
    assert CLIENT_SECRET not in described + repr(source) and CLIENT_ID not in described + repr(source)
