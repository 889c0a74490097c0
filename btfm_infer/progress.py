"""Progress of an inference run in pixels: worker progress files and the driver's reporter.

Each worker process writes ``{"pixels_done": N, "tiles_done": K, "tile": name, "updated": unix_time}``
to its own small JSON file (:class:`ProgressFile`, atomic, at most about once a second and at the
start and end of every tile; ``tile`` is the tile in progress or null); the driver reads them
(:func:`read_progress_file`) and shows the total with a :class:`PixelProgress`: a tqdm bar in
pixels on a terminal, otherwise a plain log line every :data:`PROGRESS_LOG_INTERVAL_S` seconds
and a final one. A worker that fails writes ``{"tile", "message", "type"}`` to its failure file
(:func:`write_failure_file`), which the driver turns into its one-line error.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from tqdm import tqdm

from btfm_core.fileio import atomic_path
from btfm_core.progress import bar_wanted

__all__ = ["PROGRESS_LOG_INTERVAL_S", "PixelProgress", "ProgressFile", "failure_file_path", "format_duration",
           "format_progress", "progress_file_path", "read_failure_file", "read_progress_file", "read_progress_tile",
           "write_failure_file", "write_progress_file"]

log = logging.getLogger(__name__)

#: Seconds between two progress log lines when stderr is not a terminal.
PROGRESS_LOG_INTERVAL_S = 30.0
#: Seconds between two redraws of the terminal bar.
BAR_INTERVAL_S = 0.5
#: Seconds between two writes of a worker's progress file (besides the end of each tile).
FILE_INTERVAL_S = 1.0


def progress_file_path(log_dir: Path, worker: str) -> Path:
    """Where worker ``worker`` writes its progress: ``<log_dir>/progress_<worker>.json``."""
    return Path(log_dir) / f"progress_{worker}.json"


def failure_file_path(log_dir: Path, worker: str) -> Path:
    """Where worker ``worker`` records why it failed: ``<log_dir>/failure_<worker>.json``."""
    return Path(log_dir) / f"failure_{worker}.json"


def write_progress_file(path: Path, pixels_done: int, tiles_done: int, tile: str | None = None) -> None:
    """Write a worker's progress atomically (temporary name in the same folder, then rename)."""
    record = {"pixels_done": int(pixels_done), "tiles_done": int(tiles_done), "tile": tile,
              "updated": time.time()}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record))


def _read_record(path: Path) -> dict[str, object] | None:
    """The JSON object in ``path``; None for a missing, partial or foreign file."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_progress_tile(path: Path) -> str | None:
    """The tile a worker's progress file says is in progress (None: none, or no readable file)."""
    tile = (_read_record(path) or {}).get("tile")
    return tile if isinstance(tile, str) else None


def write_failure_file(path: Path, tile: str | None, message: str, kind: str) -> None:
    """Record a worker's failure atomically: the tile it was on (or None), one line, the exception type."""
    record = {"tile": tile, "message": " ".join(message.split()), "type": kind}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record))


def read_failure_file(path: Path) -> dict[str, str | None] | None:
    """``{"tile", "message", "type"}`` from a worker's failure file; None when there is none (or it is foreign)."""
    record = _read_record(path)
    if record is None or not isinstance(record.get("message"), str):
        return None
    return {key: value if isinstance(value, str) else None
            for key, value in ((k, record.get(k)) for k in ("tile", "message", "type"))}


def read_progress_file(path: Path) -> tuple[int, int]:
    """(pixels done, tiles done) of a worker; (0, 0) for a missing, partial or foreign file."""
    try:
        record = json.loads(Path(path).read_text())
        pixels, tiles = record["pixels_done"], record["tiles_done"]
    except (OSError, ValueError, TypeError, KeyError):
        return 0, 0
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (pixels, tiles)):
        return 0, 0
    return pixels, tiles


class ProgressFile:
    """A worker's progress counters, written to ``path`` (None: counted, not written).

    Pixels of the tile in progress come from :meth:`add` (the ``progress`` callback of
    :func:`btfm_infer.embed.embed_pixels`); :meth:`tile_finished` then replaces them by the
    tile's true count, so a retried tile (GPU out of memory) is never counted twice.
    """

    def __init__(self, path: Path | None, *, interval_s: float = FILE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.interval_s, self.clock = path, interval_s, clock
        self.finished_pixels = self.current_pixels = self.tiles_done = 0
        self.tile: str | None = None
        self._last_write = -float("inf")
        self._failed = False

    @property
    def pixels_done(self) -> int:
        """Pixels embedded so far, the tile in progress included."""
        return self.finished_pixels + self.current_pixels

    def add(self, pixels: int) -> None:
        """Count ``pixels`` more of the tile in progress; write if the last write is old enough."""
        self.current_pixels += int(pixels)
        if self.clock() - self._last_write >= self.interval_s:
            self.write()

    def start_tile(self, tile: str) -> None:
        """Name the tile now in progress and write (so a killed worker's tile is known)."""
        self.tile, self.current_pixels = tile, 0
        self.write()

    def restart_tile(self) -> None:
        """Forget the pixels of the tile in progress (it is being retried)."""
        self.current_pixels = 0

    def tile_finished(self, pixels: int) -> None:
        """Count a finished tile of ``pixels`` ROI pixels and write."""
        self.finished_pixels += int(pixels)
        self.current_pixels = 0
        self.tiles_done += 1
        self.tile = None
        self.write()

    def write(self) -> None:
        """Write the file now; a failure is logged once and otherwise ignored (progress is advisory)."""
        self._last_write = self.clock()
        if self.path is None:
            return
        try:
            write_progress_file(self.path, self.pixels_done, self.tiles_done, self.tile)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot write progress file %s: %s", self.path, exc)
            self._failed = True


def format_duration(seconds: float) -> str:
    """``45s``, ``1m32s``, ``2h05m`` or ``3d04h``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_progress(done_by_worker: Mapping[str, int], total_pixels: int | None, tiles_done: int,
                    total_tiles: int, elapsed_s: float, *, final: bool = False) -> str:
    """One progress line (without the ``progress:`` prefix).

    ``1,234/5,000 px (24.7 %), 41 px/s, ETA 1m32s; cpu_0 800 px, cpu_1 434 px; tiles 1/4``;
    with ``total_pixels`` None the tiles are the measure of progress (and of the ETA). A final
    line gives the time taken instead of the ETA. Workers are listed when there are several.
    """
    done = sum(done_by_worker.values())
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if total_pixels is None:
        fraction = tiles_done / total_tiles if total_tiles else 1.0
        head = f"tiles {tiles_done}/{total_tiles} ({100 * fraction:.1f} %), {done:,} px, {rate:,.0f} px/s"
    else:
        fraction = done / total_pixels if total_pixels else 1.0
        head = f"{done:,}/{total_pixels:,} px ({100 * fraction:.1f} %), {rate:,.0f} px/s"
    if final:
        head += f", in {format_duration(elapsed_s)}"
    elif 0 < fraction < 1:
        head += f", ETA {format_duration(elapsed_s * (1 - fraction) / fraction)}"
    else:
        head += ", ETA ?" if fraction < 1 else ", ETA 0s"
    parts = [head]
    if len(done_by_worker) > 1:
        parts.append(", ".join(f"{name} {n:,} px" for name, n in done_by_worker.items()))
    if total_pixels is not None:
        parts.append(f"tiles {tiles_done}/{total_tiles}")
    return "; ".join(parts)


def _short(pixels: int) -> str:
    """``950``, ``1.23k``, ``45.6M``: a count for the bar's postfix."""
    return str(pixels) if pixels < 1000 else tqdm.format_sizeof(pixels)


class PixelProgress:
    """Overall progress of a run: a tqdm bar on a terminal, else a log line every ``log_interval_s``.

    Args:
        total_pixels: ROI pixels to embed; None counts tiles only.
        total_tiles: Tiles to embed.
        stream: Where the bar goes (default ``sys.stderr``); no bar unless it is a terminal.
        log_interval_s: Seconds between log lines without a terminal (default
            :data:`PROGRESS_LOG_INTERVAL_S`).
        clock: Monotonic seconds (tests pass a fake one).
        logger: Where the lines go.
    """

    def __init__(self, total_pixels: int | None, total_tiles: int, *, stream: IO[str] | None = None,
                 log_interval_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log) -> None:
        self.total_pixels, self.total_tiles = total_pixels, total_tiles
        self.log_interval_s = PROGRESS_LOG_INTERVAL_S if log_interval_s is None else log_interval_s
        self.clock, self.logger = clock, logger
        self.started = self._last_log = clock()
        self.done_by_worker: dict[str, int] = {}
        self.tiles_done = 0
        self._closed = False
        stream = sys.stderr if stream is None else stream
        self.bar: tqdm | None = None
        if bar_wanted(stream):  # a terminal, and not -q
            pixels = total_pixels is not None
            self.bar = tqdm(total=total_pixels if pixels else total_tiles, desc="embedding",
                            unit="px" if pixels else "tile", unit_scale=pixels, file=stream,
                            mininterval=BAR_INTERVAL_S, dynamic_ncols=True)

    def line(self, *, final: bool = False) -> str:
        """The current progress line, ``progress: ...``."""
        text = format_progress(self.done_by_worker, self.total_pixels, self.tiles_done, self.total_tiles,
                               self.clock() - self.started, final=final)
        return f"progress: {text}"

    def update(self, done_by_worker: Mapping[str, int], tiles_done: int) -> None:
        """Record the pixels done per worker and the tiles done; redraw or log when due."""
        self.done_by_worker, self.tiles_done = dict(done_by_worker), tiles_done
        if self.bar is not None:
            if len(self.done_by_worker) > 1:
                self.bar.set_postfix_str(", ".join(f"{k} {_short(v)}" for k, v in self.done_by_worker.items()),
                                         refresh=False)
            self.bar.update((sum(self.done_by_worker.values()) if self.total_pixels is not None
                             else tiles_done) - self.bar.n)
        elif self.clock() - self._last_log >= self.log_interval_s:
            self._last_log = self.clock()
            self.logger.info("%s", self.line())

    def close(self) -> None:
        """Close the bar and log the final line (once)."""
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()
        self.logger.info("%s", self.line(final=True))
