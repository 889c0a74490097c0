"""One inference worker process: embeds a list of tiles on one device.

Started by :mod:`btfm_infer.infer_all_tiles` with a :class:`WorkerJob`: the settings the driver
decided (paths, tiles, device, threads, :class:`~btfm_infer.tile_inference.InferenceOptions`) as
JSON, in a file or inline; it can also be run by hand for a single tile::

    python -m btfm_infer.worker --job '{"tiles_dir": "D", "output_dir": "O", "checkpoint": "C",
                                        "tiles": ["0_0_500_500"]}'

Under a driver (the job's ``parent_pid`` and ``failure_file``) the worker dies with the driver
(``PR_SET_PDEATHSIG`` on Linux, and a check of its parent pid at every progress write), stops
cleanly and silently on SIGTERM or SIGINT, and records a failure (tile, one-line message, type)
in the failure file for the driver to report instead of printing it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from btfm_core.cli import EXIT_USAGE, HelpFormatter, add_standard_options, entry_point, prog_name
from btfm_core.errors import BTFMError
from btfm_core.logs import setup_logging
from btfm_core.tiles import TileId
from btfm_infer.checkpoint import load_model
from btfm_infer.hardware import resolve_precision
from btfm_infer.model import BTFM, quantise_dynamic_int8
from btfm_infer.onnx_engine import EngineModel, with_engine
from btfm_infer.progress import ProgressFile, write_failure_file
from btfm_infer.tile_inference import InferenceOptions, infer_tile, representation_path

log = logging.getLogger(__name__)

__all__ = ["EXIT_STOPPED", "FILE_ONLY", "DriverGone", "WorkerJob", "build_parser", "die_with_parent",
           "is_out_of_memory", "load_worker_model", "main", "one_line", "prepare_model", "read_job", "run_tiles"]

#: ``PR_SET_PDEATHSIG`` of ``<linux/prctl.h>``.
PR_SET_PDEATHSIG = 1
#: Exit status of a worker stopped by a signal, by its driver, or because its driver is gone.
EXIT_STOPPED = 130
#: ``extra`` of log records meant for the log file only (the driver reports them on the console).
FILE_ONLY = {"console": False}


class DriverGone(KeyboardInterrupt):
    """The driver that started this worker is no longer its parent: stop like on Ctrl-C."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA out-of-memory error."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_tiles(model: EngineModel, tiles_dir: Path, output_dir: Path, tiles: Sequence[TileId],
              options: InferenceOptions, progress: ProgressFile | None = None) -> tuple[int, int]:
    """Embed each tile not yet done; halve the batch on GPU out-of-memory.

    Args:
        progress: Counts the pixels embedded as they are (and writes them to its progress file).

    Returns:
        (tiles written, pixels embedded).
    """
    written = pixels = 0
    batch = options.batch_size
    progress = ProgressFile(None) if progress is None else progress
    for tile in tiles:
        out_path = representation_path(output_dir, tile)
        if out_path.exists():
            log.info("tile %s already done, skipped", tile.name)
            continue
        started = time.perf_counter()
        progress.start_tile(tile.name)
        while True:
            try:
                count = infer_tile(model, tiles_dir / tile.name, out_path, replace(options, batch_size=batch),
                                   progress=progress.add)
                break
            except RuntimeError as exc:
                if not is_out_of_memory(exc) or batch <= 1:
                    raise
                progress.restart_tile()
                batch //= 2
                torch.cuda.empty_cache()
                log.warning("out of memory on tile %s; retrying with batch size %d", tile.name, batch)
        seconds = time.perf_counter() - started
        log.info("tile %s: %d px in %.1f s (%.0f px/s)", tile.name, count, seconds,
                 count / max(seconds, 1e-9))
        written += 1
        pixels += count
        progress.tile_finished(count)
    return written, pixels


def load_worker_model(checkpoint: str | Path, device: str, options: InferenceOptions,
                      threads: int | None = None) -> EngineModel:
    """The model a worker runs: loaded on ``device``, int8-quantised for ``precision int8``, in its engine."""
    return prepare_model(load_model(checkpoint, device, family=options.family, stats=options.stats), options,
                         threads)


def prepare_model(model: BTFM, options: InferenceOptions, threads: int | None = None) -> EngineModel:
    """A loaded model as ``options`` runs it: int8-quantised for ``precision int8``, in its engine."""
    if options.precision == "int8":
        model = quantise_dynamic_int8(model)
    return with_engine(model, options.engine, threads)


@dataclass(frozen=True)
class WorkerJob:
    """What one worker process does, as the driver decided it (sent as JSON: :meth:`to_json`).

    Attributes:
        tiles_dir, output_dir: the run's tile folder and where ``<tile>.npy`` go.
        checkpoint: the model checkpoint.
        tiles: tile names to embed, in order.
        options: seed, repeat, batch size, precision (``auto`` is resolved for ``device``), engine,
            family, statistics and dimensions.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        threads: torch CPU threads.
        log_file: the worker's log (None: console only).
        progress_file: ``{pixels_done, tiles_done, tile, updated}`` JSON written about every second.
        failure_file: on failure ``{tile, message, type}`` JSON is written here and the console
            stays quiet (the driver reports it).
        parent_pid: the driver's pid: the worker exits when it dies or is no longer its parent.
    """

    tiles_dir: Path
    output_dir: Path
    checkpoint: Path
    tiles: tuple[str, ...]
    options: InferenceOptions = field(default_factory=InferenceOptions)
    device: str = "cpu"
    threads: int = 1
    log_file: Path | None = None
    progress_file: Path | None = None
    failure_file: Path | None = None
    parent_pid: int | None = None

    _PATHS = ("tiles_dir", "output_dir", "checkpoint", "log_file", "progress_file", "failure_file")

    def to_json(self) -> str:
        """The job as one JSON object (paths as strings, the options nested)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update({key: None if data[key] is None else str(data[key]) for key in self._PATHS},
                    tiles=list(self.tiles), options=asdict(self.options))
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> WorkerJob:
        """Parse :meth:`to_json`'s output (missing optional fields take their defaults).

        Raises:
            BTFMError: not a JSON object, a missing or unknown field, a wrong type.
        """
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            data.update({key: Path(data[key]) for key in cls._PATHS if data.get(key) is not None},
                        tiles=tuple(data["tiles"]), options=InferenceOptions(**data.get("options", {})))
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise BTFMError(f"not a worker job ({type(exc).__name__}: {exc}); --job takes the JSON that "
                            "infer_all_tiles writes: tiles_dir, output_dir, checkpoint, tiles, ...") from exc


def read_job(value: str) -> WorkerJob:
    """``--job``: inline JSON (starts with ``{``) or the path of a JSON file."""
    if value.lstrip().startswith("{"):
        return WorkerJob.from_json(value)
    try:
        return WorkerJob.from_json(Path(value).read_text())
    except OSError as exc:
        raise BTFMError(f"--job {value}: cannot read it ({exc.strerror or exc})") from exc


def build_parser() -> argparse.ArgumentParser:
    """Command line of one worker: the job, and the console options."""
    parser = argparse.ArgumentParser(prog=prog_name("btfm_infer.worker"), description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--job", required=True,
                        help="the worker's job as JSON (WorkerJob), inline or the path of a .json file")
    add_standard_options(parser)
    return parser


class _DriverWatch(ProgressFile):
    """A :class:`ProgressFile` that raises :class:`DriverGone` when the parent is no longer ``parent_pid``.

    The fallback of ``PR_SET_PDEATHSIG`` (other systems, or a driver gone before it was set).
    """

    def __init__(self, path: Path | None, parent_pid: int | None) -> None:
        super().__init__(path)
        self.parent_pid = parent_pid

    def check_parent(self) -> None:
        """Raise :class:`DriverGone` if the driver has gone (this process was re-parented)."""
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            raise DriverGone(f"driver (pid {self.parent_pid}) is gone")

    def write(self) -> None:
        """Check the driver, then write."""
        self.check_parent()
        super().write()


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (no-op elsewhere or on failure)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        failed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0
        reason = os.strerror(ctypes.get_errno()) if failed else ""
    except (OSError, AttributeError) as exc:
        failed, reason = True, str(exc)
    if failed:
        log.debug("PR_SET_PDEATHSIG unavailable (%s); relying on the parent-pid check", reason)


def _stop_on_signals() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt once; repeats are ignored while the worker stops."""
    def stop(signum: int, frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def _quiet_console() -> None:
    """Keep records logged with :data:`FILE_ONLY` off the console handlers (they stay in the log file)."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.addFilter(lambda record: getattr(record, "console", True))


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: a BTFM error's message, else ``Type: message``."""
    text = " ".join(str(exc).split())
    if isinstance(exc, BTFMError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _embed(job: WorkerJob, progress: ProgressFile) -> int:
    """Load the model and embed the job's tiles; prints ``<tiles written> <pixels>`` on stdout."""
    torch.set_num_threads(max(1, job.threads))
    try:
        device = torch.device(job.device)
    except RuntimeError as exc:
        raise BTFMError(f"device {job.device!r} is not a torch device; use cpu, cuda or cuda:N") from exc
    options = replace(job.options, precision=resolve_precision(job.options.precision, job.device),
                      engine=job.options.engine if device.type == "cpu" else "torch")
    tiles = [TileId.parse(name) for name in job.tiles]
    model = load_worker_model(job.checkpoint, job.device, options, job.threads)
    written, pixels = run_tiles(model, job.tiles_dir, job.output_dir, tiles, options, progress)
    print(written, pixels)
    return 0


def _run_under_driver(job: WorkerJob) -> int:
    """:func:`_embed` as a driver's worker: no orphan, a clean stop, the failure in the job's failure file."""
    _stop_on_signals()  # first, so that the parent-death SIGTERM too stops the worker cleanly
    die_with_parent()
    _quiet_console()
    progress = _DriverWatch(job.progress_file, job.parent_pid)
    if job.failure_file is not None:
        job.failure_file.unlink(missing_ok=True)
    try:
        progress.check_parent()  # the driver may have died before PR_SET_PDEATHSIG was set
        return _embed(job, progress)
    except KeyboardInterrupt as exc:
        log.warning("stopped (%s)%s", exc or "interrupted", f" on tile {progress.tile}" if progress.tile else "",
                    extra=FILE_ONLY)
        return EXIT_STOPPED
    except Exception as exc:
        log.error("failed%s: %s", f" on tile {progress.tile}" if progress.tile else "", one_line(exc),
                  exc_info=True, extra=FILE_ONLY if job.failure_file is not None else None)
        if job.failure_file is not None:
            write_failure_file(job.failure_file, progress.tile, one_line(exc), type(exc).__name__)
        return EXIT_USAGE if isinstance(exc, BTFMError) else 1


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker; prints ``<tiles written> <pixels>`` on stdout."""
    args = build_parser().parse_args(argv)
    job = read_job(args.job)
    setup_logging(job.log_file, args.verbosity)
    if job.parent_pid is None and job.failure_file is None:  # run by hand: errors as any entry point
        return _embed(job, ProgressFile(job.progress_file))
    return _run_under_driver(job)


if __name__ == "__main__":
    sys.exit(main())
