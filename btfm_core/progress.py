"""Progress of a long step: a bar on a terminal, a log line every 30 s otherwise, nothing under ``-q``.

Every step reports progress the same way::

    for tile in progress(pending, desc="tiles", unit="tile"):
        ...

    with progress(total=size, desc="download", unit="B") as bar:
        bar.update(len(chunk))

On a terminal (stderr a TTY, console showing INFO) a tqdm bar is drawn; otherwise (a batch log,
a pipe, a file) one ``<desc>: <done>/<total> <unit> (<pct>), <elapsed>`` line is logged every
:data:`LOG_INTERVAL_S` seconds and once at the end, so a redirected log gains a few lines an hour
instead of thousands of redraws. Under ``-q`` (console at WARNING) neither appears; the log file
still gets the lines.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Generic, TypeVar

from tqdm import tqdm

from btfm_core.fileio import human_bytes
from btfm_core.logs import OWNED_HANDLER

log = logging.getLogger(__name__)

__all__ = ["LOG_INTERVAL_S", "Progress", "bar_wanted", "progress"]

#: Seconds between two progress lines when there is no terminal.
LOG_INTERVAL_S = 30.0

T = TypeVar("T")


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def console_shows_info() -> bool:
    """Whether the console handler set up by ``setup_logging`` shows INFO lines (not ``-q``)."""
    consoles = [h for h in logging.getLogger().handlers
                if getattr(h, OWNED_HANDLER, False) and not isinstance(h, logging.FileHandler)]
    return not consoles or any(h.level <= logging.INFO for h in consoles)


def bar_wanted(stream: IO[str]) -> bool:
    """Whether to draw a bar on ``stream``: a terminal, and a console that shows INFO (not ``-q``)."""
    return _is_terminal(stream) and console_shows_info()


class Progress(Generic[T]):
    """Progress over ``iterable`` (or ``total`` units updated by hand); see the module doc.

    Args:
        iterable: items to yield while counting them (None: call :meth:`update`).
        total: units expected (default ``len(iterable)`` when it has one).
        desc: what is counted, e.g. ``"tiles"``.
        unit: the unit, e.g. ``"tile"``, ``"B"`` (bytes are shown scaled).
        initial: units already done (a resumed step).
        stream: where a bar goes (default stderr; no bar unless it is a terminal).
        logger: where the lines go.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, iterable: Iterable[T] | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", initial: float = 0, stream: IO[str] | None = None,
                 logger: logging.Logger = log, log_interval_s: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = initial
        self.logger, self.log_interval_s, self.clock = logger, log_interval_s, clock
        self.started = self._last_line = clock()
        self._closed = False
        stream = sys.stderr if stream is None else stream
        self.bar: tqdm | None = None
        if bar_wanted(stream):
            self.bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream, dynamic_ncols=True,
                            unit_scale=unit == "B", mininterval=0.5)

    def line(self) -> str:
        """``<desc>: <done>/<total> <unit> (<pct>), <elapsed>``."""
        if self.unit == "B":
            amount = human_bytes(self.n) + (f"/{human_bytes(self.total)}" if self.total else "")
        else:
            amount = f"{self.n:g}" + (f"/{self.total:g}" if self.total else "") + f" {self.unit}"
        if self.total:
            amount += f" ({100 * self.n / self.total:.0f}%)"
        return f"{self.desc}: {amount}, {tqdm.format_interval(self.clock() - self.started)}"

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units; redraw the bar, or log a line when one is due."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.clock() - self._last_line >= self.log_interval_s:
            self._last_line = self.clock()
            self.logger.info("%s", self.line())

    def close(self) -> None:
        """End the bar, or log the final line (once)."""
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()
        else:
            self.logger.info("%s", self.line())

    def __iter__(self) -> Iterator[T]:
        assert self.iterable is not None, "Progress without an iterable: call update()"
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def progress(iterable: Iterable[T] | None = None, **options: object) -> Progress[T]:
    """A :class:`Progress` (same arguments); the one way a step shows how far it is."""
    return Progress(iterable, **options)  # type: ignore[arg-type]
