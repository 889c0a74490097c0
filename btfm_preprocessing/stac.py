"""STAC search for Sentinel scenes: the same code for API roots (https://) and static catalogs.

Items are parsed into frozen :class:`Scene` records as soon as they arrive; nothing downstream
reads raw STAC dictionaries.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pystac
from shapely.geometry import box, shape

from btfm_core.errors import SourceError
from btfm_preprocessing.period import Period

log = logging.getLogger(__name__)

#: Retries (exponential back-off, honouring Retry-After) of a STAC API request on 429 and 5xx.
SEARCH_RETRIES = 5
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
    catalog.make_all_asset_hrefs_absolute()
    search_box = box(*bbox)
    for item in catalog.get_items(recursive=True):
        if item.collection_id != collection:
            continue
        if item.geometry is not None and not shape(item.geometry).intersects(search_box):
            continue
        if period.contains(_item_datetime(item).date()):
            yield item


def _api_items(root: str, collection: str, bbox: tuple[float, float, float, float], period: Period,
               query: Mapping[str, object] | None) -> Iterator[pystac.Item]:
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    retry = Retry(total=SEARCH_RETRIES, backoff_factor=1.0, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=None, respect_retry_after_header=True)
    client = Client.open(root, stac_io=StacApiIO(max_retries=retry, timeout=SEARCH_TIMEOUT_S))
    search = client.search(collections=[collection], bbox=bbox, datetime=period.stac_datetime,
                           query=dict(query) if query else None)
    yield from search.items()


def search_items(root: str, collection: str, bbox: tuple[float, float, float, float], period: Period,
                 query: Mapping[str, object] | None = None) -> list[pystac.Item]:
    """Items of ``collection`` intersecting ``bbox`` (WGS84) within ``period``, oldest first.

    ``root`` is a STAC API URL or a static catalog (path or ``file://`` URL). ``query`` uses the
    STAC API query extension (``{"eo:cloud_cover": {"lt": 90}}``); for static catalogs the same
    ``lt``/``lte``/``gt``/``gte``/``eq`` conditions are applied locally.
    """
    if _is_url(root):
        items: Iterable[pystac.Item] = _api_items(root, collection, bbox, period, query)
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
