"""Input checks that are not "bad input -> exit 2": what counts as outside, warnings and reported gaps.

The bad-input table (exit code 2 and a one-line message) is tests/test_bad_inputs.py.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from btfm_core.tiles import read_tile
from btfm_infer import infer_all_tiles
from btfm_preprocessing import pipeline
from tests.conftest import DEMO_DIR, write_raster
from tests.test_end_to_end import crop_roi

CATALOG = ["--source", "local", "--catalog", str(DEMO_DIR / "catalog.json")]
GOOD_DATES = ["2020-11-01", "2021-10-31", "2020-11-01", "2021-10-31"]


def run_pipeline(roi: Path, dates: list[str], *extra: str) -> int:
    return pipeline.main([str(roi), *dates, *CATALOG, "--tile-size", "32", "-q", *extra])


def run_infer(tiles: Path, out: Path, *extra: str) -> int:
    return infer_all_tiles.main(["--tiles-dir", str(tiles), "--output-dir", str(out), "-q", *extra])


@pytest.fixture
def good_roi(tmp_path: Path) -> Path:
    return crop_roi(tmp_path / "roi.tiff", width=20, height=20)


@pytest.fixture(scope="module")
def tiles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("tiles")
    roi = crop_roi(run / "roi.tiff", width=20, height=20)
    assert run_pipeline(roi, GOOD_DATES) == 0
    return run / "retiled_d_pixel"


@pytest.mark.parametrize("outside", [-9999.0, np.nan], ids=["nodata", "nan"])
def test_roi_nodata_is_outside(tmp_path: Path, caplog: pytest.LogCaptureFixture, outside: float) -> None:
    """Issue 14: a float32 ROI with nodata (or NaN) outside is not its whole bounding rectangle."""
    crop = crop_roi(tmp_path / "crop.tiff", width=20, height=20)
    with rasterio.open(crop) as src:
        inside, profile = src.read(1) != 0, src.profile
    inside[:3] = False  # some outside pixels in the crop
    data = np.where(inside, np.float32(1), np.float32(outside)).astype(np.float32)
    path = write_raster(tmp_path / "roi.tiff", data, crs=profile["crs"].to_string(), transform=profile["transform"],
                        nodata=outside)
    with caplog.at_level(logging.INFO):
        assert run_pipeline(path, GOOD_DATES) == 0
    assert f"{inside.size - inside.sum()} pixel(s) treated as outside because they are nodata" in caplog.text
    assert f"{inside.sum()} px inside" in caplog.text
    tile = read_tile(tmp_path / "retiled_d_pixel" / "0_0_20_20")
    np.testing.assert_array_equal(tile.roi, inside.astype(np.uint8))


def test_large_tile_size_warns_before_any_work(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the warning comes from argument checks: before the (missing) ROI is even opened
    code = pipeline.main([str(tmp_path / "nope.tiff"), *GOOD_DATES, *CATALOG, "--tile-size", "5000"])
    assert code == 2
    assert "does not exist" in caplog.text
    assert ("--tile-size 5000: one tile of 5000 x 5000 px takes about 52.5 GB per 100 Sentinel-2 dates"
            in caplog.text)


def test_non_finite_embedding_is_not_renamed_into_place(tiles_dir: Path, tmp_path: Path) -> None:
    from btfm_core.errors import InputDataError
    from btfm_infer.checkpoint import load_model
    from btfm_infer.tile_inference import InferenceOptions, infer_tile

    model = load_model(infer_all_tiles.DEFAULT_CHECKPOINT)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.startswith("dim_reducer")).fill_(float("nan"))
    out = tmp_path / "0_0_20_20.npy"
    with pytest.raises(InputDataError, match=r"tile 0_0_20_20: \d+ embedding value\(s\) .* are NaN or infinite"):
        infer_tile(model, tiles_dir / "0_0_20_20", out, InferenceOptions())
    assert list(tmp_path.iterdir()) == []  # neither the tile nor a temporary


def test_tiles_without_valid_s2_are_reported(tiles_dir: Path, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    tiles = tmp_path / "retiled_d_pixel"
    shutil.copytree(tiles_dir, tiles)
    masks = np.load(tiles / "0_0_20_20" / "masks.npy")
    np.save(tiles / "0_0_20_20" / "masks.npy", np.zeros_like(masks))  # every date cloudy
    assert run_infer(tiles, tmp_path / "out") == 0
    roi_px = int(read_tile(tiles / "0_0_20_20").roi.sum())
    assert f"1 tile(s) ({roi_px} ROI px; 0_0_20_20) have no valid Sentinel-2 observation" in caplog.text


def test_cloudy_period_is_reported_in_the_summary(good_roi: Path, caplog: pytest.LogCaptureFixture) -> None:
    # December and January of the demo are all no data in S2 (kept with --max-cloud 100)
    dates = ["2020-12-01", "2021-01-31", "2020-12-01", "2021-01-31"]
    with caplog.at_level(logging.INFO):
        assert run_pipeline(good_roi, dates, "--max-cloud", "100") == 0
    assert "1 tile(s) (400 ROI px) have no valid Sentinel-2 observation at any date" in caplog.text
    assert "tiles with no valid S2 observation at any date: 1 (400 ROI px)" in caplog.text
    caplog.clear()
    assert run_infer(good_roi.parent / "retiled_d_pixel", good_roi.parent / "out") == 0
    assert "1 tile(s) (400 ROI px; 0_0_20_20) have no valid Sentinel-2 observation" in caplog.text
