"""One inference worker process: embeds a list of tiles on one device.

Started by :mod:`btfm_infer.infer_all_tiles`; can also be run by hand for a single tile::

    python -m btfm_infer.worker --tiles-dir D --output-dir O --checkpoint C --tiles 0_0_500_500

Under a driver (``--parent-pid``, ``--failure-file``) the worker dies with the driver
(``PR_SET_PDEATHSIG`` on Linux, and a check of its parent pid at every progress write), stops
cleanly and silently on SIGTERM or SIGINT, and records a failure (tile, one-line message, type)
in the failure file for the driver to report instead of printing it.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from btfm_core.cli import EXIT_USAGE, HelpFormatter, add_standard_options, entry_point, prog_name
from btfm_core.errors import BTFMError
from btfm_core.logs import setup_logging
from btfm_core.tiles import TileId
from btfm_infer.checkpoint import V11_SOURCES, load_model
from btfm_infer.families import FAMILY_NAMES
from btfm_infer.hardware import PRECISIONS, resolve_precision
from btfm_infer.model import BTFM, quantise_dynamic_int8
from btfm_infer.onnx_engine import ENGINES, EngineModel, with_engine
from btfm_infer.progress import ProgressFile, write_failure_file
from btfm_infer.tile_inference import InferenceOptions, infer_tile, representation_path

log = logging.getLogger(__name__)

__all__ = ["EXIT_STOPPED", "FILE_ONLY", "DriverGone", "build_parser", "die_with_parent", "is_out_of_memory",
           "load_worker_model", "main", "one_line", "prepare_model", "run_tiles"]

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


def build_parser() -> argparse.ArgumentParser:
    """Command line of one worker."""
    parser = argparse.ArgumentParser(prog=prog_name("btfm_infer.worker"), description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--tiles-dir", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--tiles", nargs="+", required=True, help="tile names to embed")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 where native on --device, else fp32; int8: CPU only")
    parser.add_argument("--engine", choices=ENGINES, default="torch", help="forward engine on the CPU")
    parser.add_argument("--model-family", choices=["auto", *FAMILY_NAMES], default="auto")
    parser.add_argument("--stats", choices=V11_SOURCES, default=None, help="v1.1 statistics")
    parser.add_argument("--dim", type=int, default=None, help="embedding dimensions written (Matryoshka)")
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument("--progress-file", type=Path, default=None,
                        help="write {pixels_done, tiles_done, tile, updated} JSON here about every second")
    parser.add_argument("--failure-file", type=Path, default=None,
                        help="on failure write {tile, message, type} JSON here and keep the console quiet "
                             "(the driver reports it)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="the driver's pid: exit when it dies or this process is no longer its child")
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


def _embed(args: argparse.Namespace, progress: ProgressFile) -> int:
    """Load the model and embed ``--tiles``; prints ``<tiles written> <pixels>`` on stdout."""
    torch.set_num_threads(max(1, args.threads))
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise BTFMError(f"--device {args.device!r} is not a torch device; use cpu, cuda or cuda:N") from exc
    engine = args.engine if device.type == "cpu" else "torch"
    options = InferenceOptions(args.seed, args.repeat, args.batch_size,
                               resolve_precision(args.precision, args.device), engine, args.model_family,
                               args.stats, args.dim)
    model = load_worker_model(args.checkpoint, args.device, options, args.threads)
    tiles = [TileId.parse(name) for name in args.tiles]
    written, pixels = run_tiles(model, args.tiles_dir, args.output_dir, tiles, options, progress)
    print(written, pixels)
    return 0


def _run_under_driver(args: argparse.Namespace) -> int:
    """:func:`_embed` as a driver's worker: no orphan, a clean stop, the failure in ``--failure-file``."""
    _stop_on_signals()  # first, so that the parent-death SIGTERM too stops the worker cleanly
    die_with_parent()
    _quiet_console()
    progress = _DriverWatch(args.progress_file, args.parent_pid)
    if args.failure_file is not None:
        args.failure_file.unlink(missing_ok=True)
    try:
        progress.check_parent()  # the driver may have died before PR_SET_PDEATHSIG was set
        return _embed(args, progress)
    except KeyboardInterrupt as exc:
        log.warning("stopped (%s)%s", exc or "interrupted", f" on tile {progress.tile}" if progress.tile else "",
                    extra=FILE_ONLY)
        return EXIT_STOPPED
    except Exception as exc:
        log.error("failed%s: %s", f" on tile {progress.tile}" if progress.tile else "", one_line(exc),
                  exc_info=True, extra=FILE_ONLY if args.failure_file is not None else None)
        if args.failure_file is not None:
            write_failure_file(args.failure_file, progress.tile, one_line(exc), type(exc).__name__)
        return EXIT_USAGE if isinstance(exc, BTFMError) else 1


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker; prints ``<tiles written> <pixels>`` on stdout."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file, args.verbosity)
    if args.parent_pid is None and args.failure_file is None:  # run by hand: errors as any entry point
        return _embed(args, ProgressFile(args.progress_file))
    return _run_under_driver(args)


if __name__ == "__main__":
    sys.exit(main())
