"""Where scenes come from: each source is a STAC root plus a few attributes.

Sentinel-2 sources (``--source``) implement :class:`S2Source`, Sentinel-1 sources
(``--s1-source``) :class:`S1Source`. STAC/COG sources (local catalog, Earth Search, Planetary
Computer) differ only in roots, collections and asset keys and share the search and read code
(:mod:`btfm_preprocessing.stac`, :mod:`btfm_preprocessing.reader`); Sentinel Hub
(:mod:`btfm_preprocessing.sentinelhub`), ASF (:mod:`btfm_preprocessing.asf`) and HyP3
(:mod:`btfm_preprocessing.hyp3`) bring their own search and read steps behind the same protocols.

Network bounds: STAC API searches retry as :mod:`btfm_preprocessing.stac` says (about 2 s when a
root refuses connections or has no DNS entry); Planetary Computer asset URLs are signed with SAS
tokens fetched in :data:`PLANETARY_SAS_ATTEMPTS` (4) tries, waits 1, 2, 4 s, each logged at INFO.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import numpy as np
import requests

from btfm_core.errors import ServiceUnavailableError, SourceError
from btfm_core.grid import Grid
from btfm_preprocessing.network import CHECK_NETWORK, RETRY_STATUS, describe_problem, http_status, log_retry
from btfm_preprocessing.period import Period
from btfm_preprocessing.stac import Scene, local_path, search_items, to_scene
from btfm_preprocessing.stack import AcquisitionDay, read_s1_day, read_s2_day

log = logging.getLogger(__name__)

#: Earth Search style asset keys for the S2 bands of the tile contract, plus SCL.
EARTH_SEARCH_S2_ASSETS: Mapping[str, str] = {
    "B04": "red", "B02": "blue", "B03": "green", "B08": "nir", "B8A": "nir08",
    "B05": "rededge1", "B06": "rededge2", "B07": "rededge3", "B11": "swir16", "B12": "swir22",
    "SCL": "scl",
}
#: Planetary Computer style S1 RTC asset keys.
RTC_S1_ASSETS: Mapping[str, str] = {"VV": "vv", "VH": "vh"}
#: Item properties copied into the run metadata.
RECORDED_PROPERTIES = ("platform", "constellation", "btfm:backscatter", "sar:product_type",
                       "btfm:b8a_substitute", "s2:processing_baseline")


@dataclass(frozen=True)
class SourceOptions:
    """What the command line tells every source.

    Attributes:
        catalog: ``--catalog``: the S2 source's root (static catalog, or another API root).
        s1_catalog: ``--s1-catalog``: the S1 source's root (defaults to ``catalog`` when S1 and
            S2 come from the same source).
        s2_collection: ``--s2-collection``.
        work_dir: folder for downloads and processed scenes of sources that need them (under
            the run's cache, removed at the end unless ``--keep-intermediate``).
        workers: parallel requests a source may make.
        max_cloud: ``--max-cloud`` (sources that mosaic server-side apply it there too).
    """

    catalog: str | None = None
    s1_catalog: str | None = None
    s2_collection: str | None = None
    work_dir: Path | None = None
    workers: int = 4
    max_cloud: float = 100.0


class S2Source(Protocol):
    """What the pipeline needs from a Sentinel-2 L2A source."""

    name: str

    def search_s2(self, grid: Grid, period: Period, max_cloud: float) -> list[Scene]:
        """S2 L2A scenes over ``grid`` in ``period`` with at most ``max_cloud`` % cloud."""
        ...

    def read_s2_day(self, day: AcquisitionDay, grid: Grid, pool: Executor) -> tuple[np.ndarray, np.ndarray] | None:
        """One day's mosaic on ``grid``: ``(bands (H, W, 10) uint16, mask (H, W) uint8)`` or None."""
        ...

    def describe(self) -> dict[str, object]:
        """Provenance recorded in the run metadata (collections, endpoints)."""
        ...


class S1Source(Protocol):
    """What the pipeline needs from a Sentinel-1 backscatter source."""

    name: str
    #: what the backscatter is (e.g. ``gamma0 RTC``, ``sigma0``), recorded in the run metadata.
    backscatter: str

    def search_s1(self, grid: Grid, period: Period) -> list[Scene]:
        """S1 scenes over ``grid`` in ``period``, oldest first."""
        ...

    def prepare_s1(self, scenes: Sequence[Scene], grid: Grid) -> list[Scene]:
        """Make the scenes readable on ``grid`` (download, process); resumable. May drop scenes."""
        ...

    def read_s1_day(self, day: AcquisitionDay, grid: Grid, pool: Executor) -> np.ndarray | None:
        """One day's mosaic on ``grid``: (H, W, 2) int16 dB codes (0 = no data), or None."""
        ...

    def describe(self) -> dict[str, object]:
        """Provenance recorded in the run metadata."""
        ...


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

    def read_s2_day(self, day: AcquisitionDay, grid: Grid, pool: Executor) -> tuple[np.ndarray, np.ndarray] | None:
        """One day's COG reads, masked and mosaicked (:func:`~btfm_preprocessing.stack.read_s2_day`)."""
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
        """One day's COG reads in the dB encoding (:func:`~btfm_preprocessing.stack.read_s1_day`)."""
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


@dataclass(frozen=True)
class NoS1Source:
    """``--s1-source none``: tiles get empty S1 series."""

    name: str = "none"
    backscatter: str = "none"

    def search_s1(self, grid: Grid, period: Period) -> list[Scene]:
        """No scenes."""
        return []

    def prepare_s1(self, scenes: Sequence[Scene], grid: Grid) -> list[Scene]:
        """Nothing to prepare."""
        return list(scenes)

    def read_s1_day(self, day: AcquisitionDay, grid: Grid, pool: Executor) -> np.ndarray | None:
        """Never called: there are no days."""
        return None

    def describe(self) -> dict[str, object]:
        """No S1 source."""
        return {"source": self.name}


def _sentinelhub(options: SourceOptions) -> S2Source:
    from btfm_preprocessing.sentinelhub import sentinelhub_source  # imports the sentinelhub package

    return sentinelhub_source(options)


def _asf(options: SourceOptions) -> S1Source:
    from btfm_preprocessing.asf import asf_source  # imports asf_search

    return asf_source(options)


def _asf_hyp3(options: SourceOptions) -> S1Source:
    from btfm_preprocessing.hyp3 import hyp3_source  # imports hyp3_sdk

    return hyp3_source(options)


#: ``--source`` name -> constructor of the Sentinel-2 L2A source.
S2_SOURCES: dict[str, Callable[[SourceOptions], S2Source]] = {
    "local": local_source,
    "earthsearch": earthsearch_source,
    "planetary": planetary_source,
    "sentinelhub": _sentinelhub,
}
#: ``--s1-source`` name -> constructor of the Sentinel-1 source.
S1_SOURCES: dict[str, Callable[[SourceOptions], S1Source]] = {
    "local": lambda options: local_source(options, for_s1=True),
    "planetary": lambda options: planetary_source(options, for_s1=True),
    "asf": _asf,
    "asf-hyp3": _asf_hyp3,
    "none": lambda options: NoS1Source(),
}


def default_s1_source(s2_source: str) -> str:
    """The S1 source used when ``--s1-source`` is not given: the same one if it serves S1."""
    return s2_source if s2_source in S1_SOURCES else "planetary"
