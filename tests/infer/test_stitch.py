"""Stitching representation tiles into one (H, W, 128) array on the ROI grid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from btfm_core.errors import BTFMError, TileFormatError
from btfm_core.roi import open_roi
from btfm_core.tiles import TileId, tile_layout
from btfm_infer import stitch_tiled_representation as stitcher
from tests.conftest import REPO_ROOT, write_raster

HEIGHT, WIDTH, TILE = 23, 37, 10
DIM = 128


def roi_mask() -> np.ndarray:
    """23 x 37 ROI: the first tile (0_0_10_10) is all outside, plus a few zeros elsewhere."""
    mask = np.ones((HEIGHT, WIDTH), np.uint8)
    mask[:10, :10] = 0
    mask[15:18, 20:30] = 0
    mask[22, 36] = 0
    return mask


def tile_values(index: int, tile: TileId, mask: np.ndarray) -> np.ndarray:
    """(h, w, 128) float32: tile index + channel / 1000 inside the ROI, zero outside."""
    values = np.broadcast_to(index + np.arange(DIM, dtype=np.float32) / 1000, (*tile.shape, DIM))
    inside = mask[tile.y0:tile.y1, tile.x0:tile.x1, None] != 0
    return np.where(inside, values, 0).astype(np.float32)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder: roi.tiff, retiled_d_pixel/<tile>/ and representation_retiled/<tile>.npy.

    Tiles without any ROI pixel are not written (as preprocessing does).
    """
    mask = roi_mask()
    write_raster(tmp_path / "roi.tiff", mask)
    reps = tmp_path / "representation_retiled"
    reps.mkdir()
    for index, tile in enumerate(tile_layout(HEIGHT, WIDTH, TILE)):
        if not mask[tile.y0:tile.y1, tile.x0:tile.x1].any():
            continue
        (tmp_path / "retiled_d_pixel" / tile.name).mkdir(parents=True)
        np.save(reps / f"{tile.name}.npy", tile_values(index, tile, mask))
    return tmp_path


def expected_mosaic() -> np.ndarray:
    mask = roi_mask()
    out = np.zeros((HEIGHT, WIDTH, DIM), np.float32)
    for index, tile in enumerate(tile_layout(HEIGHT, WIDTH, TILE)):
        out[tile.y0:tile.y1, tile.x0:tile.x1] = tile_values(index, tile, mask)
    return out


def cli(run_dir: Path, *extra: str) -> int:
    return stitcher.main(["--representation-dir", str(run_dir / "representation_retiled"),
                          "--roi", str(run_dir / "roi.tiff"), "-q", *extra])


def test_layout_has_clamped_edge_tiles() -> None:
    tiles = tile_layout(HEIGHT, WIDTH, TILE)
    assert len(tiles) == 12
    assert tiles[-1] == TileId(30, 20, 37, 23)


def test_stitch_equals_mosaic(run_dir: Path) -> None:
    out = run_dir / "out.npy"
    summary = stitcher.stitch(run_dir / "representation_retiled", open_roi(run_dir / "roi.tiff"), out)
    assert summary == stitcher.StitchSummary(tiles=11, height=HEIGHT, width=WIDTH,
                                             covered_pixels=HEIGHT * WIDTH - 100,
                                             uncovered_roi_pixels=0, path=out)
    result = np.load(out)
    assert result.dtype == np.float32 and result.shape == (HEIGHT, WIDTH, DIM)
    np.testing.assert_array_equal(result, expected_mosaic())
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".tmp-")] == []


def test_cli_defaults_and_aliases(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = stitcher.main(["--representation_retiled_path", str(run_dir / "representation_retiled"),
                          "--downstream_tiff", str(run_dir / "roi.tiff"),
                          "--d_pixel_retiled_path", str(run_dir / "retiled_d_pixel"), "-q"])
    assert code == 0
    out = run_dir / "stitched_representation.npy"
    assert capsys.readouterr().out.strip() == str(out)
    np.testing.assert_array_equal(np.load(out), expected_mosaic())
    assert (run_dir / "logs" / "stitch.log").is_file()


def test_out_dir_and_name(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(run_dir, "--out-dir", str(tmp_path / "results"), "--out-name", "emb.npy") == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "results" / "emb.npy")
    assert np.load(tmp_path / "results" / "emb.npy", mmap_mode="r").shape == (HEIGHT, WIDTH, DIM)


def test_missing_tile_with_tiles_dir(run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (run_dir / "representation_retiled" / "10_10_20_20.npy").unlink()
    (run_dir / "representation_retiled" / "30_20_37_23.npy").unlink()
    assert cli(run_dir, "--tiles-dir", str(run_dir / "retiled_d_pixel")) == 2
    assert "2 of 11 tile(s) have no representation" in caplog.text
    assert "10_10_20_20, 30_20_37_23" in caplog.text
    assert not (run_dir / "stitched_representation.npy").exists()


def test_missing_tile_without_tiles_dir_warns(run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (run_dir / "representation_retiled" / "10_10_20_20.npy").unlink()
    summary = stitcher.stitch(run_dir / "representation_retiled", run_dir / "roi.tiff", run_dir / "o.npy")
    assert summary.tiles == 10 and summary.uncovered_roi_pixels == 100
    assert "100 of" in caplog.text and "covered by no tile" in caplog.text
    expected = expected_mosaic()
    expected[10:20, 10:20] = 0
    np.testing.assert_array_equal(np.load(run_dir / "o.npy"), expected)


def _wrong_shape(path: Path) -> None:
    np.save(path, np.zeros((10, 10, 64), np.float32))


def _wrong_dtype(path: Path) -> None:
    np.save(path, np.zeros((10, 10, DIM), np.float64))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"not an npy file")


@pytest.mark.parametrize(("damage", "phrase"), [
    (_wrong_shape, "shape (10, 10, 64), expected (10, 10, 128)"),
    (_wrong_dtype, "dtype float64, expected float32"),
    (_truncated, "not a readable .npy"),
    (_garbage, "not a readable .npy"),
])
def test_bad_tile_file(run_dir: Path, caplog: pytest.LogCaptureFixture, damage: object, phrase: str) -> None:
    path = run_dir / "representation_retiled" / "10_10_20_20.npy"
    damage(path)  # type: ignore[operator]
    assert cli(run_dir) == 2
    assert str(path) in caplog.text and phrase in caplog.text
    assert not (run_dir / "stitched_representation.npy").exists()
    assert not any(p.name.startswith(".tmp-") for p in run_dir.iterdir())


@pytest.mark.parametrize(("name", "phrase"), [
    ("tile_a.npy", "is not a tile name"),
    ("30_20_40_23.npy", "but the ROI is 37 x 23 px"),
])
def test_bad_tile_name(run_dir: Path, name: str, phrase: str) -> None:
    np.save(run_dir / "representation_retiled" / name, np.zeros((3, 10, DIM), np.float32))
    with pytest.raises(TileFormatError, match=phrase) as info:
        stitcher.stitch(run_dir / "representation_retiled", run_dir / "roi.tiff", run_dir / "o.npy")
    assert name in str(info.value)


def test_overlapping_tiles(run_dir: Path) -> None:
    np.save(run_dir / "representation_retiled" / "15_15_20_20.npy", np.zeros((5, 5, DIM), np.float32))
    with pytest.raises(TileFormatError, match="10_10_20_20 and 15_15_20_20 overlap"):
        stitcher.stitch(run_dir / "representation_retiled", run_dir / "roi.tiff", run_dir / "o.npy")


def test_empty_representation_dir(tmp_path: Path) -> None:
    write_raster(tmp_path / "roi.tiff", roi_mask())
    (tmp_path / "reps").mkdir()
    with pytest.raises(TileFormatError, match="holds no tile"):
        stitcher.stitch(tmp_path / "reps", tmp_path / "roi.tiff", tmp_path / "o.npy")


def test_rerun_keeps_a_current_map_and_refuses_one_of_other_tiles(run_dir: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    assert cli(run_dir) == 0
    out = run_dir / "stitched_representation.npy"
    before = out.stat().st_mtime_ns
    record = json.loads((run_dir / "stitched_representation.json").read_text())
    assert record["shape"] == [23, 37, 128] and record["bytes"] == out.stat().st_size
    assert cli(run_dir) == 0  # same tiles: nothing to do
    assert "nothing to do" in caplog.text
    assert out.stat().st_mtime_ns == before
    tile = next((run_dir / "representation_retiled").glob("*.npy"))
    np.save(tile, np.load(tile) + 1)  # a re-embedded tile: the map is stale
    caplog.clear()
    assert cli(run_dir) == 2
    assert "already exists; pass --overwrite" in caplog.text and "made from other tiles" in caplog.text
    assert out.stat().st_mtime_ns == before
    with pytest.raises(BTFMError, match="already exists"):
        stitcher.stitch(run_dir / "representation_retiled", run_dir / "roi.tiff", out)
    assert cli(run_dir, "--overwrite") == 0
    assert out.stat().st_mtime_ns != before


def test_rerun_removes_the_leftovers_of_a_killed_stitch(run_dir: Path) -> None:
    leftover = run_dir / ".tmp-stitched_representation.npy.4242.deadbeef"
    leftover.write_bytes(b"half written")
    other = run_dir / ".tmp-emb.tif.4242.deadbeef"  # not stitch's: left alone
    other.write_bytes(b"")
    assert cli(run_dir) == 0
    assert not leftover.exists() and other.exists()
    np.testing.assert_array_equal(np.load(run_dir / "stitched_representation.npy"), expected_mosaic())


def test_ignores_temporaries_and_other_files(run_dir: Path) -> None:
    reps = run_dir / "representation_retiled"
    (reps / ".tmp-0_0_10_10.npy.123.abcdef12").write_bytes(b"half written")
    (reps / "notes.txt").write_text("not a tile")
    (reps / "logs").mkdir()
    summary = stitcher.stitch(reps, run_dir / "roi.tiff", run_dir / "o.npy")
    assert summary.tiles == 11
    np.testing.assert_array_equal(np.load(run_dir / "o.npy"), expected_mosaic())


def test_small_copy_steps(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stitcher, "_COPY_BYTES", 1)  # one row per copy step
    stitcher.stitch(run_dir / "representation_retiled", run_dir / "roi.tiff", run_dir / "o.npy")
    np.testing.assert_array_equal(np.load(run_dir / "o.npy"), expected_mosaic())


def test_runs_as_a_script(run_dir: Path) -> None:
    script = REPO_ROOT / "btfm_infer" / "stitch_tiled_representation.py"
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert "--representation-dir" in help_text and "examples:" in help_text
    done = subprocess.run([sys.executable, str(script), "--representation-dir",
                           str(run_dir / "representation_retiled"), "--roi", str(run_dir / "roi.tiff")],
                          capture_output=True, text=True, cwd=run_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(run_dir / "stitched_representation.npy")
    np.testing.assert_array_equal(np.load(run_dir / "stitched_representation.npy"), expected_mosaic())
