"""Where scenes come from: each source is a STAC root plus a few attributes.

Sentinel-2 and Sentinel-1 sources differ only in collections, asset keys and what kind of
backscatter they serve; search and read code is shared (:mod:`btfm_preprocessing.stac`,
:mod:`btfm_preprocessing.reader`). New backends (Earth Search, Planetary Computer, Sentinel Hub,
ASF) are new entries in :data:`SOURCES` built on the same protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from btfm_core.errors import SourceError
from btfm_core.grid import Grid
from btfm_preprocessing.period import Period
from btfm_preprocessing.stac import Scene, local_path, search_items, to_scene

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


class SceneSource(Protocol):
    """What the pipeline needs from a data source."""

    name: str

    def search_s2(self, grid: Grid, period: Period, max_cloud: float) -> list[Scene]:
        """S2 L2A scenes over ``grid`` in ``period`` with at most ``max_cloud`` % cloud."""
        ...

    def search_s1(self, grid: Grid, period: Period) -> list[Scene]:
        """S1 backscatter scenes (linear power, VV and VH) over ``grid`` in ``period``."""
        ...

    def describe(self) -> dict[str, object]:
        """Provenance recorded in the run metadata (collections, backscatter kind)."""
        ...

    def sign_href(self, href: str) -> str:
        """A readable URL for an asset href (signed where the source needs it)."""
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
    """

    name: str
    root: str
    s2_collection: str = "sentinel-2-l2a"
    s1_collection: str | None = "sentinel-1-rtc"
    backscatter: str = "unknown"
    s2_assets: Mapping[str, str] = field(default_factory=lambda: dict(EARTH_SEARCH_S2_ASSETS))
    s1_assets: Mapping[str, str] = field(default_factory=lambda: dict(RTC_S1_ASSETS))
    signer: Callable[[str], str] | None = None

    def sign_href(self, href: str) -> str:
        """``href`` signed with :attr:`signer`, or unchanged."""
        return self.signer(href) if self.signer else href

    def search_s2(self, grid: Grid, period: Period, max_cloud: float) -> list[Scene]:
        """S2 scenes over the grid, oldest first."""
        items = search_items(self.root, self.s2_collection, grid.lonlat_bounds(), period,
                             query={"eo:cloud_cover": {"lte": max_cloud}})
        return [to_scene(item, self.s2_assets, RECORDED_PROPERTIES) for item in items]

    def search_s1(self, grid: Grid, period: Period) -> list[Scene]:
        """S1 scenes over the grid, oldest first (none if the source serves no S1 backscatter)."""
        if self.s1_collection is None:
            log.warning("source '%s' serves no Sentinel-1 backscatter: the tiles' S1 series stay empty", self.name)
            return []
        items = search_items(self.root, self.s1_collection, grid.lonlat_bounds(), period)
        return [to_scene(item, self.s1_assets, RECORDED_PROPERTIES) for item in items]

    def describe(self) -> dict[str, object]:
        """Collections, root and backscatter kind for the run metadata."""
        return {"source": self.name, "root": self.root, "s2_collection": self.s2_collection,
                "s1_collection": self.s1_collection, "s1_backscatter": self.backscatter}


def local_source(catalog: str | Path, s2_collection: str | None = None) -> StacSource:
    """A static STAC catalog on disk (e.g. the embedded demo sample)."""
    path = local_path(str(catalog)).expanduser().resolve()
    return StacSource(name="local", root=str(path), s2_collection=s2_collection or "sentinel-2-l2a",
                      backscatter="as recorded in each item")


#: Element84 Earth Search STAC API (no account needed).
EARTH_SEARCH_URL = "https://earth-search.aws.element84.com/v1"
EARTH_SEARCH_S2_COLLECTIONS = ("sentinel-2-l2a", "sentinel-2-c1-l2a")


def earthsearch_source(catalog: str | Path | None, s2_collection: str | None = None) -> StacSource:
    """Element84 Earth Search: S2 L2A COGs on AWS, no account. It serves no S1 backscatter.

    Args:
        catalog: another API root serving the same collections (a mirror, or a test server).
        s2_collection: ``sentinel-2-l2a`` (default) or ``sentinel-2-c1-l2a``.
    """
    collection = s2_collection or EARTH_SEARCH_S2_COLLECTIONS[0]
    if collection not in EARTH_SEARCH_S2_COLLECTIONS:
        raise SourceError(f"Earth Search has no S2 L2A collection '{collection}'; use one of "
                          f"{', '.join(EARTH_SEARCH_S2_COLLECTIONS)}")
    return StacSource(name="earthsearch", root=str(catalog or EARTH_SEARCH_URL), s2_collection=collection,
                      s1_collection=None, backscatter="none")


#: Microsoft Planetary Computer STAC API (no account needed; asset URLs need a SAS signature).
PLANETARY_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
PLANETARY_S2_ASSETS: Mapping[str, str] = {band: band for band in EARTH_SEARCH_S2_ASSETS}


def planetary_sign(href: str) -> str:
    """Sign a Planetary Computer blob URL with a short-lived SAS token (``planetary-computer``)."""
    try:
        import planetary_computer
    except ImportError as exc:
        raise SourceError("--source planetary needs the planetary-computer package: "
                          "pip install planetary-computer") from exc
    return str(planetary_computer.sign(href))


def planetary_source(catalog: str | Path | None, s2_collection: str | None = None) -> StacSource:
    """Microsoft Planetary Computer: S2 L2A (raw +1000 offset from 2022-01-25, removed here) and
    S1 RTC (gamma0, terrain-flattened, linear power, 10 m), both as COGs; no account needed.

    Args:
        catalog: another API root serving the same collections (a mirror, or a test server).
        s2_collection: S2 collection id (default ``sentinel-2-l2a``).
    """
    return StacSource(name="planetary", root=str(catalog or PLANETARY_URL),
                      s2_collection=s2_collection or "sentinel-2-l2a", s1_collection="sentinel-1-rtc",
                      backscatter="gamma0 RTC (terrain-flattened), linear power",
                      s2_assets=dict(PLANETARY_S2_ASSETS),
                      signer=lambda href: planetary_sign(href))  # looked up at call time (tests replace it)


#: Source name -> constructor taking the ``--catalog`` value and the ``--s2-collection`` value.
SOURCES = {"local": local_source, "earthsearch": earthsearch_source, "planetary": planetary_source}
