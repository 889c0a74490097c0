"""STAC search for Sentinel scenes: the same code for API roots (https://) and static catalogs.

Items are parsed into frozen :class:`Scene` records as soon as they arrive; nothing downstream
reads raw STAC dictionaries.

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
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pystac
from shapely.geometry import box, shape

from btfm_core.errors import ServiceUnavailableError, SourceError, UnexpectedResponseError
from btfm_preprocessing.network import (
    CHECK_NETWORK,
    CONNECT_TIMEOUT_S,
    RETRY_AFTER_MAX_S,
    RETRY_STATUS,
    LoggedRetry,
    http_status,
    is_unreachable,
    network_reason,
    safe_url,
)
from btfm_preprocessing.period import Period

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


@dataclass(frozen=True)
class Scene:
    """One acquisition (granule) with the assets the pipeline reads.

    Attributes:
        id: STAC item id.
        collection: STAC collection id.
        acquired: acquisition time (UTC).
        assets: contract band name (``B04``, ``SCL``, ``VV``...) -> absolute href.
        cloud_cover: ``eo:cloud_cover`` in percent, if given.
        orbit_state: ``ascending``/``descending`` for S1, else None.
        processing_baseline: S2 ``s2:processing_baseline``, if given.
        boa_offset_removed: ``earthsearch:boa_offset_applied`` (the provider already removed
            the +1000 offset), if given.
        properties: the few extra item properties worth recording (platform, backscatter kind).
    """

    id: str
    collection: str
    acquired: dt.datetime
    assets: Mapping[str, str]
    cloud_cover: float | None = None
    orbit_state: str | None = None
    processing_baseline: str | None = None
    boa_offset_removed: bool | None = None
    properties: Mapping[str, object] = field(default_factory=dict)

    @property
    def day(self) -> dt.date:
        """Acquisition day (UTC)."""
        return self.acquired.date()


def _is_url(root: str) -> bool:
    return urlparse(root).scheme in ("http", "https")


def local_path(root: str) -> Path:
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
