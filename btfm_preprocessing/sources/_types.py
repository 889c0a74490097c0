"""What every source shares: the options it is built from, the scenes it finds and the protocols it meets.

Backend modules (:mod:`~btfm_preprocessing.sources.stac_api`, :mod:`~btfm_preprocessing.sources.sentinelhub`,
:mod:`~btfm_preprocessing.sources.asf`, :mod:`~btfm_preprocessing.sources.hyp3`) import this module,
never the registry (:mod:`btfm_preprocessing.sources`), so nothing imports back into itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from btfm_core.grid import Grid
from btfm_core.tiles import S1_BANDS, S2_BANDS
from btfm_preprocessing.credentials import Secret, UserPassword, earthdata_login, required_secret
from btfm_preprocessing.encoding import day_of_year
from btfm_preprocessing.mosaic import S2Day
from btfm_preprocessing.period import Period
from btfm_preprocessing.traffic import NetworkCounter

#: Item properties copied into the run metadata.
RECORDED_PROPERTIES = ("platform", "constellation", "btfm:backscatter", "sar:product_type",
                       "btfm:b8a_substitute", "s2:processing_baseline")


@dataclass(frozen=True)
class SensorSpec:
    """What one sensor's day mosaic holds, as the tile contract (:mod:`btfm_core.tiles`) stores it.

    Attributes:
        name: ``S2`` or ``S1``.
        bands: band names, in the order of the mosaic's last axis.
        dtype: dtype of the mosaic (and of the tile's array).
        nodata: value of a pixel without an observation.
        encoding: what a value means.
        granule_dtype: dtype a granule's band is read in, before the encoding.
        granule_nodata: value of a granule pixel without data, as read.
    """

    name: str
    bands: tuple[str, ...]
    dtype: np.dtype
    nodata: int
    encoding: str
    granule_dtype: str
    granule_nodata: float


#: Sentinel-2 L2A: the ten bands of ``bands.npy``.
S2_SPEC = SensorSpec(name="S2", bands=S2_BANDS, dtype=np.dtype(np.uint16), nodata=0,
                     encoding="DN = 10000 x surface reflectance on the pre-2022 scale (the +1000 offset of "
                              "processing baseline >= 04.00 removed, negatives clipped to 0)",
                     granule_dtype="uint16", granule_nodata=0)
#: Sentinel-1: VV and VH of ``sar_*.npy``, linear power as read, int16 dB codes once encoded.
S1_SPEC = SensorSpec(name="S1", bands=S1_BANDS, dtype=np.dtype(np.int16), nodata=0,
                     encoding="int16 code = 400 x dB + 10000 in [0, 30000] of linear power backscatter "
                              "(btfm_preprocessing.encoding.encode_s1_db)",
                     granule_dtype="float32", granule_nodata=float("nan"))


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


@dataclass(frozen=True)
class AcquisitionDay:
    """All scenes of one sensor (and orbit direction) acquired on one day."""

    day: dt.date
    scenes: tuple[Scene, ...]

    @property
    def doy(self) -> int:
        """Day of year, 1-366."""
        return day_of_year(self.day)


#: Environment variables the sources read (name -> whether it is a secret), captured once at the
#: command-line edge by :meth:`SourceEnvironment.capture`. Each backend module documents its own.
SOURCE_VARIABLES: Mapping[str, bool] = {
    # asf and asf-hyp3: search and Earthdata login roots; the login (else the netrc file)
    "BTFM_ASF_SEARCH_URL": False, "BTFM_EARTHDATA_URL": False,
    "EARTHDATA_USERNAME": False, "EARTHDATA_PASSWORD": True, "NETRC": False,
    # asf-hyp3: API root, first poll interval and how long to wait for jobs
    "BTFM_HYP3_API_URL": False, "BTFM_HYP3_POLL_S": False, "BTFM_HYP3_TIMEOUT_S": False,
    # sentinelhub: deployment and OAuth client
    "SH_BASE_URL": False, "SH_TOKEN_URL": False, "SH_CLIENT_ID": True, "SH_CLIENT_SECRET": True,
}


@dataclass(frozen=True)
class SourceEnvironment(Mapping[str, str]):
    """The :data:`SOURCE_VARIABLES` set when the command started; sources read these, never ``os.environ``.

    A read-only mapping of the plain variables (as set, not stripped); secrets are kept apart as
    :class:`~btfm_preprocessing.credentials.Secret` (stripped, empty ones left out) and come out
    only through :meth:`secret`. Frozen, hashable and picklable: it travels inside
    :class:`SourceOptions` to Dask workers, which therefore need none of these variables themselves.

    Attributes:
        plain: ``(name, value)`` of the plain variables that are set, sorted by name.
        secrets: ``(name, secret)`` of the secret variables that are set, sorted by name.
    """

    plain: tuple[tuple[str, str], ...] = ()
    secrets: tuple[tuple[str, Secret], ...] = ()

    @classmethod
    def capture(cls, environ: Mapping[str, str]) -> SourceEnvironment:
        """The :data:`SOURCE_VARIABLES` of ``environ`` (``os.environ`` at the command-line edge)."""
        plain = [(name, environ[name]) for name, secret in SOURCE_VARIABLES.items() if not secret and name in environ]
        secrets = [(name, Secret(environ[name].strip())) for name, secret in SOURCE_VARIABLES.items()
                   if secret and environ.get(name, "").strip()]
        return cls(tuple(sorted(plain)), tuple(sorted(secrets, key=lambda pair: pair[0])))

    def __getitem__(self, name: str) -> str:
        """The plain variable ``name``; KeyError if it is unset, ValueError if it is not a plain variable."""
        if SOURCE_VARIABLES.get(name, True):
            raise ValueError(f"{name} is not a plain variable of SOURCE_VARIABLES")
        return dict(self.plain)[name]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self.plain)

    def __len__(self) -> int:
        return len(self.plain)

    def secret(self, name: str) -> Secret | None:
        """The secret variable ``name``, or None if it is unset or empty."""
        if not SOURCE_VARIABLES.get(name):
            raise ValueError(f"{name} is not a secret variable of SOURCE_VARIABLES")
        return dict(self.secrets).get(name)

    def required_secret(self, name: str, purpose: str) -> Secret:
        """The secret variable ``name``.

        Raises:
            CredentialsError: if it is unset or empty; the message names the variable and ``purpose``.
        """
        return required_secret(self.secret(name), name, purpose)

    def earthdata_login(self) -> UserPassword:
        """NASA Earthdata login: ``EARTHDATA_USERNAME``/``EARTHDATA_PASSWORD``, else ``$NETRC`` or ``~/.netrc``.

        Raises:
            CredentialsError: naming both ways to provide it when neither is set.
        """
        netrc = self.get("NETRC")
        return earthdata_login(self.get("EARTHDATA_USERNAME"), self.secret("EARTHDATA_PASSWORD"),
                               Path(netrc) if netrc else None)


@dataclass(frozen=True)
class SourceOptions:
    """What the command line tells every source (frozen and hashable: a cache key on Dask workers).

    Attributes:
        catalog: ``--catalog``: the S2 source's root (static catalog, or another API root).
        s1_catalog: ``--s1-catalog``: the S1 source's root (defaults to ``catalog`` when S1 and
            S2 come from the same source).
        s2_collection: ``--s2-collection``.
        work_dir: folder for downloads and processed scenes of sources that need them (under
            the run's cache, removed at the end unless ``--keep-intermediate``).
        workers: parallel requests a source may make.
        max_cloud: ``--max-cloud`` (sources that mosaic server-side apply it there too).
        environment: the environment variables the sources read, captured at the command-line edge.
    """

    catalog: str | None = None
    s1_catalog: str | None = None
    s2_collection: str | None = None
    work_dir: Path | None = None
    workers: int = 4
    max_cloud: float = 100.0
    environment: SourceEnvironment = SourceEnvironment()


class Source(Protocol):
    """What the pipeline needs from any source: a name and its provenance.

    Sentinel-2 and Sentinel-1 sources differ in what one day's read gives (S2: bands and a validity
    mask, :data:`S2_SPEC`; S1: dB codes, :data:`S1_SPEC`) and S1 sources may need to prepare
    scenes (download, process) before reading them, hence the two protocols below. A STAC source
    meets both.
    """

    @property
    def name(self) -> str:
        """The ``--source`` / ``--s1-source`` name."""
        ...

    def describe(self) -> dict[str, object]:
        """Provenance recorded in the run metadata (collections, endpoints; never a credential)."""
        ...

    @property
    def group_reads(self) -> bool:
        """Whether a day read once on the union of neighbouring tiles and split gives each tile its own read.

        True for GeoTIFF/COG reads (GDAL computes every target pixel from the same source pixels
        whatever the window, :func:`~btfm_preprocessing.reader.plain_kernel_options`), so neighbouring
        tiles fetch and decode each block once; False for a server-side mosaic, read tile by tile.
        """
        ...


class S2Source(Source, Protocol):
    """What the pipeline needs from a Sentinel-2 L2A source (``--source``)."""

    def search_s2(self, grid: Grid, period: Period, max_cloud: float) -> list[Scene]:
        """S2 L2A scenes over ``grid`` in ``period`` with at most ``max_cloud`` % cloud, oldest first."""
        ...

    def read_s2_day(self, day: AcquisitionDay, grid: Grid, pool: Executor) -> S2Day | None:
        """One day's mosaic on ``grid`` (bands, validity mask, coverage), or None if no granule covers it."""
        ...


class S1Source(Source, Protocol):
    """What the pipeline needs from a Sentinel-1 backscatter source (``--s1-source``)."""

    @property
    def backscatter(self) -> str:
        """What the backscatter is (e.g. ``gamma0 RTC``, ``sigma0``), recorded in the run metadata."""
        ...

    def search_s1(self, grid: Grid, period: Period) -> list[Scene]:
        """S1 scenes over ``grid`` in ``period``, oldest first."""
        ...

    def prepare_s1(self, scenes: Sequence[Scene], grid: Grid) -> list[Scene]:
        """Make the scenes readable on ``grid`` (download, process); resumable. May drop scenes."""
        ...

    def read_s1_day(self, day: AcquisitionDay, grid: Grid, pool: Executor) -> np.ndarray | None:
        """One day's mosaic on ``grid``: (H, W, 2) int16 dB codes (0 = no data), or None."""
        ...


class S2Factory(Protocol):
    """Builds a Sentinel-2 source from the options (an entry of :data:`btfm_preprocessing.sources.S2_SOURCES`)."""

    def __call__(self, options: SourceOptions, traffic: NetworkCounter | None = None) -> S2Source:
        """The source; ``traffic`` counts what it receives outside GDAL (None: not counted)."""
        ...


class S1Factory(Protocol):
    """Builds a Sentinel-1 source from the options (an entry of :data:`btfm_preprocessing.sources.S1_SOURCES`)."""

    def __call__(self, options: SourceOptions, traffic: NetworkCounter | None = None) -> S1Source:
        """The source; ``traffic`` counts what it receives outside GDAL (None: not counted)."""
        ...
