"""``--s1-source asf-hyp3``: Sentinel-1 RTC processed on demand by ASF HyP3.

Scenes are found like ``--s1-source asf`` (:func:`btfm_preprocessing.sources.asf.search_grd`: the
one backend this one builds on). Preparing them submits one ``RTC_GAMMA`` job per scene (gamma0,
radiometrically terrain corrected, linear power, 10 m pixels, UTM) with ``hyp3_sdk``, polls the jobs
with back-off, downloads each finished product zip (size checked), keeps only its VV and VH GeoTIFFs
and deletes the zip. The tiles then read those GeoTIFFs (reprojected onto the tile grid).

Resumable: the job id of every submitted scene is kept in ``hyp3_jobs.json`` in the work folder,
so a restarted run polls the jobs it already paid for instead of submitting them again, and
scenes whose GeoTIFFs are on disk are not downloaded again.

The HyP3 API root is ``--s1-catalog`` or ``$BTFM_HYP3_API_URL`` (default: ASF's production API);
the search root is ``$BTFM_ASF_SEARCH_URL`` (default: NASA CMR). ``$BTFM_HYP3_POLL_S`` (first
poll interval, doubled up to 5 minutes) and ``$BTFM_HYP3_TIMEOUT_S`` (how long to wait for jobs)
tune the waiting; each wait is logged at INFO. These variables and the Earthdata login are read at
the command-line edge (:class:`~btfm_preprocessing.sources.SourceEnvironment`).

Failures and their bounds: the Earthdata login and the job submission are not retried, so an
API that refuses connections or has no DNS entry fails at once with
:class:`~btfm_core.errors.ServiceUnavailableError` (``hyp3_sdk`` sets no timeout of its own: a
connection whose packets are dropped waits for the system's TCP connect timeout, about 2 minutes
on Linux). A poll that fails (unreachable, HTTP 5xx) is retried at the next poll interval, logged
at INFO; after :data:`POLL_RETRIES` (2) failed retries in a row it gives up -- within 30 s + 60 s
of waiting at the start, or three poll intervals (at most 15 minutes) later on -- keeping the job
ids for the next run. An answer without the keys of HyP3's job schema raises
:class:`~btfm_core.errors.UnexpectedResponseError`. Downloads retry as
:mod:`btfm_preprocessing.download` says.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hyp3_sdk.util
import numpy as np
import requests
from hyp3_sdk import HyP3, Job
from hyp3_sdk.exceptions import AuthenticationError, HyP3SDKError
from hyp3_sdk.exceptions import ServerError as Hyp3ServerError
from hyp3_sdk.exceptions import ServiceUnavailableError as Hyp3UnavailableError
from hyp3_sdk.hyp3 import PROD_API

from btfm_core.errors import CredentialsError, ServiceUnavailableError, SourceError, UnexpectedResponseError
from btfm_core.fileio import atomic_path
from btfm_core.grid import Grid
from btfm_core.progress import progress
from btfm_preprocessing.credentials import UserPassword
from btfm_preprocessing.download import Expected, download
from btfm_preprocessing.network import (
    CHECK_NETWORK,
    describe_problem,
    http_status,
    is_unreachable,
    log_retry,
    network_reason,
    safe_url,
)
from btfm_preprocessing.period import Period
from btfm_preprocessing.sources._types import AcquisitionDay, Scene, SourceEnvironment, SourceOptions
from btfm_preprocessing.sources.asf import ASF_SEARCH_URL, search_grd, search_url_from
from btfm_preprocessing.sources.cog import read_s1_day
from btfm_preprocessing.traffic import NetworkCounter

log = logging.getLogger(__name__)

HYP3_API_ENV = "BTFM_HYP3_API_URL"
POLL_ENV = "BTFM_HYP3_POLL_S"
TIMEOUT_ENV = "BTFM_HYP3_TIMEOUT_S"
#: First poll interval (seconds); doubled after every poll up to :data:`MAX_POLL_S`.
DEFAULT_POLL_S = 30.0
MAX_POLL_S = 300.0
#: How long to wait for submitted jobs before giving up (a rerun picks them up again).
DEFAULT_TIMEOUT_S = 6 * 3600.0
#: Failed polls (unreachable, HTTP 5xx) retried in a row, one poll interval apart, before giving up.
POLL_RETRIES = 2
JOBS_FILE = "hyp3_jobs.json"
JOB_NAME = "btfm"
#: HyP3 accepts at most this many jobs per request.
SUBMIT_BATCH = 200
#: RTC_GAMMA parameters: 10 m to match the ROI grid, linear power (the tile encoding takes dB of it).
RTC_PARAMETERS: dict[str, Any] = {"radiometry": "gamma0", "resolution": 10, "scale": "power",
                                  "speckle_filter": False, "dem_matching": False, "include_dem": False,
                                  "include_inc_map": False, "include_rgb": False,
                                  "include_scattering_area": False}
BACKSCATTER = "gamma0 RTC (ASF HyP3 RTC_GAMMA, terrain-flattened), linear power, 10 m"
POLARISATIONS = ("VV", "VH")


def _env_seconds(environment: SourceEnvironment, name: str, default: float) -> float:
    """The variable ``name`` as a number of seconds (``default`` if unset or empty).

    Raises:
        SourceError: it is not a non-negative number.
    """
    value = environment.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise SourceError(f"${name} must be a number of seconds, got '{value}'") from None
    if seconds < 0:
        raise SourceError(f"${name} must not be negative, got {value}")
    return seconds


def hyp3_client(api_url: str, login: UserPassword) -> HyP3:
    """A HyP3 client logged in with the NASA Earthdata ``login``.

    Raises:
        CredentialsError: HyP3 / Earthdata rejected the login.
        ServiceUnavailableError: the Earthdata login cannot be reached.
    """
    try:
        client = HyP3(api_url, username=login.username, password=login.password.reveal())
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise ServiceUnavailableError(f"NASA Earthdata login for HyP3 ({safe_url(hyp3_sdk.util.AUTH_URL)}) is "
                                      f"unreachable ({network_reason(exc)}); {CHECK_NETWORK}, or use --s1-source asf "
                                      "(no HyP3 needed)") from exc
    except (AuthenticationError, requests.RequestException) as exc:
        detail = str(exc).replace(login.password.reveal(), "***").split("\n")[0]
        raise CredentialsError(f"HyP3 could not log in with the NASA Earthdata login from {login.origin} "
                               f"({detail}); check EARTHDATA_USERNAME/EARTHDATA_PASSWORD or ~/.netrc") from None
    log.info("logged in to HyP3 (%s) as %s", api_url, login.username)
    return client


def api_error(exc: Exception, api_url: str, doing: str, jobs_file: Path | None = None) -> SourceError | None:
    """One clear error for a network failure or unexpected answer of the HyP3 API (None: neither).

    Args:
        exc: what ``hyp3_sdk`` raised.
        api_url: the API root (named in the message).
        doing: what was being done, e.g. ``submitting the RTC jobs``.
        jobs_file: where submitted job ids are kept (the message says a rerun reuses them).
    """
    where = f"HyP3 API ({safe_url(api_url)})"
    resume = f"; job ids already submitted are kept in {jobs_file} and reused by the next run" if jobs_file else ""
    status = http_status(exc)
    if status is None and is_unreachable(exc):
        return ServiceUnavailableError(f"{where} is unreachable while {doing} ({network_reason(exc)}); "
                                       f"{CHECK_NETWORK}{resume}")
    if isinstance(exc, (Hyp3ServerError, Hyp3UnavailableError)) or (status is not None and status >= 500):
        return ServiceUnavailableError(f"{where} answered HTTP {status or '5xx'} while {doing}: the service is down "
                                       f"or busy; retry later{resume}")
    if isinstance(exc, (KeyError, TypeError, ValueError)):
        answer = f"HTTP {status} " if status is not None else ""
        what = (f"JSON without the key {exc}" if isinstance(exc, KeyError)
                else "something that is not JSON" if isinstance(exc, json.JSONDecodeError)
                else f"JSON of an unexpected shape ({' '.join(str(exc).split())[:160]})")
        return UnexpectedResponseError(f"{where} answered {answer}{what} while {doing}; check --s1-catalog / "
                                       f"${HYP3_API_ENV} (default {PROD_API}){resume}")
    return None


def _refused(exc: HyP3SDKError) -> SourceError:
    """A clear error for jobs HyP3 would not take (credits, quota, unapproved account, bad granule)."""
    detail = str(exc)
    lowered = detail.lower()
    if "credit" in lowered or "quota" in lowered:
        return SourceError(f"HyP3 refused the RTC jobs for lack of processing credits: {detail}. Each Earthdata "
                           "account gets a monthly credit allotment (see https://hyp3-docs.asf.alaska.edu/using/"
                           "credits/); wait for the next month, shorten the S1 date range, or use "
                           "--s1-source asf (local processing, no credits)")
    if "applied" in lowered or "approved" in lowered or "access" in lowered:
        return SourceError(f"HyP3 refused the RTC jobs: {detail}. Request HyP3 access for your Earthdata "
                           "account (https://hyp3-docs.asf.alaska.edu/using/requesting_access/)")
    return SourceError(f"HyP3 refused the RTC jobs: {detail}")


@dataclass
class Hyp3Source:
    """Sentinel-1 RTC on demand from ASF HyP3 (see module docstring).

    Attributes:
        work_dir: job ids file, ``downloads/`` (zips, deleted after extraction), ``products/``.
        api_url: HyP3 API root.
        search_url: ASF search root.
        workers: products downloaded at once.
        poll_s: first poll interval in seconds (doubled up to :data:`MAX_POLL_S`).
        timeout_s: give up waiting for unfinished jobs after this many seconds.
        sleep: how to wait between polls (tests pass a no-op).
        client_factory: builds the client logged in with a login (default :func:`hyp3_client`).
        environment: where the Earthdata login comes from (``EARTHDATA_USERNAME``... as captured).
        traffic: counts the downloaded bytes (None: not counted).
    """

    work_dir: Path
    api_url: str = PROD_API
    search_url: str = ASF_SEARCH_URL
    workers: int = 4
    poll_s: float = DEFAULT_POLL_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    sleep: Callable[[float], None] = time.sleep
    client_factory: Callable[[str, UserPassword], HyP3] = hyp3_client
    environment: SourceEnvironment = field(default_factory=SourceEnvironment)
    traffic: NetworkCounter | None = None
    name: str = "asf-hyp3"
    backscatter: str = BACKSCATTER
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def jobs_file(self) -> Path:
        """JSON record of submitted jobs: ``{"api_url": ..., "jobs": {scene id: job id}}``."""
        return self.work_dir / JOBS_FILE

    def search_s1(self, grid: Grid, period: Period) -> list[Scene]:
        """IW GRD_HD VV+VH scenes over the grid, oldest first (the HyP3 RTC inputs; no login needed)."""
        return search_grd(grid, period, self.search_url)

    def product_paths(self, scene: Scene) -> dict[str, Path]:
        """Where a scene's VV and VH GeoTIFFs go."""
        return {pol: self.work_dir / "products" / f"{scene.id}_{pol}.tif" for pol in POLARISATIONS}

    def _prepared(self, scene: Scene, job_id: str | None) -> Scene:
        props = {**scene.properties, "btfm:backscatter": BACKSCATTER, "sar:product_type": "RTC_GAMMA"}
        if job_id:
            props["hyp3:job_id"] = job_id
        return replace(scene, assets={pol: str(path) for pol, path in self.product_paths(scene).items()},
                       properties=props)

    def load_jobs(self) -> dict[str, str]:
        """Scene id -> job id of the jobs submitted to this API root by earlier runs."""
        if not self.jobs_file.is_file():
            return {}
        record = json.loads(self.jobs_file.read_text())
        if record.get("api_url") != self.api_url:
            log.warning("%s lists jobs of another HyP3 API (%s); they are not reused", self.jobs_file,
                        record.get("api_url"))
            return {}
        return {str(k): str(v) for k, v in record.get("jobs", {}).items()}

    def save_jobs(self, jobs: dict[str, str]) -> None:
        """Record the submitted jobs (atomically: a crash never leaves a half-written file)."""
        self.jobs_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.jobs_file) as tmp:
            tmp.write_text(json.dumps({"api_url": self.api_url, "jobs": jobs}, indent=1, sort_keys=True))

    def submit(self, client: HyP3, scenes: Sequence[Scene], jobs: dict[str, str]) -> dict[str, str]:
        """Submit an RTC job for each scene without one in ``jobs``; return the updated mapping."""
        new = [scene for scene in scenes if scene.id not in jobs]
        for start in range(0, len(new), SUBMIT_BATCH):
            chunk = new[start:start + SUBMIT_BATCH]
            prepared = [HyP3.prepare_rtc_job(granule=scene.id, name=JOB_NAME, **RTC_PARAMETERS) for scene in chunk]
            try:
                batch = client.submit_prepared_jobs(prepared)
            except (requests.RequestException, HyP3SDKError, KeyError, TypeError, ValueError) as exc:
                error = api_error(exc, self.api_url, "submitting the RTC jobs", self.jobs_file if jobs else None)
                if error is not None:
                    raise error from exc
                if isinstance(exc, HyP3SDKError):
                    raise _refused(exc) from None
                raise
            for job in batch:
                granules = (job.job_parameters or {}).get("granules") or []
                if granules:
                    jobs[str(granules[0])] = job.job_id
            self.save_jobs(jobs)
            log.info("submitted %d HyP3 RTC job(s) (%d credits)", len(chunk),
                     sum(job.credit_cost or 0 for job in batch))
        return jobs

    def fetch(self, job: Job, scene: Scene, cookies: requests.cookies.RequestsCookieJar) -> Scene:
        """Download a finished job's product zip, keep its VV/VH GeoTIFFs, delete the zip.

        Each download has its own HTTP session (carrying the HyP3 login cookies), so downloads and
        polling never share one across threads.
        """
        files = job.files or []
        product = next((f for f in files if str(f.get("filename", "")).endswith(".zip") and f.get("url")), None)
        if product is None:
            raise SourceError(f"HyP3 job {job.job_id} ({scene.id}) succeeded but lists no product zip")
        with requests.Session() as session:
            session.cookies.update(cookies)
            zip_path = download(str(product["url"]), self.work_dir / "downloads" / str(product["filename"]),
                                session, Expected(size=int(product["size"]) if product.get("size") is not None
                                                  else None), traffic=self.traffic)
        try:
            self._extract(zip_path, self.product_paths(scene))
        except zipfile.BadZipFile as exc:
            zip_path.unlink(missing_ok=True)  # a broken zip must not be reused by a rerun
            raise SourceError(f"HyP3 product {zip_path.name} of job {job.job_id} is not a readable zip ({exc}); "
                              "run again to download it anew") from None
        zip_path.unlink()
        return self._prepared(scene, job.job_id)

    @staticmethod
    def _extract(zip_path: Path, paths: dict[str, Path]) -> None:
        """Copy the ``*_VV.tif`` / ``*_VH.tif`` members of a product zip to ``paths`` (streamed)."""
        with zipfile.ZipFile(zip_path) as archive:
            for pol, out_path in paths.items():
                member = next((m for m in archive.namelist() if m.endswith(f"_{pol}.tif")), None)
                if member is None:
                    raise SourceError(f"HyP3 product {zip_path.name} has no {pol} GeoTIFF (members: "
                                      f"{', '.join(archive.namelist())})")
                out_path.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, atomic_path(out_path) as tmp, tmp.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)

    def prepare_s1(self, scenes: Sequence[Scene], grid: Grid) -> list[Scene]:
        """Submit, wait for and download RTC products of the scenes not on disk yet; oldest first.

        Failed jobs are dropped with a warning.

        Raises:
            CredentialsError: no Earthdata login configured, or it was rejected.
            SourceError: HyP3 refused the jobs (credits), or jobs were still unfinished after the timeout.
        """
        prepared: list[Scene] = []
        todo: list[Scene] = []
        jobs = self.load_jobs()
        for scene in scenes:
            if all(path.is_file() for path in self.product_paths(scene).values()):
                prepared.append(self._prepared(scene, jobs.get(scene.id)))
            else:
                todo.append(scene)
        if todo:
            client = self.client_factory(self.api_url, self.environment.earthdata_login())
            jobs = self.submit(client, todo, jobs)
            prepared += self.wait_and_fetch(client, {scene.id: scene for scene in todo if scene.id in jobs}, jobs)
        return sorted(prepared, key=lambda s: (s.acquired, s.id))

    def finished_jobs(self, client: HyP3, pending: dict[str, Scene], jobs: dict[str, str]) -> dict[str, Job]:
        """Poll each pending job once; scene id -> job of those that succeeded or failed.

        Raises:
            SourceError: HyP3 does not know a job (HTTP 4xx).
            requests.RequestException, HyP3SDKError, KeyError, ValueError: a failed poll (see :func:`api_error`).
        """
        finished: dict[str, Job] = {}
        for scene_id in pending:
            try:
                job = client.get_job_by_id(jobs[scene_id])
            except (Hyp3ServerError, Hyp3UnavailableError):
                raise  # worth another poll (see _poll)
            except HyP3SDKError as exc:
                raise SourceError(f"HyP3 job {jobs[scene_id]} ({scene_id}) could not be read: {exc}") from exc
            if job.succeeded() or job.failed():
                finished[scene_id] = job
        return finished

    def _poll(self, client: HyP3, pending: dict[str, Scene], jobs: dict[str, str], failures: int,
              interval: float) -> tuple[dict[str, Job], int]:
        """:meth:`finished_jobs`, with a failed poll logged and counted: ``(finished, failures in a row)``.

        Raises:
            ServiceUnavailableError: the poll failed and :data:`POLL_RETRIES` retries did already.
        """
        try:
            return self.finished_jobs(client, pending, jobs), 0
        except (requests.RequestException, Hyp3ServerError, Hyp3UnavailableError, KeyError, TypeError,
                ValueError) as exc:
            error = api_error(exc, self.api_url, "polling the RTC jobs", self.jobs_file)
            if error is None:
                raise
            if not isinstance(error, ServiceUnavailableError) or failures >= POLL_RETRIES:
                raise error from exc
            log_retry(log, "HyP3 API", describe_problem(exc), failures + 1, POLL_RETRIES, interval)
            return {}, failures + 1

    def wait_and_fetch(self, client: HyP3, scenes: dict[str, Scene], jobs: dict[str, str]) -> list[Scene]:
        """Poll the scenes' jobs with back-off; download each product as soon as its job succeeds."""
        pending = dict(scenes)
        futures: list[Future[Scene]] = []
        interval, started, failures = self.poll_s, time.monotonic(), 0
        now = dt.datetime.now(dt.timezone.utc)
        with ThreadPoolExecutor(max(1, self.workers)) as pool, progress(
                total=len(pending), desc="HyP3 RTC jobs", unit="job") as bar:
            while True:
                finished, failures = self._poll(client, pending, jobs, failures, interval)
                for scene_id, job in finished.items():
                    expiry = job.expiration_time
                    if job.failed():
                        log.warning("HyP3 job %s (%s) FAILED: scene dropped (logs: %s)", job.job_id, scene_id,
                                    ", ".join(job.logs or []) or "none")
                    elif expiry is not None and expiry.tzinfo is not None and expiry < now:
                        log.warning("HyP3 job %s (%s) expired on %s and its product is gone: scene dropped "
                                    "(delete %s to submit it again)", job.job_id, scene_id,
                                    expiry.date(), self.jobs_file)
                    else:
                        futures.append(pool.submit(self.fetch, job, pending[scene_id], client.session.cookies))
                    del pending[scene_id]
                    bar.update()
                if not pending:
                    break
                if time.monotonic() - started + interval > self.timeout_s:
                    raise SourceError(
                        f"{len(pending)} HyP3 job(s) still unfinished after {self.timeout_s:.0f} s (e.g. "
                        f"{jobs[next(iter(pending))]}); run the same command again later (with --keep-intermediate "
                        f"or after an interruption the job ids in {self.jobs_file} are reused, nothing is "
                        f"resubmitted), or raise ${TIMEOUT_ENV}")
                if not failures:
                    log.info("HyP3: %d RTC job(s) unfinished; next poll in %.3g s (gives up %.0f s after the first)",
                             len(pending), interval, self.timeout_s)
                self.sleep(interval)
                interval = min(interval * 2, MAX_POLL_S)
            return [future.result() for future in futures]

    @property
    def group_reads(self) -> bool:
        """GeoTIFF reads: a day read on the union of neighbouring tiles is split into theirs."""
        return True

    def read_s1_day(self, day: AcquisitionDay, grid: Grid, pool: Executor) -> np.ndarray | None:
        """One day's RTC GeoTIFFs on ``grid`` in the int16 dB encoding (reprojected as needed)."""
        return read_s1_day(day, grid, pool)

    def describe(self) -> dict[str, object]:
        """Source, endpoints, job type and parameters for the run metadata."""
        return {"source": self.name, "search": self.search_url, "hyp3_api": self.api_url,
                "job_type": "RTC_GAMMA", "rtc_parameters": dict(RTC_PARAMETERS), "backscatter": self.backscatter}


def hyp3_source(options: SourceOptions, traffic: NetworkCounter | None = None) -> Hyp3Source:
    """``--s1-source asf-hyp3``: ASF search + HyP3 RTC_GAMMA jobs (see module docstring).

    ``traffic`` counts the product downloads.

    Raises:
        SourceError: no work folder, or ``$BTFM_HYP3_POLL_S`` / ``$BTFM_HYP3_TIMEOUT_S`` is not a number.
    """
    if options.work_dir is None:
        raise SourceError("the asf-hyp3 source needs a work folder (SourceOptions.work_dir)")
    environment = options.environment
    api_url = str(options.s1_catalog or environment.get(HYP3_API_ENV) or PROD_API).rstrip("/")
    return Hyp3Source(work_dir=options.work_dir, api_url=api_url,
                      search_url=search_url_from(options, use_catalog=False), workers=options.workers,
                      poll_s=_env_seconds(environment, POLL_ENV, DEFAULT_POLL_S),
                      timeout_s=_env_seconds(environment, TIMEOUT_ENV, DEFAULT_TIMEOUT_S),
                      environment=environment, traffic=traffic)
