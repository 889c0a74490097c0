"""Embed tiles on a Dask distributed cluster (``--scheduler tcp://HOST:PORT`` or ``--dask-local N``).

Every worker needs the tiles folder, the output folder and the checkpoint at the same paths
(a shared file system). Each task embeds one tile, writes it atomically and skips it if done,
so a cluster run can be interrupted and resumed like a local one.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from btfm_core.errors import BTFMError
from btfm_core.tiles import TileId
from btfm_infer.onnx_engine import EngineModel
from btfm_infer.progress import PixelProgress
from btfm_infer.tile_inference import InferenceOptions, infer_tile, representation_path
from btfm_infer.worker import WorkerJob, load_worker_model

log = logging.getLogger(__name__)

__all__ = ["POLL_INTERVAL_S", "embed_tile_task", "run_on_dask"]

#: Seconds between two looks at the cluster's finished tasks (for the progress lines).
POLL_INTERVAL_S = 0.5


@functools.lru_cache(maxsize=2)
def _worker_model(checkpoint: str, threads: int, options: InferenceOptions) -> EngineModel:
    """The model, loaded once per worker process (on the CPU, with the chosen precision and engine)."""
    torch.set_num_threads(threads)
    return load_worker_model(checkpoint, "cpu", options, threads)


def embed_tile_task(job_json: str) -> int:
    """One cluster task: the :class:`~btfm_infer.worker.WorkerJob` (JSON, one tile) unless its tile is done;
    return the pixels embedded."""
    job = WorkerJob.from_json(job_json)
    (tile_name,) = job.tiles
    out = representation_path(job.output_dir, TileId.parse(tile_name))
    if out.exists():
        return 0
    model = _worker_model(str(job.checkpoint), job.threads, job.options)
    return infer_tile(model, job.tiles_dir / tile_name, out, job.options)


def _collect(futures: Sequence[Any], as_completed: type, reporter: PixelProgress) -> int:
    """Sum the pixels the tasks return as they finish, updating ``reporter`` every poll.

    Raises:
        BTFMError: a task failed.
    """
    pixels = done = 0
    queue = as_completed(futures)
    while not queue.is_empty():
        ready = queue.next_batch(block=False)
        if not ready:
            time.sleep(POLL_INTERVAL_S)
        for future in ready:
            try:
                pixels += future.result()
            except Exception as exc:
                raise BTFMError(f"tile {future.key.removeprefix('btfm-')} failed on the cluster: {exc}") from exc
            done += 1
        reporter.update({"dask": pixels}, done)
    return pixels


def run_on_dask(tiles: Sequence[TileId], tiles_dir: Path, output_dir: Path, checkpoint: Path,
                options: InferenceOptions, *, scheduler: str | None = None, local_workers: int = 0,
                threads_per_worker: int = 1, connect_timeout_s: float = 20.0, total_pixels: int | None = None,
                log_interval_s: float | None = None) -> int:
    """Embed ``tiles`` on a Dask cluster; return the number of pixels embedded.

    Progress (:class:`~btfm_infer.progress.PixelProgress`: a bar on a terminal, else a log line
    every ``log_interval_s`` seconds) moves one tile at a time, by the pixels each finished task
    returns: finer progress inside a tile is not reported from the cluster.

    Args:
        scheduler: address of a running scheduler (``tcp://host:8786``).
        local_workers: start a local cluster of this many worker processes instead.
        threads_per_worker: torch threads per worker.
        connect_timeout_s: how long to wait for ``scheduler``.
        total_pixels: ROI pixels of ``tiles``, the total of the progress (None: count tiles only).
        log_interval_s: seconds between progress log lines (default
            :data:`~btfm_infer.progress.PROGRESS_LOG_INTERVAL_S`).

    Raises:
        BTFMError: if distributed is not installed, the scheduler cannot be reached, or a task fails.
    """
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise BTFMError("--scheduler/--dask-local need dask distributed: pip install 'dask[distributed]'") from exc
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout=f"{connect_timeout_s}s")
        else:
            cluster = LocalCluster(n_workers=local_workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
    except (OSError, TimeoutError) as exc:
        raise BTFMError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from exc
    pixels = 0
    try:
        log.info("Dask cluster %s: %d worker(s)", client.dashboard_link or scheduler or "local",
                 len(client.scheduler_info()["workers"]))
        jobs = {tile.name: WorkerJob(tiles_dir, output_dir, checkpoint, (tile.name,), options, "cpu",
                                     threads_per_worker).to_json() for tile in tiles}
        futures = [client.submit(embed_tile_task, job, key=f"btfm-{name}", pure=False) for name, job in jobs.items()]
        reporter = PixelProgress(total_pixels, len(futures), log_interval_s=log_interval_s, logger=log)
        try:
            pixels = _collect(futures, as_completed, reporter)
        finally:
            reporter.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return pixels
