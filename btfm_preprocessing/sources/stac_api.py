"""STAC sources (``local``, ``earthsearch``, ``planetary``): search a STAC root, read its COGs.

One search for API roots (https://) and static catalogs (a path or ``file://`` URL); items are
parsed into frozen :class:`~btfm_preprocessing.sources.Scene` records as soon as they arrive, so
nothing downstream reads raw STAC dictionaries. The sources differ only in roots, collections and
asset keys (:class:`StacSource`); pixels are read by :mod:`btfm_preprocessing.sources.cog`.

Failures become one clear :class:`~btfm_core.errors.SourceError`: an API that cannot be reached
or keeps failing raises :class:`~btfm_core.errors.ServiceUnavailableError`, an answer that is not
STAC (or a static catalog linking to a missing file) :class:`~btfm_core.errors.UnexpectedResponseError`.

Retry bounds of a STAC API (per HTTP request: the landing page and every result page), each wait
logged at INFO by :class:`~btfm_preprocessing.network.LoggedRetry`:

- unreachable (connection refused, DNS failure, connect timeout): 3 tries, waits 0 s and 2 s, so
  it gives up after about 2 s when refused or without DNS, and within 3 x 10 s (connect timeout,
  :data:`~btfm_preprocessing.network.CONNECT_TIMEOUT_S`) + 2 s = 32 s when packets are dropped;
- 429 and 5xx answers: 6 tries, waits 0, 2, 4, 8, 16 s (30 s in all), or the server's
  ``Retry-After`` capped at 30 s each (at most 150 s in all);
- no data for :data:`SEARCH_TIMEOUT_S` (60 s): 3 tries.

Planetary Computer asset URLs are signed with SAS tokens fetched in :data:`PLANETARY_SAS_ATTEMPTS`
(4) tries, waits 1, 2, 4 s, each logged at INFO.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pystac
import requests
from shapely.geometry import box, shape

from btfm_core.errors import ServiceUnavailableError, SourceError, UnexpectedResponseError
from btfm_core.grid import Grid
from btfm_preprocessing.mosaic import S2Day
from btfm_preprocessing.network import (
    CHECK_NETWORK,
    CONNECT_TIMEOUT_S,
    RETRY_AFTER_MAX_S,
    RETRY_STATUS,
    LoggedRetry,
    describe_problem,
    http_status,
    is_unreachable,
    log_retry,
    network_reason,
    safe_url,
)
from btfm_preprocessing.period import Period
from btfm_preprocessing.sources._types import RECORDED_PROPERTIES, AcquisitionDay, Scene, SourceOptions
from btfm_preprocessing.sources.cog import read_s1_day, read_s2_day

log = logging.getLogger(__name__)

#: Retries of a STAC API request answered 429 or 5xx (back-off waits 0, 2, 4, 8, 16 s; Retry-After
#: honoured up to :data:`~btfm_preprocessing.network.RETRY_AFTER_MAX_S`).
SEARCH_RETRIES = 5
#: Retries of a request that got no answer (refused, DNS failure, timeout): waits 0 s and 2 s.
SEARCH_CONNECT_RETRIES = 2
#: First back-off unit in seconds: the n-th consecutive retry waits ``SEARCH_BACKOFF_S * 2 ** (n - 1)``
#: (the first one none).
SEARCH_BACKOFF_S = 1.0
#: Seconds without data before a STAC API request counts as failed.
SEARCH_TIMEOUT_S = 60.0


def _is_url(root: str) -> bool:
    return urlparse(root).scheme in ("http", "https")


def local_path(root: str) -> Path:
    """The path of a static catalog given as a path or a ``file://`` URL."""
    parsed = urlparse(root)
    return Path(parsed.path) if parsed.scheme == "file" else Path(root)


def _item_datetime(item: pystac.Item) -> dt.datetime:
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise SourceError(f"STAC item {item.id} has no datetime")
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _static_items(root: str, collection: str, bbox: tuple[float, float, float, float],
                  period: Period) -> Iterator[pystac.Item]:
    path = local_path(root)
    if not path.exists():
        raise SourceError(f"STAC catalog {path} does not exist; pass --catalog with the path of a "
                          "catalog.json (e.g. data/demo_belgium/catalog.json)")
    try:
        catalog = pystac.read_file(str(path))
    except Exception as exc:
        raise SourceError(f"{path} is not a readable STAC catalog: {exc}") from exc
    if not isinstance(catalog, pystac.Catalog):
        raise SourceError(f"{path} is a STAC {type(catalog).__name__}, expected a Catalog or Collection")
    search_box = box(*bbox)
    try:
        catalog.make_all_asset_hrefs_absolute()
        for item in catalog.get_items(recursive=True):
            if item.collection_id != collection:
                continue
            if item.geometry is not None and not shape(item.geometry).intersects(search_box):
                continue
            if period.contains(_item_datetime(item).date()):
                yield item
    except (pystac.STACError, pystac.STACTypeError, OSError, ValueError, KeyError) as exc:
        raise _catalog_link_error(exc, path) from exc


def _catalog_link_error(exc: Exception, catalog: Path) -> UnexpectedResponseError:
    """What is wrong when a static catalog's child, collection or item link cannot be read."""
    match = re.search(r"HREF: '([^']+)'", str(exc))
    href = match.group(1) if match else getattr(exc, "filename", None)
    causes = [exc, exc.__cause__, exc.__context__]
    if any(isinstance(cause, FileNotFoundError) for cause in causes):
        what = "is missing"
    elif any(isinstance(cause, json.JSONDecodeError) for cause in causes):
        what = "is not valid JSON"
    else:
        what = f"cannot be read as STAC ({' '.join(str(exc.__cause__ or exc).split())[:160]})"
    if href is None:
        return UnexpectedResponseError(f"the STAC catalog {catalog} cannot be read: {what}; fix the catalog or "
                                       "point --catalog at a complete one")
    return UnexpectedResponseError(f"the STAC catalog {catalog} links to {href}, which {what}; restore that file, "
                                   "fix the link in the catalog (or its parent collection), or point --catalog at "
                                   "a complete catalog")


def _api_items(root: str, collection: str, bbox: tuple[float, float, float, float], period: Period,
               query: Mapping[str, object] | None, service: str) -> Iterator[pystac.Item]:
    from pystac_client import Client
    from pystac_client.errors import ClientTypeError
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO

    from btfm_core.redact import register_url_credentials

    register_url_credentials(root)  # a password in the URL is masked in every message and log
    retry = LoggedRetry(total=SEARCH_RETRIES, connect=SEARCH_CONNECT_RETRIES, read=SEARCH_CONNECT_RETRIES,
                        status=SEARCH_RETRIES, backoff_factor=SEARCH_BACKOFF_S, status_forcelist=sorted(RETRY_STATUS),
                        allowed_methods=None, respect_retry_after_header=True, retry_after_max=RETRY_AFTER_MAX_S,
                        service=service)
    try:
        client = Client.open(root, stac_io=StacApiIO(max_retries=retry, timeout=(CONNECT_TIMEOUT_S, SEARCH_TIMEOUT_S)))
        search = client.search(collections=[collection], bbox=bbox, datetime=period.stac_datetime,
                               query=dict(query) if query else None)
        yield from search.items()
    except (APIError, ClientTypeError, pystac.STACError, pystac.STACTypeError, ValueError, KeyError,
            TypeError) as exc:
        raise api_error(exc, service, root) from exc


def _answer_detail(text: str) -> str:
    """The gist of an error answer's body: its JSON ``description``/``detail``/``message``, or its first
    words (nothing for an HTML page)."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = next((body[key] for key in ("description", "detail", "message", "error") if key in body), body)
        text = str(detail)
    text = " ".join(text.split())
    return "" if not text or text.startswith("<") else f": {text[:160]}"


def api_error(exc: Exception, service: str, root: str) -> SourceError:
    """One clear error for what ``pystac_client``/``pystac`` raised while talking to a STAC API at ``root``."""
    where = f"{service} ({safe_url(root)})"
    status = http_status(exc)
    reason = network_reason(exc)
    other_source = "or use another --source (or --catalog with a mirror or a local catalog)"
    if status is None and is_unreachable(exc):
        return ServiceUnavailableError(f"{where} is unreachable ({reason}) after {SEARCH_CONNECT_RETRIES + 1} tries; "
                                       f"{CHECK_NETWORK}, {other_source}")
    if (status in RETRY_STATUS) or reason.startswith("kept answering"):
        shown = reason if reason.startswith("kept answering") else f"answered HTTP {status}"
        return ServiceUnavailableError(f"{where} {shown} after {SEARCH_RETRIES} retries: the service is busy or "
                                       f"down; retry later, {other_source}")
    if status is not None:
        return SourceError(f"{where} refused the request with HTTP {status}{_answer_detail(str(exc))}; check "
                           f"--catalog (it must be a STAC API root URL), {other_source}")
    what = ("something that is not JSON" if isinstance(exc, json.JSONDecodeError)
            else f"JSON without the key {exc}" if isinstance(exc, KeyError)
            else f"JSON that is not STAC ({' '.join(str(exc).split())[:160]})")
    return UnexpectedResponseError(f"{where} answered {what}; check that --catalog is a STAC API root URL, "
                                   f"{other_source}")


def search_items(root: str, collection: str, bbox: tuple[float, float, float, float], period: Period,
                 query: Mapping[str, object] | None = None, service: str = "STAC API") -> list[pystac.Item]:
    """Items of ``collection`` intersecting ``bbox`` (WGS84) within ``period``, oldest first.

    ``root`` is a STAC API URL or a static catalog (path or ``file://`` URL). ``query`` uses the
    STAC API query extension (``{"eo:cloud_cover": {"lt": 90}}``); for static catalogs the same
    ``lt``/``lte``/``gt``/``gte``/``eq`` conditions are applied locally. ``service`` names the API
    in messages (e.g. ``Earth Search STAC API``).

    Raises:
        ServiceUnavailableError: the API cannot be reached, or keeps answering 429/5xx, after the
            retries (bounds in the module docstring).
        UnexpectedResponseError: the answer is not STAC, or a static catalog links to a missing file.
        SourceError: the API refused the request, or the static catalog does not exist.
    """
    if _is_url(root):
        items: Iterable[pystac.Item] = _api_items(root, collection, bbox, period, query, service)
    else:
        items = (item for item in _static_items(root, collection, bbox, period)
                 if _matches_query(item, query or {}))
    return sorted(items, key=lambda item: (_item_datetime(item), item.id))


_OPS = {"lt": lambda a, b: a < b, "lte": lambda a, b: a <= b, "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b, "eq": lambda a, b: a == b}


def _matches_query(item: pystac.Item, query: Mapping[str, object]) -> bool:
    for prop, conditions in query.items():
        value = item.properties.get(prop)
        if value is None:
            continue
        for op, target in dict(conditions).items():  # type: ignore[call-overload]
            if not _OPS[op](value, target):
                return False
    return True


def to_scene(item: pystac.Item, asset_keys: Mapping[str, str],
             extra_properties: Iterable[str] = ()) -> Scene:
    """Parse a STAC item into a :class:`Scene`, mapping asset keys to contract band names.

    Raises:
        SourceError: if an asset the pipeline needs is missing from the item.
    """
    missing = [key for key in asset_keys.values() if key not in item.assets]
    if missing:
        raise SourceError(f"STAC item {item.id} lacks assets {missing}; has {sorted(item.assets)}")
    props = item.properties
    return Scene(
        id=item.id,
        collection=item.collection_id or "",
        acquired=_item_datetime(item),
        assets={band: item.assets[key].get_absolute_href() or item.assets[key].href
                for band, key in asset_keys.items()},
        cloud_cover=props.get("eo:cloud_cover"),
        orbit_state=props.get("sat:orbit_state"),
        processing_baseline=props.get("s2:processing_baseline"),
        boa_offset_removed=props.get("earthsearch:boa_offset_applied"),
        properties={key: props[key] for key in extra_properties if key in props},
    )


#: Earth Search style asset keys for the S2 bands of the tile contract, plus SCL.
EARTH_SEARCH_S2_ASSETS: Mapping[str, str] = {
    "B04": "red", "B02": "blue", "B03": "green", "B08": "nir", "B8A": "nir08",
    "B05": "rededge1", "B06": "rededge2", "B07": "rededge3", "B11": "swir16", "B12": "swir22",
    "SCL": "scl",
}
#: Planetary Computer style S1 RTC asset keys.
RTC_S1_ASSETS: Mapping[str, str] = {"VV": "vv", "VH": "vh"}


@dataclass(frozen=True)
class StacSource:
    """A STAC root serving S2 L2A COGs (with SCL) and S1 linear backscatter COGs.

    Attributes:
        name: source name given on the command line.
        root: STAC API URL, or static catalog path / ``file://`` URL.
        s2_collection: collection id of S2 L2A items.
        s1_collection: collection id of S1 backscatter items (None: the source has none).
        signer: turns an asset href into a readable URL at read time (None: read as is).
        backscatter: what the S1 assets hold (e.g. ``gamma0 RTC``, ``sigma0``), when the items
            do not say it themselves (property ``btfm:backscatter``).
        s2_assets: contract band name -> S2 asset key.
        s1_assets: contract band name -> S1 asset key.
        service: what the root is called in messages (e.g. ``Earth Search STAC API``).
    """

    name: str
    root: str
    s2_collection: str = "sentinel-2-l2a"
    s1_collection: str | None = "sentinel-1-rtc"
    backscatter: str = "unknown"
    s2_assets: Mapping[str, str] = field(default_factory=lambda: dict(EARTH_SEARCH_S2_ASSETS))
    s1_assets: Mapping[str, str] = field(default_factory=lambda: dict(RTC_S1_ASSETS))
    signer: Callable[[str], str] | None = None
    service: str = "STAC API"

    def sign_href(self, href: str) -> str:
        """``href`` signed with :attr:`signer`, or unchanged."""
        return self.signer(href) if self.signer else href

    def search_s2(self, grid: Grid, period: Period, max_cloud: float) -> list[Scene]:
        """S2 scenes over the grid, oldest first."""
        items = search_items(self.root, self.s2_collection, grid.lonlat_bounds(), period,
                             query={"eo:cloud_cover": {"lte": max_cloud}}, service=self.service)
        return [to_scene(item, self.s2_assets, RECORDED_PROPERTIES) for item in items]

    @property
    def group_reads(self) -> bool:
        """COG reads: a day read on the union of neighbouring tiles is split into theirs."""
        return True

    def read_s2_day(self, day: AcquisitionDay, grid: Grid, pool: Executor) -> S2Day | None:
        """One day's COG reads, masked and mosaicked (:func:`~btfm_preprocessing.sources.cog.read_s2_day`)."""
        return read_s2_day(day, grid, pool, self.sign_href)

    def search_s1(self, grid: Grid, period: Period) -> list[Scene]:
        """S1 scenes over the grid, oldest first (none if the source serves no S1 backscatter)."""
        if self.s1_collection is None:
            log.warning("source '%s' serves no Sentinel-1 backscatter: the tiles' S1 series stay empty", self.name)
            return []
        items = search_items(self.root, self.s1_collection, grid.lonlat_bounds(), period, service=self.service)
        return [to_scene(item, self.s1_assets, RECORDED_PROPERTIES) for item in items]

    def prepare_s1(self, scenes: Sequence[Scene], grid: Grid) -> list[Scene]:
        """Nothing to prepare: the COGs are read where they are."""
        return list(scenes)

    def read_s1_day(self, day: AcquisitionDay, grid: Grid, pool: Executor) -> np.ndarray | None:
        """One day's COG reads in the dB encoding (:func:`~btfm_preprocessing.sources.cog.read_s1_day`)."""
        return read_s1_day(day, grid, pool, self.sign_href)

    def describe(self) -> dict[str, object]:
        """Root and collections for the run metadata."""
        return {"source": self.name, "root": self.root, "s2_collection": self.s2_collection,
                "s1_collection": self.s1_collection}


def local_source(options: SourceOptions, *, for_s1: bool = False) -> StacSource:
    """A static STAC catalog on disk (e.g. the embedded demo sample)."""
    catalog = options.s1_catalog if for_s1 else options.catalog
    if catalog is None:
        raise SourceError("the local source needs a static STAC catalog: pass --catalog (or --s1-catalog)")
    path = local_path(str(catalog)).expanduser().resolve()
    return StacSource(name="local", root=str(path), s2_collection=options.s2_collection or "sentinel-2-l2a",
                      backscatter="as recorded in each item")


#: Element84 Earth Search STAC API (no account needed).
EARTH_SEARCH_URL = "https://earth-search.aws.element84.com/v1"
EARTH_SEARCH_S2_COLLECTIONS = ("sentinel-2-l2a", "sentinel-2-c1-l2a")


def earthsearch_source(options: SourceOptions) -> StacSource:
    """Element84 Earth Search: S2 L2A COGs on AWS, no account. It serves no S1 backscatter.

    ``options.catalog`` may name another API root serving the same collections (a mirror, or a
    test server); ``options.s2_collection`` is ``sentinel-2-l2a`` (default) or ``sentinel-2-c1-l2a``.
    """
    collection = options.s2_collection or EARTH_SEARCH_S2_COLLECTIONS[0]
    if collection not in EARTH_SEARCH_S2_COLLECTIONS:
        raise SourceError(f"Earth Search has no S2 L2A collection '{collection}'; use one of "
                          f"{', '.join(EARTH_SEARCH_S2_COLLECTIONS)}")
    return StacSource(name="earthsearch", root=str(options.catalog or EARTH_SEARCH_URL), s2_collection=collection,
                      s1_collection=None, backscatter="none", service="Earth Search STAC API")


#: Microsoft Planetary Computer STAC API (no account needed; asset URLs need a SAS signature).
PLANETARY_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
PLANETARY_S2_ASSETS: Mapping[str, str] = {band: band for band in EARTH_SEARCH_S2_ASSETS}


#: Tries of one Planetary Computer SAS token request (unreachable, 429 or 5xx): waits 1, 2, 4 s (7 s in
#: all) instead of ``planetary-computer``'s own 10 unlogged retries (about 7 minutes without network).
PLANETARY_SAS_ATTEMPTS = 4
PLANETARY_SAS_BACKOFF_S = 1.0


def planetary_sign(href: str, sleep: Callable[[float], None] = time.sleep) -> str:
    """Sign a Planetary Computer blob URL with a short-lived SAS token (``planetary-computer``).

    The token of the URL's storage container is fetched (then cached by ``planetary-computer``)
    with :data:`PLANETARY_SAS_ATTEMPTS` tries, each wait logged at INFO.

    Raises:
        SourceError: the ``planetary-computer`` package is missing, or the token was refused (4xx).
        ServiceUnavailableError: the token service is unreachable or answers 429/5xx after the tries.
    """
    try:
        import planetary_computer
        from planetary_computer.sas import get_token, parse_blob_url
    except ImportError as exc:
        raise SourceError("--source planetary needs the planetary-computer package: "
                          "pip install planetary-computer") from exc
    parsed = urlparse(href)
    if parsed.netloc.endswith(".blob.core.windows.net"):
        account, container = parse_blob_url(parsed)
        _with_retries(f"Planetary Computer SAS token request for {account}/{container}",
                      lambda: get_token(account, container, retry_total=0), sleep)
    return str(planetary_computer.sign(href))


def _with_retries(what: str, call: Callable[[], object], sleep: Callable[[float], None]) -> None:
    """``call()``, tried :data:`PLANETARY_SAS_ATTEMPTS` times while unreachable or answering 429/5xx."""
    for attempt in range(1, PLANETARY_SAS_ATTEMPTS + 1):
        try:
            call()
            return
        except requests.RequestException as exc:
            status = http_status(exc)
            if status is not None and status not in RETRY_STATUS:
                raise SourceError(f"{what} was refused with HTTP {status}; set PC_SDK_SUBSCRIPTION_KEY if the "
                                  "service asks for one, or use --source earthsearch") from exc
            if attempt == PLANETARY_SAS_ATTEMPTS:
                raise ServiceUnavailableError(f"{what} failed: {describe_problem(exc)} after {attempt} tries; "
                                              f"{CHECK_NETWORK} (or retry later), or use --source earthsearch"
                                              ) from exc
            delay = PLANETARY_SAS_BACKOFF_S * 2 ** (attempt - 1)
            log_retry(log, what, describe_problem(exc), attempt, PLANETARY_SAS_ATTEMPTS - 1, delay)
            sleep(delay)


def planetary_source(options: SourceOptions, *, for_s1: bool = False) -> StacSource:
    """Microsoft Planetary Computer: S2 L2A (raw +1000 offset from 2022-01-25, removed here) and
    S1 RTC (gamma0, terrain-flattened, linear power, 10 m), both as COGs; no account needed.

    ``options.catalog`` (``options.s1_catalog`` for S1; the pipeline copies ``--catalog`` there only
    when S1 and S2 come from the same source) may name another API root serving the same
    collections (a mirror, or a test server).
    """
    root = (options.s1_catalog if for_s1 else options.catalog) or PLANETARY_URL
    return StacSource(name="planetary", root=str(root),
                      s2_collection=options.s2_collection or "sentinel-2-l2a", s1_collection="sentinel-1-rtc",
                      backscatter="gamma0 RTC (terrain-flattened), linear power",
                      s2_assets=dict(PLANETARY_S2_ASSETS),
                      signer=lambda href: planetary_sign(href),  # looked up at call time (tests replace it)
                      service="Planetary Computer STAC API")
