"""``--s1-source asf``: Sentinel-1 IW GRD scenes from the Alaska Satellite Facility, geocoded here.

Search goes through ``asf_search`` (NASA CMR; no account needed). Preparing a scene downloads its
GRD zip with a NASA Earthdata login (:func:`~btfm_preprocessing.credentials.earthdata_login`),
checks its size and MD5, geocodes it onto the ROI grid with
:func:`btfm_preprocessing.grd.geocode_grd` (sigma0, linear power), splits the result into one
single-band GeoTIFF per polarisation and deletes the zip. Scenes already processed are skipped,
so an interrupted run resumes where it stopped.

Endpoints can be moved (a mirror, ASF's UAT systems, or a loopback test server): the search root
is ``--s1-catalog`` or ``$BTFM_ASF_SEARCH_URL`` (default: NASA CMR), the Earthdata login root is
``$BTFM_EARTHDATA_URL``; these and the login are read at the command-line edge
(:class:`~btfm_preprocessing.sources.SourceEnvironment`). ``asf_search`` always speaks
``https://<host>``; a root given as ``http://`` is reached over plain HTTP by :class:`EndpointSession`.

Failures and their bounds: a search root that refuses connections or has no DNS entry fails at
once (``asf_search`` does not retry those), one that stays silent after ``CMR_TIMEOUT`` (30 s);
HTTP 5xx answers are retried by ``asf_search`` itself, 3 tries with 3 s waits (each wait logged
at INFO here), so a failing search gives up within about 6 s + 3 x 30 s. Either raises
:class:`~btfm_core.errors.ServiceUnavailableError`; an answer without the keys CMR's JSON has
raises :class:`~btfm_core.errors.UnexpectedResponseError` naming the missing key. Downloads retry
as :mod:`btfm_preprocessing.download` says (about 15 s when refused, at most 65 s).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import asf_search
import numpy as np
import rasterio
import requests
from asf_search.constants import INTERNAL
from asf_search.exceptions import ASFAuthenticationError, ASFSearchError
from shapely.geometry import box

from btfm_core.errors import CredentialsError, ServiceUnavailableError, SourceError, UnexpectedResponseError
from btfm_core.fileio import atomic_path
from btfm_core.grid import Grid
from btfm_core.progress import progress
from btfm_core.tiles import ORBIT_DIRECTIONS
from btfm_preprocessing.credentials import UserPassword
from btfm_preprocessing.download import Expected, download
from btfm_preprocessing.network import CHECK_NETWORK, http_status, is_unreachable, log_retry, network_reason, safe_url
from btfm_preprocessing.period import Period
from btfm_preprocessing.sources._types import AcquisitionDay, Scene, SourceEnvironment, SourceOptions
from btfm_preprocessing.sources.cog import read_s1_day
from btfm_preprocessing.traffic import NetworkCounter

log = logging.getLogger(__name__)

#: Where ``asf_search`` looks for scenes (NASA CMR) unless ``--s1-catalog``/``$BTFM_ASF_SEARCH_URL`` say otherwise.
ASF_SEARCH_URL = f"https://{INTERNAL.CMR_HOST}"
#: NASA Earthdata login root unless ``$BTFM_EARTHDATA_URL`` says otherwise.
EARTHDATA_URL = f"https://{INTERNAL.EDL_HOST}"
SEARCH_URL_ENV = "BTFM_ASF_SEARCH_URL"
EARTHDATA_URL_ENV = "BTFM_EARTHDATA_URL"
#: ASF's processing level of Sentinel-1 IW GRD high-resolution products.
PRODUCT_TYPE = "GRD_HD"
#: Scene collection name recorded in the search cache and tile metadata.
GRD_COLLECTION = "sentinel-1-grd"
#: What the scenes hold before :func:`btfm_preprocessing.grd.geocode_grd` says it exactly.
GRD_BACKSCATTER = "sigma0 (GRD geocoded locally), linear power"
#: GeoTIFF profile of the per-polarisation files (tiled, so windowed reads stay cheap).
SPLIT_PROFILE: Mapping[str, object] = {"driver": "GTiff", "dtype": "float32", "tiled": True, "blockxsize": 512,
                                       "blockysize": 512, "compress": "deflate", "predictor": 3,
                                       "BIGTIFF": "IF_SAFER"}


class GeocodedGrd(Protocol):
    """What :func:`btfm_preprocessing.grd.geocode_grd` returns (only the fields used here)."""

    path: Path
    backscatter: str
    coverage: float


#: ``geocode_grd(product_zip, grid, out_path) -> GeocodedGrd`` writing a 2-band (VV, VH) float32 GeoTIFF.
Geocoder = Callable[[Path, Grid, Path], GeocodedGrd]


def endpoint_host(url: str) -> str:
    """``host[:port]`` of an endpoint root given as a URL (or as a bare host)."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if not parts.netloc:
        raise SourceError(f"'{url}' is not an endpoint URL (expected e.g. {ASF_SEARCH_URL})")
    return parts.netloc


def plain_http_routes(*urls: str) -> dict[str, str]:
    """``https://host`` -> ``http://host`` for the roots given as ``http://`` URLs."""
    return {f"https://{endpoint_host(url)}": f"http://{endpoint_host(url)}"
            for url in urls if urlsplit(url).scheme == "http"}


class EndpointSession(asf_search.ASFSession):
    """An :class:`asf_search.ASFSession` that sends requests for some ``https://host`` roots elsewhere.

    ``asf_search`` builds every URL as ``https://<host>/...``; ``routes`` maps such a prefix to the
    root actually reached (e.g. ``http://127.0.0.1:8000`` for a test server).
    """

    def __init__(self, routes: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.routes = dict(routes or {})

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        """Send the request, to the routed root if ``url`` starts with a routed prefix."""
        text = url.decode() if isinstance(url, bytes) else str(url)
        for prefix, target in self.routes.items():
            if text.startswith(prefix):
                text = target + text[len(prefix):]
                break
        return super().request(method, text, *args, **kwargs)


def search_session(search_url: str, login_url: str = EARTHDATA_URL) -> EndpointSession:
    """A fresh (unauthenticated) session for the search and login roots."""
    return EndpointSession(plain_http_routes(search_url, login_url), edl_host=endpoint_host(login_url),
                           cmr_host=endpoint_host(search_url))


def _utc(day: dt.date, end: bool = False) -> str:
    return f"{day.isoformat()}T{'23:59:59' if end else '00:00:00'}Z"


def _parse_time(value: object) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def scene_from_properties(props: Mapping[str, Any]) -> Scene | None:
    """A GRD scene from an ``asf_search`` product's properties, or None (with a warning) if unusable.

    The scene's only asset (``GRD``) is the zip's URL; its properties carry the announced size
    (``bytes``) and ``md5sum`` that the download is checked against.
    """
    name = props.get("sceneName") or props.get("fileID") or "(unnamed)"
    level = props.get("processingLevel")
    if level != PRODUCT_TYPE:
        log.warning("ASF search returned %s, a %s product, not %s: skipped", name, level, PRODUCT_TYPE)
        return None
    acquired = _parse_time(props.get("startTime"))
    direction = str(props.get("flightDirection") or "").lower()
    size, md5, url = props.get("bytes"), props.get("md5sum"), props.get("url")
    problems = [what for what, bad in [
        ("sceneName", not props.get("sceneName")), ("startTime", acquired is None),
        ("flightDirection", direction not in ORBIT_DIRECTIONS), ("url", not url),
        ("bytes", not isinstance(size, int) or size <= 0), ("md5sum", not md5),
        ("VV+VH polarisation", "VH" not in str(props.get("polarization", ""))),
    ] if bad]
    if problems or acquired is None:
        log.warning("ASF search result %s lacks a usable %s: skipped", name, ", ".join(problems))
        return None
    return Scene(id=str(props["sceneName"]), collection=GRD_COLLECTION, acquired=acquired,
                 assets={"GRD": str(url)}, orbit_state=direction,
                 properties={"platform": props.get("platform"), "sar:product_type": PRODUCT_TYPE,
                             "bytes": size, "md5sum": str(md5), "url": str(url),
                             "btfm:backscatter": GRD_BACKSCATTER})


def search_grd(grid: Grid, period: Period, search_url: str = ASF_SEARCH_URL,
               session: asf_search.ASFSession | None = None) -> list[Scene]:
    """Sentinel-1 IW GRD_HD dual-pol (VV+VH) scenes over ``grid`` in ``period``, oldest first.

    Args:
        grid: the ROI grid; its lon/lat bounding box is searched.
        period: acquisition days (inclusive).
        search_url: the search root (NASA CMR, or a mirror / test server).
        session: the HTTP session to search with (default: a fresh :func:`search_session`).

    Raises:
        ServiceUnavailableError: the search root cannot be reached or keeps answering 5xx.
        UnexpectedResponseError: the answer is not CMR's JSON (names the missing key).
        SourceError: the search was refused (HTTP 4xx).
    """
    asf_search.REPORT_ERRORS = False  # never post the user's search to ASF's error-report endpoint
    _log_search_retries()
    session = session or search_session(search_url)
    opts = asf_search.ASFSearchOptions(host=endpoint_host(search_url), session=session)
    try:
        results = asf_search.search(
            platform=asf_search.PLATFORM.SENTINEL1, processingLevel=PRODUCT_TYPE, beamMode=asf_search.BEAMMODE.IW,
            polarization=["VV+VH"], intersectsWith=box(*grid.lonlat_bounds()).wkt,
            start=_utc(period.start), end=_utc(period.end, end=True), opts=opts)
    except (ASFSearchError, requests.RequestException, KeyError, TypeError, ValueError) as exc:
        raise search_error(exc, search_url) from exc
    scenes = [scene for scene in (scene_from_properties(product.properties) for product in results) if scene]
    unique = {scene.id: scene for scene in scenes}  # CMR may list a scene once per collection
    log.info("ASF search: %d GRD scene(s) over the ROI in %s", len(unique), period)
    return sorted(unique.values(), key=lambda s: (s.acquired, s.id))


SEARCH_SERVICE = "ASF search (NASA CMR)"
_OTHER_S1 = "or use --s1-source planetary (Sentinel-1 RTC, no account)"


def search_error(exc: Exception, search_url: str) -> SourceError:
    """One clear error for what ``asf_search`` raised while searching ``search_url``."""
    where = f"{SEARCH_SERVICE} at {safe_url(search_url)}"
    status = http_status(exc)
    if status is None and is_unreachable(exc):
        return ServiceUnavailableError(f"{where} is unreachable ({network_reason(exc)}); {CHECK_NETWORK}, "
                                       f"{_OTHER_S1}")
    if status is not None and status >= 500:
        return ServiceUnavailableError(f"{where} answered HTTP {status}: the service is down or busy; retry later, "
                                       f"{_OTHER_S1}")
    if status is not None:
        detail = re.sub(r"^HTTP \d+:\s*", "", " ".join(str(exc).split()))[:160]
        return SourceError(f"{where} refused the search with HTTP {status} ({detail}); "
                           f"check --s1-catalog / ${SEARCH_URL_ENV} (a CMR root such as {ASF_SEARCH_URL})")
    what = (f"JSON without the key {exc}" if isinstance(exc, KeyError)
            else "something that is not JSON" if isinstance(exc, json.JSONDecodeError)
            else f"JSON of an unexpected shape ({' '.join(str(exc).split())[:160]})")
    return UnexpectedResponseError(f"{where} answered {what}; is it a NASA CMR search root? Check --s1-catalog / "
                                   f"${SEARCH_URL_ENV} (default {ASF_SEARCH_URL}), {_OTHER_S1}")


def _before_search_retry(state: Any) -> None:
    """Log the wait ``asf_search`` makes before retrying a search page (a tenacity ``before_sleep`` hook)."""
    error = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    tries = getattr(state.retry_object.stop, "max_attempt_number", state.attempt_number + 1)
    problem = " ".join(str(error).split())[:120] if error is not None else "failed"
    log_retry(log, SEARCH_SERVICE, f"answered {problem}", state.attempt_number, tries - 1, delay)


def _log_search_retries() -> None:
    """Make ``asf_search``'s own page retries (5xx answers) log each wait through :func:`_before_search_retry`."""
    generator = importlib.import_module("asf_search.search.search_generator")
    retrying = getattr(generator.get_page, "retry", None)  # tenacity's public handle of the decorated function
    if retrying is not None:
        retrying.before_sleep = _before_search_retry


def earthdata_session(search_url: str, login_url: str, login: UserPassword) -> asf_search.ASFSession:
    """An ASF session logged in to NASA Earthdata with ``login`` (a ``requests.Session`` for downloads).

    Raises:
        CredentialsError: the login was rejected.
        ServiceUnavailableError: the login endpoint cannot be reached.
    """
    session = search_session(search_url, login_url)
    try:
        session.auth_with_creds(login.username, login.password.reveal())
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise ServiceUnavailableError(f"NASA Earthdata login at {safe_url(login_url)} is unreachable "
                                      f"({network_reason(exc)}); {CHECK_NETWORK}, {_OTHER_S1}") from exc
    except (ASFAuthenticationError, requests.RequestException) as exc:
        detail = str(exc).replace(login.password.reveal(), "***")
        raise CredentialsError(f"NASA Earthdata rejected the login from {login.origin} ({detail.split(chr(10))[0]}); "
                               "check EARTHDATA_USERNAME/EARTHDATA_PASSWORD or ~/.netrc") from None
    log.info("logged in to NASA Earthdata (%s) as %s", endpoint_host(login_url), login.username)
    return session


def split_bands(src_path: Path, outputs: Mapping[str, Path]) -> None:
    """Write each band of ``src_path`` to its own single-band tiled GeoTIFF, block by block.

    Args:
        src_path: a multi-band GeoTIFF (e.g. VV, VH).
        outputs: band name -> output path, in band order.
    """
    with rasterio.open(src_path) as src:
        nodata = src.nodata if src.nodata is not None else float("nan")
        profile = {**src.profile, **SPLIT_PROFILE, "count": 1, "nodata": nodata}
        for band, (name, out_path) in enumerate(outputs.items(), start=1):
            with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
                for _, window in src.block_windows(band):
                    dst.write(src.read(band, window=window).astype(np.float32), 1, window=window)
                dst.set_band_description(1, name)


def _default_geocoder() -> Geocoder:
    from btfm_preprocessing.grd import geocode_grd  # SNAP-free GRD geocoding (a sibling module)

    return geocode_grd  # type: ignore[return-value]


@dataclass
class AsfSource:
    """Sentinel-1 GRD from ASF, downloaded and geocoded onto the ROI grid here.

    Attributes:
        work_dir: downloads go to ``downloads/``, processed scenes to ``processed/`` under it.
        search_url: search root (NASA CMR by default).
        login_url: NASA Earthdata login root.
        workers: scenes processed at once (each one zip on disk and one geocoding in memory).
        geocode: the GRD geocoder (default :func:`btfm_preprocessing.grd.geocode_grd`).
        environment: where the Earthdata login comes from (``EARTHDATA_USERNAME``... as captured).
        traffic: counts the downloaded bytes (None: not counted).
        backscatter: what the processed scenes hold; set from the geocoder's answer.
    """

    work_dir: Path
    search_url: str = ASF_SEARCH_URL
    login_url: str = EARTHDATA_URL
    workers: int = 2
    geocode: Geocoder | None = None
    environment: SourceEnvironment = field(default_factory=SourceEnvironment)
    traffic: NetworkCounter | None = None
    name: str = "asf"
    backscatter: str = GRD_BACKSCATTER
    _session: asf_search.ASFSession | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def search_s1(self, grid: Grid, period: Period) -> list[Scene]:
        """IW GRD_HD VV+VH scenes over the grid, oldest first (no login needed)."""
        return search_grd(grid, period, self.search_url)

    def processed_paths(self, scene: Scene, grid: Grid) -> dict[str, Path]:
        """Where a scene's processed files go: ``VV``, ``VH`` GeoTIFFs and the ``done`` record.

        They are on ``grid``, so they live in a folder of that grid: a later run with another ROI
        in the same data folder never picks up files geocoded for this one.
        """
        grid_key = hashlib.sha256(f"{grid.crs}|{tuple(grid.transform)[:6]}|{grid.shape}".encode()).hexdigest()[:12]
        folder = self.work_dir / "processed" / grid_key
        return {"VV": folder / f"{scene.id}_VV.tif", "VH": folder / f"{scene.id}_VH.tif",
                "done": folder / f"{scene.id}.json"}

    def processed(self, scene: Scene, grid: Grid) -> tuple[bool, Scene | None]:
        """``(True, prepared scene)`` if processed onto ``grid`` before (``(True, None)``: it did not
        cover the ROI), ``(False, None)`` if not processed yet."""
        paths = self.processed_paths(scene, grid)
        if not paths["done"].is_file():
            return False, None
        record = json.loads(paths["done"].read_text())
        if record["coverage"] <= 0:
            return True, None
        if not (paths["VV"].is_file() and paths["VH"].is_file()):
            return False, None
        return True, self._prepared(scene, grid, record)

    def _prepared(self, scene: Scene, grid: Grid, record: Mapping[str, Any]) -> Scene:
        paths = self.processed_paths(scene, grid)
        return replace(scene, assets={"VV": str(paths["VV"]), "VH": str(paths["VH"])},
                       orbit_state=str(record.get("orbit_direction") or scene.orbit_state).lower(),
                       properties={**scene.properties, "btfm:backscatter": record["backscatter"],
                                   "btfm:coverage": record["coverage"]})

    def session(self) -> asf_search.ASFSession:
        """The Earthdata-authenticated download session (logged in once, on first use).

        Raises:
            CredentialsError: no login configured (names ``EARTHDATA_USERNAME``/``EARTHDATA_PASSWORD``
                and ``~/.netrc``), or the login was rejected.
            ServiceUnavailableError: the login endpoint cannot be reached.
        """
        with self._lock:
            if self._session is None:
                self._session = earthdata_session(self.search_url, self.login_url, self.environment.earthdata_login())
            return self._session

    def download_scene(self, scene: Scene) -> Path:
        """Download a scene's GRD zip (resumable; size and MD5 checked); return its path."""
        props = scene.properties
        dest = self.work_dir / "downloads" / f"{scene.id}.zip"
        size = props.get("bytes")
        return download(scene.assets["GRD"], dest, self.session(),
                        Expected(size=int(size) if isinstance(size, int) else None,
                                 md5=str(props["md5sum"]) if props.get("md5sum") else None), traffic=self.traffic)

    def process_scene(self, scene: Scene, grid: Grid) -> Scene | None:
        """Download, geocode onto ``grid`` and split one scene; None if it does not cover the grid."""
        done, prepared = self.processed(scene, grid)
        if done:
            return prepared
        paths = self.processed_paths(scene, grid)
        zip_path = self.download_scene(scene)
        geocode = self.geocode or _default_geocoder()
        both = paths["done"].with_name(f"{scene.id}_VVVH.tif")
        both.parent.mkdir(parents=True, exist_ok=True)
        result = geocode(zip_path, grid, both)
        record = {"backscatter": str(result.backscatter), "coverage": float(result.coverage),
                  "orbit_direction": str(getattr(result, "orbit_direction", "") or scene.orbit_state or "")}
        if record["coverage"] > 0:
            split_bands(Path(result.path), {"VV": paths["VV"], "VH": paths["VH"]})
        Path(result.path).unlink(missing_ok=True)
        with atomic_path(paths["done"]) as tmp:
            tmp.write_text(json.dumps(record))
        zip_path.unlink(missing_ok=True)
        if record["coverage"] <= 0:
            log.warning("S1 scene %s does not cover the ROI: dropped", scene.id)
            return None
        return self._prepared(scene, grid, record)

    def prepare_s1(self, scenes: Sequence[Scene], grid: Grid) -> list[Scene]:
        """Download and geocode every scene not processed yet (``workers`` at a time); oldest first.

        Raises:
            CredentialsError: a download is needed and no Earthdata login is configured.
            DownloadError: a zip could not be downloaded completely.
        """
        if not all(self.processed(scene, grid)[0] for scene in scenes):
            self.session()  # fail before any work if the login is missing
        prepared: list[Scene] = []
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            futures = [pool.submit(self.process_scene, scene, grid) for scene in scenes]
            for future in progress(as_completed(futures), total=len(futures), desc="S1 GRD", unit="scene"):
                scene = future.result()
                if scene is not None:
                    prepared.append(scene)
        kinds = sorted({str(s.properties["btfm:backscatter"]) for s in prepared})
        if kinds:
            self.backscatter = "; ".join(kinds)
        return sorted(prepared, key=lambda s: (s.acquired, s.id))

    @property
    def group_reads(self) -> bool:
        """GeoTIFF reads: a day read on the union of neighbouring tiles is split into theirs."""
        return True

    def read_s1_day(self, day: AcquisitionDay, grid: Grid, pool: Executor) -> np.ndarray | None:
        """One day's processed scenes on ``grid`` in the int16 dB encoding."""
        return read_s1_day(day, grid, pool)

    def describe(self) -> dict[str, object]:
        """Source, search endpoint, product type and backscatter kind for the run metadata."""
        return {"source": self.name, "search": self.search_url, "product_type": f"IW {PRODUCT_TYPE}",
                "backscatter": self.backscatter, "processing": "btfm_preprocessing.grd.geocode_grd"}


def search_url_from(options: SourceOptions, *, use_catalog: bool = True) -> str:
    """The ASF search root: ``--s1-catalog`` (if ``use_catalog``), ``$BTFM_ASF_SEARCH_URL``, or CMR."""
    catalog = options.s1_catalog if use_catalog else None
    return str(catalog or options.environment.get(SEARCH_URL_ENV) or ASF_SEARCH_URL).rstrip("/")


def asf_source(options: SourceOptions, traffic: NetworkCounter | None = None) -> AsfSource:
    """``--s1-source asf``: ASF GRD search and download, geocoded locally (see module docstring).

    ``traffic`` counts the downloads.
    """
    if options.work_dir is None:
        raise SourceError("the asf source needs a work folder for downloads (SourceOptions.work_dir)")
    return AsfSource(work_dir=options.work_dir, search_url=search_url_from(options),
                     login_url=options.environment.get(EARTHDATA_URL_ENV, EARTHDATA_URL).rstrip("/"),
                     workers=options.workers, environment=options.environment, traffic=traffic)
