"""STAC item and provenance of the export, and the export CLI with every output."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import zarr
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension

from btfm_core.roi import open_roi
from btfm_core.tiles import write_run_metadata
from btfm_infer import convert_npy2tiff as convert
from btfm_infer.checkpoint import save_checkpoint
from btfm_infer.model import BTFM, ModelConfig
from btfm_infer.stac_item import build_provenance, checkpoint_info, lonlat_outline, parse_period
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


def make_checkpoint(path: Path) -> Path:
    return save_checkpoint(BTFM(TINY), path, config=TINY)


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
    write_run_metadata(tmp_path / "retiled_d_pixel", RUN_METADATA)  # discovered beside the .npy
    ckpt = make_checkpoint(tmp_path / "ckpt" / "m.pt")
    out = tmp_path / "out"
    assert convert.main(["--npy", str(npy), "--ref-tiff", str(roi_path), "--out", str(out / "emb.tif"),
                         "--dtype", "int8", "--zarr", str(out / "emb.zarr"), "--checkpoint", str(ckpt)]) == 0
    names = ["emb.tif", "emb_scales.tif", "emb.zarr", "emb.png", "emb.stac.json"]
    assert capsys.readouterr().out.split() == [str(out / n) for n in names]
    assert "reconstruction cosine mean 0.99" in caplog.text

    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
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
    props = raw["properties"]
    assert props["datetime"] is None
    assert props["start_datetime"] == "2020-12-15T00:00:00Z" and props["end_datetime"] == "2021-12-31T23:59:59Z"
    assert "created" not in props and "btfm:period" not in props  # no timestamp: the same run, the same bytes
    assert props["proj:code"] == "EPSG:32631" and props["proj:shape"] == [HEIGHT, WIDTH]
    assert props["proj:transform"] == [10.0, 0.0, 664000.0, 0.0, -10.0, 5612000.0]
    assert props["proj:bbox"] == [664000.0, 5612000.0 - 10 * HEIGHT, 664000.0 + 10 * WIDTH, 5612000.0]
    assert props["btfm:model"]["sha256"] == sha and props["btfm:model"]["config"]["d_model"] == 16
    assert props["btfm:sources"]["s1_collection"] == "sentinel-1-rtc"
    assert props["btfm:embedding"]["dtype"] == "int8" and props["btfm:embedding"]["dim"] == DIM
    assert props["btfm:embedding"]["int8_cosine"]["mean"] > 0.999
    assert props["btfm:embedding"]["int8_cosine"]["pixels"] == int((mask != 0).sum()) - 1  # one zero pixel
    ring = raw["geometry"]["coordinates"][0]
    assert raw["bbox"] == [min(p[0] for p in ring), min(p[1] for p in ring), max(p[0] for p in ring),
                           max(p[1] for p in ring)]

    assets = raw["assets"]
    assert set(assets) == {"embedding", "scales", "zarr", "quicklook"}
    assert assets["embedding"]["href"] == "./emb.tif" and assets["zarr"]["href"] == "./emb.zarr"
    assert assets["embedding"]["type"] == pystac.MediaType.COG and assets["zarr"]["type"] == pystac.MediaType.ZARR
    bands = assets["embedding"]["raster:bands"]
    assert len(bands) == DIM and bands[0] == {"data_type": "int8", "nodata": -128, "spatial_resolution": 10.0}
    assert assets["scales"]["raster:bands"] == [{"data_type": "float32", "nodata": "nan", "spatial_resolution": 10.0}]
    assert assets["embedding"]["btfm:scale_asset"] == "scales" and assets["quicklook"]["roles"] == ["overview"]

    item = pystac.Item.from_file(stac_path)
    assert ProjectionExtension.get_schema_uri() in item.stac_extensions
    assert RasterExtension.get_schema_uri() in item.stac_extensions
    assert ProjectionExtension.ext(item).code == "EPSG:32631"
    assert len(RasterExtension.ext(item.assets["embedding"]).bands or []) == DIM
    for asset in item.assets.values():
        assert Path(asset.get_absolute_href()).exists()
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
    assert RasterExtension.get_schema_uri() not in item.stac_extensions


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
