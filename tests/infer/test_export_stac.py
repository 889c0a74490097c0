"""STAC item and provenance of the export, and the export CLI with every output."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import zarr
from pystac.extensions.eo import EOExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.mlm import MLMExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.validation import JsonSchemaSTACValidator

from btfm_core.roi import open_roi
from btfm_core.run import RunLayout, RunMetadata
from btfm_core.tiles import S1_BANDS, S2_BANDS
from btfm_infer import convert_npy2tiff as convert
from btfm_infer.checkpoint import save_checkpoint
from btfm_infer.export_common import band_names
from btfm_infer.families import STATS
from btfm_infer.model import BTFM, ModelConfig
from btfm_infer.stac_item import (
    AssetSpec,
    build_item,
    build_provenance,
    checkpoint_info,
    file_fields,
    lonlat_outline,
    mlm_properties,
    parse_period,
    sha256_multihash,
)
from tests.conftest import REPO_ROOT
from tests.infer.test_convert_npy2tiff import DIM, HEIGHT, WIDTH, make_inputs

TINY = ModelConfig(d_model=16, nhead=4, num_layers=1, dim_feedforward=24, embedding_dim=8)
#: As btfm_preprocessing.pipeline writes it (source.describe() plus the run's settings).
RUN_METADATA = {
    "source": "mpc", "root": "https://planetarycomputer.microsoft.com/api/stac/v1",
    "s2_collection": "sentinel-2-l2a", "s1_collection": "sentinel-1-rtc", "s1_backscatter": "gamma0 RTC",
    "run_key": "abc", "roi": "/somewhere/roi.tiff", "s2_period": "2021-01-01..2021-12-31",
    "s1_period": "2020-12-15..2021-12-31", "max_cloud": 80, "tile_size": 500, "s2_scenes": 70, "s1_scenes": 60,
    "s1_backscatter_recorded": ["gamma0 RTC"], "s2_notes": [],
}


#: STAC JSON schemas vendored for offline validation (sources in its README.md).
SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "stac-schemas"
#: Every extension the exported item declares.
EXTENSIONS = {f"https://stac-extensions.github.io/{name}/schema.json" for name in
              ("projection/v2.0.0", "raster/v1.1.0", "eo/v1.1.0", "file/v2.1.0", "mlm/v1.4.0")}
#: Checkpoints of every model family the tests have: ours (the demo) and the references' tiny ones.
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "reference_models"
FAMILY_CHECKPOINTS = {
    "demo": REPO_ROOT / "checkpoints" / "btfm_demo.pt", "v1_0": GOLDEN / "v1_0" / "v1_0.pt",
    "v1_0_qat": GOLDEN / "v1_0_qat" / "v1_0_qat.pt", "v1_1_mpc": GOLDEN / "v1_1_mpc" / "v1_1_mpc.pt",
    "v1_1_aws": GOLDEN / "v1_1_aws" / "v1_1_aws.pt", "v2": GOLDEN / "v2_student" / "student_v2_student.pt",
}


def make_checkpoint(path: Path) -> Path:
    return save_checkpoint(BTFM(TINY), path, config=TINY)


def offline_validator() -> JsonSchemaSTACValidator:
    """pystac's JSON-schema validator reading only the vendored schemas (URL path = file path)."""
    validator = JsonSchemaSTACValidator()
    validator.schema_cache = {"https://" + path.relative_to(SCHEMAS).as_posix(): json.loads(path.read_text())
                              for path in SCHEMAS.rglob("*.json")}
    return validator


def validate(item: pystac.Item) -> set[str]:
    """Validate ``item`` against the vendored schemas; the schema URIs used."""
    return set(item.validate(validator=offline_validator()))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_parse_period() -> None:
    start, end = parse_period("2021-01-01..2021-12-31")
    assert start == dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc)
    assert end == dt.datetime(2021, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)
    for bad in ("2021-01-01", "2021-12-31..2021-01-01", "2021-13-01..2021-12-31"):
        with pytest.raises(ValueError):
            parse_period(bad)


def test_provenance_from_run_metadata_and_checkpoint(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt")
    model = checkpoint_info(ckpt)
    assert model["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert model["name"] == "m.pt" and model["config"]["d_model"] == 16 and model["config"]["embedding_dim"] == 8
    prov = build_provenance(RUN_METADATA, model)
    assert prov.start == dt.datetime(2020, 12, 15, tzinfo=dt.timezone.utc)
    assert prov.end == dt.datetime(2021, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)
    assert "roi" not in prov.sources and "run_key" not in prov.sources  # no local paths or internals
    assert prov.sources["s1_backscatter"] == "gamma0 RTC" and prov.sources["root"] == RUN_METADATA["root"]
    local = build_provenance({**RUN_METADATA, "root": "/srv/eo/data/demo_belgium/catalog.json"})
    assert local.sources["root"] == "catalog.json"  # no local paths
    tags = prov.tags()
    assert tags["BTFM_CHECKPOINT_SHA256"] == model["sha256"] and tags["BTFM_PERIOD"] == "2020-12-15..2021-12-31"
    assert json.loads(tags["BTFM_SOURCES"])["s2_collection"] == "sentinel-2-l2a"
    assert prov.attributes()["period"] == ["2020-12-15T00:00:00Z", "2021-12-31T23:59:59Z"]
    assert build_provenance(None, None).tags() == {}


def test_lonlat_outline_matches_grid(tmp_path: Path) -> None:
    roi_path, _, _, _ = make_inputs(tmp_path)
    grid = open_roi(roi_path).grid
    ring = np.array(lonlat_outline(grid))
    assert (ring[0] == ring[-1]).all() and len(ring) == 81
    west, south, east, north = grid.lonlat_bounds()
    assert ring[:, 0].min() == pytest.approx(west, abs=1e-6) and ring[:, 0].max() == pytest.approx(east, abs=1e-6)
    assert ring[:, 1].min() == pytest.approx(south, abs=1e-6) and ring[:, 1].max() == pytest.approx(north, abs=1e-6)
    assert 5.0 < west < 5.5 and 50.0 < south < 51.0  # 664000 E, 5612000 N in UTM 31N: Belgium
    x, y = ring[:-1, 0], ring[:-1, 1]
    assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0  # counter-clockwise (RFC 7946)


def test_cli_all_outputs_int8(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              caplog: pytest.LogCaptureFixture) -> None:
    roi_path, npy, mask, _ = make_inputs(tmp_path)
    (tmp_path / "retiled_d_pixel").mkdir()
    RunMetadata.from_json(RUN_METADATA).write(RunLayout(tmp_path).run_metadata_file)  # discovered beside the .npy
    ckpt = make_checkpoint(tmp_path / "ckpt" / "m.pt")
    out = tmp_path / "out"
    assert convert.main(["--npy", str(npy), "--ref-tiff", str(roi_path), "--out", str(out / "emb.tif"),
                         "--dtype", "int8", "--zarr", str(out / "emb.zarr"), "--checkpoint", str(ckpt)]) == 0
    names = ["emb.tif", "emb_scales.tif", "emb.zarr", "emb.png", "emb.stac.json"]
    assert capsys.readouterr().out.split() == [str(out / n) for n in names]
    assert "reconstruction cosine mean 0.99" in caplog.text

    sha = sha256_of(ckpt)
    with rasterio.open(out / "emb.tif") as src:
        assert src.tags()["BTFM_CHECKPOINT_SHA256"] == sha
        assert json.loads(src.tags()["BTFM_SOURCES"])["source"] == "mpc"
    assert zarr.open_group(out / "emb.zarr", mode="r").attrs["model"]["sha256"] == sha

    stac_path = out / "emb.stac.json"
    raw = json.loads(stac_path.read_text())
    for key in ("type", "stac_version", "id", "geometry", "bbox", "properties", "assets", "links",
                "stac_extensions"):
        assert key in raw
    assert raw["type"] == "Feature" and raw["id"] == "emb" and raw["links"] == []
    assert set(raw["stac_extensions"]) == EXTENSIONS
    props = raw["properties"]
    assert props["datetime"] is None
    assert props["start_datetime"] == "2020-12-15T00:00:00Z" and props["end_datetime"] == "2021-12-31T23:59:59Z"
    assert "created" not in props and "btfm:period" not in props  # no timestamp: the same run, the same bytes
    assert props["proj:code"] == "EPSG:32631" and props["proj:shape"] == [HEIGHT, WIDTH]
    assert props["proj:transform"] == [10.0, 0.0, 664000.0, 0.0, -10.0, 5612000.0]
    assert props["proj:bbox"] == [664000.0, 5612000.0 - 10 * HEIGHT, 664000.0 + 10 * WIDTH, 5612000.0]
    # the model is in MLM fields; btfm:model keeps only what MLM has no field for
    assert props["btfm:model"] == {"family": "v1.0", "stats": "v1.0", "input_rule": "sampled-40",
                                   "int8_rule": "v1.0"}
    assert props["mlm:name"] == "TESSERA v1.0 m" and props["mlm:framework"] == "PyTorch"
    assert props["mlm:hyperparameters"]["d_model"] == 16 and props["mlm:output"][0]["result"]["shape"] == [-1, 8]
    assert props["btfm:sources"]["s1_collection"] == "sentinel-1-rtc"
    assert props["btfm:embedding"]["dtype"] == "int8" and props["btfm:embedding"]["dim"] == DIM
    assert props["btfm:embedding"]["int8_cosine"]["mean"] > 0.999
    assert props["btfm:embedding"]["int8_cosine"]["pixels"] == int((mask != 0).sum()) - 1  # one zero pixel
    ring = raw["geometry"]["coordinates"][0]
    assert raw["bbox"] == [min(p[0] for p in ring), min(p[1] for p in ring), max(p[0] for p in ring),
                           max(p[1] for p in ring)]

    assets = raw["assets"]
    assert set(assets) == {"embedding", "scales", "zarr", "quicklook", "model"}
    assert assets["embedding"]["href"] == "./emb.tif" and assets["zarr"]["href"] == "./emb.zarr"
    assert assets["embedding"]["type"] == pystac.MediaType.COG and assets["zarr"]["type"] == pystac.MediaType.ZARR
    embedding = assets["embedding"]
    assert len(embedding["raster:bands"]) == DIM
    assert embedding["raster:bands"][0] == {"data_type": "int8", "nodata": -128, "spatial_resolution": 10.0}
    assert [b["name"] for b in embedding["bands"]] == [b["name"] for b in embedding["eo:bands"]] == band_names(DIM)
    assert embedding["bands"][0] == {"name": "A00", "description": "embedding dimension 0 of 128",
                                     "data_type": "int8", "nodata": -128}
    assert embedding["bands"][-1]["name"] == "A127"
    assert assets["scales"]["raster:bands"] == [{"data_type": "float32", "nodata": "nan", "spatial_resolution": 10.0}]
    assert assets["scales"]["bands"][0]["name"] == "scales"
    assert embedding["btfm:scale_asset"] == "scales" and assets["quicklook"]["roles"] == ["overview"]
    with rasterio.open(out / "emb.tif") as src:
        assert list(src.descriptions) == band_names(DIM)  # the names in the item are the GeoTIFF's own

    # file extension: size and SHA2-256 multihash of every file, the checkpoint's included
    for key, path in (("embedding", out / "emb.tif"), ("scales", out / "emb_scales.tif"),
                      ("quicklook", out / "emb.png"), ("model", ckpt)):
        assert assets[key]["file:checksum"] == "1220" + sha256_of(path), key
        assert assets[key]["file:size"] == path.stat().st_size, key
    assert not any(k.startswith("file:") for k in assets["zarr"])  # a folder: no one file to check

    item = pystac.Item.from_file(stac_path)
    used = validate(item)
    assert EXTENSIONS | {"https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"} <= used
    assert ProjectionExtension.ext(item).code == "EPSG:32631"
    assert len(RasterExtension.ext(item.assets["embedding"]).bands or []) == DIM
    assert [b.name for b in EOExtension.ext(item.assets["embedding"]).bands or []] == band_names(DIM)
    assert FileExtension.ext(item.assets["model"]).checksum == "1220" + sha
    assert [i.name for i in MLMExtension.ext(item).input] == ["s2_x", "s1_x ascending", "s1_x descending"]
    for key, asset in item.assets.items():
        assert Path(asset.get_absolute_href()).exists() == (key != "model")  # the checkpoint is not copied
    assert item.common_metadata.start_datetime == dt.datetime(2020, 12, 15, tzinfo=dt.timezone.utc)


def test_cli_zarr_only_and_fallback_datetime(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    roi_path, npy, _, _ = make_inputs(tmp_path)
    assert convert.main(["--npy", str(npy), "--roi", str(roi_path), "--no-tiff", "--zarr", str(tmp_path / "e.zarr"),
                         "--no-png", "-q"]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "e.zarr"), str(tmp_path / "e.stac.json")]
    assert "no run metadata with the observation period" in caplog.text
    item = pystac.Item.from_file(tmp_path / "e.stac.json")
    assert set(item.assets) == {"zarr"} and item.datetime is not None
    assert item.stac_extensions == [ProjectionExtension.get_schema_uri()]  # no bands, no model, no file
    validate(item)


@pytest.mark.filterwarnings("ignore:.*shapely.ops.transform:DeprecationWarning:odc.geo",
                            "ignore:Use `@` matmul:PendingDeprecationWarning:odc.geo")
def test_odc_stac_names_the_variables_by_band(tmp_path: Path) -> None:
    """odc-stac loads the embedding as variables A00 … (from eo:bands), with the GeoTIFF's values."""
    import odc.stac

    roi_path, npy, _, _ = make_inputs(tmp_path, dim=12)
    assert convert.main(["--npy", str(npy), "--roi", str(roi_path), "--out", str(tmp_path / "e.tif"), "--dtype",
                         "int8", "--checkpoint", str(make_checkpoint(tmp_path / "m.pt")), "-q"]) == 0
    item = pystac.Item.from_file(tmp_path / "e.stac.json")
    everything = odc.stac.load([item])
    assert list(everything.data_vars) == [*band_names(12), "scales"]  # the checkpoint and quick-look are no rasters
    picked = odc.stac.load([item], bands=["A00", "A11"])
    assert list(picked.data_vars) == ["A00", "A11"] and picked.sizes == {"time": 1, "y": HEIGHT, "x": WIDTH}
    with rasterio.open(tmp_path / "e.tif") as src:
        assert np.array_equal(picked["A11"].values[0], src.read(12))
    assert picked["A11"].dtype == np.int8 and picked["A11"].attrs["nodata"] == -128


@pytest.mark.parametrize("checkpoint", FAMILY_CHECKPOINTS.values(), ids=FAMILY_CHECKPOINTS.keys())
def test_mlm_fields_of_every_family(tmp_path: Path, checkpoint: Path) -> None:
    """MLM inputs in the tile band order with the family's statistics; the item validates for each family."""
    model = checkpoint_info(checkpoint)
    props = mlm_properties(model, 128)
    assert props is not None
    stats = STATS[model["stats"]]
    s2, s1_asc, s1_desc = props["mlm:input"]
    assert s2["bands"] == list(S2_BANDS) and s1_asc["bands"] == s1_desc["bands"] == list(S1_BANDS)
    for entry, mean, std in ((s2, stats.s2_mean, stats.s2_std), (s1_asc, stats.s1_asc_mean, stats.s1_asc_std),
                             (s1_desc, stats.s1_desc_mean, stats.s1_desc_std)):
        scaling = entry["value_scaling"]
        assert {s["type"] for s in scaling} == {"z-score"}
        assert np.array_equal(np.float32([s["mean"] for s in scaling]), mean)  # the float32 values applied
        assert np.array_equal(np.float32([s["stddev"] for s in scaling]), std)
    steps = 40 if model["input_rule"] == "sampled-40" else -1
    assert s2["input"]["shape"] == [-1, steps, 11] and s1_asc["input"]["shape"] == [-1, -1, 3]
    assert props["mlm:output"][0]["result"] == {"shape": [-1, model["embedding_dim"]],
                                                "dim_order": ["batch", "channel"], "data_type": "float32"}
    assert props["mlm:tasks"] == ["similarity-search"] and props["mlm:framework"] == "PyTorch"
    assert props["mlm:architecture"].startswith(model["family_title"])
    assert props["mlm:hyperparameters"] == model["config"]

    roi_path, _, _, _ = make_inputs(tmp_path, dim=1)
    item = build_item("e", open_roi(roi_path).grid, build_provenance(RUN_METADATA, model), [], tmp_path / "e.json")
    validate(item)
    assert item.properties["btfm:model"]["family"] == model["family"]
    assert "sha256" not in item.properties["btfm:model"] and "config" not in item.properties["btfm:model"]
    assert item.assets["model"].extra_fields["file:checksum"] == "1220" + sha256_of(checkpoint)
    assert item.assets["model"].extra_fields["file:size"] == checkpoint.stat().st_size
    assert [b["name"] for b in item.assets["model"].extra_fields["eo:bands"]] == [*S2_BANDS, *S1_BANDS]


def test_old_model_record_keeps_btfm_fields(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A model record without family and statistics (an older inference.json): no MLM, all of it under btfm:."""
    roi_path, _, _, _ = make_inputs(tmp_path, dim=1)
    model: dict[str, Any] = {"name": "old.pt", "sha256": "ab" * 32, "size_bytes": 10, "config": {"d_model": 8}}
    item = build_item("e", open_roi(roi_path).grid, build_provenance(RUN_METADATA, model), [], tmp_path / "e.json")
    assert "no known family" in caplog.text
    assert item.properties["btfm:model"] == model and "model" not in item.assets
    assert MLMExtension.get_schema_uri() not in item.stac_extensions
    validate(item)


def test_file_fields_stream_any_size(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).integers(0, 256, 3 * 2**20 + 5, dtype=np.uint8).tobytes())
    assert file_fields(big) == {"file:size": 3 * 2**20 + 5, "file:checksum": "1220" + sha256_of(big)}
    assert file_fields(tmp_path) == {}  # a folder (a Zarr store) has no single checksum
    assert sha256_multihash("00" * 32) == "1220" + "00" * 32
    with pytest.raises(ValueError, match="SHA-256"):
        sha256_multihash("ABCD")


def test_band_names_of_an_asset(tmp_path: Path) -> None:
    roi_path, _, _, _ = make_inputs(tmp_path, dim=1)
    tif = tmp_path / "x.tif"
    tif.write_bytes(b"not really a tiff")
    specs = [AssetSpec("x", tif, pystac.MediaType.COG, ["data"], "x", ("uint8", 0, 2), band_names=["red", "nir"])]
    item = build_item("e", open_roi(roi_path).grid, build_provenance(RUN_METADATA), specs, tmp_path / "e.json")
    assert [b["name"] for b in item.assets["x"].extra_fields["bands"]] == ["red", "nir"]
    validate(item)
    with pytest.raises(ValueError, match="1 band names for 2 bands"):
        build_item("e", open_roi(roi_path).grid, build_provenance(RUN_METADATA),
                   [AssetSpec("x", tif, pystac.MediaType.COG, ["data"], "x", ("uint8", 0, 2), band_names=["a"])],
                   tmp_path / "e.json")


@pytest.mark.parametrize(("extra", "phrase"), [
    (["--no-tiff"], "--no-tiff leaves nothing to write"),
    (["--run-metadata", "missing.json"], "missing.json does not exist"),
    (["--run-metadata", "{bad}"], "is not readable JSON"),
    (["--checkpoint", "nope.pt"], "nope.pt does not exist"),
    (["--zarr", "{npy}"], "must all be different paths"),
    (["--stac", "{tif}"], "must all be different paths"),
])
def test_cli_bad_input(tmp_path: Path, caplog: pytest.LogCaptureFixture, extra: list[str], phrase: str) -> None:
    roi_path, npy, _, _ = make_inputs(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    extra = [e.format(bad=bad, npy=npy, tif=tmp_path / "stitched_representation.tif") for e in extra]
    extra = [str(tmp_path / e) if e.endswith((".json", ".pt")) and "/" not in e else e for e in extra]
    assert convert.main(["--npy", str(npy), "--roi", str(roi_path), "-q", *extra]) == 2
    assert phrase in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "logs") == sorted(
        ["roi.tiff", "stitched_representation.npy", "bad.json"])


def test_cli_refuses_existing_zarr(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    roi_path, npy, _, _ = make_inputs(tmp_path)
    (tmp_path / "e.zarr").mkdir()
    args = ["--npy", str(npy), "--roi", str(roi_path), "--zarr", str(tmp_path / "e.zarr"), "--no-png", "-q"]
    assert convert.main(args) == 2
    assert "e.zarr already exists; pass --overwrite" in caplog.text and "--zarr" in caplog.text
    assert not (tmp_path / "stitched_representation.tif").exists()
    assert convert.main([*args, "--overwrite"]) == 0
    assert zarr.open_group(tmp_path / "e.zarr", mode="r")["embedding"].shape == (HEIGHT, WIDTH, DIM)


@pytest.mark.parametrize(("field", "bad"), [
    ("mlm:tasks", ["embedding"]),  # not an MLM v1.4 task
    ("file:checksum", "1220CA9A"),  # not lower-case hex
    ("mlm:input", [{"name": "s2_x", "bands": ["B04"]}]),  # no input structure
])
def test_offline_validation_rejects_bad_fields(tmp_path: Path, field: str, bad: Any) -> None:
    roi_path, _, _, _ = make_inputs(tmp_path, dim=1)
    model = checkpoint_info(FAMILY_CHECKPOINTS["demo"])
    item = build_item("e", open_roi(roi_path).grid, build_provenance(RUN_METADATA, model), [], tmp_path / "e.json")
    validate(item)
    target = item.assets["model"].extra_fields if field.startswith("file:") else item.properties
    target[field] = bad
    with pytest.raises(pystac.errors.STACValidationError):
        validate(item)


def test_model_record_without_digest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    roi_path, _, _, _ = make_inputs(tmp_path, dim=1)
    model = {**checkpoint_info(FAMILY_CHECKPOINTS["demo"]), "sha256": "edited by hand"}
    item = build_item("e", open_roi(roi_path).grid, build_provenance(RUN_METADATA, model), [], tmp_path / "e.json")
    assert "no SHA-256 digest ('edited by hand')" in caplog.text
    assert "file:checksum" not in item.assets["model"].extra_fields
    validate(item)
