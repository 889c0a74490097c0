"""Bad input at every entry point, as one table: exit code, one line saying what to fix, nothing left behind.

Each row of :data:`CASES` runs one entry point's ``main(argv)`` in-process on inputs prepared once
per module (a :class:`World`: an ROI crop of the demo sample, its tiles from a real preprocessing
run, their embeddings, the stitched map, an export and a set of good and broken checkpoints) plus
whatever the row writes into its own fresh folder. :func:`test_bad_input` then checks the exit
code (2; argparse errors exit 2 too), that stderr holds exactly one ``ERROR:``/``error:`` line
(besides WARNING lines and an argparse usage block) containing each of the row's phrases, no
traceback, nothing on stdout, and that the row's folder and the world gained no file but logs,
no temporary (``.tmp-*``) and no lock file, and had no file changed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from btfm_core.fileio import TMP_PREFIX
from btfm_core.locking import LOCK_NAME
from btfm_core.logs import OWNED_HANDLER
from btfm_eval.__main__ import main as eval_main
from btfm_infer import convert_npy2tiff, infer_all_tiles, stitch_tiled_representation, worker
from btfm_infer.tile_inference import InferenceOptions
from btfm_infer.worker import WorkerJob
from btfm_preprocessing import convert_shp_to_tiff, pipeline
from btfm_train.__main__ import main as train_main
from tests.conftest import DEMO_DIR, REPO_ROOT, write_raster
from tests.test_end_to_end import crop_roi

CATALOG = ["--source", "local", "--catalog", str(DEMO_DIR / "catalog.json")]
GOOD_DATES = ["2020-11-01", "2021-10-31", "2020-11-01", "2021-10-31"]
GOLDEN = REPO_ROOT / "tests" / "data" / "reference_models"
EVAL_DATA = REPO_ROOT / "tests" / "data" / "eval"
WORLDCEREAL = EVAL_DATA / "worldcereal_fra_60.parquet"
MAPPING = EVAL_DATA / "class_mappings_croptype28.json"
PRESTO = EVAL_DATA / "presto_fuel_moisture"
#: The world's ROI is 34 x 20 px: with --tile-size 32 it makes two tiles.
ROI_WIDTH, ROI_HEIGHT = 34, 20
BIG_TILE, SMALL_TILE = "0_0_32_20", "32_0_34_20"
#: A message line: the console handler's ``ERROR: ...``, the bare ``error: ...`` of an entry point
#: before logging is set up, or argparse's ``<prog>: error: ...``.
ERROR_LINE = re.compile(r"^(ERROR: |error: |[^:]+: error: )")


def _load_demo_catalog_main() -> Callable[[Sequence[str] | None], int]:
    """``scripts/make_demo_catalog.py``'s ``main`` (scripts/ is not a package; loaded as tests/preprocessing does)."""
    name = "make_demo_catalog"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / "make_demo_catalog.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name].main


demo_catalog_main = _load_demo_catalog_main()


# ---- the world: real inputs made once per module ------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Inputs shared by every row; rows read them and write only into their own folder.

    Attributes:
        root: the run folder holding everything below (checked unchanged after each row).
        roi: the 34 x 20 px ROI GeoTIFF (EPSG:32631, 10 m).
        tiles: its ``retiled_d_pixel`` from ``main_pipeline`` on the demo catalog (tiles 0_0_32_20, 32_0_34_20).
        representation: ``representation_retiled`` from ``infer_all_tiles`` (demo checkpoint, seed 0, fp32).
        stitched: the stitched (20, 34, 128) float32 ``.npy``.
        export: the float32 COG ``convert_npy2tiff`` made of it (no PNG, no STAC item).
        ckpt: checkpoints by name: good ones (demo, v1_1, v2) and broken ones.
    """

    root: Path
    roi: Path
    tiles: Path
    representation: Path
    stitched: Path
    export: Path
    ckpt: dict[str, Path] = field(default_factory=dict)


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def make_checkpoints(folder: Path) -> dict[str, Path]:
    """The demo and golden checkpoints, and broken ones built from them (see tests/infer/test_checkpoint.py)."""
    folder.mkdir()
    demo = infer_all_tiles.DEFAULT_CHECKPOINT
    ckpt = {"demo": demo, "v1_1": GOLDEN / "v1_1_mpc" / "v1_1_mpc.pt",
            "v2": GOLDEN / "v2_student" / "student_v2_student.pt"}
    (folder / "bad.pt").write_bytes(b"\x00garbage" * 100)
    ckpt["corrupt"] = folder / "bad.pt"
    (folder / "truncated.pt").write_bytes(demo.read_bytes()[: demo.stat().st_size // 2])
    ckpt["truncated"] = folder / "truncated.pt"
    ckpt["foreign"] = _save(folder / "resnet.pt", {"model_state_dict": {"conv1.weight": torch.zeros(3, 3)}})
    obj = torch.load(demo, weights_only=True)
    name = next(k for k, v in obj["model_state_dict"].items() if v.is_floating_point() and v.numel() > 2)
    obj["model_state_dict"][name].view(-1)[:2] = torch.tensor([float("nan"), float("inf")])
    ckpt["nan"] = _save(folder / "nan.pt", obj)
    ckpt["teacher"] = _save(folder / "teacher.pt", {"encoder_state_dict": {"w": torch.zeros(2)}})
    v2 = torch.load(ckpt["v2"], weights_only=True)
    ckpt["bare_v2"] = _save(folder / "bare_v2.pt", dict(v2["model"]))
    ckpt["v2_bad_args"] = _save(folder / "bad_args.pt", {"args": {**v2["args"], "num_layers": 3}, "model": v2["model"]})
    clean = torch.load(demo, weights_only=True)["model_state_dict"]
    ckpt["unsafe"] = _save(folder / "unsafe.pt", {"model_state_dict": clean, "args": argparse.Namespace(lr=0.1)})
    v11 = torch.load(ckpt["v1_1"], weights_only=True)
    ckpt["v1_1_nosource"] = _save(folder / "v1_1_nosource.pt", {
        **v11, "config": {k: v for k, v in v11["config"].items() if k != "data_source"}})
    return ckpt


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("world")
    roi = crop_roi(root / "roi.tiff", width=ROI_WIDTH, height=ROI_HEIGHT)
    assert pipeline.main([str(roi), *GOOD_DATES, *CATALOG, "--tile-size", "32", "-q"]) == 0
    assert infer_all_tiles.main(["--tiles-dir", str(root / "retiled_d_pixel"), "--max-cpu", "1", "--cores", "2",
                                 "--precision", "fp32", "-q"]) == 0
    assert stitch_tiled_representation.main(["--representation-dir", str(root / "representation_retiled"),
                                             "--roi", str(roi), "--out-dir", str(root), "-q"]) == 0
    stitched = root / "stitched_representation.npy"
    assert convert_npy2tiff.main(["--npy", str(stitched), "--ref-tiff", str(roi), "--out",
                                  str(root / "export" / "emb.tif"), "--no-png", "--no-stac", "-q"]) == 0
    _drop_owned_handlers()
    assert sorted(p.name for p in (root / "retiled_d_pixel").iterdir() if p.is_dir()) == [BIG_TILE, SMALL_TILE]
    return World(root=root, roi=roi, tiles=root / "retiled_d_pixel", representation=root / "representation_retiled",
                 stitched=stitched, export=root / "export" / "emb.tif", ckpt=make_checkpoints(root / "checkpoints"))


# ---- inputs a row writes into its own folder ----------------------------------------------------------------


def roi_copy(d: Path, width: int = ROI_WIDTH, height: int = ROI_HEIGHT) -> Path:
    """A good ROI crop in the row's folder (another size than the world's when asked)."""
    return crop_roi(d / f"roi_{width}x{height}.tiff", width=width, height=height)


def tiles_copy(w: World, d: Path) -> Path:
    """A copy of the world's tiles in the row's folder, to damage."""
    return Path(shutil.copytree(w.tiles, d / "retiled_d_pixel"))


def representation_copy(w: World, d: Path, name: str = "representation_retiled") -> Path:
    """A copy of the world's embeddings in the row's folder, to damage."""
    return Path(shutil.copytree(w.representation, d / name))


def saved(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def text_file(path: Path, text: str = "hello") -> Path:
    path.write_text(text)
    return path


def blocked(d: Path, *parts: str) -> Path:
    """A path under a regular file: its folder cannot be created."""
    return text_file(d / "a_file", "").joinpath(*parts)


def small_raster(d: Path, name: str = "roi.tiff", array: np.ndarray | None = None, **kwargs: object) -> Path:
    """A 5 x 5 raster of ones (or ``array``) near the demo, in UTM 31N unless told otherwise."""
    return write_raster(d / name, np.ones((5, 5), np.uint8) if array is None else array, **kwargs)  # type: ignore[arg-type]


def roi_without_crs(d: Path) -> Path:
    path = d / "roi.tiff"
    with rasterio.open(path, "w", driver="GTiff", width=5, height=5, count=1, dtype="uint8",
                       transform=Affine(10, 0, 664000, 0, -10, 5612000)) as dst:
        dst.write(np.ones((1, 5, 5), np.uint8))
    return path


def geojson(d: Path, geometry: dict[str, object], name: str = "area.geojson") -> Path:
    """A one-feature GeoJSON file (WGS84 lon/lat)."""
    feature = {"type": "Feature", "properties": {"id": 1}, "geometry": geometry}
    return text_file(d / name, json.dumps({"type": "FeatureCollection", "features": [feature]}))


def lonlat_box(lon0: float, lat0: float, lon1: float, lat1: float) -> dict[str, object]:
    return {"type": "Polygon", "coordinates": [[[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]]}


FIELD = lonlat_box(4.70, 50.80, 4.71, 50.81)


def damage_tile(w: World, d: Path, how: str) -> Path:
    """A tiles folder whose big tile is broken: a missing file, a wrong dtype or shape, or unreadable metadata."""
    tiles = tiles_copy(w, d)
    folder = tiles / BIG_TILE
    if how == "missing":
        (folder / "masks.npy").unlink()
    elif how == "dtype":
        np.save(folder / "doys.npy", np.load(folder / "doys.npy").astype(np.float64))
    elif how == "shape":
        np.save(folder / "masks.npy", np.load(folder / "masks.npy")[:, :10])
    elif how == "metadata":
        text_file(folder / "tile.json", "{not json")
    elif how == "run_key":
        meta = json.loads((folder / "tile.json").read_text())
        text_file(folder / "tile.json", json.dumps({**meta, "run_key": "0123456789abcdef"}))
    return tiles


def extra_embedding(w: World, d: Path, name: str, shape: tuple[int, ...], dtype: str = "float32") -> Path:
    """A copy of the world's embeddings plus (or with, replacing) the tile file ``name``."""
    rep = representation_copy(w, d)
    np.save(rep / f"{name}.npy", np.zeros(shape, dtype))
    return rep


def corrupt_embedding(w: World, d: Path) -> Path:
    rep = representation_copy(w, d)
    text_file(rep / f"{BIG_TILE}.npy", "not an array")
    return rep


def label_raster(w: World, d: Path, values: np.ndarray, shift_m: float = 0.0) -> Path:
    """A label raster on the world's grid (``shift_m`` east of it: no label on the map)."""
    with rasterio.open(w.roi) as src:
        transform, crs = src.transform, src.crs.to_string()
    return write_raster(d / "labels.tif", values.astype(np.uint8), crs=crs,
                        transform=Affine(10, 0, transform.c + shift_m, 0, -10, transform.f))


def two_classes(w: World, d: Path, shift_m: float = 0.0) -> Path:
    values = np.ones((ROI_HEIGHT, ROI_WIDTH), np.uint8)
    values[:, ROI_WIDTH // 2:] = 2
    return label_raster(w, d, values, shift_m)


# ---- argv of each entry point: inputs from the world, outputs into the row's folder d ----------------------


def preprocess(w: World, d: Path, *extra: str, roi: Path | None = None, dates: Sequence[str] = GOOD_DATES) -> list[str]:
    return [str(roi or w.roi), *dates, *CATALOG, "--tile-size", "32", "--data-dir", str(d), "-q", *extra]


def infer(w: World, d: Path, *extra: str, tiles: Path | None = None, ckpt: str | Path = "demo",
          out: Path | None = None) -> list[str]:
    """``ckpt``: a world checkpoint's name, or a path."""
    return ["--tiles-dir", str(tiles or w.tiles), "--output-dir", str(out or d / "out"), "--log-dir",
            str(d / "logs"), "--checkpoint", str(ckpt if isinstance(ckpt, Path) else w.ckpt[ckpt]), "--max-cpu", "1",
            "--cores", "2", "--precision", "fp32", "-q", *extra]


def stitch(w: World, d: Path, *extra: str, rep: Path | None = None, roi: Path | None = None) -> list[str]:
    return ["--representation-dir", str(rep or w.representation), "--roi", str(roi or w.roi), "--out-dir", str(d),
            "-q", *extra]


def export(w: World, d: Path, *extra: str, npy: Path | None = None, roi: Path | None = None,
           out: bool = True) -> list[str]:
    return ["--npy", str(npy or w.stitched), "--ref-tiff", str(roi or w.roi),
            *(["--out", str(d / "emb.tif")] if out else []), "--no-png", "-q", *extra]


def eval_map(w: World, d: Path, labels: Path | None, *extra: str, embeddings: Path | None = None) -> list[str]:
    return ["map", "--embeddings", str(embeddings or w.stitched), "--roi", str(w.roi),
            "--labels", str(labels or d / "none.tif"), "--out", str(d / "eval"), "--folds", "3",
            "--no-progress", "-q", *extra]


def eval_table(d: Path, *extra: str) -> list[str]:
    return ["table", "--out", str(d / "eval"), "--folds", "3", "--no-progress", "-q", *extra]


def train(d: Path, *extra: str) -> list[str]:
    return ["--out", str(d / "model.pt"), "--device", "cpu", "--threads", "2", "--batch-size", "8", "-q", *extra]


def run_worker(w: World, d: Path, ckpt: str | Path = "demo", tiles: Sequence[str] = (BIG_TILE,),
               device: str = "cpu") -> list[str]:
    """A worker run by hand, its job inline (as infer_all_tiles starts it)."""
    checkpoint = ckpt if isinstance(ckpt, Path) else w.ckpt[ckpt]
    job = WorkerJob(w.tiles, d / "out", checkpoint, tuple(tiles), InferenceOptions(precision="fp32"), device, 2,
                    log_file=d / "logs" / "worker.log")
    return ["--job", job.to_json(), "-q"]


def shp(d: Path, vector: Path, *extra: str) -> list[str]:
    return ["--shapefile", str(vector), "--out", str(d / "roi.tiff"), "-q", *extra]


def preprocess_over_other_tiles(w: World, d: Path) -> list[str]:
    """The world's tiles in the run folder, and a run with other dates over them."""
    tiles_copy(w, d)
    return preprocess(w, d, dates=["2020-11-01", "2021-09-30", *GOOD_DATES[2:]])


def shp_over_existing_out(d: Path) -> list[str]:
    text_file(d / "roi.tiff")
    return shp(d, geojson(d, FIELD))


def stitch_with_a_tile_missing(w: World, d: Path) -> list[str]:
    """Stitch checked against the run's tiles (--tiles-dir) when one tile has no embedding."""
    rep = representation_copy(w, d)
    (rep / f"{SMALL_TILE}.npy").unlink()
    return stitch(w, d, "--tiles-dir", str(w.tiles), rep=rep)


def stitch_over_existing_out(w: World, d: Path) -> list[str]:
    text_file(d / "stitched_representation.npy")
    return stitch(w, d)


def export_int8_over_float32(w: World, d: Path) -> list[str]:
    """An int8 export onto the float32 GeoTIFF the world made (other settings)."""
    shutil.copy(w.export, d / "emb.tif")
    return export(w, d, "--dtype", "int8", "--no-stac")


def eval_over_existing_report(w: World, d: Path) -> list[str]:
    text_file(empty_dir(d / "eval") / "report.md", "# an earlier report")
    return eval_map(w, d, two_classes(w, d))


def empty_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def future_date() -> str:
    return (dt.date.today() + dt.timedelta(days=30)).isoformat()


# ---- the table -----------------------------------------------------------------------------------------------

Entry = Callable[[Sequence[str] | None], int]
ArgvBuilder = Callable[[World, Path], list[str]]


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        id: the test id.
        entry: the entry point's ``main(argv) -> int``.
        argv: builds the arguments from the world and the row's own (empty) folder, writing any input it needs there.
        code: the exit code expected (2: bad input; argparse errors exit 2 too).
        phrases: what the one error line must contain: the flag, file or value to fix.
        needs: ``"cuda"`` or ``"no-cuda"``: skipped on a machine without (with) a CUDA GPU.
        lock: a folder (relative to the row's folder) that another run holds locked during the call.
    """

    id: str
    entry: Entry
    argv: ArgvBuilder
    code: int
    phrases: tuple[str, ...]
    needs: str | None = None
    lock: str | None = None


PRE, SHP, INFER, WORKER = pipeline.main, convert_shp_to_tiff.main, infer_all_tiles.main, worker.main
STITCH, EXPORT, EVAL, TRAIN, CATALOG_SCRIPT = (stitch_tiled_representation.main, convert_npy2tiff.main, eval_main,
                                               train_main, demo_catalog_main)

CASES: list[Case] = [
    # --- main_pipeline.sh: ROI ---
    Case("pre-roi-missing", PRE, lambda w, d: preprocess(w, d, roi=d / "nope.tiff"), 2,
         ("nope.tiff", "does not exist", "convert_shp_to_tiff")),
    Case("pre-roi-not-a-raster", PRE, lambda w, d: preprocess(w, d, roi=text_file(d / "roi.tiff")), 2,
         ("roi.tiff", "not a raster")),
    Case("pre-roi-png", PRE, lambda w, d: preprocess(w, d, roi=small_raster(d, "roi.png", driver="PNG")), 2,
         ("roi.png", "expected a GeoTIFF")),
    Case("pre-roi-geographic", PRE, lambda w, d: preprocess(w, d, roi=small_raster(
        d, crs="EPSG:4326", transform=Affine(0.0001, 0, 4.5, 0, -0.0001, 50.6))), 2, ("geographic CRS", "UTM")),
    Case("pre-roi-no-crs", PRE, lambda w, d: preprocess(w, d, roi=roi_without_crs(d)), 2, ("roi.tiff", "has no CRS")),
    Case("pre-roi-20m", PRE, lambda w, d: preprocess(w, d, roi=small_raster(
        d, transform=Affine(20, 0, 664000, 0, -20, 5612000))), 2, ("20 x 20 m", "expected 10 x 10 m", "gdalwarp")),
    Case("pre-roi-all-zero", PRE, lambda w, d: preprocess(w, d, roi=small_raster(d, array=np.zeros((5, 5), np.uint8))),
         2, ("roi.tiff", "no pixel inside")),
    Case("pre-roi-multi-band", PRE, lambda w, d: preprocess(w, d, roi=small_raster(
        d, array=np.ones((2, 5, 5), np.uint8))), 2, ("has 2 bands", "expected one band")),
    Case("pre-roi-feet", PRE, lambda w, d: preprocess(w, d, roi=small_raster(
        d, crs="EPSG:2263", transform=Affine(10, 0, 980000, 0, -10, 200000))), 2,
         ("US survey foot", "not the metre", "UTM")),
    # --- main_pipeline.sh: dates and flags ---
    Case("pre-dates-reversed", PRE, lambda w, d: preprocess(
        w, d, dates=["2021-10-31", "2020-11-01", *GOOD_DATES[2:]]), 2, ("S2 end 2020-11-01 is before its start",
                                                                        "swap them")),
    Case("pre-date-future", PRE, lambda w, d: preprocess(w, d, dates=[*GOOD_DATES[:3], future_date()]), 2,
         ("S1 end", "in the future", "earlier end date")),
    Case("pre-date-malformed", PRE, lambda w, d: preprocess(w, d, dates=["2021-13-01", *GOOD_DATES[1:]]), 2,
         ("S2 start '2021-13-01' is not a date", "YYYY-MM-DD")),
    Case("pre-range-over-a-year", PRE, lambda w, d: preprocess(
        w, d, dates=["2020-01-01", "2021-01-01", *GOOD_DATES[2:]]), 2, ("S2 range 2020-01-01..2021-01-01",
                                                                        "Split the run by year")),
    Case("pre-no-scenes", PRE, lambda w, d: preprocess(
        w, d, dates=["2019-01-01", "2019-06-30", "2019-01-01", "2019-06-30"]), 2,
         ("no Sentinel-2 scene found", "check the dates", "--max-cloud")),
    Case("pre-downsample-2", PRE, lambda w, d: preprocess(w, d, dates=[*GOOD_DATES, "2"]), 2,
         ("DOWNSAMPLE=2 is not supported", "pass 1")),
    Case("pre-downsample-not-int", PRE, lambda w, d: preprocess(w, d, dates=[*GOOD_DATES, "x"]), 2,
         ("downsample", "invalid int value: 'x'")),
    *[Case(f"pre-max-cloud-{value}", PRE, lambda w, d, value=value: preprocess(w, d, "--max-cloud", value), 2,
           ("--max-cloud must lie in 0-100", f"got {value}")) for value in ("150", "-1", "nan")],
    *[Case(f"pre-tile-size-{size}", PRE, lambda w, d, size=size: preprocess(w, d, "--tile-size", size), 2,
           (f"--tile-size must be at least 32 px, got {size}",)) for size in ("1", "31", "0", "-5")],
    Case("pre-workers-0", PRE, lambda w, d: preprocess(w, d, "--workers", "0"), 2, ("--workers must be positive",)),
    Case("pre-source-unknown", PRE, lambda w, d: preprocess(w, d, "--source", "nasa"), 2,
         ("--source", "invalid choice: 'nasa'")),
    Case("pre-data-dir-not-writable", PRE, lambda w, d: [*preprocess(w, d), "--data-dir", str(blocked(d, "run"))], 2,
         ("cannot write to the run folder (--data-dir)", "a_file")),
    Case("pre-tiles-of-other-settings", PRE, lambda w, d: preprocess_over_other_tiles(w, d), 2,
         ("was made by a run with other settings", "--overwrite", "--data-dir")),
    Case("pre-data-dir-locked", PRE, lambda w, d: preprocess(w, d), 2, ("is in use by another run", "other run"),
         lock="."),
    # --- convert_shp_to_tiff.py ---
    Case("shp-missing", SHP, lambda w, d: shp(d, d / "nope.shp"), 2, ("nope.shp", "does not exist", "--shapefile")),
    Case("shp-not-vector", SHP, lambda w, d: shp(d, text_file(d / "area.geojson", "hello")), 2,
         ("cannot read vector file", "area.geojson")),
    Case("shp-no-polygons", SHP, lambda w, d: shp(d, geojson(d, {"type": "Point", "coordinates": [4.7, 50.8]})), 2,
         ("only Point geometries", "expected polygons")),
    *[Case(f"shp-resolution-{value}", SHP, lambda w, d, value=value: shp(d, geojson(d, FIELD), "--resolution", value),
           2, ("--resolution must be a positive number of metres", f"got {value}")) for value in ("0", "-10", "nan")],
    *[Case(f"shp-burn-value-{value}", SHP, lambda w, d, value=value: shp(d, geojson(d, FIELD), "--burn-value", value),
           2, ("--burn-value must be in 1..255", f"got {value}")) for value in ("0", "256")],
    Case("shp-out-is-folder", SHP, lambda w, d: [*shp(d, geojson(d, FIELD)), "--out", str(d)], 2,
         ("is a folder", "roi.tiff")),
    Case("shp-out-exists", SHP, lambda w, d: shp_over_existing_out(d), 2,
         ("roi.tiff already exists", "--overwrite", "--out")),
    Case("shp-huge-polygon", SHP, lambda w, d: shp(d, geojson(d, lonlat_box(0.0, 40.0, 10.0, 50.0))), 2,
         ("--max-pixels", "--resolution")),
    Case("shp-epsg-geographic", SHP, lambda w, d: shp(d, geojson(d, FIELD), "--epsg", "4326"), 2,
         ("--epsg 4326", "not a projected CRS")),
    Case("shp-out-not-writable", SHP, lambda w, d: [*shp(d, geojson(d, FIELD)), "--out", str(blocked(d, "roi.tiff"))],
         2, ("cannot write to the output folder (--out)",)),
    # --- infer_all_tiles.sh: tiles ---
    Case("infer-tiles-missing", INFER, lambda w, d: infer(w, d, tiles=d / "nope"), 2,
         ("tiles folder", "nope", "does not exist", "--tiles-dir")),
    Case("infer-tiles-empty", INFER, lambda w, d: infer(w, d, tiles=empty_dir(d / "tiles")), 2,
         ("holds no tile folder", "main_pipeline.sh")),
    Case("infer-tile-missing-file", INFER, lambda w, d: infer(w, d, tiles=damage_tile(w, d, "missing")), 2,
         (BIG_TILE, "missing masks.npy", "re-run preprocessing")),
    Case("infer-tile-wrong-dtype", INFER, lambda w, d: infer(w, d, tiles=damage_tile(w, d, "dtype")), 2,
         ("doys.npy: dtype float64, expected uint16",)),
    Case("infer-tile-wrong-shape", INFER, lambda w, d: infer(w, d, tiles=damage_tile(w, d, "shape")), 2,
         ("masks.npy: shape",)),
    Case("infer-tile-metadata-unreadable", INFER, lambda w, d: infer(w, d, tiles=damage_tile(w, d, "metadata")), 2,
         (f"tile {BIG_TILE} has an unreadable tile.json", "rerun main_pipeline.sh")),
    Case("infer-tiles-of-two-runs", INFER, lambda w, d: infer(w, d, tiles=damage_tile(w, d, "run_key")), 2,
         ("mixes tiles of 2 preprocessing runs", "--overwrite")),
    # --- infer_all_tiles.sh: checkpoints ---
    Case("infer-ckpt-missing", INFER, lambda w, d: infer(w, d, ckpt=d / "none.pt"), 2,
         ("none.pt", "does not exist", "--checkpoint")),
    Case("infer-ckpt-corrupt", INFER, lambda w, d: infer(w, d, ckpt="corrupt"), 2, ("bad.pt", "corrupt")),
    Case("infer-ckpt-truncated", INFER, lambda w, d: infer(w, d, ckpt="truncated"), 2,
         ("truncated.pt", "truncated or corrupt")),
    Case("infer-ckpt-not-btfm", INFER, lambda w, d: infer(w, d, ckpt="foreign"), 2,
         ("resnet.pt", "not a BTFM checkpoint")),
    Case("infer-ckpt-nan-weights", INFER, lambda w, d: infer(w, d, ckpt="nan"), 2,
         ("nan.pt", "holds 2 NaN or infinite value(s)")),
    Case("infer-ckpt-v2-teacher", INFER, lambda w, d: infer(w, d, ckpt="teacher"), 2,
         ("teacher.pt", "v2 teacher", "student")),
    Case("infer-ckpt-unknown-family", INFER, lambda w, d: infer(w, d, ckpt="bare_v2"), 2,
         ("bare_v2.pt", "no known TESSERA family")),
    Case("infer-ckpt-v2-args-disagree", INFER, lambda w, d: infer(w, d, ckpt="v2_bad_args"), 2,
         ("bad_args.pt", "num_layers 3 in args but 2 in the weights")),
    Case("infer-ckpt-needs-code", INFER, lambda w, d: infer(w, d, ckpt="unsafe"), 2,
         ("unsafe.pt", "weights_only=True", "re-save")),
    # --- infer_all_tiles.sh: flags against the checkpoint ---
    Case("infer-model-family-mismatch", INFER, lambda w, d: infer(w, d, "--model-family", "v1.1"), 2,
         ("--model-family v1.1", "layout of the v1.0 family")),
    Case("infer-dim-non-matryoshka", INFER, lambda w, d: infer(w, d, "--dim", "64"), 2,
         ("--dim applies to Matryoshka families", "drop --dim")),
    *[Case(f"infer-dim-{dim}", INFER, lambda w, d, dim=dim: infer(w, d, "--dim", dim), 2,
           ("--dim", f"invalid choice: {dim}")) for dim in ("0", "256")],
    Case("infer-stats-contradicts", INFER, lambda w, d: infer(w, d, "--stats", "aws", ckpt="v1_1"), 2,
         ("--stats", "contradicts v1_1_mpc.pt")),
    Case("infer-stats-not-v1.1", INFER, lambda w, d: infer(w, d, "--stats", "aws"), 2,
         ("--stats applies to v1.1 checkpoints only",)),
    Case("infer-stats-undecided", INFER, lambda w, d: infer(w, d, ckpt="v1_1_nosource"), 2,
         ("v1_1_nosource.pt", "--stats")),
    Case("infer-engine-onnx-v2", INFER, lambda w, d: infer(w, d, "--engine", "onnxruntime", ckpt="v2"), 2,
         ("--engine onnxruntime runs v1.0 checkpoints only", "--engine torch")),
    # --- infer_all_tiles.sh: flags ---
    Case("infer-seed-negative", INFER, lambda w, d: infer(w, d, "--seed", "-1"), 2, ("--seed",)),
    *[Case(f"infer-split-{split.replace(':', '-')}", INFER,
           lambda w, d, split=split: infer(w, d, f"--cpu-gpu-split={split}"), 2, (f"--cpu-gpu-split '{split}'", hint))
      for split, hint in (("1-1", "1:1 or 3:1"), ("a:b", "1:1 or 3:1"), ("0:0", "not both 0"),
                          ("-1:2", "non-negative"))],
    Case("infer-no-worker", INFER, lambda w, d: infer(w, d, "--max-cpu", "0", "--max-gpu", "0"), 2,
         ("no worker to run", "--max-cpu is 0 and --max-gpu is 0")),
    Case("infer-no-worker-no-gpu", INFER, lambda w, d: infer(w, d, "--max-cpu", "0"), 2,
         ("no worker to run", "no CUDA GPU was found", "raise --max-cpu"), needs="no-cuda"),
    Case("infer-max-cpu-negative", INFER, lambda w, d: infer(w, d, "--max-cpu", "-1"), 2, ("--max-cpu", ">= 0")),
    Case("infer-cores-0", INFER, lambda w, d: infer(w, d, "--cores", "0"), 2, ("--cores", ">= 1")),
    Case("infer-repeat-0", INFER, lambda w, d: infer(w, d, "--repeat", "0"), 2, ("--repeat", ">= 1")),
    Case("infer-onnx-bf16", INFER, lambda w, d: infer(w, d, "--engine", "onnxruntime", "--precision", "bf16"), 2,
         ("--precision bf16 applies to the torch engine",)),
    Case("infer-int8-on-gpu", INFER, lambda w, d: [*infer(w, d, "--max-gpu", "1"), "--precision", "int8"], 2,
         ("--precision int8 runs on the CPU only", "--max-gpu 0"), needs="cuda"),
    # --- infer_all_tiles.sh: outputs ---
    Case("infer-output-of-another-seed", INFER, lambda w, d: infer(w, d, "--seed", "1", out=representation_copy(w, d)),
         2, ("holds embeddings made with another", "seed: 0 -> 1", "another --output-dir")),
    Case("infer-output-of-another-family", INFER, lambda w, d: infer(w, d, ckpt="v2", out=representation_copy(w, d)),
         2, ("holds embeddings made with another", "family", "another --output-dir")),
    Case("infer-output-not-writable", INFER, lambda w, d: infer(w, d, out=blocked(d, "out")), 2,
         ("cannot write to the output folder (--output-dir)", "a_file")),
    Case("infer-output-locked", INFER, lambda w, d: infer(w, d), 2, ("is in use by another run",), lock="out"),
    # --- python -m btfm_infer.worker ---
    Case("worker-device-unknown", WORKER, lambda w, d: run_worker(w, d, device="gpu0"), 2,
         ("device", "gpu0", "cpu, cuda or cuda:N")),
    Case("worker-job-not-json", WORKER, lambda w, d: ["--job", "{tiles"], 2, ("not a worker job", "--job")),
    Case("worker-job-field-missing", WORKER, lambda w, d: ["--job", '{"tiles_dir": "t"}'], 2,
         ("not a worker job", "output_dir")),
    Case("worker-job-file-missing", WORKER, lambda w, d: ["--job", str(d / "job.json")], 2,
         ("job.json", "cannot read it")),
    Case("worker-ckpt-missing", WORKER, lambda w, d: run_worker(w, d, ckpt=d / "none.pt"), 2,
         ("none.pt", "does not exist")),
    Case("worker-tile-name", WORKER, lambda w, d: run_worker(w, d, tiles=("tile7",)), 2,
         ("'tile7' is not a tile name", "<x0>_<y0>_<x1>_<y1>")),
    Case("worker-tile-missing", WORKER, lambda w, d: run_worker(w, d, tiles=("0_0_5_5",)), 2,
         ("tile folder", "0_0_5_5", "does not exist")),
    # --- stitch_tiled_representation.py ---
    Case("stitch-rep-missing", STITCH, lambda w, d: stitch(w, d, rep=d / "nope"), 2,
         ("representation folder", "does not exist", "--representation-dir")),
    Case("stitch-rep-empty", STITCH, lambda w, d: stitch(w, d, rep=empty_dir(d / "rep")), 2,
         ("holds no tile", "infer_all_tiles.sh")),
    Case("stitch-tile-corrupt", STITCH, lambda w, d: stitch(w, d, rep=corrupt_embedding(w, d)), 2,
         (f"{BIG_TILE}.npy", "not a readable .npy", "re-run inference")),
    Case("stitch-tile-dtype", STITCH, lambda w, d: stitch(w, d, rep=extra_embedding(
        w, d, BIG_TILE, (20, 32, 128), "float64")), 2, (f"{BIG_TILE}.npy: dtype float64, expected float32",)),
    Case("stitch-tile-shape", STITCH, lambda w, d: stitch(w, d, rep=extra_embedding(w, d, BIG_TILE, (20, 31, 128))),
         2, (f"{BIG_TILE}.npy: shape (20, 31, 128), expected (20, 32, 128)",)),
    Case("stitch-tile-of-another-roi", STITCH, lambda w, d: stitch(w, d, rep=extra_embedding(
        w, d, "40_0_72_20", (20, 32, 128))), 2, ("40_0_72_20", "belongs to another ROI", "--roi")),
    Case("stitch-tiles-overlap", STITCH, lambda w, d: stitch(w, d, rep=extra_embedding(
        w, d, "0_0_16_16", (16, 16, 128))), 2, ("0_0_16_16", "overlap", "Delete the stale files")),
    Case("stitch-out-name-path", STITCH, lambda w, d: stitch(w, d, "--out-name", "sub/map.npy"), 2,
         ("--out-name 'sub/map.npy' must be a file name", "--out-dir")),
    Case("stitch-roi-other-size", STITCH, lambda w, d: stitch(w, d, roi=roi_copy(d, 20, 20)), 2,
         ("belongs to another ROI", "--roi")),
    Case("stitch-roi-missing", STITCH, lambda w, d: stitch(w, d, roi=d / "nope.tiff"), 2,
         ("nope.tiff", "does not exist")),
    Case("stitch-tile-not-embedded", STITCH, lambda w, d: stitch_with_a_tile_missing(w, d), 2,
         ("1 of 2 tile(s) have no representation", SMALL_TILE, "infer_all_tiles.sh")),
    Case("stitch-tiles-of-two-runs", STITCH, lambda w, d: stitch(
        w, d, "--tiles-dir", str(damage_tile(w, d, "run_key"))), 2, ("mixes tiles of 2 preprocessing runs",)),
    Case("stitch-out-exists", STITCH, lambda w, d: stitch_over_existing_out(w, d), 2,
         ("stitched_representation.npy already exists", "--overwrite")),
    Case("stitch-out-not-writable", STITCH, lambda w, d: [*stitch(w, d), "--out-dir", str(blocked(d, "out"))], 2,
         ("cannot write to the output folder (--out-dir)",)),
    Case("stitch-out-locked", STITCH, lambda w, d: stitch(w, d), 2, ("is in use by another run",), lock="."),
    # --- convert_npy2tiff.py ---
    Case("export-npy-missing", EXPORT, lambda w, d: export(w, d, npy=d / "nope.npy"), 2,
         ("nope.npy", "does not exist", "--npy")),
    Case("export-npy-not-3d", EXPORT, lambda w, d: export(w, d, npy=saved(d / "flat.npy", np.zeros((20, 34), "f4"))),
         2, ("flat.npy", "expected (H, W, C)")),
    Case("export-npy-integer", EXPORT, lambda w, d: export(w, d, npy=saved(
        d / "int.npy", np.zeros((20, 34, 128), "i4"))), 2, ("int.npy", "dtype int32, expected floating point")),
    Case("export-npy-other-roi", EXPORT, lambda w, d: export(w, d, roi=roi_copy(d, 20, 20)), 2,
         ("stitched for another ROI", "Pass the ROI it was made from")),
    Case("export-no-tiff-no-zarr", EXPORT, lambda w, d: export(w, d, "--no-tiff", out=False), 2,
         ("--no-tiff leaves nothing to write", "--zarr")),
    Case("export-same-path-twice", EXPORT, lambda w, d: [*export(w, d, "--no-stac"), "--zarr", str(d / "emb.tif")], 2,
         ("must all be different paths",)),
    Case("export-max-size-0", EXPORT, lambda w, d: export(w, d, "--max-size", "0"), 2, ("--max-size must be >= 1",)),
    Case("export-run-metadata-missing", EXPORT, lambda w, d: export(w, d, "--run-metadata", str(d / "nope.json")), 2,
         ("nope.json", "does not exist", "--run-metadata")),
    Case("export-run-metadata-not-json", EXPORT, lambda w, d: export(
        w, d, "--run-metadata", str(text_file(d / "meta.json", "{nope"))), 2,
         ("meta.json", "not readable JSON", "--run-metadata")),
    Case("export-dtype-unknown", EXPORT, lambda w, d: export(w, d, "--dtype", "int16"), 2,
         ("--dtype", "invalid choice: 'int16'")),
    Case("export-out-of-other-settings", EXPORT, lambda w, d: export_int8_over_float32(w, d), 2,
         ("emb.tif already exists", "--overwrite", "--out")),
    Case("export-out-not-writable", EXPORT, lambda w, d: [*export(w, d), "--out", str(blocked(d, "emb.tif"))], 2,
         ("cannot write to the output folder", "a_file")),
    Case("export-out-locked", EXPORT, lambda w, d: export(w, d), 2, ("is in use by another run",), lock="."),
    # --- python -m btfm_eval ---
    Case("eval-embedding-missing", EVAL, lambda w, d: eval_map(w, d, two_classes(w, d), embeddings=d / "nope.tif"), 2,
         ("nope.tif", "does not exist", "--embeddings")),
    Case("eval-npy-without-roi", EVAL, lambda w, d: [a for a in eval_map(w, d, two_classes(w, d))
                                                     if a not in ("--roi", str(w.roi))], 2, ("--roi",)),
    Case("eval-labels-missing", EVAL, lambda w, d: eval_map(w, d, d / "nope.gpkg", "--label-column", "crop"), 2,
         ("nope.gpkg", "does not exist", "--labels")),
    Case("eval-labels-off-grid", EVAL, lambda w, d: eval_map(w, d, two_classes(w, d, shift_m=100_000)), 2,
         ("labels.tif", "has no label on the map's grid")),
    Case("eval-vector-without-column", EVAL, lambda w, d: eval_map(w, d, geojson(d, FIELD, "labels.geojson")), 2,
         ("--label-column",)),
    Case("eval-too-few-samples", EVAL, lambda w, d: eval_map(w, d, label_raster(
        w, d, np.ones((ROI_HEIGHT, ROI_WIDTH)))), 2, ("fewer than 2 classes", "lower --folds")),
    Case("eval-block-size-0", EVAL, lambda w, d: eval_map(w, d, two_classes(w, d), "--block-size", "0"), 2,
         ("--block-size must be >= 1",)),
    Case("eval-splits-unknown", EVAL, lambda w, d: eval_map(w, d, two_classes(w, d), "--splits", "random"), 2,
         ("--splits random", "choose from")),
    Case("eval-max-samples-1", EVAL, lambda w, d: eval_map(w, d, two_classes(w, d), "--max-samples", "1"), 2,
         ("--max-samples must be at least 2",)),
    Case("eval-train-fraction", EVAL, lambda w, d: eval_map(w, d, two_classes(w, d), "--train-fractions", "2"), 2,
         ("--train-fractions", "(0, 1]")),
    Case("eval-report-exists", EVAL, lambda w, d: eval_over_existing_report(w, d), 2,
         ("report.md already exists", "--overwrite", "--out")),
    Case("eval-mapping-key-unknown", EVAL, lambda w, d: eval_table(
        d, "--table", str(WORLDCEREAL), "--class-mapping", str(MAPPING), "--mapping-key", "CROPTYPE99"), 2,
         ("CROPTYPE99", "--mapping-key must be one of")),
    Case("eval-class-mapping-needed", EVAL, lambda w, d: eval_table(d, "--table", str(WORLDCEREAL)), 2,
         ("--class-mapping",)),
    Case("eval-table-missing", EVAL, lambda w, d: eval_table(
        d, "--table", str(d / "nope.parquet"), "--class-mapping", str(MAPPING)), 2, ("nope.parquet", "(--table)")),
    Case("eval-presto-classification", EVAL, lambda w, d: eval_table(
        d, "--table", str(PRESTO), "--task", "classification"), 2, ("--task regression",)),
    Case("eval-eolearn-bundle-missing", EVAL, lambda w, d: ["prepare-eolearn", str(d / "nope.npz"), "--out",
                                                            str(d / "run"), "-q"], 2, ("nope.npz", "does not exist")),
    # --- python -m btfm_train ---
    Case("train-no-data", TRAIN, lambda w, d: train(d), 2, ("give training data", "--table", "--tiles-dir")),
    Case("train-table-missing", TRAIN, lambda w, d: train(d, "--table", str(d / "nope.parquet")), 2,
         ("nope.parquet", "--table")),
    Case("train-tiles-missing", TRAIN, lambda w, d: train(d, "--tiles-dir", str(d / "nope")), 2,
         ("nope", "does not exist", "--tiles-dir")),
    Case("train-class-mapping-missing", TRAIN, lambda w, d: train(
        d, "--table", str(WORLDCEREAL), "--class-mapping", str(d / "nope.json")), 2, ("nope.json", "--class-mapping")),
    Case("train-mapping-key-unknown", TRAIN, lambda w, d: train(
        d, "--table", str(WORLDCEREAL), "--class-mapping", str(MAPPING), "--mapping-key", "CROPTYPE99"), 2,
         ("CROPTYPE99", "--mapping-key")),
    *[Case(f"train-eval-fraction-{value}", TRAIN, lambda w, d, value=value: train(
        d, "--table", str(WORLDCEREAL), "--class-mapping", str(MAPPING), "--eval-fraction", value, "--steps", "1",
        "--validate-every", "1"), 2, ("--eval-fraction", value)) for value in ("1.5", "-0.1")],
    Case("train-steps-0", TRAIN, lambda w, d: train(d, "--tiles-dir", str(w.tiles), "--max-tile-pixels", "50",
                                                    "--steps", "0"), 2, ("--steps", "got 0")),
    Case("train-out-not-writable", TRAIN, lambda w, d: [*train(d), "--out", str(blocked(d, "model.pt"))], 2,
         ("cannot write the log file", "--log-file")),
    # --- scripts/make_demo_catalog.py ---
    Case("demo-catalog-source-missing", CATALOG_SCRIPT, lambda w, d: [
        "--source", str(d / "nope.nc"), "--out", str(d / "demo"), "-q"], 2, ("nope.nc", "--source")),
]


# ---- the harness ---------------------------------------------------------------------------------------------


def _drop_owned_handlers() -> None:
    """Remove (and close) the handlers ``setup_logging`` installed: a log file, a console bound to an old stream."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, OWNED_HANDLER, False):
            root.removeHandler(handler)
            handler.close()


def call_in_process(entry: Entry, argv: list[str]) -> tuple[int, bool]:
    """``entry(argv)`` as a fresh process would run it: the exit code, and whether argparse exited.

    pytest's own log handlers are detached for the call, so a message logged before
    ``setup_logging`` reaches stderr as it would outside pytest.
    """
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not getattr(h, OWNED_HANDLER, False)]
    _drop_owned_handlers()
    for handler in foreign:
        root.removeHandler(handler)
    try:
        return entry(argv), False
    except SystemExit as exc:  # argparse
        return (exc.code if isinstance(exc.code, int) else 1), True
    finally:
        _drop_owned_handlers()
        for handler in foreign:
            root.addHandler(handler)


@contextlib.contextmanager
def held_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s run lock as another run would (flock on ``.btfm.lock``, holder recorded)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write(json.dumps({"pid": os.getpid(), "host": "here", "step": "test", "command": "other run",
                                 "started": time.time()}))
        handle.flush()
        yield


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file and link under ``folder``, by relative path (folders are not listed)."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_symlink() or path.is_file():
            stat = path.lstat()
            found[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return found


def is_log(relative: str) -> bool:
    parts = Path(relative).parts
    return ("logs" in parts[:-1] or parts[-1].endswith(".log")) and not parts[-1].startswith((TMP_PREFIX, LOCK_NAME))


def left_behind(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """Files that are new (other than logs) or changed (other than logs), and any new temporary or lock."""
    new = [f"new {p}" for p in sorted(set(after) - set(before)) if not is_log(p)]
    changed = [f"changed {p}" for p in sorted(set(after) & set(before)) if after[p] != before[p] and not is_log(p)]
    gone = [f"removed {p}" for p in sorted(set(before) - set(after))]
    return new + changed + gone


class MessageError(ValueError):
    """stderr is not one error line (plus warnings, or an argparse usage block)."""


def message_line(err: str, from_argparse: bool) -> str:
    """The one error line of stderr.

    Raises:
        MessageError: no error line, several, or other output than warnings (or argparse's usage block).
    """
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    if len(errors) != 1:
        raise MessageError(f"{len(errors)} error lines in stderr, expected exactly one")
    if from_argparse:
        if not lines[0].startswith("usage:") or lines[-1] != errors[0]:
            raise MessageError("an argparse exit without its usage block and final error line")
        return errors[0]
    other, in_warning = [], False
    for line in lines:
        in_warning = line.startswith("WARNING:") or (in_warning and line[:1].isspace())
        if not in_warning and line != errors[0]:
            other.append(line)
    if other:
        raise MessageError(f"stderr holds more than warnings and the error line: {other}")
    return errors[0]


def _skip_unless_runnable(case: Case) -> None:
    if case.needs == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if case.needs == "no-cuda" and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA GPU")


def problems_of(case: Case, code: int, from_argparse: bool, out: str, err: str) -> list[str]:
    """What is wrong with a run's exit code, stderr and stdout (empty: nothing)."""
    problems = []
    if "Traceback" in err:
        problems.append("a traceback on stderr")
    if code != case.code:
        problems.append(f"exit {code}, expected {case.code}")
    try:
        line = message_line(err, from_argparse)
    except MessageError as exc:
        problems.append(str(exc))
    else:
        problems += [f"{phrase!r} not in the message" for phrase in case.phrases if phrase not in line]
    if out:
        problems.append(f"stdout of a failed run: {out!r}")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _skip_unless_runnable(case)
    folder = tmp_path / "case"
    folder.mkdir()
    argv = case.argv(world, folder)
    with held_lock(folder / case.lock) if case.lock else contextlib.nullcontext():
        before, world_before = snapshot(folder), snapshot(world.root)
        capsys.readouterr()
        code, from_argparse = call_in_process(case.entry, argv)
        out, err = capsys.readouterr()
        after, world_after = snapshot(folder), snapshot(world.root)
    problems = problems_of(case, code, from_argparse, out, err)
    problems += left_behind(before, after) + [f"world: {p}" for p in left_behind(world_before, world_after)]
    assert not problems, "\n".join([*problems, "stderr:", err])


def test_the_table_covers_every_entry_point() -> None:
    assert len(CASES) >= 60 and len({case.id for case in CASES}) == len(CASES)
    assert {case.entry for case in CASES} == {PRE, SHP, INFER, WORKER, STITCH, EXPORT, EVAL, TRAIN, CATALOG_SCRIPT}


def test_the_harness_catches_what_it_must() -> None:
    assert message_line("WARNING: slow\n  detail\nERROR: --x must be 1\n", False) == "ERROR: --x must be 1"
    assert message_line("usage: p [-h]\n       [--x X]\np: error: argument --x: bad\n", True).endswith("bad")
    for err in ("ERROR: one\nERROR: two\n", "ERROR: one\nerror: two\n", "INFO: hi\nERROR: one\n", "", "oops\n"):
        with pytest.raises(MessageError):
            message_line(err, False)
    before = {"in.npy": (1, 1), "logs/old.log": (1, 1)}
    after = {"in.npy": (1, 2), "logs/old.log": (9, 9), "logs/new.log": (1, 1), "run.log": (1, 1),
             "out.npy": (1, 1), f"logs/{TMP_PREFIX}x": (1, 1), LOCK_NAME: (1, 1)}
    assert left_behind(before, after) == [f"new {LOCK_NAME}", "new logs/.tmp-x", "new out.npy", "changed in.npy"]
    assert left_behind(before, {}) == ["removed in.npy", "removed logs/old.log"]
