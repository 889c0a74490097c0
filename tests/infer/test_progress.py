"""Pixel-level progress: the reporter's lines, worker progress files, and a whole run without a terminal."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest

from btfm_core.tiles import list_tiles, read_tile
from btfm_infer import infer_all_tiles, progress
from btfm_infer.checkpoint import load_model
from btfm_infer.progress import (
    PixelProgress,
    ProgressFile,
    format_duration,
    format_progress,
    read_progress_file,
    write_progress_file,
)
from btfm_infer.tile_inference import InferenceOptions
from btfm_infer.worker import run_tiles
from btfm_preprocessing import pipeline
from tests.test_end_to_end import DATES, crop_roi

LOGGER = logging.getLogger("tests.progress")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (44.6, "45s"), (92, "1m32s"), (3600, "1h00m"),
                                               (7530, "2h05m"), (3 * 86400 + 4 * 3600, "3d04h")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_progress_pixels_eta_and_workers() -> None:
    line = format_progress({"cpu_0": 800, "cpu_1": 434}, 5000, 1, 4, 30.0)
    assert line == "1,234/5,000 px (24.7 %), 41 px/s, ETA 1m32s; cpu_0 800 px, cpu_1 434 px; tiles 1/4"
    final = format_progress({"cpu_0": 5000}, 5000, 4, 4, 125.0, final=True)
    assert final == "5,000/5,000 px (100.0 %), 40 px/s, in 2m05s; tiles 4/4"  # one worker: not listed
    assert ", ETA ?" in format_progress({"a": 0, "b": 0}, 5000, 0, 4, 3.0)


def test_format_progress_tiles_only() -> None:
    line = format_progress({"dask": 300}, None, 1, 4, 10.0)
    assert line == "tiles 1/4 (25.0 %), 300 px, 30 px/s, ETA 30s"


def test_no_terminal_no_bar_and_lines_at_the_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock, stream = FakeClock(), io.StringIO()
    reporter = PixelProgress(1000, 2, stream=stream, log_interval_s=30, clock=clock, logger=LOGGER)
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    for t, done in ((0.5, 10), (10, 100), (29.9, 300), (30, 310), (45, 400), (61, 600)):
        clock.now = t
        reporter.update({"cpu_0": done // 2, "cpu_1": done - done // 2}, 0)
    clock.now = 70
    reporter.update({"cpu_0": 500, "cpu_1": 500}, 2)
    reporter.close()
    reporter.close()  # once only
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "progress: 310/1,000 px (31.0 %), 10 px/s, ETA 1m07s; cpu_0 155 px, cpu_1 155 px; tiles 0/2",
        "progress: 600/1,000 px (60.0 %), 10 px/s, ETA 41s; cpu_0 300 px, cpu_1 300 px; tiles 0/2",
        "progress: 1,000/1,000 px (100.0 %), 14 px/s, in 1m10s; cpu_0 500 px, cpu_1 500 px; tiles 2/2",
    ]
    assert stream.getvalue() == ""


def test_terminal_gets_a_pixel_bar(caplog: pytest.LogCaptureFixture) -> None:
    stream = FakeTerminal()
    reporter = PixelProgress(2_000_000, 3, stream=stream, log_interval_s=0, logger=LOGGER)
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    reporter.update({"cpu_0": 1_000_000, "gpu_0": 500_000}, 1)
    reporter.close()
    drawn = stream.getvalue()
    assert "px" in drawn and "M" in drawn and "gpu_0" in drawn
    assert [r.getMessage() for r in caplog.records][-1].startswith("progress: 1,500,000/2,000,000 px")
    assert len(caplog.records) == 1  # on a terminal only the final line is logged


def test_progress_file_is_atomic_and_read_tolerantly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "progress_cpu_0.json"
    assert read_progress_file(path) == (0, 0)  # missing
    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr("btfm_core.fileio.os.replace", spy)
    write_progress_file(path, 1234, 2)
    assert renames and renames[0][1] == path and renames[0][0].parent == path.parent != renames[0][0]
    record = json.loads(path.read_text())
    assert record["pixels_done"] == 1234 and record["tiles_done"] == 2 and record["updated"] > 0
    assert read_progress_file(path) == (1234, 2)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    for text in ('{"pixels_done": 12', "[1, 2]", '{"pixels_done": "1", "tiles_done": 0}',
                 '{"pixels_done": -1, "tiles_done": 0}', '{"tiles_done": 3}'):
        path.write_text(text)
        assert read_progress_file(path) == (0, 0), text


def test_progress_file_is_throttled_and_corrected_per_tile(tmp_path: Path) -> None:
    clock, path = FakeClock(), tmp_path / "p.json"
    counter = ProgressFile(path, interval_s=1.0, clock=clock)
    counter.add(100)
    assert read_progress_file(path) == (100, 0)  # the first increment is written
    clock.now = 0.5
    counter.add(100)
    assert read_progress_file(path) == (100, 0) and counter.pixels_done == 200
    clock.now = 1.2
    counter.add(50)
    assert read_progress_file(path) == (250, 0)
    counter.restart_tile()  # e.g. out of memory: the tile starts again
    counter.add(10)
    counter.tile_finished(300)  # the tile's true count, written at once
    assert read_progress_file(path) == (300, 1)
    assert ProgressFile(None).pixels_done == 0  # counts without a file


@pytest.fixture(scope="module")
def small_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four tiles (32 x 32 and clamped edges) of a 40 x 40 crop of the demo sample."""
    run_dir = tmp_path_factory.mktemp("progress")
    roi = crop_roi(run_dir / "roi.tiff")
    assert pipeline.main([str(roi), *DATES, "--tile-size", "32", "-q"]) == 0
    return run_dir / "retiled_d_pixel"


def roi_total(tiles_dir: Path) -> int:
    return sum(int(read_tile(tiles_dir / t.name).roi.sum()) for t in list_tiles(tiles_dir))


def test_run_tiles_reports_every_roi_pixel(small_tiles: Path, tmp_path: Path) -> None:
    model = load_model(infer_all_tiles.DEFAULT_CHECKPOINT, "cpu")
    tiles = list_tiles(small_tiles)[:2]
    increments: list[int] = []
    counter = ProgressFile(tmp_path / "progress.json")
    (tmp_path / "out").mkdir()
    real_add = counter.add
    counter.add = lambda n: (increments.append(n), real_add(n))[1]  # type: ignore[method-assign]
    written, pixels = run_tiles(model, small_tiles, tmp_path / "out", tiles, InferenceOptions(batch_size=64),
                                counter)
    expected = sum(int(read_tile(small_tiles / t.name).roi.sum()) for t in tiles)
    assert (written, pixels) == (2, expected) and expected > 0
    assert read_progress_file(tmp_path / "progress.json") == (expected, 2)
    assert sum(increments) == expected  # embed_pixels reports as it goes


def test_run_without_terminal_logs_pixel_progress(small_tiles: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(infer_all_tiles, "PROGRESS_LOG_INTERVAL_S", 0.0)  # a line at every poll
    logs = tmp_path / "logs"
    assert infer_all_tiles.main(["--tiles-dir", str(small_tiles), "--output-dir", str(tmp_path / "out"),
                                 "--log-dir", str(logs), "--max-cpu", "2", "--cores", "2", "-q"]) == 0
    total = roi_total(small_tiles)
    lines = [line for line in (logs / "infer_all_tiles.log").read_text().splitlines() if "progress:" in line]
    assert len(lines) >= 2
    assert f"progress: {total:,}/{total:,} px (100.0 %)" in lines[-1] and "tiles 4/4" in lines[-1]
    assert " in " in lines[-1] and "cpu_0" in lines[-1] and "cpu_1" in lines[-1]
    assert "\r" not in capfd.readouterr().err  # no bar redraws
    assert not list(logs.glob("progress_*"))  # worker progress files are gone
    assert not list(logs.glob(".tmp-*"))
    assert progress.PROGRESS_LOG_INTERVAL_S == 30.0


def test_dask_progress_moves_per_finished_tile(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from btfm_core.errors import BTFMError
    from btfm_infer import dask_backend

    class Task:
        def __init__(self, key: str, pixels: int | Exception) -> None:
            self.key, self.pixels = key, pixels

        def result(self) -> int:
            if isinstance(self.pixels, Exception):
                raise self.pixels
            return self.pixels

    class AsCompleted:  # the part of distributed.as_completed that _collect uses: one task per poll
        def __init__(self, futures: list[Task]) -> None:
            self.left = list(futures)

        def is_empty(self) -> bool:
            return not self.left

        def next_batch(self, block: bool = True) -> list[Task]:
            return [self.left.pop(0)]

    monkeypatch.setattr(dask_backend, "POLL_INTERVAL_S", 0.0)
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    reporter = PixelProgress(300, 3, stream=io.StringIO(), log_interval_s=0, logger=LOGGER)
    tasks = [Task("btfm-a", 100), Task("btfm-b", 0), Task("btfm-c", 200)]
    assert dask_backend._collect(tasks, AsCompleted, reporter) == 300
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "progress: 100/300 px (33.3 %)", "progress: 100/300 px (33.3 %)", "progress: 300/300 px (100.0 %)"]
    with pytest.raises(BTFMError, match="tile b failed on the cluster"):
        dask_backend._collect([Task("btfm-b", RuntimeError("boom"))], AsCompleted, reporter)
