"""Bad input at the command line: a clear message, exit code 2, nothing half-written."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from btfm_core.tiles import read_tile
from btfm_infer import infer_all_tiles
from btfm_preprocessing import pipeline
from tests.conftest import DEMO_DIR, write_raster
from tests.test_end_to_end import crop_roi

CATALOG = ["--source", "local", "--catalog", str(DEMO_DIR / "catalog.json")]
GOOD_DATES = ["2020-11-01", "2021-10-31", "2020-11-01", "2021-10-31"]


def run_pipeline(roi: Path, dates: list[str], *extra: str) -> int:
    return pipeline.main([str(roi), *dates, *CATALOG, "--tile-size", "32", "-q", *extra])


def assert_fails(code: int, caplog: pytest.LogCaptureFixture, *phrases: str) -> None:
    assert code == 2
    text = caplog.text
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} not in {text!r}"


def no_outputs(folder: Path) -> bool:
    return not (folder / "retiled_d_pixel").exists() or not any((folder / "retiled_d_pixel").iterdir())


@pytest.fixture
def good_roi(tmp_path: Path) -> Path:
    return crop_roi(tmp_path / "roi.tiff", width=20, height=20)


def test_missing_roi(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert_fails(run_pipeline(tmp_path / "nope.tiff", GOOD_DATES), caplog, "does not exist")
    assert no_outputs(tmp_path)


def test_roi_not_a_geotiff(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "roi.tiff"
    path.write_text("hello")
    assert_fails(run_pipeline(path, GOOD_DATES), caplog, "not a raster")


def test_roi_geographic(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_raster(tmp_path / "roi.tiff", np.ones((5, 5), np.uint8), crs="EPSG:4326",
                        transform=Affine(0.0001, 0, 4.5, 0, -0.0001, 50.6))
    assert_fails(run_pipeline(path, GOOD_DATES), caplog, "geographic CRS", "UTM")
    assert no_outputs(tmp_path)


def test_roi_20m(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_raster(tmp_path / "roi.tiff", np.ones((5, 5), np.uint8),
                        transform=Affine(20, 0, 664000, 0, -20, 5612000))
    assert_fails(run_pipeline(path, GOOD_DATES), caplog, "expected 10 x 10 m")


def test_roi_all_zero(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_raster(tmp_path / "roi.tiff", np.zeros((5, 5), np.uint8))
    assert_fails(run_pipeline(path, GOOD_DATES), caplog, "no pixel inside")


def test_roi_multi_band(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_raster(tmp_path / "roi.tiff", np.ones((2, 5, 5), np.uint8))
    assert_fails(run_pipeline(path, GOOD_DATES), caplog, "has 2 bands")


def test_end_before_start(good_roi: Path, caplog: pytest.LogCaptureFixture) -> None:
    dates = ["2021-10-31", "2020-11-01", "2020-11-01", "2021-10-31"]
    assert_fails(run_pipeline(good_roi, dates), caplog, "before its start")
    assert no_outputs(good_roi.parent)


def test_date_in_future(good_roi: Path, caplog: pytest.LogCaptureFixture) -> None:
    future = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    dates = ["2020-11-01", "2021-10-31", "2020-11-01", future]
    assert_fails(run_pipeline(good_roi, dates), caplog, "in the future")


def test_no_scenes_for_range(good_roi: Path, caplog: pytest.LogCaptureFixture) -> None:
    dates = ["2019-01-01", "2019-06-30", "2019-01-01", "2019-06-30"]
    assert_fails(run_pipeline(good_roi, dates), caplog, "no Sentinel-2 scene found", "check the dates")
    assert no_outputs(good_roi.parent)


def test_unsupported_downsample(good_roi: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert_fails(run_pipeline(good_roi, [*GOOD_DATES, "2"]), caplog, "DOWNSAMPLE=2 is not supported")


def test_data_dir_not_writable(good_roi: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = run_pipeline(good_roi, GOOD_DATES, "--data-dir", str(blocker / "run"))
    assert_fails(code, caplog, "cannot write to the run folder")


@pytest.fixture(scope="module")
def tiles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("tiles")
    roi = crop_roi(run / "roi.tiff", width=20, height=20)
    assert pipeline.main([str(roi), *GOOD_DATES, *CATALOG, "--tile-size", "32", "-q"]) == 0
    return run / "retiled_d_pixel"


def run_infer(tiles: Path, out: Path, *extra: str) -> int:
    return infer_all_tiles.main(["--tiles-dir", str(tiles), "--output-dir", str(out), "-q", *extra])


def test_missing_tiles_dir(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert_fails(run_infer(tmp_path / "nope", tmp_path / "out"), caplog, "does not exist")


def test_empty_tiles_dir(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "tiles").mkdir()
    assert_fails(run_infer(tmp_path / "tiles", tmp_path / "out"), caplog, "holds no tile")


@pytest.mark.parametrize("damage", ["missing", "dtype", "shape"])
def test_broken_tile(tiles_dir: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    tiles = tmp_path / "retiled_d_pixel"
    shutil.copytree(tiles_dir, tiles)
    folder = tiles / "0_0_20_20"
    if damage == "missing":
        (folder / "masks.npy").unlink()
        phrase = "missing masks.npy"
    elif damage == "dtype":
        np.save(folder / "doys.npy", np.load(folder / "doys.npy").astype(np.float64))
        phrase = "doys.npy: dtype float64, expected uint16"
    else:
        np.save(folder / "masks.npy", np.load(folder / "masks.npy")[:, :10])
        phrase = "masks.npy: shape"
    assert_fails(run_infer(tiles, tmp_path / "out"), caplog, phrase)
    assert not list((tmp_path / "out").glob("*.npy"))


def test_checkpoint_missing(tiles_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = run_infer(tiles_dir, tmp_path / "out", "--checkpoint", str(tmp_path / "none.pt"))
    assert_fails(code, caplog, "none.pt")
    assert not list((tmp_path / "out").glob("*.npy"))


def test_checkpoint_corrupt(tiles_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    assert_fails(run_infer(tiles_dir, tmp_path / "out", "--checkpoint", str(bad)), caplog, "bad.pt")


def test_checkpoint_not_btfm(tiles_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    other = tmp_path / "resnet.pt"
    torch.save({"model_state_dict": {"conv1.weight": torch.zeros(3, 3)}}, other)
    code = run_infer(tiles_dir, tmp_path / "out", "--checkpoint", str(other))
    assert_fails(code, caplog, "not a BTFM checkpoint")


def test_output_dir_not_writable(tiles_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert_fails(run_infer(tiles_dir, blocker / "out"), caplog, "cannot write to the output folder")


def test_roi_in_feet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_raster(tmp_path / "roi.tiff", np.ones((5, 5), np.uint8), crs="EPSG:2263",
                        transform=Affine(10, 0, 980000, 0, -10, 200000))
    assert_fails(run_pipeline(path, GOOD_DATES), caplog, "US survey foot", "not the metre", "UTM")
    assert no_outputs(tmp_path)


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


@pytest.mark.parametrize("value", ["150", "-1", "nan"])
def test_max_cloud_out_of_range(good_roi: Path, caplog: pytest.LogCaptureFixture, value: str) -> None:
    assert_fails(run_pipeline(good_roi, GOOD_DATES, "--max-cloud", value), caplog, "--max-cloud must lie in 0-100")
    assert no_outputs(good_roi.parent)


@pytest.mark.parametrize("size", ["1", "31", "0", "-5"])
def test_tile_size_too_small(good_roi: Path, caplog: pytest.LogCaptureFixture, size: str) -> None:
    code = pipeline.main([str(good_roi), *GOOD_DATES, *CATALOG, "-q", "--tile-size", size])
    assert_fails(code, caplog, f"--tile-size must be at least 32 px, got {size}")
    assert no_outputs(good_roi.parent)


def test_large_tile_size_warns_before_any_work(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the warning comes from argument checks: before the (missing) ROI is even opened
    code = pipeline.main([str(tmp_path / "nope.tiff"), *GOOD_DATES, *CATALOG, "--tile-size", "5000"])
    assert_fails(code, caplog, "does not exist", "--tile-size 5000: one tile of 5000 x 5000 px takes about 52.5 GB "
                 "per 100 Sentinel-2 dates")


def test_checkpoint_with_nan_weights(tiles_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    obj = torch.load(infer_all_tiles.DEFAULT_CHECKPOINT, weights_only=True)
    name = next(k for k, v in obj["model_state_dict"].items() if v.is_floating_point() and v.numel() > 2)
    obj["model_state_dict"][name].view(-1)[:2] = torch.tensor([float("nan"), float("inf")])
    torch.save(obj, tmp_path / "nan.pt")
    code = run_infer(tiles_dir, tmp_path / "out", "--checkpoint", str(tmp_path / "nan.pt"))
    assert_fails(code, caplog, f"tensor {name} holds 2 NaN or infinite value(s)", "nan.pt")
    assert not (tmp_path / "out").exists()


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
