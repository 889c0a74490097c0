"""Where scenes come from: the ``--source`` / ``--s1-source`` registry and the types every source shares.

Sentinel-2 sources (``--source``) meet :class:`S2Source`, Sentinel-1 sources (``--s1-source``)
:class:`S1Source` (both in :mod:`~btfm_preprocessing.sources._types`). Each backend is one module
that imports only those types (never this registry):

- :mod:`~btfm_preprocessing.sources.stac_api`: ``local``, ``earthsearch``, ``planetary`` -- a STAC
  root plus a few attributes, read as COGs through :mod:`~btfm_preprocessing.sources.cog`;
- :mod:`~btfm_preprocessing.sources.sentinelhub`: ``sentinelhub`` (Process and Catalog APIs);
- :mod:`~btfm_preprocessing.sources.asf`: ``asf`` (GRD downloaded and geocoded here);
- :mod:`~btfm_preprocessing.sources.hyp3`: ``asf-hyp3`` (RTC processed by ASF HyP3; ASF's search).

The last three import their client libraries (``sentinelhub``, ``asf_search``, ``hyp3_sdk``) only
when their source is built. A constructor takes the :class:`SourceOptions` (roots, collection,
work folder, the environment captured at the command-line edge) and, optionally, the run's
:class:`~btfm_preprocessing.traffic.NetworkCounter` for what the source receives outside GDAL.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from btfm_core.grid import Grid
from btfm_preprocessing.period import Period
from btfm_preprocessing.sources._types import (
    RECORDED_PROPERTIES,
    S1_SPEC,
    S2_SPEC,
    SOURCE_VARIABLES,
    AcquisitionDay,
    S1Factory,
    S1Source,
    S2Factory,
    S2Source,
    Scene,
    SensorSpec,
    Source,
    SourceEnvironment,
    SourceOptions,
)
from btfm_preprocessing.sources.stac_api import (
    EARTH_SEARCH_S2_ASSETS,
    StacSource,
    earthsearch_source,
    local_source,
    planetary_source,
)
from btfm_preprocessing.traffic import NetworkCounter

__all__ = [
    "EARTH_SEARCH_S2_ASSETS",
    "RECORDED_PROPERTIES",
    "S1_SOURCES",
    "S1_SPEC",
    "S2_SOURCES",
    "S2_SPEC",
    "SOURCE_VARIABLES",
    "AcquisitionDay",
    "NoS1Source",
    "S1Source",
    "S2Source",
    "Scene",
    "SensorSpec",
    "Source",
    "SourceEnvironment",
    "SourceOptions",
    "StacSource",
    "default_s1_source",
]


@dataclass(frozen=True)
class NoS1Source:
    """``--s1-source none``: tiles get empty S1 series."""

    name: str = "none"
    backscatter: str = "none"
    group_reads: bool = True  # nothing is read

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


def _sentinelhub(options: SourceOptions, traffic: NetworkCounter | None = None) -> S2Source:
    from btfm_preprocessing.sources.sentinelhub import sentinelhub_source  # the sentinelhub package, on use

    return sentinelhub_source(options, traffic)


def _asf(options: SourceOptions, traffic: NetworkCounter | None = None) -> S1Source:
    from btfm_preprocessing.sources.asf import asf_source  # imports asf_search

    return asf_source(options, traffic)


def _asf_hyp3(options: SourceOptions, traffic: NetworkCounter | None = None) -> S1Source:
    from btfm_preprocessing.sources.hyp3 import hyp3_source  # imports hyp3_sdk

    return hyp3_source(options, traffic)


# The STAC sources receive nothing outside GDAL, whose reads the run's counter measures itself.
def _local(options: SourceOptions, traffic: NetworkCounter | None = None) -> StacSource:
    return local_source(options)


def _local_s1(options: SourceOptions, traffic: NetworkCounter | None = None) -> StacSource:
    return local_source(options, for_s1=True)


def _earthsearch(options: SourceOptions, traffic: NetworkCounter | None = None) -> StacSource:
    return earthsearch_source(options)


def _planetary(options: SourceOptions, traffic: NetworkCounter | None = None) -> StacSource:
    return planetary_source(options)


def _planetary_s1(options: SourceOptions, traffic: NetworkCounter | None = None) -> StacSource:
    return planetary_source(options, for_s1=True)


def _no_s1(options: SourceOptions, traffic: NetworkCounter | None = None) -> NoS1Source:
    return NoS1Source()


#: ``--source`` name -> constructor of the Sentinel-2 L2A source.
S2_SOURCES: dict[str, S2Factory] = {
    "local": _local,
    "earthsearch": _earthsearch,
    "planetary": _planetary,
    "sentinelhub": _sentinelhub,
}
#: ``--s1-source`` name -> constructor of the Sentinel-1 source.
S1_SOURCES: dict[str, S1Factory] = {
    "local": _local_s1,
    "planetary": _planetary_s1,
    "asf": _asf,
    "asf-hyp3": _asf_hyp3,
    "none": _no_s1,
}


def default_s1_source(s2_source: str) -> str:
    """The S1 source used when ``--s1-source`` is not given: the same one if it serves S1."""
    return s2_source if s2_source in S1_SOURCES else "planetary"
