"""btfm_core.progress: a bar only on a terminal, a log line every 30 s otherwise, nothing under -q."""

from __future__ import annotations

import io
import logging

import pytest

from btfm_core.logs import setup_logging
from btfm_core.progress import Progress, progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_one_line_per_interval_and_a_final_one(caplog: pytest.LogCaptureFixture) -> None:
    clock, stream = FakeClock(), io.StringIO()
    with caplog.at_level(logging.INFO, logger="btfm_core.progress"):
        seen = []
        for item in Progress(range(10), desc="tiles", unit="tile", stream=stream, clock=clock):
            seen.append(item)
            clock.now += 7.0  # 70 s in all: lines at 35 s and 70 s... plus the final one
    assert seen == list(range(10))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("tiles: 5/10 tile (50%)")
    assert lines[-1] == "tiles: 10/10 tile (100%), 01:10"
    assert len(lines) == 3 and stream.getvalue() == ""


def test_a_bar_on_a_terminal_and_none_under_quiet(tmp_path: object) -> None:
    terminal = Terminal()
    setup_logging(None, 0)
    with progress(total=3, desc="download", unit="B", stream=terminal) as bar:
        bar.update(3)
    assert "download" in terminal.getvalue() and "100%" in terminal.getvalue()
    quiet_terminal = Terminal()
    setup_logging(None, -1)
    try:
        with progress(total=3, desc="download", unit="B", stream=quiet_terminal) as bar:
            assert bar.bar is None
            bar.update(3)
        assert quiet_terminal.getvalue() == ""
    finally:
        setup_logging(None, 0)


def test_bytes_are_scaled_and_a_missing_total_is_counted() -> None:
    clock = FakeClock()
    bar = Progress(total=None, desc="read", unit="B", stream=io.StringIO(), clock=clock)
    bar.update(2_500_000)
    assert bar.line() == "read: 2.5 MB, 00:00"
    sized = Progress(total=4_000_000, desc="read", unit="B", stream=io.StringIO(), clock=clock)
    sized.update(1_000_000)
    assert sized.line() == "read: 1 MB/4 MB (25%), 00:00"
