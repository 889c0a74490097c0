"""Preprocessing runs: resume after a crash, settings changes, metadata."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from btfm_preprocessing import pipeline, stack, tile_tasks
from tests.conftest import DEMO_DIR

ARGS = ["2020-11-01", "2021-10-31", "2020-11-01", "2021-10-31", "1", "--catalog", str(DEMO_DIR / "catalog.json"),
        "--tile-size", "40", "-q"]


def tile_digests(tiles_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(tiles_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tiles_dir.rglob("*")) if p.is_file() and p.suffix in (".npy", ".tiff")}


@pytest.fixture
def roi(tmp_path: Path) -> Path:
    shutil.copy(DEMO_DIR / "roi.tiff", tmp_path / "roi.tiff")
    return tmp_path / "roi.tiff"


def test_crash_then_resume_equals_uninterrupted_run(roi: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    reference = tmp_path / "reference"
    assert pipeline.main([str(roi), *ARGS, "--data-dir", str(reference)]) == 0
    calls = {"n": 0}
    original = stack.build_tiles

    def crash_on_third(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of a group of tiles
        return original(*args, **kwargs)

    monkeypatch.setattr(tile_tasks, "build_tiles", crash_on_third)  # where the tile writer looks it up
    # 3 x 3 tiles of 40 px read 2 x 2: groups of 4, 2, 2 and 1 tiles; the third group is interrupted
    assert pipeline.main([str(roi), *ARGS, "--read-group", "2"]) == 130
    tiles_dir = roi.parent / "retiled_d_pixel"
    assert len([p for p in tiles_dir.iterdir() if p.is_dir()]) == 6  # nothing half-written
    monkeypatch.setattr(tile_tasks, "build_tiles", original)
    assert pipeline.main([str(roi), *ARGS, "--keep-intermediate"]) == 0
    assert tile_digests(tiles_dir) == tile_digests(reference / "retiled_d_pixel")
    assert (roi.parent / "cache").is_dir()  # kept by flag; the search was reused from it


def test_other_settings_need_overwrite(roi: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert pipeline.main([str(roi), *ARGS]) == 0
    other = ["2020-11-01", "2021-09-30", *ARGS[2:]]
    assert pipeline.main([str(roi), *other]) == 2
    assert "--overwrite" in caplog.text
    assert pipeline.main([str(roi), *other, "--overwrite"]) == 0


def test_run_metadata_records_sources(roi: Path) -> None:
    assert pipeline.main([str(roi), *ARGS]) == 0
    meta = json.loads((roi.parent / "retiled_d_pixel" / "run_metadata.json").read_text())
    assert meta["source"] == "local" and meta["s1_backscatter_recorded"] == ["sigma0"]
    assert meta["s2_notes"] == ["B8A from B08"] and meta["s2_scenes"] == 10
    assert not (roi.parent / "cache").exists()
    assert (roi.parent / "logs" / "preprocess.log").is_file()


def test_help_from_any_directory(tmp_path: Path) -> None:
    import subprocess

    script = Path(__file__).resolve().parents[2] / "btfm_preprocessing" / "main_pipeline.sh"
    result = subprocess.run(["bash", str(script), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and "--tile-size" in result.stdout


def test_finished_run_keeps_its_metadata_and_prepares_nothing(roi: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(roi), *ARGS]
    assert pipeline.main(argv) == 0
    metadata = roi.parent / "retiled_d_pixel" / "run_metadata.json"
    first = metadata.read_bytes()
    from btfm_preprocessing.sources import StacSource

    def must_not_run(self: StacSource, scenes: object, grid: object) -> list[object]:
        raise AssertionError("prepare_s1 called although every tile was done")

    monkeypatch.setattr(StacSource, "prepare_s1", must_not_run)
    assert pipeline.main(argv) == 0  # everything done: the metadata of the run that made the tiles stays
    assert metadata.read_bytes() == first
    metadata.unlink()  # e.g. killed between the last tile and the metadata: prepared and written again
    assert pipeline.main(argv) == 1  # the entry point reports what escaped in one line
    assert "prepare_s1 called although every tile was done" in capsys.readouterr().err


def test_parallel_day_reads_give_the_same_tiles_as_sequential_ones(tmp_path: Path) -> None:
    digests = []
    for workers in ("1", "6"):
        run = tmp_path / f"workers_{workers}"
        run.mkdir()
        shutil.copy(DEMO_DIR / "roi.tiff", run / "roi.tiff")
        assert pipeline.main([str(run / "roi.tiff"), *ARGS, "--workers", workers]) == 0
        digests.append(tile_digests(run / "retiled_d_pixel"))
    assert digests[0] == digests[1] and len(digests[0]) > 10
