"""Writing one tile as a task: in this process, or on a Dask cluster (``--scheduler`` / ``--dask-local``).

A :class:`TileJob` holds everything one tile needs once the search is done (the acquisition
days, the source names and options, the run's metadata), so any process that sees the run folder
can write it: :func:`write_tile` reads, masks and stacks the tile's days into a
:class:`~btfm_core.tiles.TileWriter` (temporary folder, validated, renamed) and skips a tile that
is already done. :func:`run_on_dask` sends one task per tile to a cluster: the client checks first
that every worker sees the run folder (a probe file), a failed tile is retried ``retries`` times
and then reported while the others go on, and a worker that dies mid-tile leaves only a temporary
folder (removed at the end) while its tile is redone by another worker.

Every worker must see the run folder and the ROI at the same paths (a shared file system).
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
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
from btfm_preprocessing.stack import TileStats, build_tile
from btfm_preprocessing.traffic import NetworkCounter

log = logging.getLogger(__name__)

__all__ = ["TileJob", "TileResult", "connect", "run_on_dask", "write_tile"]

#: Seconds to wait for a ``--scheduler`` to answer.
CONNECT_TIMEOUT_S = 10.0
#: Name prefix of the probe file that checks that workers see the run folder.
PROBE_PREFIX = ".btfm-probe-"


@dataclass(frozen=True)
class TileJob:
    """One tile to write, with all a worker needs (picklable).

    Attributes:
        tiles_dir: the run's tile folder (``<data-dir>/retiled_d_pixel``).
        tile: the tile's window of the ROI grid.
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
    tile: TileId
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


@dataclass(frozen=True)
class TileResult:
    """What writing one tile took.

    Attributes:
        stats: the tile's dates, valid observations per ROI pixel and scenes used.
        network_bytes: bytes this task read over the network (None: unknown).
        peak_rss_mb: peak resident memory of the process that wrote it, MB.
        worker: who wrote it (``local`` or the Dask worker's address).
        skipped: the tile was already done.
        tile: the tile's name.
    """

    stats: TileStats
    network_bytes: int | None
    peak_rss_mb: float
    worker: str = "local"
    skipped: bool = False
    tile: str = ""


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


def write_tile(job: TileJob, pool: Executor | None = None, day_pool: Executor | None = None,
               *, worker: str = "local", sources: tuple[S2Source, S1Source] | None = None,
               traffic: NetworkCounter | None = None) -> TileResult:
    """Read, mask and stack one tile into its folder (atomically); skip it if it is done.

    Args:
        pool, day_pool: thread pools for asset reads and for days read at once (created for this
            tile when None, as on a cluster worker).
        worker: who writes it (recorded in the result).
        sources, traffic: the run's S2 and S1 sources and the counter they add to (None: a
            cluster worker's own, :func:`_worker_sources`); the result's ``network_bytes`` is what
            the counter gained while the tile was written.
    """
    done = done_stats(job.tiles_dir / job.tile.name, job.run_key)
    if done is not None:
        return TileResult(done, 0, peak_rss_mb(), worker, skipped=True, tile=job.tile.name)
    if sources is None or traffic is None:
        s2_source, s1_source, traffic = _worker_sources(job.source, job.s1_source, job.options)
    else:
        s2_source, s1_source = sources
    start_bytes = traffic.total()
    grid = job.tile.grid(job.roi_grid)
    mask = open_roi(job.roi_path).read_mask(grid)
    with _pools(job.workers, pool, day_pool) as (asset_pool, days_pool), gdal_env(), \
            TileWriter(job.tiles_dir, job.tile, grid, mask, job.metadata) as writer:
        stats = build_tile(writer, grid, list(job.s2_days), job.s1_days, asset_pool, s2_source.read_s2_day,
                           s1_source.read_s1_day, day_pool=days_pool, days_ahead=job.workers)
    end_bytes = traffic.total()
    used = None if start_bytes is None or end_bytes is None else end_bytes - start_bytes
    return TileResult(stats, used, peak_rss_mb(), worker, tile=job.tile.name)


@contextmanager
def _pools(workers: int, pool: Executor | None, day_pool: Executor | None) -> Iterator[tuple[Executor, Executor]]:
    if pool is not None and day_pool is not None:
        yield pool, day_pool
        return
    with ThreadPoolExecutor(workers) as own_pool, ThreadPoolExecutor(workers, thread_name_prefix="day") as own_days:
        yield own_pool, own_days


def _dask_task(job: TileJob) -> TileResult:
    """A cluster task: :func:`write_tile` with this worker's address recorded."""
    try:
        from distributed import get_worker

        name = str(get_worker().address)
    except (ImportError, ValueError):
        name = f"pid {os.getpid()}"
    return write_tile(job, worker=name)


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


def run_on_dask(client: Any, jobs: Sequence[TileJob], *, retries: int,
                on_result: Callable[[TileResult], None]) -> list[str]:
    """Write ``jobs`` as one Dask task each; call ``on_result`` as each finishes; return the failures.

    A task that fails is retried ``retries`` times (a worker that dies mid-tile has its task
    rescheduled by Dask); one that still fails is logged and listed, and the others go on.

    Returns:
        ``"<tile>: <reason>"`` for every tile that failed.
    """
    from distributed import as_completed

    futures = {client.submit(_dask_task, job, key=f"btfm-tile-{job.tile.name}-{job.run_key}", retries=retries,
                             pure=False): job for job in jobs}
    failures: list[str] = []
    for future in progress(as_completed(futures), total=len(futures), desc="tiles", unit="tile"):
        job = futures[future]
        try:
            result = future.result()
        except Exception as exc:
            failures.append(f"{job.tile.name}: {' '.join(str(exc).split()) or type(exc).__name__}")
            log.error("tile %s failed after %d retries: %s", job.tile.name, retries, exc)
            continue
        on_result(result)
    if jobs:
        remove_stale_temporaries(jobs[0].tiles_dir)  # what a worker that died mid-tile left
    return failures
