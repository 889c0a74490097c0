"""The whole chain on a crop of the embedded Belgian sample: ROI -> tiles -> embeddings -> GeoTIFF."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from btfm_core.roi import open_roi
from btfm_core.tiles import list_tiles, read_tile
from btfm_infer import convert_npy2tiff, infer_all_tiles, stitch_tiled_representation
from btfm_preprocessing import pipeline
from tests.conftest import DEMO_DIR

DATES = ["2020-11-01", "2021-10-31", "2020-11-01", "2021-10-31", "1"]


def crop_roi(out: Path, col: int = 20, row: int = 30, width: int = 40, height: int = 40) -> Path:
    """Write a window of the sample's ROI (keeps its outside pixels) as a new ROI file."""
    with rasterio.open(DEMO_DIR / "roi.tiff") as src:
        window = Window(col, row, width, height)
        profile = {**src.profile, "width": width, "height": height,
                   "transform": src.window_transform(window)}
        data = src.read(1, window=window)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data, 1)
    return out


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (logs excluded)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "logs" not in p.parts}


def run_chain(run_dir: Path, seed: int = 0) -> None:
    """The README's commands, in-process."""
    roi = run_dir / "roi.tiff"
    assert pipeline.main([str(roi), *DATES, "--source", "local", "--catalog",
                          str(DEMO_DIR / "catalog.json"), "--tile-size", "32", "-q"]) == 0
    # fp32 pins the figures on every machine (--precision auto would pick bf16 where it is native)
    assert infer_all_tiles.main(["--tiles-dir", str(run_dir / "retiled_d_pixel"), "--seed", str(seed),
                                 "--max-cpu", "2", "--cores", "2", "--precision", "fp32", "-q"]) == 0
    assert stitch_tiled_representation.main([
        "--representation-dir", str(run_dir / "representation_retiled"), "--roi", str(roi),
        "--tiles-dir", str(run_dir / "retiled_d_pixel"), "--out-dir", str(run_dir), "--overwrite", "-q"]) == 0
    assert convert_npy2tiff.main([
        "--npy", str(run_dir / "stitched_representation.npy"), "--ref-tiff", str(roi),
        "--out", str(run_dir / "stitched_representation.tif"), "--overwrite", "-q"]) == 0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    crop_roi(run_dir / "roi.tiff")
    run_chain(run_dir)
    return run_dir


def test_tiles_follow_the_contract(demo_run: Path) -> None:
    tiles = list_tiles(demo_run / "retiled_d_pixel")
    assert [t.name for t in tiles] == ["0_0_32_32", "32_0_40_32", "0_32_32_40", "32_32_40_40"]  # edges clamped
    tile = read_tile(demo_run / "retiled_d_pixel" / "0_0_32_32")
    # 12 monthly composites; Dec and Jan are fully cloudy but kept as (masked) dates
    assert tile.bands.shape[1:] == (32, 32, 10) and tile.doys.tolist() == sorted(tile.doys.tolist())
    assert tile.sar_ascending.shape[0] > 0 and tile.sar_descending.shape[0] == 0
    assert tile.masks.any() and (tile.bands[tile.masks == 1] > 0).any()


def test_outputs_have_roi_grid_and_zero_outside(demo_run: Path) -> None:
    roi = open_roi(demo_run / "roi.tiff")
    mask = roi.read_mask()
    stitched = np.load(demo_run / "stitched_representation.npy")
    assert stitched.shape == (40, 40, 128) and stitched.dtype == np.float32
    assert not stitched[mask == 0].any()
    inside = stitched[mask == 1]
    assert np.abs(inside).sum(axis=1).min() > 0
    assert inside.std(axis=0).mean() > 1e-3  # not constant across pixels
    with rasterio.open(demo_run / "stitched_representation.tif") as src:
        assert src.crs == roi.grid.rasterio_crs and src.transform == roi.grid.transform
        assert src.count == 128
        data = src.read(1)
        assert np.isnan(data[mask == 0]).all()
        np.testing.assert_array_equal(data[mask == 1], stitched[..., 0][mask == 1])
    assert (demo_run / "stitched_representation.png").is_file()


def test_same_seed_is_byte_identical(demo_run: Path, tmp_path: Path) -> None:
    crop_roi(tmp_path / "roi.tiff")
    run_chain(tmp_path)
    for name in ("stitched_representation.npy", "stitched_representation.tif"):
        assert (tmp_path / name).read_bytes() == (demo_run / name).read_bytes()


def test_rerun_skips_every_tile_and_changes_nothing(demo_run: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = digest(demo_run)
    run_chain(demo_run)
    assert digest(demo_run) == before
    log = (demo_run / "logs" / "preprocess.log").read_text()
    assert "(0 written, 4 already done)" in log
    assert "0 to embed" in (demo_run / "logs" / "infer_all_tiles.log").read_text()


def test_bf16_agrees_with_fp32(demo_run: Path, tmp_path: Path) -> None:
    from btfm_infer import load_model
    from btfm_infer.infer_all_tiles import DEFAULT_CHECKPOINT
    from btfm_infer.tile_inference import InferenceOptions, infer_tile

    model = load_model(DEFAULT_CHECKPOINT)
    out = tmp_path / "0_0_32_32.npy"
    infer_tile(model, demo_run / "retiled_d_pixel" / "0_0_32_32", out, InferenceOptions(precision="bf16"))
    fast = np.load(out).reshape(-1, 128)
    exact = np.load(demo_run / "representation_retiled" / "0_0_32_32.npy").reshape(-1, 128)
    inside = np.abs(exact).sum(axis=1) > 0
    cos = (fast[inside] * exact[inside]).sum(1) / (
        np.linalg.norm(fast[inside], axis=1) * np.linalg.norm(exact[inside], axis=1))
    assert cos.mean() > 0.99


def test_onnxruntime_engine_gives_the_same_embeddings(demo_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out_dir = tmp_path / "onnx"
    assert infer_all_tiles.main(["--tiles-dir", str(demo_run / "retiled_d_pixel"), "--output-dir", str(out_dir),
                                 "--engine", "onnxruntime", "--max-cpu", "1", "--cores", "2", "-q"]) == 0
    for torch_out in sorted((demo_run / "representation_retiled").glob("*.npy")):
        np.testing.assert_allclose(np.load(out_dir / torch_out.name), np.load(torch_out), atol=1e-4)


def test_onnxruntime_engine_refuses_bf16(demo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert infer_all_tiles.main(["--tiles-dir", str(demo_run / "retiled_d_pixel"), "--output-dir",
                                 str(tmp_path / "x"), "--engine", "onnxruntime", "--precision", "bf16"]) == 2
    assert "--precision bf16 applies to the torch engine" in capsys.readouterr().err


def test_resuming_with_another_checkpoint_or_seed_is_refused(demo_run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    record = json.loads((demo_run / "representation_retiled" / "inference.json").read_text())
    assert record["seed"] == 0 and len(record["model"]["sha256"]) == 64 and record["model"]["config"]["d_model"]
    assert infer_all_tiles.main(["--tiles-dir", str(demo_run / "retiled_d_pixel"), "--seed", "7", "-q"]) == 2
    assert "another checkpoint or --seed" in capsys.readouterr().err  # nothing mixed into the old tiles


def test_stac_item_records_the_model_and_sources_without_flags(demo_run: Path) -> None:
    item = json.loads((demo_run / "stitched_representation.stac.json").read_text())
    record = json.loads((demo_run / "representation_retiled" / "inference.json").read_text())
    model, sources = item["properties"]["btfm:model"], item["properties"]["btfm:sources"]
    checkpoint = item["assets"]["model"]
    assert checkpoint["file:checksum"] == "1220" + record["model"]["sha256"] and checkpoint["href"] == "./btfm_demo.pt"
    assert model["seed"] == 0
    assert sources["source"] == "local" and sources["s1_source"] == "local"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only behaviour")
def test_gpu_warning_only_when_a_gpu_was_asked_for(demo_run: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    tiles = str(demo_run / "retiled_d_pixel")
    assert infer_all_tiles.main(["--tiles-dir", tiles, "--output-dir", str(tmp_path / "a"), "--max-gpu", "1"]) == 0
    assert "no CUDA GPU found" in capsys.readouterr().err
    assert infer_all_tiles.main(["--tiles-dir", tiles, "--output-dir", str(tmp_path / "b")]) == 0
    assert "no CUDA GPU found" not in capsys.readouterr().err  # the default uses the GPUs there are
    assert infer_all_tiles.main(["--tiles-dir", tiles, "--output-dir", str(tmp_path / "c"), "--max-cpu", "0"]) == 2
    assert "no CUDA GPU was found; raise --max-cpu" in capsys.readouterr().err


def test_int8_precision_agrees_with_fp32_on_the_demo(demo_run: Path, tmp_path: Path) -> None:
    """Issue 10: --precision int8 (dynamic int8 Linears) within a mean cosine of 0.999 of fp32."""
    out_dir = tmp_path / "int8"
    assert infer_all_tiles.main(["--tiles-dir", str(demo_run / "retiled_d_pixel"), "--output-dir", str(out_dir),
                                 "--precision", "int8", "--max-cpu", "1", "--cores", "2", "-q"]) == 0
    assert '"precision": "int8"' in (out_dir / "inference.json").read_text()
    cosines = []
    for fp32_tile in sorted((demo_run / "representation_retiled").glob("*.npy")):
        a, b = np.load(fp32_tile).reshape(-1, 128), np.load(out_dir / fp32_tile.name).reshape(-1, 128)
        keep = np.abs(a).sum(axis=1) > 0
        a, b = a[keep], b[keep]
        cosines.append((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    assert np.concatenate(cosines).mean() >= 0.999
