"""Every TESSERA family against its reference implementation's golden outputs (tests/data/reference_models).

v1.1 (mpc, aws) and v2 (plain, QK-norm): ``infer_all_tiles`` on the three golden tiles equals the
reference embedding to 1e-5 on every pixel, whatever the batch size and number of workers, and
the int8 export equals the reference's own codes and scales. v1.0 and v1.0 QAT draw 40 random
steps, so their forward is compared on the reference's fixed sampled inputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from btfm_core.errors import CheckpointError
from btfm_core.tiles import list_tiles, read_tile
from btfm_infer import convert_npy2tiff, infer_all_tiles, stitch_tiled_representation
from btfm_infer.bucketing import bucket_lengths, resample_indices
from btfm_infer.checkpoint import inspect_checkpoint, load_model
from btfm_infer.embed import embed_pixels
from btfm_infer.export_common import quantise_int8

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "reference_models"
TILES = sorted(p.name for p in (GOLDEN / "tiles").iterdir())
BUCKETED = {"v1_1_mpc": "v1_1_mpc.pt", "v1_1_aws": "v1_1_aws.pt", "v2_student": "student_v2_student.pt",
            "v2_student_qknorm": "student_v2_student_qknorm.pt"}
SAMPLED = {"v1_0": ("v1.0", 8), "v1_0_qat": ("v1.0-qat", 4)}
#: The ROI grid the three golden tiles lie on: 20 columns x 18 rows, EPSG:32631, 10 m.
ROI_SHAPE = (18, 20)


def checkpoint(folder: str) -> Path:
    return GOLDEN / folder / BUCKETED.get(folder, f"{folder}.pt")


def make_run(root: Path) -> Path:
    """A run folder: the golden tiles as retiled_d_pixel/ and the ROI they cover as roi.tiff."""
    tiles_dir = root / "retiled_d_pixel"
    shutil.copytree(GOLDEN / "tiles", tiles_dir)
    roi = np.zeros(ROI_SHAPE, np.uint8)
    for name in TILES:
        x0, y0, x1, y1 = map(int, name.split("_"))
        roi[y0:y1, x0:x1] = 1
    profile = {"driver": "GTiff", "dtype": "uint8", "count": 1, "height": ROI_SHAPE[0], "width": ROI_SHAPE[1],
               "crs": "EPSG:32631", "transform": Affine(10, 0, 500000, 0, -10, 5600000)}
    with rasterio.open(root / "roi.tiff", "w", **profile) as dst:
        dst.write(roi, 1)
    return tiles_dir


def infer(tiles_dir: Path, out: Path, ckpt: Path, *extra: str) -> int:
    return infer_all_tiles.main(["--tiles-dir", str(tiles_dir), "--output-dir", str(out),
                                 "--checkpoint", str(ckpt), "--precision", "fp32", "-q", *extra])


@pytest.mark.parametrize("folder", sorted(BUCKETED))
@pytest.mark.parametrize("extra", [[], ["--cpu-batch-size", "3", "--max-cpu", "2"]], ids=["default", "b3w2"])
def test_bucketed_families_equal_the_reference(tmp_path: Path, folder: str, extra: list[str]) -> None:
    tiles_dir = make_run(tmp_path)
    out = tmp_path / "representation_retiled"
    assert infer(tiles_dir, out, checkpoint(folder), *extra) == 0
    for name in TILES:
        ours = np.load(out / f"{name}.npy")
        expected = np.load(GOLDEN / folder / "expected" / f"{name}.npy")
        defined = ~np.isnan(expected).any(axis=-1)
        assert ours.shape == expected.shape and ours.dtype == np.float32
        assert np.abs(ours[defined] - expected[defined]).max() <= 1e-5, (folder, name)
        assert not ours[~defined].any()
    record = json.loads((out / "inference.json").read_text())
    family = "v2" if folder.startswith("v2") else "v1.1"
    assert record["model"]["family"] == family and record["model"]["embedding_dim"] == 128
    assert record["model"]["input_rule"] == f"bucketed-{family}"
    assert record["model"]["stats"] == ({"v1_1_mpc": "v1.1-mpc", "v1_1_aws": "v1.1-aws"}.get(folder, "v2"))
    assert record["seed"] == record["repeat"] == "not applicable"


@pytest.mark.parametrize("folder", sorted(BUCKETED))
def test_int8_export_equals_the_reference(tmp_path: Path, folder: str) -> None:
    tiles_dir = make_run(tmp_path)
    out = tmp_path / "representation_retiled"
    assert infer(tiles_dir, out, checkpoint(folder)) == 0
    assert stitch_tiled_representation.main(["--representation-dir", str(out), "--roi", str(tmp_path / "roi.tiff"),
                                             "--out-dir", str(tmp_path), "-q"]) == 0
    tif = tmp_path / "emb.tif"
    assert convert_npy2tiff.main(["--npy", str(tmp_path / "stitched_representation.npy"), "--ref-tiff",
                                  str(tmp_path / "roi.tiff"), "--out", str(tif), "--dtype", "int8", "--no-png",
                                  "-q"]) == 0
    item = json.loads((tmp_path / "emb.stac.json").read_text())
    model = item["properties"]["btfm:model"]
    assert model["family"] == ("v2" if folder.startswith("v2") else "v1.1")
    assert item["properties"]["mlm:output"][0]["result"]["shape"] == [-1, 128]
    assert model["stats"] and model["input_rule"].startswith("bucketed") and model["seed"] == "not applicable"
    with rasterio.open(tif) as src:
        codes = np.moveaxis(src.read(), 0, -1)
        assert src.tags()["BTFM_MODEL_FAMILY"] == model["family"]
    with rasterio.open(tmp_path / "emb_scales.tif") as src:
        scales = src.read(1)
    for name in TILES:
        x0, y0, x1, y1 = map(int, name.split("_"))
        ref_q = np.load(GOLDEN / folder / "expected" / f"{name}_int8.npy").astype(int)
        ref_s = np.load(GOLDEN / folder / "expected" / f"{name}_scales.npy")
        q, s = codes[y0:y1, x0:x1].astype(int), scales[y0:y1, x0:x1]
        assert np.abs(q - ref_q).max() <= 1 and (q == ref_q).mean() >= 0.999, (folder, name)
        np.testing.assert_allclose(s, ref_s, rtol=1e-5)


@pytest.mark.parametrize("folder", sorted(SAMPLED))
def test_sampled_families_forward_equals_the_reference(folder: str) -> None:
    family, heads = SAMPLED[folder]
    model = load_model(checkpoint(folder))  # heads from the family rule, no nhead argument
    assert model.family.name == family and model.config.nhead == heads
    golden = np.load(GOLDEN / folder / "sampled_inputs_and_expected.npz")
    assert int(golden["nhead"]) == heads
    with torch.no_grad():
        ours = model(torch.from_numpy(golden["s2_x"]), torch.from_numpy(golden["s1_x"])).numpy()
    assert np.abs(ours - golden["expected"]).max() <= 1e-5


@pytest.mark.parametrize("folder", sorted(SAMPLED))
def test_sampled_families_end_to_end(tmp_path: Path, folder: str) -> None:
    tiles_dir = make_run(tmp_path)
    out = tmp_path / "representation_retiled"
    assert infer(tiles_dir, out, checkpoint(folder), "--seed", "3") == 0
    first = {name: np.load(out / f"{name}.npy") for name in TILES}
    for name, emb in first.items():
        assert emb.shape == (*read_tile(tiles_dir / name).shape, 128) and np.isfinite(emb).all()
        assert np.abs(emb).sum(-1).astype(bool).mean() > 0.9
    record = json.loads((out / "inference.json").read_text())
    assert record["model"]["family"] == SAMPLED[folder][0] and record["seed"] == 3
    again = tmp_path / "again"
    assert infer(tiles_dir, again, checkpoint(folder), "--seed", "3", "--cpu-batch-size", "5") == 0
    for name, emb in first.items():  # the same draw whatever the batch size (to float rounding)
        np.testing.assert_allclose(np.load(again / f"{name}.npy"), emb, atol=1e-5)


def test_api_reports_family_dims_and_rule() -> None:
    model = load_model(checkpoint("v2_student"))
    assert model.family.name == "v2" and model.embedding_dim == 128 and model.family.bucketed
    assert model.config.matryoshka_dims == (16, 32, 64, 128)
    tile = read_tile(GOLDEN / "tiles" / "0_12_10_18")
    h, w = tile.shape

    def px(series: np.ndarray) -> np.ndarray:
        return np.moveaxis(np.asarray(series), 0, 2).reshape(h * w, series.shape[0], *series.shape[3:])

    args = (px(tile.bands), px(tile.masks), tile.doys, px(tile.sar_ascending), tile.sar_ascending_doy,
            px(tile.sar_descending), tile.sar_descending_doy)
    ours = embed_pixels(model, *args)
    expected = np.load(GOLDEN / "v2_student" / "expected" / "0_12_10_18.npy").reshape(h * w, -1)
    assert np.abs(ours - expected).max() <= 1e-5
    np.testing.assert_array_equal(embed_pixels(model, *args, seed=9, repeat=3), ours)  # no randomness
    v11 = load_model(checkpoint("v1_1_aws"))
    assert v11.family.name == "v1.1" and v11.embedding_dim == 128 and v11.config.reducer_dim == 192
    assert v11.stats.name == "v1.1-aws"


def test_v2_dim_writes_matryoshka_prefix(tmp_path: Path) -> None:
    tiles_dir = make_run(tmp_path)
    out = tmp_path / "representation_retiled"
    assert infer(tiles_dir, out, checkpoint("v2_student"), "--dim", "32") == 0
    for name in TILES:
        expected = np.load(GOLDEN / "v2_student" / "expected" / f"{name}.npy")[..., :32]
        ours = np.load(out / f"{name}.npy")
        assert ours.shape[-1] == 32 and np.abs(ours - expected).max() <= 1e-5
    assert json.loads((out / "inference.json").read_text())["model"]["embedding_dim"] == 32
    assert stitch_tiled_representation.main(["--representation-dir", str(out), "--roi", str(tmp_path / "roi.tiff"),
                                             "--out-dir", str(tmp_path), "-q"]) == 0
    assert np.load(tmp_path / "stitched_representation.npy", mmap_mode="r").shape == (*ROI_SHAPE, 32)
    # a resume with all dimensions would mix 32- and 128-d tiles: refused
    assert infer(tiles_dir, out, checkpoint("v2_student")) == 2


def test_recognition_of_every_file() -> None:
    found = {folder: inspect_checkpoint(checkpoint(folder)) for folder in [*BUCKETED, *SAMPLED]}
    assert {k: v.config.family for k, v in found.items()} == {
        "v1_1_mpc": "v1.1", "v1_1_aws": "v1.1", "v2_student": "v2", "v2_student_qknorm": "v2",
        "v1_0": "v1.0", "v1_0_qat": "v1.0-qat"}
    assert found["v1_1_mpc"].data_source == "mpc" and found["v1_1_aws"].data_source == "aws"
    assert found["v2_student_qknorm"].config.qk_norm and not found["v2_student"].config.qk_norm
    assert found["v2_student"].config.nhead == 2  # from args
    assert found["v1_1_mpc"].config.nhead == 4 and found["v1_1_mpc"].config.representation_dim == 192


def test_resample_rules_follow_design() -> None:
    # v1.1: above target the middle of each chunk, below it evenly spaced repeats (rint, half to even)
    assert resample_indices("bucketed-v1.1", 5, 5).tolist() == [0, 1, 2, 3, 4]
    assert resample_indices("bucketed-v1.1", 10, 4).tolist() == [1, 4, 7, 9]  # chunks 3, 3, 2, 2
    assert resample_indices("bucketed-v1.1", 3, 8).tolist() == [0, 1, 2, 0, 1, 1, 1, 2]  # rint(.33 .67 1 1.33 1.67)
    # v2: linspace truncated above target; below it chunk middles, or j mod n when r > n
    assert resample_indices("bucketed-v2", 10, 4).tolist() == [0, 3, 6, 9]
    assert resample_indices("bucketed-v2", 6, 8).tolist() == [0, 1, 2, 3, 4, 5, 1, 4]
    assert resample_indices("bucketed-v2", 3, 8).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    counts = np.array([0, 1, 8, 9, 256, 300])
    assert bucket_lengths(counts, "bucketed-v1.1").tolist() == [8, 8, 8, 16, 256, 256]
    assert bucket_lengths(counts, "bucketed-v2").tolist() == [1, 8, 8, 16, 256, 256]


def test_family_int8_rules() -> None:
    e = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]], np.float32)
    for rule in ("v1.0", "v1.1", "v2"):
        q, s = quantise_int8(e, rule)
        assert q[0].tolist() == [64, -127, 32] and s[0] == np.float32(1.0) / 127
        assert q[1].tolist() == [0, 0, 0] and s[1] == 0
    with pytest.raises(Exception, match="unknown int8 rule"):
        quantise_int8(e, "v3")


# --- bad input: a clear message, exit 2, nothing written -------------------------------------------------------


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def _raw(folder: str) -> dict:
    return torch.load(checkpoint(folder), weights_only=True)


def test_teacher_is_refused_naming_the_students(tmp_path: Path) -> None:
    path = _save(tmp_path / "teacher.pt", {"encoder_state_dict": {"w": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match=r"v2 teacher.*student_medium\.pt"):
        load_model(path)


def test_unknown_family_lists_keys(tmp_path: Path) -> None:
    state = {k: v for k, v in _raw("v2_student")["model"].items()}
    path = _save(tmp_path / "bare_v2.pt", state)  # a v2 student without its args
    with pytest.raises(CheckpointError, match=r"no known TESSERA family.*temporal_context"):
        load_model(path)


def test_v2_args_that_disagree_with_shapes(tmp_path: Path) -> None:
    raw = _raw("v2_student")
    path = _save(tmp_path / "bad_args.pt", {"args": {**raw["args"], "num_layers": 3}, "model": raw["model"]})
    with pytest.raises(CheckpointError, match="num_layers 3 in args but 2 in the weights"):
        load_model(path)
    qk = _save(tmp_path / "bad_qk.pt", {"args": {**raw["args"], "enable_qk_norm": True}, "model": raw["model"]})
    with pytest.raises(CheckpointError, match="enable_qk_norm=True"):
        load_model(qk)


def _run_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], ckpt: Path, *extra: str) -> str:
    tiles_dir = tmp_path / "run" / "retiled_d_pixel"
    if not tiles_dir.exists():
        make_run(tmp_path / "run")
    out = tmp_path / "run" / "out"
    assert infer(tiles_dir, out, ckpt, *extra) == 2
    assert not out.exists()  # nothing written, not even the folder
    return capsys.readouterr().err


def test_cli_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--dim applies to Matryoshka families" in _run_cli(tmp_path, capsys, checkpoint("v1_1_mpc"), "--dim", "64")
    assert "contradicts v1_1_mpc.pt" in _run_cli(tmp_path, capsys, checkpoint("v1_1_mpc"), "--stats", "aws")
    assert "--stats applies to v1.1" in _run_cli(tmp_path, capsys, checkpoint("v2_student"), "--stats", "aws")
    assert "has the layout of the v2 family" in _run_cli(tmp_path, capsys, checkpoint("v2_student"),
                                                          "--model-family", "v1.1")
    with pytest.raises(SystemExit):  # argparse: not one of the Matryoshka dimensions
        infer(tmp_path / "run" / "retiled_d_pixel", tmp_path / "o", checkpoint("v2_student"), "--dim", "48")
    raw = _raw("v1_1_mpc")
    no_source = _save(tmp_path / "v1_1_nosource.pt", {**raw, "config": {k: v for k, v in raw["config"].items()
                                                                          if k != "data_source"}})
    assert "pass --stats mpc" in _run_cli(tmp_path, capsys, no_source)


def test_v1_1_stats_from_the_run_source(tmp_path: Path) -> None:
    tiles_dir = make_run(tmp_path)
    raw = _raw("v1_1_aws")
    no_source = _save(tmp_path / "v1_1_nosource.pt", {**raw, "config": {k: v for k, v in raw["config"].items()
                                                                          if k != "data_source"}})
    (tiles_dir / "run_metadata.json").write_text(json.dumps({"source": "earthsearch"}))
    out = tmp_path / "representation_retiled"
    assert sorted(t.name for t in list_tiles(tiles_dir)) == TILES
    assert infer(tiles_dir, out, no_source) == 0
    assert json.loads((out / "inference.json").read_text())["model"]["stats"] == "v1.1-aws"
    name = TILES[0]
    expected = np.load(GOLDEN / "v1_1_aws" / "expected" / f"{name}.npy")
    assert np.abs(np.load(out / f"{name}.npy") - expected).max() <= 1e-5
    # another family into the same folder is refused
    assert infer(tiles_dir, out, checkpoint("v2_student")) == 2
