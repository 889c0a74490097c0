"""``python -m btfm_eval`` end to end on the real fixtures: tables, a map, and errors that say what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from btfm_eval.__main__ import main
from btfm_eval.tables import load_presto
from btfm_train.data import group_split
from tests.eval.conftest import FAST, FUEL, MAPPING, WORLDCEREAL
from tests.eval.test_maps import polygonise


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_worldcereal_table_classification(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "wc"
    code, stdout, _ = run(["table", "--table", str(WORLDCEREAL), "--class-mapping", str(MAPPING),
                           "--models", "logreg,rf", "--splits", "spatial,kfold", "--block-degrees", "0.05",
                           "--out", str(out), *FAST], capsys)
    assert code == 0
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("classification: embeddings+")
    assert "(3-fold spatial, n=60)" in lines[0] and lines[0].endswith(str(out / "report.md"))
    result = json.loads((out / "results.json").read_text())
    assert result["classes"] == ["grass_fodder_crops", "no_temporary_crop", "vegetables_fruits"]
    assert set(result["feature_sets"]) == {"embeddings", "untrained", "raw"}
    assert result["feature_sets"]["raw"] > 200  # per-date bands + seasonal statistics
    cell = result["cv"]["spatial"]["embeddings"]["logreg"]
    assert cell["n_folds"] == 3 and 0 <= cell["macro_f1"]["mean"] <= 1
    assert np.sum(cell["confusion"]) == 60  # every sample tested once
    assert set(result["sweep"]["raw"]["rf"]) == {"0.3"}
    report = (out / "report.md").read_text()
    assert "## spatial split" in report and "## Per-class F1" in report and "Training-fraction sweep" in report
    spatial = result["cv"]["spatial"]["embeddings"]
    best = max(spatial, key=lambda m: spatial[m]["macro_f1"]["mean"])
    for png in ("sweep.png", f"confusion_embeddings_{best}.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "spatial embeddings+" in (out / "eval.log").read_text()
    # a second run refuses to overwrite
    code, _, err = run(["table", "--table", str(WORLDCEREAL), "--class-mapping", str(MAPPING), "--out", str(out),
                        *FAST], capsys)
    assert code == 2 and "--overwrite" in err


def test_holdout_of_pretraining_keeps_only_held_out_samples(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    ids = pd.read_parquet(WORLDCEREAL)["sample_id"].unique()
    held = int(group_split(ids, 0.5).sum())
    code, _, _ = run(["table", "--table", str(WORLDCEREAL), "--class-mapping", str(MAPPING),
                           "--holdout-of-pretraining", "0.5", "--models", "logreg", "--splits", "kfold",
                           "--folds", "2", "--train-fractions", "", "--no-untrained", "--out", str(tmp_path),
                           "--no-progress", "-q"], capsys)
    assert code == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert 0 < result["n_samples"] <= held < len(ids)
    assert "held out of pre-training" in (tmp_path / "report.md").read_text()
    assert result["sweep"] == {} and not (tmp_path / "sweep.png").exists()


def test_presto_regression_with_bottom_third(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = load_presto(FUEL)
    assert samples.series.s2_bands.dtype == np.uint16 and samples.series.s1.dtype == np.int16
    assert (np.diff(samples.series.s2_doys.astype(int), axis=1) >= 0).all()
    code, stdout, _ = run(["table", "--table", str(FUEL), "--splits", "spatial,bottom-third", "--out", str(tmp_path),
                           *FAST], capsys)
    assert code == 0 and stdout.startswith("regression: embeddings+")
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["n_blocks"] == 12  # the sites
    assert result["cv"]["bottom-third"]["raw"]["ridge"]["n_folds"] == 1
    rf = result["cv"]["spatial"]["raw"]["rf"]
    assert rf["rmse"]["mean"] > 0 and np.isfinite(rf["r2"]["mean"])
    assert len(result["predictions"]["embeddings"]["ridge"]["y"]) == len(samples.series)
    assert (tmp_path / "scatter_raw_rf.png").is_file() or (tmp_path / "scatter_raw_ridge.png").is_file()


def test_map_with_raster_labels_and_tile_baselines(slovenia_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(["map", "--embeddings", str(slovenia_run / "stitched_representation.tif"),
                           "--labels", str(slovenia_run / "labels_lulc.tif"), "--label-names",
                           str(slovenia_run / "lulc_classes.json"), "--ignore-labels", "no data",
                           "--raw-features", str(slovenia_run / "retiled_d_pixel"), "--block-size", "8",
                           "--models", "logreg", "--out", str(tmp_path), *FAST], capsys)
    assert code == 0 and "(3-fold spatial" in stdout
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["feature_sets"]) == {"embeddings", "raw", "untrained"}
    assert "forest" in result["classes"] and "no data" not in result["classes"]
    assert result["n_blocks"] == 16


def test_map_with_vector_parcels(slovenia_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vector = polygonise(slovenia_run, tmp_path / "lulc.geojson", "EPSG:4326")
    code, stdout, _ = run(["map", "--embeddings", str(slovenia_run / "stitched_representation.npy"),
                           "--roi", str(slovenia_run / "roi.tiff"), "--labels", str(vector), "--label-column", "lulc",
                           "--ignore-labels", "0", "--aggregate", "parcel", "--block-size", "4", "--folds", "2",
                           "--models", "logreg", "--splits", "kfold", "--train-fractions", "", "--out",
                           str(tmp_path / "out"), "--no-progress", "-q"], capsys)
    assert code == 0, stdout
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["n_samples"] == result["n_groups"] < 100  # one sample per polygon
    assert any("aggregated" in note for note in result["notes"])
    assert any("no raw-band baseline" in note for note in result["notes"])


@pytest.mark.parametrize(("extra", "message"), [
    (["--label-column", "crop"], "has no column 'crop'"),
    (["--label-column", "lulc", "--folds", "400"], "lower --folds"),
    (["--label-column", "lulc", "--aggregate", "parcel", "--raw-features", "RAW"], "not on the embedding map's grid"),
])
def test_map_errors_say_what_to_fix(slovenia_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    extra: list[str], message: str) -> None:
    vector = polygonise(slovenia_run, tmp_path / "lulc.gpkg")
    raw = tmp_path / "raw.tif"
    with rasterio.open(raw, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32",
                       crs="EPSG:32633", transform=rasterio.Affine(10, 0, 0, 0, -10, 0)) as dst:
        dst.write(np.zeros((1, 8, 8), np.float32))
    extra = [str(raw) if e == "RAW" else e for e in extra]
    code, stdout, err = run(["map", "--embeddings", str(slovenia_run / "stitched_representation.tif"), "--labels",
                             str(vector), "--out", str(tmp_path / "out"), *extra, "--no-progress"], capsys)
    assert code == 2 and stdout == ""
    assert message in err


def test_help_and_missing_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "prepare-eolearn" in capsys.readouterr().out
    assert main([]) == 1


@pytest.mark.parametrize("checkpoint", ["v2_student/student_v2_student.pt", "v1_1_mpc/v1_1_mpc.pt",
                                        "v1_0_qat/v1_0_qat.pt"])
def test_every_model_family_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str], checkpoint: str) -> None:
    golden = Path(__file__).resolve().parents[1] / "data" / "reference_models"
    code, stdout, _ = run(["table", "--table", str(WORLDCEREAL), "--class-mapping", str(MAPPING),
                           "--models", "logreg", "--splits", "kfold", "--checkpoint", str(golden / checkpoint),
                           "--out", str(tmp_path / "wc"), *FAST], capsys)
    assert code == 0 and stdout.startswith("classification: embeddings+")
    result = json.loads((tmp_path / "wc" / "results.json").read_text())
    assert set(result["feature_sets"]) == {"embeddings", "untrained", "raw"}
