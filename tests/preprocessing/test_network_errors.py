"""Network failures reach the user as one line (service, URL, what to try), with bounded, logged retries.

Everything runs against 127.0.0.1: a closed port stands for an unreachable service (connection
refused), loopback servers for services that answer 5xx, 429 or something unexpected. The CLI
tests drive ``btfm_preprocessing.pipeline.main`` in-process, as a user would run it, and read what
reaches stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3.exceptions
from affine import Affine

from btfm_core.errors import DownloadError, ServiceUnavailableError, UnexpectedResponseError
from btfm_core.grid import Grid
from btfm_core.loopback import LoopbackServer, Reply
from btfm_preprocessing import pipeline
from btfm_preprocessing.download import download
from btfm_preprocessing.network import describe_problem, network_reason, safe_url
from btfm_preprocessing.period import Period
from btfm_preprocessing.sources import AcquisitionDay, SourceEnvironment, SourceOptions, asf, hyp3
from btfm_preprocessing.sources import sentinelhub as shub
from btfm_preprocessing.sources import stac_api as stac_module
from btfm_preprocessing.sources.stac_api import SEARCH_CONNECT_RETRIES, earthsearch_source
from tests.conftest import DEMO_DIR
from tests.preprocessing.test_asf import FakeAsf, recorded_item
from tests.preprocessing.test_hyp3 import CAMARGUE_GRID, CAMARGUE_PRODUCT, fake_services
from tests.preprocessing.test_hyp3 import PERIOD as HYP3_PERIOD
from tests.preprocessing.test_hyp3 import source_for as hyp3_source_for
from tests.preprocessing.test_remote_stac import stac_api
from tests.preprocessing.test_sentinelhub import PROCESS_PATH, TOKEN_PATH, FakeSentinelHub

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

DATES = ["2020-11-01", "2021-10-31", "2020-11-01", "2021-10-31", "1"]
DEMO_GRID = Grid("EPSG:32631", Affine(10, 0, 664000, 0, -10, 5612120), 100, 100)
MAY = Period(dt.date(2021, 5, 1), dt.date(2021, 5, 31))


@pytest.fixture
def closed_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def roi(tmp_path: Path) -> Path:
    shutil.copy(DEMO_DIR / "roi.tiff", tmp_path / "roi.tiff")
    return tmp_path / "roi.tiff"


class Waits:
    """A ``sleep`` that records the seconds asked for instead of waiting."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], float]:
    """Run the preprocessing CLI quietly: ``(exit code, non-empty stderr lines, seconds)``."""
    capsys.readouterr()
    started = time.monotonic()
    code = pipeline.main([*argv, "-q"])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip()], elapsed


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "; retry " in r.getMessage()]


def assert_traceback_logged(roi: Path) -> None:
    """The traceback the console does not show is in the run's log file."""
    assert "Traceback" in (roi.parent / "logs" / "preprocess.log").read_text()


# --- unreachable services: one line, exit 2, bounded time ------------------------------------------


def test_unreachable_stac_api(roi: Path, closed_url: str, capsys: pytest.CaptureFixture[str],
                              caplog: pytest.LogCaptureFixture) -> None:
    code, lines, elapsed = run_cli([str(roi), *DATES, "--source", "earthsearch", "--s1-source", "none",
                                    "--catalog", f"{closed_url}/api"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "Earth Search STAC API" in lines[0] and f"{closed_url}/api" in lines[0]
    assert "unreachable (connection refused)" in lines[0] and "--source" in lines[0]
    assert retry_lines(caplog) == [  # each wait logged: 0 s, then 2 s
        "Earth Search STAC API unreachable (connection refused); retry 1/2 in 0 s",
        "Earth Search STAC API unreachable (connection refused); retry 2/2 in 2 s"]
    assert SEARCH_CONNECT_RETRIES == 2 and elapsed < 10  # 2 s of waiting, not 30
    assert_traceback_logged(roi)


def test_unreachable_sentinelhub_token_endpoint(roi: Path, closed_url: str, capsys: pytest.CaptureFixture[str],
                                                caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shub.CLIENT_ID_ENV, "test-client-id")
    monkeypatch.setenv(shub.CLIENT_SECRET_ENV, "s3cr3t-value-never-logged")
    monkeypatch.delenv(shub.TOKEN_URL_ENV, raising=False)
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    waits = Waits()
    policy = replace(shub.RetryPolicy(), sleep=waits)  # the default policy, without the waiting
    monkeypatch.setattr(shub, "DEFAULT_RETRY", policy)
    code, lines, elapsed = run_cli([str(roi), *DATES, "--source", "sentinelhub", "--s1-source", "none",
                                    "--catalog", closed_url], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "token request failed: unreachable (connection refused) after 3 tries" in lines[0]
    assert f"{closed_url}{TOKEN_PATH}" in lines[0] and "--source earthsearch" in lines[0]
    assert "s3cr3t" not in lines[0]
    assert waits.seconds == [5.0, 10.0] and policy.total_wait_s(policy.unreachable_attempts) <= 60
    assert len(retry_lines(caplog)) == 2 and "retry 2/2 in 10 s" in retry_lines(caplog)[1]
    assert elapsed < 10
    assert_traceback_logged(roi)


def test_unreachable_asf_search(roi: Path, closed_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, elapsed = run_cli([str(roi), *DATES, "--catalog", str(DEMO_DIR / "catalog.json"),
                                    "--s1-source", "asf", "--s1-catalog", closed_url], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"ASF search (NASA CMR) at {closed_url} is unreachable (connection refused)" in lines[0]
    assert "--s1-source planetary" in lines[0] and elapsed < 10
    assert_traceback_logged(roi)


def test_unreachable_download_gives_up_after_the_logged_waits(tmp_path: Path, closed_url: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    waits = Waits()
    with caplog.at_level(logging.INFO), requests.Session() as session, \
            pytest.raises(DownloadError, match="connection refused") as info:
        download(f"{closed_url}/scene.zip?token=abc", tmp_path / "scene.zip", session, sleep=waits)
    assert waits.seconds == [1, 2, 4, 8]  # 15 s in all with the defaults
    assert "after 5 tries" in str(info.value) and "token=abc" not in str(info.value)
    assert retry_lines(caplog)[0] == "download of scene.zip failed (connection refused); retry 1/4 in 1 s"


def test_unreachable_logins_are_not_blamed_on_the_credentials(closed_url: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import hyp3_sdk.util

    monkeypatch.setenv("EARTHDATA_USERNAME", "btfm-tester")
    monkeypatch.setenv("EARTHDATA_PASSWORD", "s3cret-Pa55word")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    login = SourceEnvironment.capture(os.environ).earthdata_login()
    with pytest.raises(ServiceUnavailableError, match=r"Earthdata login at .* is unreachable \(connection refused"):
        asf.earthdata_session(closed_url, closed_url, login)
    monkeypatch.setattr(hyp3_sdk.util, "AUTH_URL", f"{closed_url}/oauth/authorize")
    with pytest.raises(ServiceUnavailableError,
                       match=rf"login for HyP3 \({closed_url}/oauth/authorize\) is unreachable \(connection refused"):
        hyp3.hyp3_client(f"{closed_url}/hyp3", login)


def test_unreachable_planetary_sas_token_service(closed_url: str, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    import planetary_computer.settings

    from btfm_preprocessing.sources.stac_api import planetary_sign

    monkeypatch.setattr(planetary_computer.settings.Settings.get(), "sas_url", f"{closed_url}/api/sas/v1/token")
    waits = Waits()
    with caplog.at_level(logging.INFO), pytest.raises(
            ServiceUnavailableError, match=r"SAS token request for pcstore/sentinel2-l2a failed: unreachable "
                                           r"\(connection refused\) after 4 tries"):
        planetary_sign("https://pcstore.blob.core.windows.net/sentinel2-l2a/B04.tif", sleep=waits)
    assert waits.seconds == [1, 2, 4] and len(retry_lines(caplog)) == 3


# --- unexpected answers: one line naming what is missing ----------------------------------------------


def test_asf_answer_without_items_names_the_key(roi: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def api(method: str, path: str, body: bytes | None) -> object | None:
        return {"hits": 3, "took": 1} if path.startswith("/search/granules.umm_json") else None

    with LoopbackServer(roi.parent, api) as srv:
        code, lines, _ = run_cli([str(roi), *DATES, "--catalog", str(DEMO_DIR / "catalog.json"),
                                  "--s1-source", "asf", "--s1-catalog", srv.url], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"ASF search (NASA CMR) at {srv.url} answered JSON without the key 'items'" in lines[0]
    assert "--s1-catalog" in lines[0]


def test_asf_item_without_umm_is_an_unexpected_answer() -> None:
    def api(method: str, path: str, body: bytes | None) -> object | None:
        return {"hits": 1, "items": [{"meta": {}}]}

    with LoopbackServer(DEMO_DIR, api) as srv, pytest.raises(UnexpectedResponseError, match="key 'umm'"):
        asf.search_grd(DEMO_GRID, MAY, srv.url)


def test_static_catalog_with_a_missing_child(roi: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = tmp_path / "catalog"
    shutil.copytree(DEMO_DIR, catalog, ignore=shutil.ignore_patterns("*.tif", "*.tiff"))
    root = json.loads((catalog / "catalog.json").read_text())
    child = next(link["href"] for link in root["links"] if link["rel"] == "child")
    (catalog / child).unlink()
    code, lines, _ = run_cli([str(roi), *DATES, "--catalog", str(catalog / "catalog.json")], capsys)
    assert code == 2 and len(lines) == 1, lines
    missing = (catalog / child).resolve()
    assert f"the STAC catalog {catalog / 'catalog.json'} links to {missing}, which is missing" in lines[0]


def test_stac_api_answer_that_is_not_json() -> None:
    with LoopbackServer(DEMO_DIR, lambda method, path, body: Reply(b"<html>portal</html>", content_type="text/html")
                        ) as srv, pytest.raises(UnexpectedResponseError, match="answered something that is not JSON"):
        earthsearch_source(SourceOptions(catalog=f"{srv.url}/api")).search_s2(DEMO_GRID, MAY, 100)


@pytest.mark.parametrize("answer", [Reply(b"<html>login portal</html>", content_type="text/html"), {"hello": 1}],
                         ids=["html", "json"])
def test_token_endpoint_that_gives_no_token(answer: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shub.CLIENT_ID_ENV, "test-client-id")
    monkeypatch.setenv(shub.CLIENT_SECRET_ENV, "s3cr3t-value-never-logged")
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    with LoopbackServer(DEMO_DIR, lambda method, path, body: answer) as srv, pytest.raises(
            UnexpectedResponseError, match=f"{srv.url}{TOKEN_PATH} answered without an access token"):
        options = SourceOptions(catalog=srv.url, environment=SourceEnvironment.capture(os.environ))
        shub.sentinelhub_source(options).search_s2(DEMO_GRID, MAY, 90)


def test_hyp3_submission_answer_without_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARTHDATA_USERNAME", "btfm-tester")
    monkeypatch.setenv("EARTHDATA_PASSWORD", "s3cret-Pa55word")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with fake_services(tmp_path / "served", CAMARGUE_PRODUCT) as (srv, _):
        source = hyp3_source_for(srv, tmp_path, monkeypatch)
        scenes = source.search_s1(CAMARGUE_GRID, HYP3_PERIOD)
        answer = srv.api
        srv.api = lambda method, path, body: (  # type: ignore[assignment]
            {"submitted": 1} if method == "POST" and path == "/hyp3/jobs" else answer(method, path, body))
        with pytest.raises(UnexpectedResponseError, match="answered JSON without the key 'jobs' while submitting"):
            source.prepare_s1(scenes, CAMARGUE_GRID)


# --- busy services: each wait logged at INFO, then success --------------------------------------------


def flaky(api: Callable[[str, str, bytes | None], object | None], path: str, answers: list[object]
          ) -> Callable[[str, str, bytes | None], object | None]:
    """``api``, answering requests of ``path`` with ``answers`` first."""
    def handle(method: str, requested: str, body: bytes | None) -> object | None:
        if requested.split("?")[0] == path and answers:
            return answers.pop(0)
        return api(method, requested, body)
    return handle


def test_stac_api_503_then_200_logs_each_wait(caplog: pytest.LogCaptureFixture) -> None:
    with LoopbackServer(DEMO_DIR) as srv, caplog.at_level(logging.INFO):
        srv.api = flaky(stac_api(srv.url), "/api/search", [503, 503])  # type: ignore[assignment,arg-type]
        scenes = earthsearch_source(SourceOptions(catalog=f"{srv.url}/api")).search_s2(DEMO_GRID, MAY, 100)
    assert len(scenes) == 1
    assert retry_lines(caplog) == ["Earth Search STAC API answered HTTP 503; retry 1/5 in 0 s",
                                   "Earth Search STAC API answered HTTP 503; retry 2/5 in 2 s"]


def test_stac_api_that_keeps_failing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stac_module, "SEARCH_BACKOFF_S", 0.01)
    with LoopbackServer(DEMO_DIR) as srv, pytest.raises(ServiceUnavailableError) as info:
        srv.api = flaky(stac_api(srv.url), "/api/search", [502] * 10)  # type: ignore[assignment,arg-type]
        earthsearch_source(SourceOptions(catalog=f"{srv.url}/api")).search_s2(DEMO_GRID, MAY, 100)
    assert "Earth Search STAC API" in str(info.value) and "kept answering HTTP 502 after 5 retries" in str(info.value)


def test_sentinelhub_503_token_and_429_process_are_logged(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(shub.CLIENT_ID_ENV, "test-client-id")
    monkeypatch.setenv(shub.CLIENT_SECRET_ENV, "s3cr3t-value-never-logged")
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    waits = Waits()
    fake = FakeSentinelHub()
    fake.queued[TOKEN_PATH].append(503)
    fake.queued[PROCESS_PATH] += [Reply(b"{}", status=429, headers={"Retry-After": "120000"})]  # 2 min, in ms
    monkeypatch.setattr(shub, "DEFAULT_RETRY", shub.RetryPolicy(sleep=waits, rate_limit_max_wait_s=0.01))
    with LoopbackServer(DEMO_DIR, fake) as srv, caplog.at_level(logging.INFO), pytest.warns(match="rate limit"):
        source = shub.sentinelhub_source(SourceOptions(catalog=srv.url, workers=1,
                                                       environment=SourceEnvironment.capture(os.environ)))
        scenes = source.search_s2(DEMO_GRID, MAY, 90)
        day = AcquisitionDay(scenes[0].day, tuple(scenes))
        result = source.read_s2_day(day, DEMO_GRID.window(0, 0, 20, 20), pool=None)  # type: ignore[arg-type]
    assert result is not None and waits.seconds == [5.0]
    lines = retry_lines(caplog)
    assert lines[0].endswith("token request answered HTTP 503; retry 1/3 in 5 s")
    assert lines[1].endswith("answered HTTP 429 (rate limit); retry 1/19 in 0.01 s")  # Retry-After capped


def test_asf_search_5xx_retries_are_logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import importlib

    retrying = importlib.import_module("asf_search.search.search_generator").get_page.retry
    waits = Waits()
    monkeypatch.setattr(retrying, "sleep", waits)
    busy = Reply(json.dumps({"errors": ["busy"]}).encode(), status=503, content_type="application/json")
    search = FakeAsf([[recorded_item("S1_response.yml")]])
    with LoopbackServer(DEMO_DIR) as srv, caplog.at_level(logging.INFO):
        search.server = srv
        srv.api = flaky(search, "/search/granules.umm_json", [busy, busy])  # type: ignore[assignment,arg-type]
        scenes = asf.search_grd(DEMO_GRID, Period(dt.date(2021, 11, 1), dt.date(2021, 11, 30)), srv.url)
    assert len(scenes) == 1 and waits.seconds == [3, 3]
    assert retry_lines(caplog) == ["ASF search (NASA CMR) answered HTTP 503: ['busy']; retry 1/2 in 3 s",
                                   "ASF search (NASA CMR) answered HTTP 503: ['busy']; retry 2/2 in 3 s"]


@pytest.mark.parametrize("failed_polls", [1, 3])
def test_hyp3_failed_polls_are_retried_then_given_up(failed_polls: int, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("EARTHDATA_USERNAME", "btfm-tester")
    monkeypatch.setenv("EARTHDATA_PASSWORD", "s3cret-Pa55word")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv(hyp3.POLL_ENV, "0")
    busy = Reply(b'{"detail": "busy"}', status=503, content_type="application/json")
    with fake_services(tmp_path / "served", CAMARGUE_PRODUCT) as (srv, _), caplog.at_level(logging.INFO):
        source = hyp3_source_for(srv, tmp_path, monkeypatch)
        scenes = source.search_s1(CAMARGUE_GRID, HYP3_PERIOD)
        answer = srv.api

        def api(method: str, path: str, body: bytes | None) -> Any:
            if method == "GET" and path.startswith("/hyp3/jobs/") and len(busy_left) > 0:
                return busy_left.pop()
            return answer(method, path, body)  # type: ignore[misc,operator]

        busy_left = [busy] * failed_polls
        srv.api = api  # type: ignore[assignment]
        if failed_polls <= hyp3.POLL_RETRIES:
            assert len(source.prepare_s1(scenes, CAMARGUE_GRID)) == 1
        else:
            with pytest.raises(ServiceUnavailableError, match="HTTP 503 while polling") as info:
                source.prepare_s1(scenes, CAMARGUE_GRID)
            assert str(source.jobs_file) in str(info.value)  # the rerun resumes
    lines = retry_lines(caplog)
    assert lines[0] == "HyP3 API answered HTTP 503; retry 1/2 in 0 s"
    assert len(lines) == min(failed_polls, hyp3.POLL_RETRIES)


# --- the vocabulary -----------------------------------------------------------------------------------


def test_reasons_of_wrapped_socket_errors() -> None:
    dns = urllib3.exceptions.NameResolutionError("cmr.example", None, socket.gaierror(-2, "Name or service not known"))
    wrapped = requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/search", dns))  # type: ignore[arg-type]
    assert network_reason(wrapped).startswith("DNS lookup failed")
    assert describe_problem(wrapped).startswith("unreachable (DNS lookup failed")
    assert network_reason(requests.ReadTimeout("read timed out")) == "no answer before the timeout"
    assert safe_url("https://user:pw@host.example:8443/path?sig=secret") == "https://host.example:8443/path"
