"""Preprocessing entry point: ROI + date ranges -> tile folders of S2/S1 time series.

``main_pipeline.sh`` is a thin wrapper around :func:`main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from btfm_core.cli import (
    HelpFormatter,
    add_log_file_option,
    add_overwrite_option,
    add_standard_options,
    entry_point,
    prog_name,
)
from btfm_core.errors import BTFMError, NoScenesFoundError
from btfm_core.fileio import atomic_path, check_free_space, ensure_writable_dir, remove_stale_temporaries
from btfm_core.locking import folder_lock
from btfm_core.logs import setup_logging
from btfm_core.progress import progress
from btfm_core.redact import redact_values
from btfm_core.roi import Roi, open_roi
from btfm_core.run import RunLayout, RunMetadata
from btfm_core.tiles import (
    DEFAULT_TILE_SIZE,
    ORBIT_DIRECTIONS,
    TileId,
    tile_bytes,
    tile_layout,
)
from btfm_preprocessing.checks import check_flags, unobserved_line, warn_unobserved
from btfm_preprocessing.dry_run import plan_report
from btfm_preprocessing.period import Period, parse_period
from btfm_preprocessing.reader import gdal_env
from btfm_preprocessing.sources import (
    S1_SOURCES,
    S2_SOURCES,
    AcquisitionDay,
    S1Source,
    S2Source,
    Scene,
    SourceEnvironment,
    SourceOptions,
    default_s1_source,
)
from btfm_preprocessing.sources.stac_api import local_path
from btfm_preprocessing.stack import group_by_day, split_by_orbit
from btfm_preprocessing.tile_tasks import (
    MAX_READ_GROUP,
    READ_GROUP_PX,
    TileJob,
    TileResult,
    check_workers_see,
    connect,
    day_part_count,
    default_read_group,
    done_stats,
    peak_rss_mb,
    run_on_dask,
    tile_groups,
    write_tile_group,
)
from btfm_preprocessing.traffic import NetworkCounter

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOG = REPO_ROOT / "data" / "demo_belgium" / "catalog.json"


@dataclass(frozen=True)
class PreprocessSettings:
    """Validated settings of one preprocessing run.

    ``environment`` holds the environment variables the sources read (endpoints, credentials, HyP3
    polling), captured once by :func:`settings_from_args`.
    """

    roi: Roi
    s2_period: Period
    s1_period: Period
    data_dir: Path
    source: str
    s1_source: str
    catalog: str | None
    s1_catalog: str | None
    s2_collection: str | None
    tile_size: int
    workers: int
    max_cloud: float
    keep_intermediate: bool
    overwrite: bool
    scheduler: str | None = None
    dask_local: int = 0
    retries: int = 2
    dry_run: bool = False
    read_group: int = 1
    environment: SourceEnvironment = dataclasses.field(default_factory=SourceEnvironment)

    @property
    def layout(self) -> RunLayout:
        """The run folder's paths."""
        return RunLayout(self.data_dir)

    @property
    def tiles_dir(self) -> Path:
        """Where tile folders go."""
        return self.layout.tiles_dir

    @property
    def source_options(self) -> SourceOptions:
        """What the sources are told (roots, collection, cache folder, parallel requests, cloud limit, environment)."""
        return SourceOptions(catalog=self.catalog, s1_catalog=self.s1_catalog, s2_collection=self.s2_collection,
                             work_dir=self.layout.cache_dir / self.s1_source, workers=self.workers,
                             max_cloud=self.max_cloud, environment=self.environment)

    @property
    def run_key(self) -> str:
        """Hash of what determines tile contents; a tile made with another key is not reused."""
        parts = [self.source, str(self.catalog), str(self.s2_collection), str(self.s2_period), str(self.s1_period),
                 str(self.max_cloud), str(self.roi.grid)]
        if (self.s1_source, self.s1_catalog) != (self.source, self.catalog):  # keeps older runs' keys valid
            parts += [self.s1_source, str(self.s1_catalog)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the preprocessing step."""
    parser = argparse.ArgumentParser(
        prog=prog_name("btfm_preprocessing.pipeline"),
        description="Search and read Sentinel-2 L2A and Sentinel-1 backscatter for an ROI, mask "
                    "clouds, stack by date and write tile folders (retiled_d_pixel/<x0>_<y0>_<x1>_<y1>/).",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  main_pipeline.sh my_data/roi.tiff 2021-01-01 2021-12-31 2021-01-01 2021-12-31 1\n"
               "  main_pipeline.sh demo/roi.tiff 2020-11-01 2021-10-31 2020-11-01 2021-10-31 1 \\\n"
               "      --source local --catalog data/demo_belgium/catalog.json --tile-size 50\n"
               "  main_pipeline.sh my_data/roi.tiff 2021-01-01 2021-12-31 2021-01-01 2021-12-31 1 \\\n"
               "      --source earthsearch --max-cloud 60\n",
    )
    parser.add_argument("roi", help="ROI GeoTIFF (10 m, projected CRS, non-zero = inside)")
    parser.add_argument("s2_start", help="first Sentinel-2 date, YYYY-MM-DD")
    parser.add_argument("s2_end", help="last Sentinel-2 date, YYYY-MM-DD (inclusive)")
    parser.add_argument("s1_start", help="first Sentinel-1 date, YYYY-MM-DD")
    parser.add_argument("s1_end", help="last Sentinel-1 date, YYYY-MM-DD (inclusive)")
    parser.add_argument("downsample", nargs="?", type=int, default=1,
                        help="spatial downsampling factor of the seed's interface; only 1 (10 m) "
                             "is supported")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="run folder for tiles, logs and caches (default: the ROI's folder)")
    parser.add_argument("--source", choices=sorted(S2_SOURCES), default="local",
                        help="where Sentinel-2 L2A comes from (and Sentinel-1 too, if that source serves "
                             "it and --s1-source is not given); see README for accounts and costs")
    parser.add_argument("--s1-source", choices=sorted(S1_SOURCES), default=None,
                        help="where Sentinel-1 backscatter comes from (default: the --source if it serves "
                             "S1, else planetary); 'none' leaves the S1 series empty")
    parser.add_argument("--catalog", default=None,
                        help="--source local: STAC catalog (path or file:// URL, default: "
                             f"{DEFAULT_CATALOG.relative_to(REPO_ROOT)}); earthsearch/planetary: another "
                             "API root serving the same collections; sentinelhub: base URL, or 'sentinelhub' / "
                             "'cdse' (Copernicus Data Space)")
    parser.add_argument("--s1-catalog", default=None,
                        help="root of the S1 source when it differs from --catalog (a static catalog, a "
                             "mirror or an API endpoint)")
    parser.add_argument("--s2-collection", default=None,
                        help="S2 L2A collection (earthsearch: sentinel-2-l2a or sentinel-2-c1-l2a)")
    parser.add_argument("--tile-size", type=int, default=DEFAULT_TILE_SIZE, help="tile size in pixels")
    parser.add_argument("--workers", type=int, default=min(8, (os.cpu_count() or 2) * 2),
                        help="acquisition days read at once, and parallel asset reads per day")
    parser.add_argument("--read-group", type=int, default=None, metavar="K",
                        help="read K x K neighbouring tiles together: each day once on their union, so a COG "
                             "block under several tiles is fetched and decoded once (default: as many as fit "
                             f"in {READ_GROUP_PX} px a side, at most {MAX_READ_GROUP}; 1 = tile by tile; on a "
                             "cluster with fewer groups than workers, each group's days are split between them)")
    parser.add_argument("--max-cloud", type=float, default=90.0,
                        help="skip S2 scenes with more cloud cover than this (percent)")
    parser.add_argument("--keep-intermediate", action="store_true",
                        help="keep the search cache under <data-dir>/cache after the run")
    add_overwrite_option(parser, "rebuild tiles made by a run with other settings instead of failing")
    add_log_file_option(parser, "<data-dir>/logs/preprocess.log")
    parser.add_argument("--dry-run", action="store_true",
                        help="search only, print the plan (tiles, days and scenes per tile, bytes to read, disk, "
                             "memory per worker) and stop; writes nothing but the search cache")
    cluster = parser.add_argument_group("distributed (tiles as Dask tasks; the run folder and the ROI must be "
                                        "on a file system every worker sees)")
    where = cluster.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    where.add_argument("--dask-local", type=int, default=0, metavar="N",
                       help="start a local Dask cluster of N worker processes")
    cluster.add_argument("--retries", type=int, default=2,
                         help="times a failed tile is retried on the cluster before it is reported")
    add_standard_options(parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> PreprocessSettings:
    """Validate the parsed arguments (ROI, dates, flags) before any work starts.

    This is where the environment is read (:meth:`SourceEnvironment.capture`), once: the sources,
    here and on Dask workers, get it through :class:`SourceOptions`.
    """
    if args.downsample != 1:
        raise BTFMError(f"DOWNSAMPLE={args.downsample} is not supported; pass 1 (tiles are always "
                        "on the ROI's 10 m grid)")
    check_flags(args.tile_size, args.max_cloud)
    if args.workers <= 0:
        raise BTFMError(f"--workers must be positive, got {args.workers}")
    read_group = default_read_group(args.tile_size) if args.read_group is None else args.read_group
    if not 1 <= read_group <= MAX_READ_GROUP:
        raise BTFMError(f"--read-group must be 1 to {MAX_READ_GROUP} (tiles a side read together), got {read_group}")
    if args.dask_local < 0 or args.retries < 0:
        raise BTFMError(f"--dask-local and --retries must be >= 0, got {args.dask_local} and {args.retries}")
    if args.dry_run and args.overwrite:
        raise BTFMError("--dry-run writes nothing, so --overwrite has no meaning with it; drop one of them")
    roi = open_roi(args.roi)
    s2_period = parse_period(args.s2_start, args.s2_end, "S2")
    s1_period = parse_period(args.s1_start, args.s1_end, "S1")
    data_dir = (args.data_dir or roi.path.parent).expanduser().resolve()
    catalog = args.catalog
    if args.source == "local":
        catalog = str(local_path(str(catalog or DEFAULT_CATALOG)).expanduser().resolve())
    s1_source = args.s1_source or default_s1_source(args.source)
    s1_catalog = args.s1_catalog
    if s1_catalog is None and s1_source == args.source:
        s1_catalog = catalog
    elif s1_source == "local":
        s1_catalog = str(local_path(str(s1_catalog or DEFAULT_CATALOG)).expanduser().resolve())
    return PreprocessSettings(roi=roi, s2_period=s2_period, s1_period=s1_period, data_dir=data_dir,
                              source=args.source, s1_source=s1_source, catalog=catalog, s1_catalog=s1_catalog,
                              s2_collection=args.s2_collection,
                              tile_size=args.tile_size,
                              workers=args.workers, max_cloud=args.max_cloud,
                              keep_intermediate=args.keep_intermediate or args.dry_run, overwrite=args.overwrite,
                              scheduler=args.scheduler, dask_local=args.dask_local, retries=args.retries,
                              dry_run=args.dry_run, read_group=read_group,
                              environment=SourceEnvironment.capture(os.environ))


def _scene_to_json(scene: Scene) -> dict[str, object]:
    data = dataclasses.asdict(scene)
    data["acquired"] = scene.acquired.isoformat()
    return data


def _scene_from_json(data: dict[str, object]) -> Scene:
    return Scene(**{**data, "acquired": dt.datetime.fromisoformat(str(data["acquired"]))})  # type: ignore[arg-type]


def search_scenes(settings: PreprocessSettings, s2_source: S2Source,
                  s1_source: S1Source) -> tuple[list[Scene], list[Scene]]:
    """Search S2 and S1 scenes once per run; the result is cached so a resumed run skips it."""
    cache = settings.layout.cache_dir / f"search-{settings.run_key}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        log.info("reusing search results from %s", cache)
        return ([_scene_from_json(s) for s in cached["s2"]], [_scene_from_json(s) for s in cached["s1"]])
    grid = settings.roi.grid
    with progress(total=2, desc="search", unit="collection") as bar:
        s2 = s2_source.search_s2(grid, settings.s2_period, settings.max_cloud)
        bar.update()
        s1 = s1_source.search_s1(grid, settings.s1_period)
        bar.update()
    if not s2:
        return s2, s1  # the run stops here (no scene): nothing to resume, nothing cached
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        tmp.write_text(json.dumps({"s2": [_scene_to_json(s) for s in s2],
                                   "s1": [_scene_to_json(s) for s in s1]}))
    return s2, s1


@dataclass
class RunSummary:
    """Figures printed at the end of a run."""

    tiles_total: int = 0
    tiles_written: int = 0
    tiles_skipped: int = 0
    s2_source: str = ""
    s1_source: str = ""
    s2_scenes: int = 0
    s1_scenes: int = 0
    s2_ids: frozenset[str] = frozenset()
    s1_ids: frozenset[str] = frozenset()
    scenes_used: set[str] = dataclasses.field(default_factory=set)
    valid_counts: list[np.ndarray] = dataclasses.field(default_factory=list)
    network_bytes: int | None = None
    peak_rss_by_worker: dict[str, float] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def add(self, result: TileResult) -> None:
        """Count one tile, written or found done."""
        self.valid_counts.append(result.stats.valid_per_pixel)
        self.scenes_used |= result.stats.scenes_used
        if result.skipped:
            self.tiles_skipped += 1
            return
        self.tiles_written += 1
        if result.worker != "local":  # a local tile's bytes and memory are this process's
            if result.network_bytes is not None:
                self.network_bytes = (self.network_bytes or 0) + result.network_bytes
            for worker, peak in ((result.worker, result.peak_rss_mb), *result.part_workers):
                self.peak_rss_by_worker[worker] = max(peak, self.peak_rss_by_worker.get(worker, 0.0))

    def lines(self, tiles_dir: Path) -> list[str]:
        """Human-readable summary."""
        valid = np.concatenate(self.valid_counts) if self.valid_counts else np.zeros(0, np.int32)
        stats = (f"mean {valid.mean():.1f}, min {valid.min()}, max {valid.max()}" if valid.size else "n/a")
        traffic = "n/a" if self.network_bytes is None else f"{self.network_bytes / 1e6:.1f} MB"
        memory = f"{peak_rss_mb():.0f} MB" + "".join(
            f"; worker {name}: {mb:.0f} MB" for name, mb in sorted(self.peak_rss_by_worker.items()))
        return [
            f"tiles: {self.tiles_total} ({self.tiles_written} written, {self.tiles_skipped} already done)",
            f"Sentinel-2 scenes ({self.s2_source}): {self.s2_scenes} found, "
            f"{len(self.scenes_used & self.s2_ids)} with data in the tiles",
            f"Sentinel-1 scenes ({self.s1_source}): {self.s1_scenes} found, "
            f"{len(self.scenes_used & self.s1_ids)} with data in the tiles",
            f"read over the network: {traffic}",
            f"valid S2 observations per ROI pixel: {stats}",
            unobserved_line(self.valid_counts),
            f"output: {tiles_dir}",
            f"time: {self.seconds:.1f} s; peak memory (RSS): {memory}",
        ]


def plan_tiles(settings: PreprocessSettings) -> list[TileId]:
    """The tiles of the ROI grid that hold at least one ROI pixel."""
    grid = settings.roi.grid
    return [tile for tile in tile_layout(grid.height, grid.width, settings.tile_size)
            if settings.roi.read_mask(tile.grid(grid)).any()]


def pending_tiles(settings: PreprocessSettings, tiles: Sequence[TileId], summary: RunSummary) -> list[TileId]:
    """The tiles not done by a run of these settings (the done ones are counted in ``summary``).

    Raises:
        BTFMError: a tile was made by a run with other settings and ``--overwrite`` is not given.
    """
    pending = []
    for tile in tiles:
        folder = settings.tiles_dir / tile.name
        if folder.is_dir():
            done = done_stats(folder, settings.run_key)
            if done is not None:
                summary.add(TileResult(done, 0, 0.0, skipped=True))
                continue
            if not settings.overwrite:
                raise BTFMError(f"tile {folder} was made by a run with other settings (dates, source "
                                "or ROI); pass --overwrite to rebuild it or use another --data-dir")
        pending.append(tile)
    return pending


def _check_scenes(settings: PreprocessSettings, s2_scenes: Sequence[Scene], s1_scenes: Sequence[Scene]) -> None:
    if not s2_scenes:
        raise NoScenesFoundError(
            f"no Sentinel-2 scene found for {settings.s2_period} over the ROI in source "
            f"'{settings.source}' ({settings.catalog or ''}) with cloud cover <= {settings.max_cloud}%; "
            "check the dates, the ROI location or --max-cloud")
    if not s1_scenes:
        log.warning("no Sentinel-1 scene found for %s; tiles get empty S1 series", settings.s1_period)


def tile_jobs(settings: PreprocessSettings, pending: Sequence[TileId], s2_days: Sequence[AcquisitionDay],
              s1_days: dict[str, list[AcquisitionDay]], metadata: dict[str, object]) -> list[TileJob]:
    """One :class:`TileJob` per group of pending tiles (``--read-group`` a side)."""
    groups = tile_groups(pending, settings.tile_size, (settings.read_group, settings.read_group))
    return [TileJob(settings.tiles_dir, group, settings.roi.path, settings.roi.grid, settings.source,
                    settings.s1_source, settings.source_options, tuple(s2_days), s1_days, dict(metadata),
                    settings.workers) for group in groups]


def write_tiles(settings: PreprocessSettings, jobs: Sequence[TileJob], summary: RunSummary, client: object,
                sources: tuple[S2Source, S1Source], traffic: NetworkCounter, day_ranges: int = 1) -> None:
    """Write the jobs' tiles here (one after the other, reads in parallel) or on the Dask ``client``.

    Here, the run's ``sources`` read and add to its ``traffic``; workers make their own, each job
    in ``day_ranges`` tasks and a join when that is more than one (:func:`run_on_dask`).

    Raises:
        BTFMError: tiles failed on the cluster after their retries (the others are written).
    """
    def record(result: TileResult) -> None:
        where = "" if result.worker == "local" else f" (worker {result.worker})"
        log.info("tile %s: %d S2 dates, S1 %s%s", result.tile, result.stats.s2_dates, result.stats.s1_dates, where)
        summary.add(result)

    if client is not None:
        failures = run_on_dask(client, jobs, retries=settings.retries, on_result=record, day_ranges=day_ranges,
                               parts_dir=settings.layout.tile_parts_dir)
        if failures:
            raise BTFMError(f"{len(failures)} of {sum(len(job.tiles) for job in jobs)} tile(s) failed after "
                            f"{settings.retries} retries: "
                            f"{'; '.join(failures[:3])}; the other tiles are written, rerun to retry these")
        return
    with ThreadPoolExecutor(settings.workers) as pool, \
            ThreadPoolExecutor(settings.workers, thread_name_prefix="day") as day_pool, \
            progress(total=sum(len(job.tiles) for job in jobs), desc="tiles", unit="tile") as bar:
        for job in jobs:
            for result in write_tile_group(job, pool, day_pool, sources=sources, traffic=traffic):
                record(result)
            bar.update(len(job.tiles))


def finish_run(settings: PreprocessSettings, provenance: dict[str, object], s2_scenes: Sequence[Scene],
               s1_scenes: Sequence[Scene]) -> None:
    """Write ``run_metadata.json`` (every tile is done) and remove the caches unless asked to keep them."""
    RunMetadata(
        run_key=settings.run_key,
        roi=str(settings.roi.path),
        s2_period=str(settings.s2_period),
        s1_period=str(settings.s1_period),
        max_cloud=settings.max_cloud,
        tile_size=settings.tile_size,
        s2_scenes=len(s2_scenes),
        s1_scenes=len(s1_scenes),
        s1_backscatter_recorded=tuple(sorted({str(s.properties.get("btfm:backscatter", "unknown"))
                                              for s in s1_scenes})),
        s2_notes=tuple(sorted({f"B8A from {s.properties['btfm:b8a_substitute']}" for s in s2_scenes
                               if "btfm:b8a_substitute" in s.properties})),
        sources=provenance,
    ).write(settings.layout.run_metadata_file)


def run(settings: PreprocessSettings) -> RunSummary:
    """Write every tile of the ROI that is not already done; return the run's figures.

    Steps: connect to the cluster (if any) → plan the tiles → find the pending ones → search →
    (``--dry-run``: print the plan and stop) → prepare S1 → write the tiles → finish the run.
    """
    started = time.perf_counter()
    traffic = NetworkCounter()
    client = cluster = None
    if settings.scheduler or settings.dask_local:  # before any work: the cluster must answer and see the folder
        client, cluster = connect(settings.scheduler, settings.dask_local, threads=1)
    try:
        cluster_workers = 0
        if client is not None:
            cluster_workers = check_workers_see(client, settings.data_dir, settings.roi.path)
            log.info("Dask cluster %s: %d worker(s) see the run folder", settings.scheduler or "local",
                     cluster_workers)
        if not settings.dry_run:
            ensure_writable_dir(settings.tiles_dir, "tiles folder (--data-dir)")
            remove_stale_temporaries(settings.tiles_dir)
        summary = _run_steps(settings, client, traffic, cluster_workers)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    summary.seconds = time.perf_counter() - started
    received = traffic.total()
    if received is not None:
        summary.network_bytes = (summary.network_bytes or 0) + received
    return summary


def _run_steps(settings: PreprocessSettings, client: object, traffic: NetworkCounter,
               cluster_workers: int) -> RunSummary:
    tiles = plan_tiles(settings)
    summary = RunSummary(tiles_total=len(tiles), s2_source=settings.source, s1_source=settings.s1_source)
    log.info("ROI %s: %dx%d px, %d px inside, %d tile(s) of %d px", settings.roi.path, settings.roi.grid.width,
             settings.roi.grid.height, settings.roi.inside_pixels, len(tiles), settings.tile_size)
    pending = pending_tiles(settings, tiles, summary)
    s2_source = S2_SOURCES[settings.source](settings.source_options, traffic)
    s1_source = S1_SOURCES[settings.s1_source](settings.source_options, traffic)
    with gdal_env():
        s2_scenes, s1_scenes = search_scenes(settings, s2_source, s1_source)
    summary.s2_scenes, summary.s1_scenes = len(s2_scenes), len(s1_scenes)
    summary.s2_ids, summary.s1_ids = frozenset(s.id for s in s2_scenes), frozenset(s.id for s in s1_scenes)
    _check_scenes(settings, s2_scenes, s1_scenes)
    if settings.dry_run:
        groups = tile_groups(pending, settings.tile_size, (settings.read_group, settings.read_group))
        for line in plan_report(settings.roi.grid, pending, group_by_day(s2_scenes),
                                {d: group_by_day(v) for d, v in split_by_orbit(s1_scenes).items()},
                                workers=settings.workers, group_tiles=max(map(len, groups), default=1),
                                sign=getattr(s2_source, "sign_href", None)):
            print(line)
        return summary
    # Everything done by an earlier run of these settings (tiles and run metadata): nothing to
    # prepare, and the metadata it wrote (from prepared scenes) stays as it is.
    recorded = settings.layout.run_metadata(strict=False) if not pending else None
    finished = recorded is not None and recorded.run_key == settings.run_key
    if not finished and s1_scenes:
        s1_scenes = s1_source.prepare_s1(s1_scenes, settings.roi.grid)
    s2_days = group_by_day(s2_scenes)
    s1_days = {d: group_by_day(scenes) for d, scenes in split_by_orbit(s1_scenes).items()}
    log.info("%d S2 acquisition days, S1 days: %s", len(s2_days),
             ", ".join(f"{d} {len(s1_days[d])}" for d in ORBIT_DIRECTIONS))
    # recorded in every tile and the run metadata: never a password of a --catalog URL
    provenance = redact_values({**s2_source.describe(), "s1_source": s1_source.name, "s1": s1_source.describe(),
                                "s1_backscatter": s1_source.backscatter})
    jobs = tile_jobs(settings, pending, s2_days, s1_days, {"run_key": settings.run_key, **provenance})
    day_ranges = day_part_count(len(jobs), cluster_workers) if client is not None else 1
    s1_counts = {d: len(s1_days[d]) for d in ORBIT_DIRECTIONS}
    needed = sum(tile_bytes(tile.shape, len(s2_days), s1_counts) for tile in pending)
    what = f"{len(pending)} tile(s) of {len(s2_days)} S2 days"
    if day_ranges > 1:  # the day ranges' partial tiles stay on disk until they are joined
        needed, what = 2 * needed, f"{what}, and their day ranges before they are joined"
    check_free_space(settings.tiles_dir, needed, what)
    write_tiles(settings, jobs, summary, client, (s2_source, s1_source), traffic, day_ranges)
    warn_unobserved(summary.valid_counts)
    if finished:
        log.info("all tiles were already done; %s kept as it is", settings.layout.run_metadata_file)
    else:
        finish_run(settings, provenance, s2_scenes, s1_scenes)
    if not settings.keep_intermediate:
        shutil.rmtree(settings.layout.cache_dir, ignore_errors=True)
    return summary


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run preprocessing from the command line; exit code 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    setup_logging(None, args.verbosity)
    settings = settings_from_args(args)
    ensure_writable_dir(settings.data_dir, "run folder (--data-dir)")
    if not settings.dry_run:  # a dry run writes nothing but the search cache
        setup_logging(args.log_file or settings.layout.log_file("preprocess"), args.verbosity)
    with folder_lock(settings.data_dir, "preprocessing"):
        summary = run(settings)
    if settings.dry_run:
        return 0
    for line in summary.lines(settings.tiles_dir):
        log.info("%s", line)
    print(settings.tiles_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
