"""``--s1-source asf-hyp3``: submit RTC jobs, poll, download, extract; resumable; over a loopback server.

ASF search answers are the recorded ones of ``tests/data/asf`` (see test_asf.py). HyP3 has no recorded
answers here: the fake API below builds its JSON from HyP3's documented job schema (PROVENANCE.md in
``tests/data/hyp3``), and ``hyp3_sdk`` (the real client) talks to it. Product contents are real S1 data:
a Camargue crop (``tests/data/hyp3``) and, for the end-to-end run, the demo sample's S1 over Belgium.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hyp3_sdk.util
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling

from btfm_core.errors import CredentialsError, SourceError
from btfm_core.grid import Grid
from btfm_core.loopback import LoopbackServer, Reply
from btfm_core.tiles import read_tile
from btfm_preprocessing import pipeline
from btfm_preprocessing.encoding import decode_s1_db
from btfm_preprocessing.period import Period
from btfm_preprocessing.reader import read_on_grid
from btfm_preprocessing.sources import S1_SOURCES, Scene, SourceEnvironment, SourceOptions, hyp3
from btfm_preprocessing.sources.asf import SEARCH_URL_ENV
from btfm_preprocessing.sources.cog import read_s1_day
from btfm_preprocessing.stack import group_by_day
from tests.conftest import DEMO_DIR
from tests.preprocessing.test_asf import GRD_ID, PASSWORD, FakeAsf, recorded_item

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

HYP3_DATA = Path(__file__).resolve().parents[1] / "data" / "hyp3"
CAMARGUE_PRODUCT = HYP3_DATA / "S1A_IW_20150309T173017_DVP_RTC20_G_gpuned_C4MG.zip"
CAMARGUE_DB = (Path(__file__).resolve().parents[3] / "shared" / "data" / "s1_geocoded_db"
               / "S1A__IW___A_20150309T173017_VV_grd_mli_geo_norm_db.tif")
#: a 10 m ROI grid inside the Camargue product (EPSG:32631)
CAMARGUE_GRID = Grid("EPSG:32631", Affine(10, 0, 621200, 0, -10, 4829000), 100, 120)
PERIOD = Period(dt.date(2021, 11, 1), dt.date(2021, 11, 30))
COST_PER_JOB = 60.0


@dataclass
class FakeHyp3:
    """HyP3 API (``/hyp3/jobs``) and Earthdata login (``/oauth/authorize``) answers, per the documented schema.

    Attributes:
        product: name of the product zip served under ``/products/``.
        statuses: what successive GETs of a job answer (the last one repeats).
        failing: granules whose job ends FAILED.
        remaining_credits: the account's credits; a submission costing more is refused (400).
    """

    product: str
    base: str = ""
    product_size: int = 0
    statuses: list[str] = field(default_factory=lambda: ["RUNNING", "SUCCEEDED"])
    failing: set[str] = field(default_factory=set)
    remaining_credits: float = 10_000.0
    submitted: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: Counter[str] = field(default_factory=Counter)
    logins: list[str] = field(default_factory=list)

    def job(self, job_id: str) -> dict[str, Any]:
        job = dict(self.jobs[job_id])
        granule = job["job_parameters"]["granules"][0]
        status = self.statuses[min(self.polls[job_id], len(self.statuses) - 1)]
        self.polls[job_id] += 1
        if status == "SUCCEEDED" and granule in self.failing:
            status = "FAILED"
            job["logs"] = [f"{self.base}/logs/{job_id}.log"]
        job["status_code"] = status
        if status == "SUCCEEDED":
            job["files"] = [{"filename": self.product, "size": self.product_size,
                             "url": f"{self.base}/products/{self.product}",
                             "s3": {"bucket": "hyp3-test-contentbucket", "key": f"{job_id}/{self.product}"}}]
            job["browse_images"] = [f"{self.base}/products/{job_id}.png"]
            job["thumbnail_images"] = [f"{self.base}/products/{job_id}_thumb.png"]
            job["expiration_time"] = "2099-01-01T00:00:00+00:00"
            job["processing_times"] = [1234.5]
        return job

    def __call__(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> object | None:
        if method == "GET" and path.startswith("/oauth/authorize"):
            self.logins.append(headers.get("Authorization", ""))
            if not headers.get("Authorization", "").startswith("Basic "):
                return Reply(b"", status=401)
            return Reply(b"", headers={"Set-Cookie": "asf-urs=test-session; Path=/"})
        if method == "POST" and path == "/hyp3/jobs":
            new = json.loads(body or b"{}")["jobs"]
            cost = COST_PER_JOB * len(new)
            if cost > self.remaining_credits:
                detail = (f"These jobs would cost {cost} credits, but you have only {self.remaining_credits} "
                          "remaining.")
                return Reply(json.dumps({"detail": detail, "status": 400, "title": "Bad Request",
                                         "type": "about:blank"}).encode(), status=400,
                             content_type="application/problem+json")
            self.remaining_credits -= cost
            answer = []
            for prepared in new:
                self.submitted.append(prepared)
                job_id = str(uuid.UUID(int=len(self.submitted)))
                self.jobs[job_id] = {"job_id": job_id, "user_id": "btfm-tester", "job_type": prepared["job_type"],
                                     "job_parameters": prepared["job_parameters"], "name": prepared.get("name"),
                                     "request_time": "2026-01-05T10:00:00+00:00", "status_code": "PENDING",
                                     "execution_started": False, "credit_cost": COST_PER_JOB, "priority": 9999,
                                     "files": [], "browse_images": [], "thumbnail_images": [], "logs": [],
                                     "expiration_time": None, "processing_times": []}
                answer.append(dict(self.jobs[job_id]))
            return {"jobs": answer}
        if method == "GET" and path.startswith("/hyp3/jobs/"):
            job_id = path.rsplit("/", 1)[1]
            if job_id not in self.jobs:
                return Reply(b'{"detail": "not found"}', status=404, content_type="application/json")
            return self.job(job_id)
        return None


@contextmanager
def fake_services(root: Path, product: Path, **fields: Any) -> Iterator[tuple[LoopbackServer, FakeHyp3]]:
    """Loopback with the recorded ASF search, the fake HyP3 API and ``product`` under ``/products/``."""
    (root / "products").mkdir(parents=True, exist_ok=True)
    (root / "products" / product.name).write_bytes(product.read_bytes())
    fake = FakeHyp3(product.name, product_size=product.stat().st_size, **fields)
    search = FakeAsf([[recorded_item("S1_response.yml")]])
    srv: LoopbackServer

    def api(method: str, path: str, body: bytes | None) -> object | None:
        answer = fake(method, path, body, srv.request_headers[-1])
        return answer if answer is not None else search(method, path, body)

    with LoopbackServer(root, api) as srv:
        fake.base = srv.url
        search.server = srv
        yield srv, fake


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Earthdata login in the environment, no polling delay."""
    monkeypatch.setenv("EARTHDATA_USERNAME", "btfm-tester")
    monkeypatch.setenv("EARTHDATA_PASSWORD", PASSWORD)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv(hyp3.POLL_ENV, "0")
    monkeypatch.delenv(hyp3.TIMEOUT_ENV, raising=False)
    return monkeypatch


def source_for(srv: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> hyp3.Hyp3Source:
    """``--s1-source asf-hyp3`` with the API (``--s1-catalog``), search and login on the loopback."""
    monkeypatch.setattr(hyp3_sdk.util, "AUTH_URL", f"{srv.url}/oauth/authorize?response_type=code&app_type=401")
    monkeypatch.setenv(SEARCH_URL_ENV, srv.url)
    source = S1_SOURCES["asf-hyp3"](SourceOptions(s1_catalog=f"{srv.url}/hyp3", work_dir=tmp_path / "work",
                                                  workers=2, environment=SourceEnvironment.capture(os.environ)))
    assert isinstance(source, hyp3.Hyp3Source)
    return source


def test_submit_poll_download_extract_and_read(tmp_path: Path, env: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with fake_services(tmp_path / "served", CAMARGUE_PRODUCT) as (srv, fake), caplog.at_level(logging.DEBUG):
        source = source_for(srv, tmp_path, env)
        scenes = source.search_s1(CAMARGUE_GRID, PERIOD)
        [prepared] = source.prepare_s1(scenes, CAMARGUE_GRID)
        served = srv.bytes_served[CAMARGUE_PRODUCT.name]
    [job] = fake.submitted
    assert job["job_type"] == "RTC_GAMMA" and job["job_parameters"]["granules"] == [GRD_ID]
    params = job["job_parameters"]
    assert (params["resolution"], params["scale"], params["radiometry"]) == (10, "power", "gamma0")
    assert list(fake.polls.values()) == [2]  # RUNNING, then SUCCEEDED
    assert fake.logins and all(login.startswith("Basic ") for login in fake.logins)
    assert served == CAMARGUE_PRODUCT.stat().st_size
    assert not list((tmp_path / "work" / "downloads").glob("*.zip"))  # deleted after extraction
    assert json.loads(source.jobs_file.read_text())["jobs"] == {GRD_ID: str(uuid.UUID(int=1))}
    assert prepared.id == GRD_ID and prepared.orbit_state == "ascending"
    assert prepared.properties["btfm:backscatter"] == hyp3.BACKSCATTER
    assert prepared.properties["hyp3:job_id"] == str(uuid.UUID(int=1))
    assert PASSWORD not in caplog.text

    [day] = group_by_day([prepared])
    with ThreadPoolExecutor(2) as pool:
        codes = read_s1_day(day, CAMARGUE_GRID, pool)
    assert codes is not None and codes.shape == (*CAMARGUE_GRID.shape, 2) and (codes[..., 0] != 0).mean() > 0.95
    db = decode_s1_db(codes)
    both = (codes != 0).all(axis=-1)  # VH under -25 dB encodes as 0 (no data)
    # VH was made as VV - 7 dB in power, and bilinear resampling of power keeps that ratio
    assert both.mean() > 0.5 and np.allclose(db[both, 0] - db[both, 1], 7.0, atol=0.01)
    if CAMARGUE_DB.is_file():  # the original dB values at the ROI's pixels (nearest 20 m pixel)
        original = read_on_grid(str(CAMARGUE_DB), CAMARGUE_GRID, Resampling.nearest, "float32", np.nan)
        valid = codes[..., 0] != 0
        assert np.median(np.abs(db[valid, 0] - original[valid])) < 1.5
    described = source.describe()
    assert described["hyp3_api"] == f"{srv.url}/hyp3" and described["backscatter"] == hyp3.BACKSCATTER


def test_restart_does_not_resubmit(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    with fake_services(tmp_path / "served", CAMARGUE_PRODUCT, statuses=["PENDING", "RUNNING"]) as (srv, fake):
        env.setenv(hyp3.TIMEOUT_ENV, "0")  # the first run gives up while the job still runs
        source = source_for(srv, tmp_path, env)
        scenes = source.search_s1(CAMARGUE_GRID, PERIOD)
        with pytest.raises(SourceError, match="still unfinished"):
            source.prepare_s1(scenes, CAMARGUE_GRID)
        assert len(fake.submitted) == 1 and source.jobs_file.is_file()

        env.delenv(hyp3.TIMEOUT_ENV)
        fake.statuses = ["RUNNING", "SUCCEEDED"]
        restarted = source_for(srv, tmp_path, env)
        [prepared] = restarted.prepare_s1(scenes, CAMARGUE_GRID)
        assert len(fake.submitted) == 1  # polled the job it had, submitted nothing
        logins = len(fake.logins)

        third = source_for(srv, tmp_path, env)
        assert third.prepare_s1(scenes, CAMARGUE_GRID) == [prepared]  # products on disk: no request at all
        assert len(fake.logins) == logins and len(fake.submitted) == 1
    assert srv.bytes_served[CAMARGUE_PRODUCT.name] == CAMARGUE_PRODUCT.stat().st_size


def test_failed_job_is_dropped_with_a_warning(tmp_path: Path, env: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with fake_services(tmp_path / "served", CAMARGUE_PRODUCT, failing={GRD_ID}) as (srv, _), \
            caplog.at_level(logging.WARNING):
        source = source_for(srv, tmp_path, env)
        scenes = source.search_s1(CAMARGUE_GRID, PERIOD)
        assert source.prepare_s1(scenes, CAMARGUE_GRID) == []
    assert "FAILED" in caplog.text and GRD_ID in caplog.text and str(uuid.UUID(int=1)) in caplog.text
    assert srv.bytes_served[CAMARGUE_PRODUCT.name] == 0


def test_lack_of_credits_is_a_clear_error(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    with fake_services(tmp_path / "served", CAMARGUE_PRODUCT, remaining_credits=5.0) as (srv, fake):
        source = source_for(srv, tmp_path, env)
        scenes = source.search_s1(CAMARGUE_GRID, PERIOD)
        with pytest.raises(SourceError) as error:
            source.prepare_s1(scenes, CAMARGUE_GRID)
    message = str(error.value)
    assert "credits" in message and "but you have only 5.0 remaining" in message and "monthly" in message
    assert not fake.submitted and not source.jobs_file.exists()


def test_missing_credentials_name_the_variables(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    env.delenv("EARTHDATA_USERNAME")
    env.delenv("EARTHDATA_PASSWORD")
    with fake_services(tmp_path / "served", CAMARGUE_PRODUCT) as (srv, fake):
        source = source_for(srv, tmp_path, env)
        scenes = source.search_s1(CAMARGUE_GRID, PERIOD)  # searching needs no login
        with pytest.raises(CredentialsError) as error:
            source.prepare_s1(scenes, CAMARGUE_GRID)
    message = str(error.value)
    assert "EARTHDATA_USERNAME" in message and "EARTHDATA_PASSWORD" in message and ".netrc" in message
    assert not fake.submitted and not fake.logins


def demo_product(tmp_path: Path, item: str = "S1_DEMO_BE_20210101") -> Path:
    """A HyP3-layout product zip whose VV/VH are the demo sample's real S1 (Belgium, linear power)."""
    name = "S1B_IW_20211110T032039_DVP_RTC10_G_gpuned_BE01"
    out = tmp_path / f"{name}.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for pol in ("VV", "VH"):
            archive.write(DEMO_DIR / "sentinel-1-rtc" / item / f"{pol.lower()}.tif", f"{name}/{name}_{pol}.tif")
    out.write_bytes(buffer.getvalue())
    return out


def test_pipeline_end_to_end(tmp_path: Path, env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """pipeline.main with S2 from the local demo catalog and S1 from asf-hyp3 over the loopback."""
    roi = tmp_path / "run" / "roi.tiff"
    roi.parent.mkdir()
    roi.write_bytes((DEMO_DIR / "roi.tiff").read_bytes())
    product = demo_product(tmp_path)
    with fake_services(tmp_path / "served", product) as (srv, fake), caplog.at_level(logging.INFO):
        env.setattr(hyp3_sdk.util, "AUTH_URL", f"{srv.url}/oauth/authorize?response_type=code&app_type=401")
        env.setenv(SEARCH_URL_ENV, srv.url)
        code = pipeline.main([str(roi), "2020-11-01", "2021-10-31", "2021-01-01", "2021-12-31", "1",
                              "--source", "local", "--catalog", str(DEMO_DIR / "catalog.json"),
                              "--s1-source", "asf-hyp3", "--s1-catalog", f"{srv.url}/hyp3", "--tile-size", "50",
                              "--workers", "2"])
    assert code == 0, caplog.text
    assert len(fake.submitted) == 1 and PASSWORD not in caplog.text
    tiles_dir = roi.parent / "retiled_d_pixel"
    metadata = json.loads((tiles_dir / "run_metadata.json").read_text())
    assert metadata["s1_source"] == "asf-hyp3" and metadata["s1_backscatter"] == hyp3.BACKSCATTER
    assert metadata["s1"]["job_type"] == "RTC_GAMMA"
    assert not (roi.parent / "cache").exists()  # products and the job file went with the cache
    demo = Scene(id="demo", collection="sentinel-1-rtc", acquired=dt.datetime(2021, 11, 10, tzinfo=dt.timezone.utc),
                 assets={pol: str(DEMO_DIR / "sentinel-1-rtc" / "S1_DEMO_BE_20210101" / f"{pol.lower()}.tif")
                         for pol in ("VV", "VH")}, orbit_state="ascending")
    folders = sorted(p for p in tiles_dir.iterdir() if p.is_dir())
    assert folders
    with ThreadPoolExecutor(2) as pool:
        for folder in folders:
            tile = read_tile(folder)
            assert list(tile.sar_ascending_doy) == [314] and tile.sar_descending.shape[0] == 0
            with rasterio.open(folder / "roi.tiff") as src:
                grid = Grid.from_dataset(src)
            expected = read_s1_day(group_by_day([demo])[0], grid, pool)
            assert expected is not None and np.array_equal(tile.sar_ascending[0], expected)


def test_registry_and_endpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(hyp3.HYP3_API_ENV, raising=False)
    monkeypatch.delenv(SEARCH_URL_ENV, raising=False)
    monkeypatch.delenv(hyp3.POLL_ENV, raising=False)
    def options() -> SourceOptions:  # the environment as the command line would capture it now
        return SourceOptions(work_dir=tmp_path, environment=SourceEnvironment.capture(os.environ))

    source = S1_SOURCES["asf-hyp3"](options())
    assert isinstance(source, hyp3.Hyp3Source)
    assert source.api_url == "https://hyp3-api.asf.alaska.edu" and source.poll_s == hyp3.DEFAULT_POLL_S
    monkeypatch.setenv(hyp3.HYP3_API_ENV, "http://127.0.0.1:9/api/")
    monkeypatch.setenv(hyp3.POLL_ENV, "soon")
    with pytest.raises(SourceError, match=hyp3.POLL_ENV):
        S1_SOURCES["asf-hyp3"](options())
    monkeypatch.setenv(hyp3.POLL_ENV, "1")
    assert S1_SOURCES["asf-hyp3"](options()).api_url == "http://127.0.0.1:9/api"

