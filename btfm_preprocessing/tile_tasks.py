"""Writing groups of neighbouring tiles as tasks: here, or on a Dask cluster (``--scheduler`` / ``--dask-local``).

A :class:`TileJob` holds everything a group of neighbouring tiles needs once the search is done
(the acquisition days, the source names and options, the run's metadata), so any process that
sees the run folder can write it: :func:`write_tile_group` reads each day once on the group's
union grid, masks it and stacks each tile's window into its
:class:`~btfm_core.tiles.TileWriter` (temporary folder, validated, renamed), and skips the tiles
that are already done. Groups are blocks of neighbouring tiles (:func:`tile_groups`, K x K for
``--read-group K``): a COG block under several tiles of a group is fetched and decoded once, not
once per tile. :func:`run_on_dask` sends one task per group to a cluster; with fewer groups than
workers, each group's days are split instead (:meth:`TileJob.day_parts`): one task per day range
writes partial tiles, and a task per tile joins them (:func:`join_tile_parts`), so that every worker
reads other files, where smaller groups would read the blocks they share twice. The client
checks first that every worker sees the run folder (a probe file), a failed task is retried
``retries`` times and then its tiles are reported while the others go on, and a worker that
dies mid-task leaves only temporary folders (removed at the end) while its task is redone by
another worker.

Every worker must see the run folder and the ROI at the same paths (a shared file system).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import shutil
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from btfm_core.errors import BTFMError
from btfm_core.fileio import remove_stale_temporaries
from btfm_core.grid import Grid
from btfm_core.progress import progress
from btfm_core.roi import open_roi
from btfm_core.tiles import ORBIT_DIRECTIONS, TileId, TileWriter, read_tile, read_tile_metadata
from btfm_preprocessing.reader import gdal_env
from btfm_preprocessing.sources import S1_SOURCES, S2_SOURCES, AcquisitionDay, S1Source, S2Source, SourceOptions
from btfm_preprocessing.stack import TileStats, Window, build_tiles, join_day_parts
from btfm_preprocessing.traffic import NetworkCounter

log = logging.getLogger(__name__)

__all__ = ["TileJob", "TileResult", "connect", "day_part_count", "default_read_group", "join_tile_parts", "run_on_dask",
           "split_days", "tile_groups", "write_tile_group"]

#: Seconds to wait for a ``--scheduler`` to answer.
CONNECT_TIMEOUT_S = 10.0
#: Side, in pixels, that a read group's union grid stays within by default (:func:`default_read_group`).
READ_GROUP_PX = 1024
#: Most tiles a side of a read group holds (the tiles' writers are open together).
MAX_READ_GROUP = 4
#: Name prefix of the probe file that checks that workers see the run folder.
PROBE_PREFIX = ".btfm-probe-"


def default_read_group(tile_size: int) -> int:
    """``--read-group`` by default: as many tiles a side as fit in :data:`READ_GROUP_PX` (1 to :data:`MAX_READ_GROUP`).

    500-px tiles are read 2 x 2 (1000 px a side: a day's S2 mosaic of the group is 20 MB).
    """
    return max(1, min(MAX_READ_GROUP, READ_GROUP_PX // tile_size))


def tile_groups(tiles: Sequence[TileId], tile_size: int, shape: tuple[int, int]) -> list[tuple[TileId, ...]]:
    """``tiles`` (of a :func:`~btfm_core.tiles.tile_layout` of ``tile_size``) in blocks of ``shape`` (rows, cols).

    Blocks follow the layout (the tiles of block ``(r, c)`` are rows ``r*rows ..`` and columns
    ``c*cols ..`` of it), in row-major order, tiles row-major within a block.
    """
    rows, cols = (tile_size * max(1, n) for n in shape)
    blocks: dict[tuple[int, int], list[TileId]] = defaultdict(list)
    for tile in tiles:
        blocks[tile.y0 // rows, tile.x0 // cols].append(tile)
    return [tuple(sorted(blocks[key], key=lambda t: (t.y0, t.x0))) for key in sorted(blocks)]


def day_part_count(groups: int, workers: int) -> int:
    """Day ranges each group is split into so that ``workers`` all get a task (1: no split)."""
    return max(1, -(-workers // max(1, groups)))


def split_days(days: Sequence[AcquisitionDay], parts: int) -> list[tuple[AcquisitionDay, ...]]:
    """``days`` in ``parts`` consecutive runs with about as many scenes each (some may be empty)."""
    scenes = np.cumsum([len(day.scenes) for day in days])
    total = int(scenes[-1]) if len(days) else 0
    # each range ends with the day that brings its scenes to its share of the total
    cuts = [0, *(min(len(days), int(np.searchsorted(scenes, total * k / parts)) + 1) for k in range(1, parts)),
            len(days)]
    return [tuple(days[start:end]) for start, end in itertools.pairwise(cuts)]


def union_tile(tiles: Sequence[TileId]) -> TileId:
    """The smallest window of the ROI grid holding all ``tiles``."""
    return TileId(min(t.x0 for t in tiles), min(t.y0 for t in tiles), max(t.x1 for t in tiles),
                  max(t.y1 for t in tiles))


def windows_in(union: TileId, tiles: Sequence[TileId]) -> list[Window]:
    """Each tile's (rows, columns) inside the grid of ``union``."""
    return [(slice(t.y0 - union.y0, t.y1 - union.y0), slice(t.x0 - union.x0, t.x1 - union.x0)) for t in tiles]


@dataclass(frozen=True)
class TileJob:
    """A group of neighbouring tiles to write, with all a worker needs (picklable).

    Attributes:
        tiles_dir: the run's tile folder (``<data-dir>/retiled_d_pixel``).
        tiles: the tiles' windows of the ROI grid (a :func:`tile_groups` block; one tile or more).
        roi_path: the ROI GeoTIFF (read for the tile's mask).
        roi_grid: the ROI's grid.
        source, s1_source: ``--source`` / ``--s1-source`` names.
        options: the sources' options, with the environment captured on the client (credentials included,
            as :class:`~btfm_preprocessing.credentials.Secret`): workers need none of it set themselves.
        s2_days: Sentinel-2 acquisition days, in tile order.
        s1_days: Sentinel-1 days per orbit direction.
        metadata: recorded in the tile's ``tile.json`` (run key, provenance).
        workers: parallel reads (days at once, and assets per day).
    """

    tiles_dir: Path
    tiles: tuple[TileId, ...]
    roi_path: Path
    roi_grid: Grid
    source: str
    s1_source: str
    options: SourceOptions
    s2_days: tuple[AcquisitionDay, ...]
    s1_days: dict[str, list[AcquisitionDay]]
    metadata: dict[str, Any]
    workers: int

    @property
    def run_key(self) -> str:
        return str(self.metadata["run_key"])

    @property
    def name(self) -> str:
        """The group's name in messages: its tile, or its first tile and how many there are."""
        first = self.tiles[0].name
        return first if len(self.tiles) == 1 else f"{first} (+{len(self.tiles) - 1} neighbouring tiles)"

    def day_parts(self, count: int, parts_dir: Path) -> list[TileJob]:
        """This job as ``count`` jobs of consecutive day ranges (:func:`split_days`, S2 and each S1 orbit).

        Each writes partial tiles of its days into its own folder under ``parts_dir`` (named by
        the group, the run and the range, so that a rerun finds those it finished);
        :func:`join_tile_parts` makes the tiles of them.
        """
        s2 = split_days(self.s2_days, count)
        s1 = {direction: split_days(days, count) for direction, days in self.s1_days.items()}
        stem = f"{self.tiles[0].name}+{len(self.tiles)}-{self.run_key[:16]}"
        return [dataclasses.replace(self, tiles_dir=parts_dir / f"{stem}-days{index + 1}of{count}", s2_days=s2[index],
                                    s1_days={direction: list(ranges[index]) for direction, ranges in s1.items()})
                for index in range(count)]


@dataclass(frozen=True)
class TileResult:
    """What writing one tile took.

    Attributes:
        stats: the tile's dates, valid observations per ROI pixel and scenes used.
        network_bytes: bytes read over the network for the tile (None: unknown); a group's reads
            are shared, so they are counted on its first written tile and the others get 0.
        peak_rss_mb: peak resident memory of the process that wrote it, MB.
        worker: who wrote it (``local`` or the Dask worker's address).
        skipped: the tile was already done.
        tile: the tile's name.
        part_workers: (worker, peak RSS MB) of the tasks that wrote its day ranges, when it was
            joined from them (:func:`join_tile_parts`).
    """

    stats: TileStats
    network_bytes: int | None
    peak_rss_mb: float
    worker: str = "local"
    skipped: bool = False
    tile: str = ""
    part_workers: tuple[tuple[str, float], ...] = ()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux and macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20 if sys.platform == "darwin" else 1 << 10)


@functools.lru_cache(maxsize=4)
def _worker_sources(source: str, s1_source: str, options: SourceOptions) -> tuple[S2Source, S1Source, NetworkCounter]:
    """A cluster worker's sources for one run, and the counter they add to: made once per worker process.

    The worker gets only the job (names and options), so it builds its own sources, and counts
    what they receive from the first task of the run it serves on.
    """
    traffic = NetworkCounter()
    return S2_SOURCES[source](options, traffic), S1_SOURCES[s1_source](options, traffic), traffic


def done_stats(folder: Path, run_key: str) -> TileStats | None:
    """The stats of the tile in ``folder`` if a run of ``run_key`` finished it, else None."""
    metadata = read_tile_metadata(folder) if folder.is_dir() else {}
    if metadata.get("run_key") != run_key:
        return None
    tile = read_tile(folder)
    groups = [metadata.get("s2_scenes", [])] + [metadata.get(f"s1_{d}_scenes", []) for d in ORBIT_DIRECTIONS]
    used = frozenset(scene for days in groups for day in days for scene in day)
    return TileStats(tile.bands.shape[0], {d: int(getattr(tile, f"sar_{d}").shape[0]) for d in ORBIT_DIRECTIONS},
                     tile.masks.sum(axis=0, dtype=np.int32)[tile.roi != 0], used)


def write_tile_group(job: TileJob, pool: Executor | None = None, day_pool: Executor | None = None,
                     *, worker: str = "local", sources: tuple[S2Source, S1Source] | None = None,
                     traffic: NetworkCounter | None = None) -> list[TileResult]:
    """Read, mask and stack a group of tiles into their folders (atomically); skip those that are done.

    The pending tiles are read together, each day once on their union grid, when both sources'
    reads split (:attr:`~btfm_preprocessing.sources.Source.group_reads`), else one by one.

    Args:
        pool, day_pool: thread pools for asset reads and for days read at once (created for this
            group when None, as on a cluster worker).
        worker: who writes it (recorded in the results).
        sources, traffic: the run's S2 and S1 sources and the counter they add to (None: a
            cluster worker's own, :func:`_worker_sources`); what the counter gains while the
            tiles are written is their ``network_bytes``.

    Returns:
        One :class:`TileResult` per tile of the job, in its order.
    """
    done = {tile: done_stats(job.tiles_dir / tile.name, job.run_key) for tile in job.tiles}
    results = {tile: TileResult(stats, 0, peak_rss_mb(), worker, skipped=True, tile=tile.name)
               for tile, stats in done.items() if stats is not None}
    pending = [tile for tile in job.tiles if done[tile] is None]
    if pending:
        if sources is None or traffic is None:
            s2_source, s1_source, traffic = _worker_sources(job.source, job.s1_source, job.options)
        else:
            s2_source, s1_source = sources
        together = s2_source.group_reads and s1_source.group_reads
        for group in [pending] if together else [[tile] for tile in pending]:
            start_bytes = traffic.total()
            stats = _write_together(job, group, s2_source, s1_source, pool, day_pool)
            end_bytes = traffic.total()
            used = None if start_bytes is None or end_bytes is None else end_bytes - start_bytes
            for tile, tile_stats in zip(group, stats, strict=True):
                results[tile] = TileResult(tile_stats, used if tile is group[0] else 0, peak_rss_mb(), worker,
                                           tile=tile.name)
    return [results[tile] for tile in job.tiles]


def _write_together(job: TileJob, tiles: Sequence[TileId], s2_source: S2Source, s1_source: S1Source,
                    pool: Executor | None, day_pool: Executor | None) -> list[TileStats]:
    """Write ``tiles`` from one read per day on their union grid; their stats."""
    union = union_tile(tiles)
    roi = open_roi(job.roi_path)
    # days in flight hold the union's arrays: about as many tiles' worth as one tile alone would
    # have, and at least two days, so that reading the next day overlaps writing the last
    days_ahead = max(2, job.workers // len(tiles))
    with _pools(job.workers, pool, day_pool) as (asset_pool, days_pool), gdal_env(), ExitStack() as writers:
        opened = [writers.enter_context(TileWriter(job.tiles_dir, tile, tile.grid(job.roi_grid),
                                                   roi.read_mask(tile.grid(job.roi_grid)), job.metadata))
                  for tile in tiles]
        return build_tiles(opened, union.grid(job.roi_grid), windows_in(union, tiles), list(job.s2_days),
                           job.s1_days, asset_pool, s2_source.read_s2_day, s1_source.read_s1_day,
                           day_pool=days_pool, days_ahead=days_ahead)


def join_tile_parts(job: TileJob, tile: TileId, parts: Sequence[TileJob],
                    part_results: Sequence[Sequence[TileResult]], *, worker: str = "local") -> TileResult:
    """Write one of ``job``'s tiles from its partial tiles in the job's :meth:`~TileJob.day_parts`.

    The tile is what :func:`write_tile_group` writes for ``job``, byte for byte
    (:func:`~btfm_preprocessing.stack.join_day_parts`); it is skipped when already done. Its
    partial tiles are removed once it is written.

    Args:
        parts: the day-range jobs, in their order; part_results: what each of them returned.
        worker: who joins them (recorded in the result).

    Returns:
        The tile's :class:`TileResult`: bytes read are its day ranges', and their tasks' workers
        are in ``part_workers``.
    """
    folders = [part.tiles_dir / tile.name for part in parts]
    stats = done_stats(job.tiles_dir / tile.name, job.run_key)
    if stats is not None:
        result = TileResult(stats, 0, peak_rss_mb(), worker, skipped=True, tile=tile.name)
    else:
        grid = tile.grid(job.roi_grid)
        with TileWriter(job.tiles_dir, tile, grid, open_roi(job.roi_path).read_mask(grid), job.metadata) as writer:
            stats = join_day_parts(writer, [read_tile(folder, tile=tile) for folder in folders],
                                   [read_tile_metadata(folder) for folder in folders], job.s2_days, job.s1_days)
        written = [next(r for r in results if r.tile == tile.name) for results in part_results]
        network = [r.network_bytes for r in written]
        result = TileResult(stats, None if None in network else sum(n or 0 for n in network), peak_rss_mb(), worker,
                            tile=tile.name, part_workers=tuple((r.worker, r.peak_rss_mb) for r in written
                                                               if not r.skipped))
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the part's last tile: its folder goes too (else it is not empty)
            folder.parent.rmdir()
    return result


@contextmanager
def _pools(workers: int, pool: Executor | None, day_pool: Executor | None) -> Iterator[tuple[Executor, Executor]]:
    if pool is not None and day_pool is not None:
        yield pool, day_pool
        return
    with ThreadPoolExecutor(workers) as own_pool, ThreadPoolExecutor(workers, thread_name_prefix="day") as own_days:
        yield own_pool, own_days


def _worker_name() -> str:
    """This Dask worker's address (or the process id outside a worker)."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _dask_task(job: TileJob) -> list[TileResult]:
    """A cluster task: :func:`write_tile_group` with this worker's address recorded."""
    return write_tile_group(job, worker=_worker_name())


def _dask_join(job: TileJob, tile: TileId, parts: Sequence[TileJob],
               part_results: Sequence[Sequence[TileResult]]) -> list[TileResult]:
    """A cluster task: :func:`join_tile_parts` with this worker's address recorded."""
    return [join_tile_parts(job, tile, parts, part_results, worker=_worker_name())]


def connect(scheduler: str | None, local_workers: int, threads: int) -> tuple[Any, Any]:
    """A Dask client for ``scheduler`` (or a local cluster of ``local_workers`` processes), and the cluster.

    Raises:
        BTFMError: distributed is not installed, or the scheduler does not answer (naming its address).
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise BTFMError("--scheduler/--dask-local need dask distributed: pip install 'dask[distributed]'") from exc
    if scheduler:
        try:
            return Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S:.0f}s"), None
        except (OSError, TimeoutError) as exc:
            raise BTFMError(f"cannot reach the Dask scheduler at {scheduler} within {CONNECT_TIMEOUT_S:.0f} s "
                            f"({exc}); start it (dask scheduler) and its workers (dask worker {scheduler}), or "
                            "check the address and the firewall") from exc
    cluster = LocalCluster(n_workers=local_workers, threads_per_worker=threads, processes=True,
                           dashboard_address=None)
    return Client(cluster), cluster


def _sees(probe: str, roi: str) -> bool:
    return Path(probe).is_file() and Path(roi).is_file()


def check_workers_see(client: Any, data_dir: Path, roi_path: Path) -> int:
    """Check that every worker sees the run folder and the ROI (a probe file); return the worker count.

    Raises:
        BTFMError: naming the workers that do not, and what they need.
    """
    probe = data_dir / f"{PROBE_PREFIX}{uuid.uuid4().hex[:8]}"
    probe.write_text("written by the BTFM client to check that workers see the run folder\n")
    try:
        answers = client.run(_sees, str(probe), str(roi_path))
    finally:
        probe.unlink(missing_ok=True)
    if not answers:
        raise BTFMError("the Dask cluster has no worker; start some (dask worker <scheduler address>)")
    blind = sorted(worker for worker, seen in answers.items() if not seen)
    if blind:
        raise BTFMError(f"{len(blind)} of {len(answers)} Dask worker(s) ({', '.join(blind[:5])}) do not see the run "
                        f"folder {data_dir} or the ROI {roi_path}: every worker needs them on a shared file system "
                        "at the same path")
    return len(answers)


def run_on_dask(client: Any, jobs: Sequence[TileJob], *, retries: int, on_result: Callable[[TileResult], None],
                day_ranges: int = 1, parts_dir: Path | None = None) -> list[str]:
    """Write ``jobs`` on the Dask ``client``; ``on_result`` for each tile as its group finishes; return the failures.

    A job is one task, or with ``day_ranges`` > 1 (:func:`day_part_count`: fewer jobs than
    workers) one task per day range (:meth:`TileJob.day_parts`, partial tiles under
    ``parts_dir``) and one per tile that joins them (:func:`join_tile_parts`). A task that fails is
    retried ``retries`` times (a worker that dies mid-task has its task rescheduled by Dask); a
    job whose task still fails is logged and its tiles listed, and the others go on.

    Returns:
        ``"<tile>: <reason>"`` for every tile of the groups that failed.
    """
    from distributed import as_completed

    if day_ranges > 1 and parts_dir is None:
        raise ValueError("day ranges need a parts_dir for their partial tiles")
    if day_ranges > 1:
        log.info("%d read group(s): each group's days are read in %d ranges by as many tasks, then joined",
                 len(jobs), day_ranges)
    futures = {}
    for job in jobs:
        key = f"btfm-tiles-{job.tiles[0].name}-{len(job.tiles)}-{job.run_key}"
        if parts_dir is None or day_ranges == 1:
            futures[client.submit(_dask_task, job, key=key, retries=retries, pure=False)] = job
            continue
        parts = job.day_parts(day_ranges, parts_dir)
        written = [client.submit(_dask_task, part, key=f"{key}-{part.tiles_dir.name}", retries=retries, pure=False)
                   for part in parts]
        for tile in job.tiles:  # one join per tile: they run in parallel, and a failure is the tile's own
            futures[client.submit(_dask_join, job, tile, parts, written, key=f"{key}-join-{tile.name}",
                                  retries=retries, pure=False)] = dataclasses.replace(job, tiles=(tile,))
    failures: list[str] = []
    with progress(total=sum(len(job.tiles) for job in jobs), desc="tiles", unit="tile") as bar:
        for future in as_completed(futures):
            job = futures[future]
            bar.update(len(job.tiles))
            try:
                results = future.result()
            except Exception as exc:
                reason = " ".join(str(exc).split()) or type(exc).__name__
                failures += [f"{tile.name}: {reason}" for tile in job.tiles]
                log.error("tile %s failed after %d retries: %s", job.name, retries, exc)
                continue
            for result in results:
                on_result(result)
    if jobs:
        remove_stale_temporaries(jobs[0].tiles_dir)  # what a worker that died mid-group left
    if parts_dir is not None and not failures:  # kept after a failure: a rerun finds the ranges it finished
        shutil.rmtree(parts_dir, ignore_errors=True)
    return failures
