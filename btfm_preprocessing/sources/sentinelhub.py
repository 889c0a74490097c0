"""``--source sentinelhub``: Sentinel-2 L2A from a Sentinel Hub deployment (Process and Catalog APIs).

Two deployments serve the same APIs; pick one with ``--catalog`` (a base URL, or the shortcuts
``sentinelhub`` / ``cdse``) or the environment variable ``SH_BASE_URL``:

- Sentinel Hub (``https://services.sentinel-hub.com``, the default; a paid or trial account), and
- the Copernicus Data Space Ecosystem (``https://sh.dataspace.copernicus.eu``; free monthly quota).

Both take an OAuth client id and secret from ``SH_CLIENT_ID`` / ``SH_CLIENT_SECRET``; the token
endpoint follows from the base URL (``SH_TOKEN_URL`` overrides it). These variables are read at the
command-line edge (:class:`~btfm_preprocessing.sources.SourceEnvironment`), not here. Secrets are
only handed to the ``sentinelhub`` client library; they never reach logs, messages or the run metadata.

Search is one paged Catalog API query (STAC-like, ``eo:cloud_cover`` filter). Reading is one
Process API request per (acquisition day, tile grid): the evalscript returns the ten contract
bands plus SCL as UINT16 on exactly the tile grid (bbox in the tile's CRS, width/height = tile
size), in a multi-part tar (``default.tif`` + ``userdata.json``). The pixels are then masked
and harmonised by :func:`~btfm_preprocessing.mosaic.mosaic_s2` like every other source's.

Harmonisation: the request asks for ``units: "DN"`` with ``harmonizeValues: true`` (Sentinel
Hub's default, set explicitly here). Sentinel Hub then returns DN = 10000 x reflectance on the
pre-2022 scale for every processing baseline -- it removes the +1000 offset of baseline >= 04.00
and clamps negative values to 0 -- which is exactly the tile contract's encoding. Scenes are
therefore recorded with ``boa_offset_removed=True`` and
:func:`~btfm_preprocessing.encoding.harmonise_reflectance` leaves the values unchanged.

Resampling: 20 m bands are upsampled bilinearly and SCL with nearest neighbour, as the tile
contract requires; since Sentinel Hub applies one resampling per input, the request reads the
collection twice (data fusion: ids ``s2`` and ``scl`` with the same filters).

Mosaicking: ``SIMPLE`` with ``leastCC`` order over one UTC day, i.e. the granule with the least
cloud cover wins where granules of one day overlap (the STAC sources prefer valid pixels per
pixel instead; granules of one datatake hold the same pixels, so this rarely differs).

Retries (:class:`RetryPolicy`; the ``sentinelhub`` library's own retries are switched off so that
every wait is logged at INFO here, e.g. ``Sentinel Hub token request unreachable (connection
refused); retry 1/2 in 5 s``). With the defaults, per request (token, each Catalog API search,
each Process API tile):

- no answer (connection refused, DNS failure, connect timeout, or no data for 300 s): 3 tries,
  waits 5 s and 10 s, so it gives up after about 15 s when refused or without DNS, within
  15 s + 3 x 10 s (connect timeout) = 45 s when packets are dropped (the library sets no
  timeout on the token request: there the system's TCP timeout applies, about 2 minutes on Linux);
- HTTP 5xx: 4 tries, waits 5, 10, 20 s (35 s in all);
- HTTP 429 (rate limit): up to 20 tries, each waiting the server's ``Retry-After`` (Sentinel Hub
  sends it in milliseconds, usually well under a second) capped at 30 s, or 30 s without one.

After that :class:`~btfm_core.errors.ServiceUnavailableError` names the deployment, the URL and
what to try; an unexpected Catalog API page raises :class:`~btfm_core.errors.UnexpectedResponseError`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import numpy as np
from pystac.utils import str_to_datetime
from rasterio.crs import CRS as RioCRS
from rasterio.io import MemoryFile

from btfm_core.errors import CredentialsError, ServiceUnavailableError, SourceError, UnexpectedResponseError
from btfm_core.grid import Grid
from btfm_preprocessing.credentials import Secret
from btfm_preprocessing.encoding import has_boa_offset
from btfm_preprocessing.mosaic import S2Day, S2Granule, mosaic_s2
from btfm_preprocessing.network import (
    CHECK_NETWORK,
    CONNECT_TIMEOUT_S,
    RETRY_AFTER_MAX_S,
    describe_problem,
    is_unreachable,
    log_retry,
    safe_url,
)
from btfm_preprocessing.period import Period
from btfm_preprocessing.sources._types import RECORDED_PROPERTIES, S2_SPEC, AcquisitionDay, Scene, SourceOptions
from btfm_preprocessing.traffic import NetworkCounter

if TYPE_CHECKING:
    from sentinelhub import SentinelHubDownloadClient, SentinelHubSession, SHConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Environment variables this source reads (captured at the command-line edge, see SOURCE_VARIABLES).
CLIENT_ID_ENV = "SH_CLIENT_ID"
CLIENT_SECRET_ENV = "SH_CLIENT_SECRET"
BASE_URL_ENV = "SH_BASE_URL"
TOKEN_URL_ENV = "SH_TOKEN_URL"

SENTINEL_HUB_URL = "https://services.sentinel-hub.com"
SENTINEL_HUB_TOKEN_URL = "https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token"
CDSE_URL = "https://sh.dataspace.copernicus.eu"
CDSE_TOKEN_URL = "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token"
#: ``--catalog`` shortcuts -> (base URL, token URL, deployment name).
ENDPOINT_SHORTCUTS: Mapping[str, tuple[str, str, str]] = {
    "sentinelhub": (SENTINEL_HUB_URL, SENTINEL_HUB_TOKEN_URL, "Sentinel Hub"),
    "cdse": (CDSE_URL, CDSE_TOKEN_URL, "Copernicus Data Space Ecosystem"),
}

#: The only Sentinel-2 L2A collection id of both deployments (Catalog and Process API).
COLLECTION = "sentinel-2-l2a"
#: Largest width/height in pixels of one Process API request.
MAX_REQUEST_PIXELS = 2500
#: Catalog API page size (the library follows the ``next`` tokens).
CATALOG_PAGE_SIZE = 100
#: Process API output order: the tile contract's bands, then SCL.
OUTPUT_BANDS: tuple[str, ...] = (*S2_SPEC.bands, "SCL")
#: ``norm_factor`` the evalscript reports for DN units: DN = reflectance / norm_factor.
DN_NORM_FACTOR = 1e-4
#: Product ids carry the processing baseline: ``..._N0400_...`` -> ``04.00``.
_BASELINE_IN_ID = re.compile(r"_N(\d{2})(\d{2})_")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to insist on an unreachable, busy or failing service (bounds in the module docstring).

    Attributes:
        attempts: tries of one request answered 5xx.
        unreachable_attempts: tries of one request that got no answer (refused, DNS failure, connect
            timeout, or no data for ``timeout_s``).
        sleep_s: wait before the second try; doubled for each further one, up to ``max_sleep_s``.
        max_sleep_s: longest wait between two tries.
        rate_limit_tries: requests answered 429 (rate limit) before giving up.
        rate_limit_wait_s: wait after a 429 that carries no ``Retry-After`` header.
        rate_limit_max_wait_s: longest wait honoured from a ``Retry-After`` header.
        connect_timeout_s: seconds to wait for a connection.
        timeout_s: seconds without data before a request counts as failed.
        sleep: how to wait between tries (tests pass a recorder).
    """

    attempts: int = 4
    unreachable_attempts: int = 3
    sleep_s: float = 5.0
    max_sleep_s: float = 30.0
    rate_limit_tries: int = 20
    rate_limit_wait_s: float = 30.0
    rate_limit_max_wait_s: float = RETRY_AFTER_MAX_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    timeout_s: float = 300.0
    sleep: Callable[[float], None] = time.sleep

    def wait_s(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the second try)."""
        return min(self.sleep_s * 2 ** (retry - 1), self.max_sleep_s)

    def total_wait_s(self, tries: int) -> float:
        """Seconds waited in all before giving up after ``tries`` tries (not counting the requests)."""
        return sum(self.wait_s(retry) for retry in range(1, tries))


#: Retry settings of every request (tests replace it with a faster one).
DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Endpoint:
    """A Sentinel Hub deployment.

    Attributes:
        name: human-readable deployment name (for messages and the run metadata).
        base_url: service root; the APIs live under ``/api/v1/``.
        token_url: OAuth client-credentials token endpoint.
    """

    name: str
    base_url: str
    token_url: str


def resolve_endpoint(catalog: str | None, environ: Mapping[str, str]) -> Endpoint:
    """The deployment named by ``--catalog`` (URL or shortcut), else ``SH_BASE_URL``, else Sentinel Hub.

    The token URL is the deployment's own (``services.sentinel-hub.com`` and its regional
    ``*.sentinel-hub.com`` deployments authenticate at the main one; CDSE at
    ``identity.dataspace.copernicus.eu``); for any other base URL it is assumed to be at the same
    path as Sentinel Hub's on that host. ``SH_TOKEN_URL`` overrides it.

    Raises:
        SourceError: if the base URL is not an http(s) URL.
    """
    given = (catalog or environ.get(BASE_URL_ENV, "")).strip()
    if not given or given.lower() in ENDPOINT_SHORTCUTS:
        base, token, name = ENDPOINT_SHORTCUTS[given.lower() or "sentinelhub"]
    else:
        base = given.rstrip("/")
        parsed = urlparse(base)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise SourceError(f"--source sentinelhub: '{given}' is not a Sentinel Hub base URL; pass --catalog "
                              f"(or {BASE_URL_ENV}) as https://... or one of {', '.join(ENDPOINT_SHORTCUTS)}")
        host = parsed.netloc.lower()
        if host == urlparse(CDSE_URL).netloc:
            token, name = CDSE_TOKEN_URL, ENDPOINT_SHORTCUTS["cdse"][2]
        elif host.endswith("sentinel-hub.com"):
            token, name = SENTINEL_HUB_TOKEN_URL, f"Sentinel Hub ({host})"
        else:
            token, name = f"{base}/auth/realms/main/protocol/openid-connect/token", f"Sentinel Hub API at {host}"
    token = environ.get(TOKEN_URL_ENV, "").strip() or token
    return Endpoint(name=name, base_url=base, token_url=token)


def evalscript() -> str:
    """The Process API evalscript: contract bands (bilinear) + SCL (nearest) as UINT16 DN.

    Data fusion of one collection read twice (``s2`` with bilinear upsampling, ``scl`` with
    nearest neighbour); ``userdata.json`` reports the DN normalisation factor.
    """
    bands = ", ".join(f'"{band}"' for band in S2_SPEC.bands)
    values = ", ".join(f"s2.{band}" for band in S2_SPEC.bands)
    return f"""//VERSION=3
function setup() {{
  return {{
    input: [
      {{datasource: "s2", bands: [{bands}], units: "DN"}},
      {{datasource: "scl", bands: ["SCL"], units: "DN"}}
    ],
    output: {{id: "default", bands: {len(OUTPUT_BANDS)}, sampleType: "UINT16"}},
    mosaicking: "SIMPLE"
  }};
}}
function evaluatePixel(samples) {{
  var s2 = samples.s2[0], scl = samples.scl[0];
  return [{values}, scl.SCL];
}}
function updateOutputMetadata(scenes, inputMetadata, outputMetadata) {{
  outputMetadata.userData = {{norm_factor: inputMetadata ? inputMetadata.normalizationFactor : null}};
}}
"""


def process_payload(day: dt.date, grid: Grid, epsg: int, max_cloud: float = 100.0) -> dict[str, Any]:
    """Process API request body for one UTC day on ``grid`` (bbox in EPSG ``epsg``, size = grid size).

    Granules with more than ``max_cloud`` % cloud are left out of the mosaic, as the search left
    them out (a day can hold one granule under the limit and one over it).
    """
    time_range = {"from": f"{day.isoformat()}T00:00:00Z", "to": f"{day.isoformat()}T23:59:59Z"}
    data_filter = {"timeRange": time_range, "mosaickingOrder": "leastCC", "maxCloudCoverage": max_cloud}
    return {
        "input": {
            "bounds": {"bbox": list(grid.bounds),
                       "properties": {"crs": f"http://www.opengis.net/def/crs/EPSG/0/{epsg}"}},
            "data": [
                {"type": COLLECTION, "id": "s2", "dataFilter": data_filter,
                 "processing": {"harmonizeValues": True, "upsampling": "BILINEAR", "downsampling": "BILINEAR"}},
                {"type": COLLECTION, "id": "scl", "dataFilter": data_filter,
                 "processing": {"upsampling": "NEAREST", "downsampling": "NEAREST"}},
            ],
        },
        "output": {
            "width": grid.width,
            "height": grid.height,
            "responses": [{"identifier": "default", "format": {"type": "image/tiff"}},
                          {"identifier": "userdata", "format": {"type": "application/json"}}],
        },
        "evalscript": evalscript(),
    }


def grid_epsg(grid: Grid) -> int:
    """EPSG code of the grid's CRS (Sentinel Hub takes CRSs as EPSG URNs).

    Raises:
        SourceError: if the CRS has no EPSG code.
    """
    epsg = RioCRS.from_user_input(grid.crs).to_epsg()
    if epsg is None:
        raise SourceError("--source sentinelhub needs an ROI in a CRS with an EPSG code (e.g. UTM, EPSG:326xx); "
                          "reproject the ROI")
    return int(epsg)


def check_request_size(grid: Grid) -> None:
    """Raise :class:`SourceError` if ``grid`` is larger than one Process API request may be."""
    if grid.width > MAX_REQUEST_PIXELS or grid.height > MAX_REQUEST_PIXELS:
        raise SourceError(f"a {grid.width}x{grid.height} px tile is larger than one Sentinel Hub Process API "
                          f"request ({MAX_REQUEST_PIXELS}x{MAX_REQUEST_PIXELS} px); use --tile-size "
                          f"{MAX_REQUEST_PIXELS} or less")


def parse_process_response(content: bytes) -> tuple[bytes, dict[str, Any]]:
    """Split a multi-part Process API answer (a tar) into ``default.tif`` bytes and ``userdata.json``.

    Raises:
        SourceError: if the answer is not a tar holding ``default.tif``.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(content)) as tar:
            members = {member.name: tar.extractfile(member) for member in tar.getmembers() if member.isfile()}
            files = {name: handle.read() for name, handle in members.items() if handle is not None}
    except tarfile.TarError as exc:
        raise SourceError(f"the Process API answer is not a tar archive ({exc}); expected default.tif + "
                          "userdata.json") from None
    if "default.tif" not in files:
        raise SourceError(f"the Process API answer lacks default.tif; it holds {sorted(files)}")
    try:
        userdata = json.loads(files["userdata.json"]) if "userdata.json" in files else {}
    except ValueError:
        raise SourceError("the Process API answer's userdata.json is not JSON") from None
    return files["default.tif"], userdata if isinstance(userdata, dict) else {}


def decode_tile(tiff: bytes, userdata: Mapping[str, Any], grid: Grid) -> np.ndarray:
    """The (H, W, 11) uint16 image of a Process API ``default.tif``, checked against ``grid``.

    Raises:
        SourceError: if the image has the wrong band count, size, data type, georeferencing or
            DN scale (``norm_factor``).
    """
    norm = userdata.get("norm_factor")
    if norm is not None and not np.isclose(float(norm), DN_NORM_FACTOR):
        raise SourceError(f"Sentinel Hub returned DN with norm_factor {norm}, expected {DN_NORM_FACTOR} "
                          "(reflectance x 10000)")
    with MemoryFile(tiff) as memfile, memfile.open() as src:
        if src.count != len(OUTPUT_BANDS) or (src.height, src.width) != grid.shape or src.dtypes[0] != "uint16":
            raise SourceError(f"Sentinel Hub returned a {src.width}x{src.height} px {src.dtypes[0]} image of "
                              f"{src.count} bands; expected {grid.width}x{grid.height} px uint16 with "
                              f"{len(OUTPUT_BANDS)} bands ({', '.join(OUTPUT_BANDS)})")
        if src.crs is not None and not src.transform.is_identity:
            same_crs = src.crs.to_epsg() == grid_epsg(grid)
            tolerance = 1e-3 * min(grid.resolution)
            if not same_crs or not src.transform.almost_equals(grid.transform, precision=tolerance):
                raise SourceError(f"Sentinel Hub returned an image on another grid ({src.crs}, "
                                  f"{tuple(src.transform)[:6]}) than requested ({tuple(grid.transform)[:6]})")
        data = src.read()
    return np.moveaxis(data, 0, -1)


def mask_and_harmonise(image: np.ndarray, scenes: Iterable[Scene],
                       day: dt.date) -> S2Day | None:
    """Split an (H, W, 11) Process API image into contract bands and the validity mask.

    The image is one granule of :func:`~btfm_preprocessing.mosaic.mosaic_s2` (the same rules as the
    STAC sources): SCL 0 is "not covered", :func:`~btfm_preprocessing.encoding.scl_valid_mask` marks
    valid pixels, all-zero bands are invalid, and the +1000 offset is removed where the scenes
    still carry it (never, with ``harmonizeValues``).

    Returns:
        The day's :class:`~btfm_preprocessing.mosaic.S2Day`, or None if no pixel is covered.
    """
    scenes = list(scenes)
    baseline = max((s.processing_baseline for s in scenes if s.processing_baseline), default=None)
    removed = all(s.boa_offset_removed is True for s in scenes) if scenes else None
    granule = S2Granule(bands=np.ascontiguousarray(image[..., : len(S2_SPEC.bands)]),
                        scl=np.ascontiguousarray(image[..., len(S2_SPEC.bands)]),
                        boa_offset=has_boa_offset(day, baseline, removed))
    return mosaic_s2([granule], (image.shape[0], image.shape[1]))


def baseline_of(feature_id: str, properties: Mapping[str, Any]) -> str | None:
    """Processing baseline of a catalog feature: ``s2:processing_baseline``, else from the product id."""
    value = properties.get("s2:processing_baseline")
    if value:
        return str(value)
    match = _BASELINE_IN_ID.search(feature_id)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def feature_to_scene(feature: Mapping[str, Any]) -> Scene:
    """A Catalog API feature as a :class:`Scene` (no assets: pixels come from the Process API).

    Raises:
        SourceError: if the feature has no id or no parsable ``properties.datetime``.
    """
    feature_id = feature.get("id")
    properties = feature.get("properties")
    if not isinstance(feature_id, str) or not feature_id or not isinstance(properties, Mapping):
        raise SourceError(f"catalog feature without id or properties: {str(feature)[:120]}")
    when = properties.get("datetime")
    try:
        acquired = str_to_datetime(str(when))
    except (ValueError, OverflowError):
        raise SourceError(f"catalog feature {feature_id} has no valid datetime ({when!r})") from None
    if acquired.tzinfo is None:
        acquired = acquired.replace(tzinfo=dt.timezone.utc)
    cloud = properties.get("eo:cloud_cover")
    return Scene(
        id=feature_id,
        collection=COLLECTION,
        acquired=acquired.astimezone(dt.timezone.utc),
        assets={},
        cloud_cover=float(cloud) if isinstance(cloud, (int, float)) else None,
        processing_baseline=baseline_of(feature_id, properties),
        boa_offset_removed=True,  # harmonizeValues=true: Sentinel Hub removes the offset
        properties={key: properties[key] for key in RECORDED_PROPERTIES if key in properties},
    )


def _quiet_oauth_logging() -> None:
    # requests-oauthlib logs the token request body (client secret) and the token at DEBUG, and
    # the run's log file records DEBUG: keep those loggers at WARNING.
    for name in ("requests_oauthlib", "oauthlib"):
        logging.getLogger(name).setLevel(logging.WARNING)


@dataclass
class SentinelHubSource:
    """Sentinel-2 L2A from a Sentinel Hub deployment (:class:`~btfm_preprocessing.sources.S2Source`).

    Attributes:
        endpoint: the deployment.
        client_id: OAuth client id (``SH_CLIENT_ID``).
        client_secret: OAuth client secret (``SH_CLIENT_SECRET``).
        workers: most Process API requests in flight at once.
        max_cloud: ``--max-cloud``, also applied to the granules mosaicked by the Process API.
        retry: retry and rate-limit settings.
        traffic: counts the bytes of the Process API answers (None: not counted).
        name: source name given on the command line.
    """

    endpoint: Endpoint
    client_id: Secret
    client_secret: Secret
    workers: int = 4
    retry: RetryPolicy = field(default_factory=lambda: DEFAULT_RETRY)
    max_cloud: float = 100.0
    traffic: NetworkCounter | None = None
    name: str = "sentinelhub"
    _session: SentinelHubSession | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _slots: threading.BoundedSemaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(max(1, self.workers))

    def config(self) -> SHConfig:
        """The client library's configuration (never read from or written to its config file).

        The library tries each request once (:meth:`_retrying` repeats it, logging each wait); it
        still handles 429 answers itself, up to ``rate_limit_tries`` (:class:`_LoggedRateLimit`).
        """
        from sentinelhub import SHConfig

        timeouts = (self.retry.connect_timeout_s, self.retry.timeout_s)  # requests' (connect, read), passed as is
        return SHConfig(use_defaults=True, sh_client_id=self.client_id.reveal(),
                        sh_client_secret=self.client_secret.reveal(), sh_base_url=self.endpoint.base_url,
                        sh_token_url=self.endpoint.token_url, max_download_attempts=1,
                        download_timeout_seconds=timeouts,  # type: ignore[arg-type]
                        max_retries=self.retry.rate_limit_tries)

    def _retrying(self, what: str, url: str, call: Callable[[], T]) -> T:
        """``call()``, repeated per :attr:`retry` while it gets no answer or a 5xx one (each wait logged at INFO).

        Args:
            what: the request, for messages (e.g. ``token request``).
            url: where it goes (named in the message without its query string).
            call: makes the request with the ``sentinelhub`` library.

        Raises:
            ServiceUnavailableError: still no answer, or still 5xx, after the tries.
            DownloadFailedException: any other failure (4xx, 429 after ``rate_limit_tries``), for the
                caller to explain.
        """
        from sentinelhub.exceptions import DownloadFailedException, OutOfRequestsException

        policy, failures = self.retry, 0
        while True:
            try:
                return call()
            except OutOfRequestsException:
                raise
            except DownloadFailedException as exc:
                status = _status(exc)
                unreachable = status is None and is_unreachable(exc)
                if not unreachable and (status is None or status < 500):
                    raise
                tries = policy.unreachable_attempts if unreachable else policy.attempts
                failures += 1
                if failures >= tries:
                    fix = (f"{CHECK_NETWORK}, or use --source earthsearch or planetary (no account needed)"
                           if unreachable else "the service is down or busy: retry later (finished tiles are kept), "
                           "or use --source earthsearch or planetary")
                    raise ServiceUnavailableError(
                        f"{self.endpoint.name} {what} failed: {describe_problem(exc)} after {failures} tries "
                        f"({safe_url(url)}); {fix}") from exc
                delay = policy.wait_s(failures)
                log_retry(log, f"{self.endpoint.name} {what}", describe_problem(exc), failures, tries - 1, delay)
                policy.sleep(delay)

    def session(self) -> SentinelHubSession:
        """The OAuth session (token fetched once, refreshed by the library before it expires).

        Raises:
            CredentialsError: if the token endpoint rejects the client id/secret.
            ServiceUnavailableError: if the token endpoint cannot be reached (after the retries).
            SourceError: if the token endpoint answers something else than a token or a rejection.
        """
        with self._lock:
            if self._session is None:
                self._session = self._new_session()
            return self._session

    def _new_session(self) -> SentinelHubSession:
        from oauthlib.oauth2.rfc6749.errors import InsecureTransportError, MissingTokenError, OAuth2Error
        from sentinelhub import SentinelHubSession
        from sentinelhub.exceptions import DownloadFailedException

        _quiet_oauth_logging()
        rejected = (f"{self.endpoint.name} rejected the OAuth client credentials ({CLIENT_ID_ENV}/"
                    f"{CLIENT_SECRET_ENV})")
        try:
            return self._retrying("token request", self.endpoint.token_url,
                                  lambda: SentinelHubSession(config=self.config()))
        except InsecureTransportError:
            raise SourceError(f"the token URL {self.endpoint.token_url} is not https; set {TOKEN_URL_ENV} or "
                              "--catalog to an https:// deployment") from None
        except MissingTokenError:  # a 200 answer without a token: not an OAuth token endpoint
            raise UnexpectedResponseError(f"{self.endpoint.token_url} answered without an access token: it is not "
                                          f"the OAuth token endpoint of a Sentinel Hub deployment; check --catalog "
                                          f"or {TOKEN_URL_ENV}") from None
        except OAuth2Error as exc:  # an error answer in OAuth form: never echo the request
            raise CredentialsError(f"{rejected}: {exc.error}{f' ({exc.description})' if exc.description else ''}; "
                                   "check the client id and secret (an OAuth client of this deployment: "
                                   f"{self.endpoint.base_url})") from None
        except DownloadFailedException as exc:
            status = _status(exc)
            if status in (400, 401, 403):
                raise CredentialsError(f"{rejected} (HTTP {status}); check the client id and secret (an OAuth "
                                       f"client of this deployment: {self.endpoint.base_url})") from None
            answer = f"HTTP {status}" if status is not None else _reason(exc)
            raise SourceError(f"cannot get a token from {self.endpoint.token_url} ({answer}); check --catalog or "
                              f"{TOKEN_URL_ENV} (the deployment's OAuth token URL)") from None

    def _client(self) -> SentinelHubDownloadClient:
        from sentinelhub import SentinelHubDownloadClient

        client = SentinelHubDownloadClient(config=self.config(), session=self.session(),
                                           default_retry_time=self.retry.rate_limit_wait_s)
        client.rate_limit = _LoggedRateLimit(client.rate_limit, self.endpoint.name, self.retry)  # type: ignore[assignment]
        return client

    def search_s2(self, grid: Grid, period: Period, max_cloud: float) -> list[Scene]:
        """S2 L2A acquisitions over ``grid`` in ``period`` with at most ``max_cloud`` % cloud, oldest first.

        Features that cannot be parsed are skipped with a warning.
        """
        from sentinelhub import CRS, BBox, SentinelHubCatalog
        from sentinelhub.exceptions import DownloadFailedException

        def run_search() -> dict[str, Scene]:  # from the first page again if a page fails
            catalog = SentinelHubCatalog(config=self.config())
            catalog.client = self._client()
            search = catalog.search(COLLECTION, bbox=BBox(grid.lonlat_bounds(), crs=CRS.WGS84),
                                    time=(f"{period.start.isoformat()}T00:00:00Z",
                                          f"{period.end.isoformat()}T23:59:59Z"),
                                    filter=f"eo:cloud_cover <= {max_cloud:g}", limit=CATALOG_PAGE_SIZE)
            found: dict[str, Scene] = {}
            for feature in search:
                try:
                    scene = feature_to_scene(feature)
                except SourceError as exc:
                    log.warning("skipped a Sentinel Hub catalog feature: %s", exc)
                    continue
                found.setdefault(scene.id, scene)
            return found

        url = f"{self.endpoint.base_url}/api/v1/catalog"
        try:
            scenes = self._retrying("Catalog API search", url, run_search)
        except SourceError:  # already says what is wrong (token, credentials, retries)
            raise
        except DownloadFailedException as exc:
            raise SourceError(f"Sentinel Hub Catalog API search failed ({self.endpoint.base_url}): "
                              f"{_reason(exc)}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            missing = f"no key {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:160]
            raise UnexpectedResponseError(f"Sentinel Hub Catalog API ({url}) answered an unexpected page "
                                          f"({missing}); is {self.endpoint.base_url} a Sentinel Hub deployment? "
                                          "Check --catalog / SH_BASE_URL") from exc
        log.info("Sentinel Hub catalog: %d S2 L2A acquisition(s) in %s", len(scenes), period)
        return sorted(scenes.values(), key=lambda s: (s.acquired, s.id))

    @property
    def group_reads(self) -> bool:
        """No: the Process API mosaics on the server, for the requested window; tiles are read one by one."""
        return False

    def read_s2_day(self, day: AcquisitionDay, grid: Grid, pool: Executor) -> S2Day | None:
        """One Process API request for ``day`` on ``grid``, masked like the STAC sources.

        ``pool`` is not needed: the request is one HTTP call; at most :attr:`workers` run at once.

        Returns:
            The day's :class:`~btfm_preprocessing.mosaic.S2Day`, or None if no granule covers the grid.

        Raises:
            SourceError: if the tile is too large for one request, the request fails after the
                retries, or the answer is not the requested image.
        """
        from sentinelhub import MimeType
        from sentinelhub.download import DownloadRequest
        from sentinelhub.exceptions import DownloadFailedException, OutOfRequestsException

        check_request_size(grid)
        request = DownloadRequest(
            request_type="POST", url=f"{self.endpoint.base_url}/api/v1/process",
            post_values=process_payload(day.day, grid, grid_epsg(grid), self.max_cloud), data_type=MimeType.TAR,
            headers={"content-type": MimeType.JSON.get_string(), "accept": MimeType.TAR.get_string()},
            use_session=True)
        with self._slots:
            try:
                response = self._retrying(
                    f"Process API request for {day.day}", str(request.url),
                    lambda: self._client().download([request], max_threads=1, decode_data=False)[0])
            except OutOfRequestsException as exc:
                raise ServiceUnavailableError(
                    f"Sentinel Hub kept answering 429 (rate limit) for {day.day} after {self.retry.rate_limit_tries} "
                    "tries; wait and run again (finished tiles are kept), or lower --workers") from exc
            except DownloadFailedException as exc:
                raise SourceError(f"Sentinel Hub Process API request for {day.day} failed: {_reason(exc)}") from exc
        if self.traffic is not None:
            self.traffic.add(len(response.content))
        tiff, userdata = parse_process_response(response.content)
        return mask_and_harmonise(decode_tile(tiff, userdata, grid), day.scenes, day.day)

    def describe(self) -> dict[str, object]:
        """Endpoint, collection and harmonisation for the run metadata (no credentials)."""
        return {"source": self.name, "endpoint": self.endpoint.name, "root": self.endpoint.base_url,
                "s2_collection": COLLECTION,
                "harmonisation": "Process API units DN with harmonizeValues=true: +1000 offset of baseline "
                                 ">= 04.00 removed and negatives clamped to 0 by Sentinel Hub",
                "resampling": "bands bilinear, SCL nearest", "mosaicking": "SIMPLE, leastCC, one UTC day"}


class _LoggedRateLimit:
    """The ``sentinelhub`` client's rate limiter, logging each 429 wait at INFO and capping ``Retry-After``.

    Args:
        inner: the client's ``SentinelHubRateLimit`` (it keeps the timing).
        service: the deployment's name, for the log lines.
        policy: ``rate_limit_tries`` and ``rate_limit_max_wait_s``.
    """

    def __init__(self, inner: Any, service: str, policy: RetryPolicy) -> None:
        self.inner, self.service, self.policy, self.hits = inner, service, policy, 0

    def register_next(self) -> float:
        """Seconds to wait before the next request may start (0: now)."""
        return float(self.inner.register_next())

    def update(self, headers: Mapping[str, str], *, default: float) -> None:
        """Register a 429 answer: wait its ``Retry-After`` (milliseconds; ``default`` without one), capped."""
        header = self.inner.RETRY_HEADER
        try:
            wait_ms = float(headers.get(header, default))
        except ValueError:
            wait_ms = default
        wait_ms = min(wait_ms, self.policy.rate_limit_max_wait_s * 1000)
        self.hits += 1
        log_retry(log, self.service, "answered HTTP 429 (rate limit)", self.hits,
                  max(1, self.policy.rate_limit_tries - 1), wait_ms / 1000)
        self.inner.update({header: str(int(wait_ms))}, default=default)


def _status(exc: Exception) -> int | None:
    response = getattr(getattr(exc, "request_exception", None), "response", None)
    return getattr(response, "status_code", None)


def _reason(exc: Exception) -> str:
    """A one-line reason from a library exception (its message names the URL and the server's answer)."""
    text = " ".join(str(exc).split())
    return text[:400]


def sentinelhub_source(options: SourceOptions, traffic: NetworkCounter | None = None) -> SentinelHubSource:
    """``--source sentinelhub``: endpoint from ``--catalog`` / ``SH_BASE_URL``, credentials from the environment.

    ``options.environment`` holds the variables; ``traffic`` counts the Process API answers.

    Raises:
        CredentialsError: if ``SH_CLIENT_ID`` or ``SH_CLIENT_SECRET`` is not set.
        SourceError: if ``--catalog`` is not a URL or shortcut, or ``--s2-collection`` is not
            ``sentinel-2-l2a``.
    """
    if options.s2_collection not in (None, COLLECTION):
        raise SourceError(f"--source sentinelhub serves only the collection {COLLECTION}; drop --s2-collection "
                          f"'{options.s2_collection}'")
    endpoint = resolve_endpoint(options.catalog, options.environment)
    purpose = f"--source sentinelhub ({endpoint.name})"
    client_id = options.environment.required_secret(CLIENT_ID_ENV, purpose)
    client_secret = options.environment.required_secret(CLIENT_SECRET_ENV, purpose)
    return SentinelHubSource(endpoint=endpoint, client_id=client_id, client_secret=client_secret,
                             workers=options.workers, retry=DEFAULT_RETRY, max_cloud=options.max_cloud,
                             traffic=traffic)
