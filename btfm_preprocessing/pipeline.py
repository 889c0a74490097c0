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

from btfm_core.cli import HelpFormatter, add_standard_options, entry_point, prog_name
from btfm_core.errors import BTFMError, NoScenesFoundError
from btfm_core.fileio import atomic_path, check_free_space, ensure_writable_dir, remove_stale_temporaries
from btfm_core.locking import folder_lock
from btfm_core.logs import setup_logging
from btfm_core.progress import progress
from btfm_core.redact import redact_values
from btfm_core.roi import Roi, open_roi
from btfm_core.tiles import (
    DEFAULT_TILE_SIZE,
    ORBIT_DIRECTIONS,
    RUN_METADATA_FILE,
    TileId,
    TileWriter,
    read_run_metadata,
    read_tile,
    read_tile_metadata,
    tile_bytes,
    tile_layout,
    write_run_metadata,
)
from btfm_preprocessing.checks import check_flags, unobserved_line, warn_unobserved
from btfm_preprocessing.download import downloaded_bytes
from btfm_preprocessing.period import Period, parse_period
from btfm_preprocessing.reader import gdal_env, network_bytes_read
from btfm_preprocessing.sources import S1_SOURCES, S2_SOURCES, S1Source, S2Source, SourceOptions, default_s1_source
from btfm_preprocessing.stac import Scene, local_path
from btfm_preprocessing.stack import build_tile, group_by_day, split_by_orbit

log = logging.getLogger(__name__)

TILES_DIRNAME = "retiled_d_pixel"
CACHE_DIRNAME = "cache"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOG = REPO_ROOT / "data" / "demo_belgium" / "catalog.json"


@dataclass(frozen=True)
class PreprocessSettings:
    """Validated settings of one preprocessing run."""

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

    @property
    def tiles_dir(self) -> Path:
        """Where tile folders go."""
        return self.data_dir / TILES_DIRNAME

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
    parser.add_argument("--max-cloud", type=float, default=90.0,
                        help="skip S2 scenes with more cloud cover than this (percent)")
    parser.add_argument("--keep-intermediate", action="store_true",
                        help="keep the search cache under <data-dir>/cache after the run")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild tiles made by a run with other settings instead of failing")
    parser.add_argument("--log-file", type=Path, default=None,
                        help="log file (default: <data-dir>/logs/preprocess.log)")
    add_standard_options(parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> PreprocessSettings:
    """Validate the parsed arguments (ROI, dates, flags) before any work starts."""
    if args.downsample != 1:
        raise BTFMError(f"DOWNSAMPLE={args.downsample} is not supported; pass 1 (tiles are always "
                        "on the ROI's 10 m grid)")
    check_flags(args.tile_size, args.max_cloud)
    if args.workers <= 0:
        raise BTFMError(f"--workers must be positive, got {args.workers}")
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
                              keep_intermediate=args.keep_intermediate, overwrite=args.overwrite)


def _scene_to_json(scene: Scene) -> dict[str, object]:
    data = dataclasses.asdict(scene)
    data["acquired"] = scene.acquired.isoformat()
    return data


def _scene_from_json(data: dict[str, object]) -> Scene:
    return Scene(**{**data, "acquired": dt.datetime.fromisoformat(str(data["acquired"]))})  # type: ignore[arg-type]


def search_scenes(settings: PreprocessSettings, s2_source: S2Source,
                  s1_source: S1Source) -> tuple[list[Scene], list[Scene]]:
    """Search S2 and S1 scenes once per run; the result is cached so a resumed run skips it."""
    cache = settings.data_dir / CACHE_DIRNAME / f"search-{settings.run_key}.json"
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
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        tmp.write_text(json.dumps({"s2": [_scene_to_json(s) for s in s2],
                                   "s1": [_scene_to_json(s) for s in s1]}))
    return s2, s1


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux and macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


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
    seconds: float = 0.0

    def lines(self, tiles_dir: Path) -> list[str]:
        """Human-readable summary."""
        valid = np.concatenate(self.valid_counts) if self.valid_counts else np.zeros(0, np.int32)
        stats = (f"mean {valid.mean():.1f}, min {valid.min()}, max {valid.max()}" if valid.size else "n/a")
        traffic = "n/a" if self.network_bytes is None else f"{self.network_bytes / 1e6:.1f} MB"
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
            f"time: {self.seconds:.1f} s; peak memory (RSS): {peak_rss_mb():.0f} MB",
        ]


def _current_tile_scenes(folder: Path, run_key: str) -> set[str] | None:
    """Scene ids used by a finished tile of this run (None: the tile was made by another run)."""
    metadata = read_tile_metadata(folder)
    if metadata.get("run_key") != run_key:
        return None
    groups = [metadata.get("s2_scenes", [])] + [metadata.get(f"s1_{d}_scenes", []) for d in ORBIT_DIRECTIONS]
    return {scene for days in groups for day in days for scene in day}


def run(settings: PreprocessSettings) -> RunSummary:
    """Write every tile of the ROI that is not already done; return the run's figures."""
    started = time.perf_counter()
    network_start = _network_bytes()
    ensure_writable_dir(settings.tiles_dir, "tiles folder (--data-dir)")
    remove_stale_temporaries(settings.tiles_dir)
    options = SourceOptions(catalog=settings.catalog, s1_catalog=settings.s1_catalog,
                            s2_collection=settings.s2_collection,
                            work_dir=settings.data_dir / CACHE_DIRNAME / settings.s1_source, workers=settings.workers,
                            max_cloud=settings.max_cloud)
    s2_source = S2_SOURCES[settings.source](options)
    s1_source = S1_SOURCES[settings.s1_source](options)
    roi_grid = settings.roi.grid
    tiles: list[tuple[TileId, np.ndarray]] = []
    for tile in tile_layout(roi_grid.height, roi_grid.width, settings.tile_size):
        mask = settings.roi.read_mask(tile.grid(roi_grid))
        if mask.any():
            tiles.append((tile, mask))
    summary = RunSummary(tiles_total=len(tiles), s2_source=settings.source, s1_source=settings.s1_source)
    log.info("ROI %s: %dx%d px, %d px inside, %d tile(s) of %d px", settings.roi.path, roi_grid.width,
             roi_grid.height, settings.roi.inside_pixels, len(tiles), settings.tile_size)

    pending = []
    for tile, mask in tiles:
        folder = settings.tiles_dir / tile.name
        if folder.is_dir():
            done_scenes = _current_tile_scenes(folder, settings.run_key)
            if done_scenes is not None:
                summary.tiles_skipped += 1
                summary.scenes_used |= done_scenes
                masks = read_tile(folder).masks
                summary.valid_counts.append(masks.sum(axis=0, dtype=np.int32)[mask != 0])
                continue
            if not settings.overwrite:
                raise BTFMError(f"tile {folder} was made by a run with other settings (dates, source "
                                "or ROI); pass --overwrite to rebuild it or use another --data-dir")
        pending.append((tile, mask))

    with gdal_env():
        s2_scenes, s1_scenes = search_scenes(settings, s2_source, s1_source)
    summary.s2_scenes, summary.s1_scenes = len(s2_scenes), len(s1_scenes)
    summary.s2_ids, summary.s1_ids = frozenset(s.id for s in s2_scenes), frozenset(s.id for s in s1_scenes)
    if not s2_scenes:
        raise NoScenesFoundError(
            f"no Sentinel-2 scene found for {settings.s2_period} over the ROI in source "
            f"'{settings.source}' ({settings.catalog or ''}) with cloud cover <= {settings.max_cloud}%; "
            "check the dates, the ROI location or --max-cloud")
    if not s1_scenes:
        log.warning("no Sentinel-1 scene found for %s; tiles get empty S1 series", settings.s1_period)
    # Everything done by an earlier run of these settings (tiles and run metadata): nothing to
    # prepare, and the metadata it wrote (from prepared scenes) stays as it is.
    finished = not pending and read_run_metadata(settings.tiles_dir).get("run_key") == settings.run_key
    if not finished and s1_scenes:
        s1_scenes = s1_source.prepare_s1(s1_scenes, roi_grid)
    s2_days = group_by_day(s2_scenes)
    s1_days = {d: group_by_day(scenes) for d, scenes in split_by_orbit(s1_scenes).items()}
    log.info("%d S2 acquisition days, S1 days: %s", len(s2_days),
             ", ".join(f"{d} {len(s1_days[d])}" for d in ORBIT_DIRECTIONS))
    s1_counts = {d: len(s1_days[d]) for d in ORBIT_DIRECTIONS}
    check_free_space(settings.tiles_dir, sum(tile_bytes(tile.shape, len(s2_days), s1_counts) for tile, _ in pending),
                     f"{len(pending)} tile(s) of {len(s2_days)} S2 days")

    # recorded in every tile and the run metadata: never a password of a --catalog URL
    provenance = redact_values({**s2_source.describe(), "s1_source": s1_source.name, "s1": s1_source.describe(),
                                "s1_backscatter": s1_source.backscatter})
    metadata = {"run_key": settings.run_key, **provenance}
    with gdal_env(), ThreadPoolExecutor(settings.workers) as pool, \
            ThreadPoolExecutor(settings.workers, thread_name_prefix="day") as day_pool:
        for tile, mask in progress(pending, desc="tiles", unit="tile"):
            tile_grid = tile.grid(roi_grid)
            with TileWriter(settings.tiles_dir, tile, tile_grid, mask, metadata) as writer:
                stats = build_tile(writer, tile_grid, s2_days, s1_days, pool, s2_source.read_s2_day,
                                   s1_source.read_s1_day, day_pool=day_pool, days_ahead=settings.workers)
            log.info("tile %s: %d S2 dates, S1 %s", tile.name, stats.s2_dates, stats.s1_dates)
            summary.valid_counts.append(stats.valid_per_pixel)
            summary.scenes_used |= stats.scenes_used
            summary.tiles_written += 1

    warn_unobserved(summary.valid_counts)
    if finished:
        log.info("all tiles were already done; %s kept as it is", settings.tiles_dir / RUN_METADATA_FILE)
    else:
        write_run_metadata(settings.tiles_dir, {
            **provenance,
            "run_key": settings.run_key,
            "roi": str(settings.roi.path),
            "s2_period": str(settings.s2_period),
            "s1_period": str(settings.s1_period),
            "max_cloud": settings.max_cloud,
            "tile_size": settings.tile_size,
            "s2_scenes": len(s2_scenes),
            "s1_scenes": len(s1_scenes),
            "s1_backscatter_recorded": sorted({str(s.properties.get("btfm:backscatter", "unknown"))
                                               for s in s1_scenes}),
            "s2_notes": sorted({f"B8A from {s.properties['btfm:b8a_substitute']}" for s in s2_scenes
                                if "btfm:b8a_substitute" in s.properties}),
        })
    if not settings.keep_intermediate:
        shutil.rmtree(settings.data_dir / CACHE_DIRNAME, ignore_errors=True)
    summary.seconds = time.perf_counter() - started
    network_end = _network_bytes()
    if network_start is not None and network_end is not None:
        summary.network_bytes = network_end - network_start
    return summary


def _network_bytes() -> int | None:
    """Bytes received so far by GDAL range reads and whole-file downloads (None: unknown)."""
    gdal_bytes = network_bytes_read()
    return None if gdal_bytes is None else gdal_bytes + downloaded_bytes()


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run preprocessing from the command line; exit code 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    setup_logging(None, args.verbosity)
    settings = settings_from_args(args)
    ensure_writable_dir(settings.data_dir, "run folder (--data-dir)")
    setup_logging(args.log_file or settings.data_dir / "logs" / "preprocess.log", args.verbosity)
    with folder_lock(settings.data_dir, "preprocessing"):
        summary = run(settings)
    for line in summary.lines(settings.tiles_dir):
        log.info("%s", line)
    print(settings.tiles_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
