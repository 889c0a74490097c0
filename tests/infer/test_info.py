"""btfm-info on a real tiny run folder (the demo catalog) and on each kind of output file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from btfm_infer import convert_npy2tiff, info
from tests.test_end_to_end import crop_roi, run_chain


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROI -> tiles -> embeddings -> float32 COG + PNG + STAC, then an int8 COG and a Zarr store."""
    folder = tmp_path_factory.mktemp("info_run")
    crop_roi(folder / "roi.tiff")
    run_chain(folder)
    assert convert_npy2tiff.main(["--npy", str(folder / "stitched_representation.npy"), "--ref-tiff",
                                  str(folder / "roi.tiff"), "--out", str(folder / "emb8.tif"), "--dtype", "int8",
                                  "--zarr", str(folder / "emb8.zarr"), "--no-png", "--no-stac", "-q"]) == 0
    return folder


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert info.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_run_folder(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = json.loads((run_dir / "representation_retiled" / "inference.json").read_text())
    summary = _json([str(run_dir)], capsys)
    assert summary["kind"] == "run"
    assert summary["roi"]["width"] == 40 and summary["roi"]["height"] == 40 and summary["roi"]["crs"] == "EPSG:32631"
    assert summary["roi"]["pixel_size"] == [10.0, 10.0] and summary["roi"]["inside_pixels"] > 0
    prep = summary["preprocessing"]
    assert prep["period"] == {"s2": "2020-11-01..2021-10-31", "s1": "2020-11-01..2021-10-31"}
    assert prep["s2_source"]["source"] == "local" and prep["backscatter"]["recorded"] == ["sigma0"]
    tiles = summary["tiles"]
    assert tiles["tile_size"] == 32 and tiles["expected"] == 4
    assert tiles["preprocessed"] == {"done": 4, "missing": [], "unexpected": []}
    assert tiles["embedded"] == {"done": 4, "missing": []}
    inference = summary["inference"]
    assert inference["family"] == "v1.0" and inference["checkpoint"] == "btfm_demo.pt"
    assert inference["sha256"] == record["model"]["sha256"] and inference["seed"] == 0
    assert inference["precision"] == "fp32"
    assert summary["outputs"]["stitched"]["shape"] == [40, 40, 128]
    names = {e["name"]: e for e in summary["outputs"]["exports"]}
    assert names["emb8.tif"]["dtype"] == "int8" and names["stitched_representation.tif"]["bands"] == 128
    assert {"emb8.zarr", "stitched_representation.png", "stitched_representation.stac.json"} <= set(names)
    assert info.main([str(run_dir)]) == 0
    text = capsys.readouterr().out
    for fact in ("EPSG:32631", "btfm_demo.pt", record["model"]["sha256"], "2020-11-01..2021-10-31", "sigma0",
                 "inside_pixels: ", "precision: fp32"):
        assert fact in text


def test_run_folder_lists_missing_tiles(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.zarr", "*.tif", "*.png"))
    shutil.rmtree(copy / "retiled_d_pixel" / "32_0_40_32")
    (copy / "representation_retiled" / "0_32_32_40.npy").unlink()
    (copy / "representation_retiled" / "32_0_40_32.npy").unlink()
    tiles = _json([str(copy / "retiled_d_pixel")], capsys)["tiles"]  # a run's subfolder names the run
    assert tiles["preprocessed"]["done"] == 3 and tiles["preprocessed"]["missing"] == ["32_0_40_32"]
    assert tiles["embedded"]["missing"] == ["32_0_40_32", "0_32_32_40"]


def test_float32_geotiff(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = _json([str(run_dir / "stitched_representation.tif")], capsys)
    assert summary["kind"] == "geotiff" and summary["dtype"] == "float32" and summary["bands"] == 128
    assert summary["band_names"] == "A00..A127" and summary["nodata"] == "nan" and summary["layout"] == "COG"
    assert summary["grid"]["crs"] == "EPSG:32631" and summary["grid"]["width"] == 40
    assert summary["provenance"]["BTFM_CHECKPOINT"] == "btfm_demo.pt"
    assert summary["provenance"]["BTFM_SOURCES"]["source"] == "local"


def test_int8_geotiff_and_zarr(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tif = _json([str(run_dir / "emb8.tif")], capsys)
    assert tif["dtype"] == "int8" and tif["nodata"] == -128 and tif["scales"] == "emb8_scales.tif"
    assert float(tif["provenance"]["BTFM_INT8_COSINE_MEAN"]) > 0.99
    store = _json([str(run_dir / "emb8.zarr")], capsys)
    assert store["kind"] == "zarr" and store["dtype"] == "int8" and store["nodata"] == -128
    assert store["arrays"]["embedding"]["shape"] == [40, 40, 128] and store["arrays"]["scales"]["dtype"] == "float32"
    assert store["grid"] == tif["grid"] and store["provenance"]["model"]["name"] == "btfm_demo.pt"


def test_npy_and_stac_item(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    npy = _json([str(run_dir / "stitched_representation.npy")], capsys)
    assert npy["kind"] == "npy" and npy["shape"] == [40, 40, 128] and npy["record"] == "stitched_representation.json"
    assert npy["grid"]["crs"] == "EPSG:32631" and npy["roi"] == "roi.tiff"
    assert _json([str(run_dir / "stitched_representation.json")], capsys)["kind"] == "npy"  # its record names it
    item = _json([str(run_dir / "stitched_representation.stac.json")], capsys)
    assert item["kind"] == "stac-item" and item["start"].startswith("2020-11-01")
    assert item["assets"]["embedding"]["present"] is True
    assert item["assets"]["model"]["checksum"].endswith(_json([str(run_dir)], capsys)["inference"]["sha256"])
    assert item["btfm:model"]["family"] == "v1.0"


def test_the_inference_record_is_read_where_inference_writes_it(run_dir: Path) -> None:
    from btfm_core.run import RunLayout

    assert RunLayout(run_dir).inference_record_file.is_file()
    assert info.inference_summary(RunLayout(run_dir).inference_record_file)["checkpoint"]


@pytest.mark.parametrize(("name", "phrase"), [
    ("nope", "does not exist"),
    ("logs", "is not a run folder"),
    ("retiled_d_pixel/run_metadata.json", "is not a STAC item"),
    ("logs/preprocess.log", "unknown file type .log"),
])
def test_bad_input_is_one_line(run_dir: Path, name: str, phrase: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert info.main([str(run_dir / name)]) == 2
    err = capsys.readouterr().err
    assert phrase in err and len(err.strip().splitlines()) == 1
