"""Bad input at the command line: a clear message, exit code 2, nothing half-written."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine

from btfm_infer import infer_all_tiles
from btfm_preprocessing import pipeline
from tests.conftest import DEMO_DIR, write_raster
from tests.test_end_to_end import crop_roi

CATALOG = ["--source", "local", "--catalog", str(DEMO_DIR / "catalog.json")]
GOOD_DATES = ["2020-11-01", "2021-10-31", "2020-11-01", "2021-10-31"]


def run_pipeline(roi: Path, dates: list[str], *extra: str) -> int:
    return pipeline.main([str(roi), *dates, *CATALOG, "--tile-size", "20", "-q", *extra])


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
    assert pipeline.main([str(roi), *GOOD_DATES, *CATALOG, "--tile-size", "20", "-q"]) == 0
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
