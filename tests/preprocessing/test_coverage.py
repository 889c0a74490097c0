"""btfm-coverage: per-pixel observation counts of a run's tiles, on synthetic tiles and the demo run."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from btfm_core.grid import Grid
from btfm_core.run import RunLayout, RunMetadata
from btfm_core.tiles import TileId, TileWriter, list_tiles, read_tile
from btfm_preprocessing import coverage, pipeline
from tests.conftest import DEMO_DIR, write_raster
from tests.test_end_to_end import DATES, crop_roi

TRANSFORM = Affine(10, 0, 664000, 0, -10, 5612000)
HEIGHT, WIDTH, TILE = 20, 40, 16


def _read(path: Path) -> tuple[np.ndarray, tuple[str, ...], float]:
    with rasterio.open(path) as src:
        return src.read(), src.descriptions, src.nodata


def _expected_from_tiles(tiles_dir: Path, shape: tuple[int, int]) -> np.ndarray:
    """Counts computed here with plain numpy sums over every tile's arrays; 65535 elsewhere."""
    expected = np.full((3, *shape), 65535, np.int64)
    for tile in list_tiles(tiles_dir):
        arrays = read_tile(tiles_dir / tile.name)
        window = np.s_[tile.y0:tile.y1, tile.x0:tile.x1]
        counts = np.stack([np.asarray(arrays.masks).astype(np.int64).sum(axis=0),
                           (np.asarray(arrays.sar_ascending) != 0).any(axis=-1).sum(axis=0),
                           (np.asarray(arrays.sar_descending) != 0).any(axis=-1).sum(axis=0)])
        counts[:, arrays.roi == 0] = 65535
        expected[(slice(None), *window)] = counts
    return expected


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20 x 40 px ROI in 16 px tiles with random masks and S1 gaps; tile 16_0_32_16 is missing."""
    run = tmp_path_factory.mktemp("coverage_run")
    mask = np.ones((HEIGHT, WIDTH), np.uint8)
    mask[:4, :6] = 0
    write_raster(run / "roi.tiff", mask, transform=TRANSFORM)
    grid = Grid("EPSG:32631", TRANSFORM, HEIGHT, WIDTH)
    tiles_dir = run / "retiled_d_pixel"
    tiles_dir.mkdir()
    rng = np.random.default_rng(5)
    for index, tile in enumerate(TileId(x0, y0, min(x0 + TILE, WIDTH), min(y0 + TILE, HEIGHT))
                                 for y0 in range(0, HEIGHT, TILE) for x0 in range(0, WIDTH, TILE)):
        if tile.name == "16_0_32_16":
            continue
        n_s2, n_asc, n_desc = 7 + index, 5, 0 if index == 2 else 4
        with TileWriter(tiles_dir, tile, tile.grid(grid), mask[tile.y0:tile.y1, tile.x0:tile.x1]) as writer:
            writer.allocate_bands(n_s2)[:] = 100
            writer.allocate_masks(n_s2)[:] = rng.random((n_s2, *tile.shape)) < 0.6
            writer.write_array("doys.npy", np.arange(1, n_s2 + 1) * 10)
            for direction, n in (("ascending", n_asc), ("descending", n_desc)):
                sar = writer.allocate_sar(direction, n)
                sar[:] = (rng.random((n, *tile.shape, 2)) < 0.7) * 9000  # VV or VH (or both) may be 0
                writer.write_array(f"sar_{direction}_doy.npy", np.arange(n) + 3)
    RunMetadata(tile_size=TILE, roi=str(run / "roi.tiff")).write(RunLayout(run).run_metadata_file)
    return run


def test_counts_equal_numpy_sums_over_the_tiles(synthetic_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert coverage.main([str(synthetic_run), "-q"]) == 0
    out = [Path(line) for line in capsys.readouterr().out.split()]
    tif = synthetic_run / "coverage.tif"
    assert out == [tif, *(synthetic_run / f"coverage_{k}.png" for k in ("s2", "s1_ascending", "s1_descending"))]
    counts, descriptions, nodata = _read(tif)
    assert counts.dtype == np.uint16 and nodata == 65535
    assert descriptions[0].startswith("valid S2") and "ascending" in descriptions[1] and "descending" in descriptions[2]
    expected = _expected_from_tiles(synthetic_run / "retiled_d_pixel", (HEIGHT, WIDTH))
    np.testing.assert_array_equal(counts, expected)
    assert (counts[:, :16, 16:32] == 65535).all()  # the missing tile
    assert (counts[:, :4, :6] == 65535).all()  # outside the ROI
    assert len(np.unique(counts[0][counts[0] != 65535])) > 3  # real variation, not a constant
    with rasterio.open(synthetic_run / "roi.tiff") as roi, rasterio.open(tif) as src:
        assert src.crs == roi.crs and src.transform == roi.transform


def test_pngs_are_transparent_at_nodata(synthetic_run: Path) -> None:
    if not (synthetic_run / "coverage.tif").exists():
        assert coverage.main([str(synthetic_run), "-q"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(synthetic_run / "coverage_s2.png") as src:
            rgba = src.read()
    counts = _read(synthetic_run / "coverage.tif")[0][0]
    assert rgba.shape == (4, HEIGHT, WIDTH)
    assert (rgba[3][counts == 65535] == 0).all() and (rgba[3][counts != 65535] == 255).all()
    brightest = counts == counts[counts != 65535].max()
    assert rgba[:3, brightest].sum(axis=0).min() > rgba[:3, counts == counts.min()].sum(axis=0).max()


def test_refuses_to_overwrite_and_bad_folders(synthetic_run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "maps"
    assert coverage.main([str(synthetic_run), "--out-dir", str(out_dir), "-q"]) == 0
    capsys.readouterr()
    assert coverage.main([str(synthetic_run), "--out-dir", str(out_dir), "-q"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert coverage.main([str(synthetic_run), "--out-dir", str(out_dir), "--overwrite", "-q"]) == 0
    capsys.readouterr()
    assert coverage.main([str(tmp_path), "-q"]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert coverage.main([str(tmp_path / "nope"), "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real preprocessing of the demo catalog: counts equal the sums over its tiles."""
    roi = crop_roi(tmp_path / "roi.tiff")
    assert pipeline.main([str(roi), *DATES, "--source", "local", "--catalog", str(DEMO_DIR / "catalog.json"),
                          "--tile-size", "32", "-q"]) == 0
    assert coverage.main([str(tmp_path), "-q"]) == 0
    counts = _read(tmp_path / "coverage.tif")[0]
    np.testing.assert_array_equal(counts, _expected_from_tiles(tmp_path / "retiled_d_pixel", (40, 40)))
    assert counts[1][counts[1] != 65535].min() > 0  # the demo has S1 ascending scenes
