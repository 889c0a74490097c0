"""Fixtures of the evaluation tests: tiny crops of real data in tests/data/eval (see PROVENANCE.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from btfm_eval.__main__ import main as eval_main
from btfm_infer import convert_npy2tiff, infer_all_tiles, stitch_tiled_representation

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "eval"
SLOVENIA = FIXTURES / "slovenia_crop.npz"
WORLDCEREAL = FIXTURES / "worldcereal_fra_60.parquet"
MAPPING = FIXTURES / "class_mappings_croptype28.json"
FUEL = FIXTURES / "presto_fuel_moisture"
#: options that keep a CLI run to a few seconds
FAST = ["--folds", "3", "--train-fractions", "0.3", "--no-progress", "-q"]


@pytest.fixture(scope="session")
def slovenia_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Slovenia crop as a run folder: tiles, LULC labels, and the demo model's embedding GeoTIFF."""
    run = tmp_path_factory.mktemp("slovenia")
    assert eval_main(["prepare-eolearn", str(SLOVENIA), "--out", str(run), "--tile-size", "16", "-q"]) == 0
    assert infer_all_tiles.main(["--tiles-dir", str(run / "retiled_d_pixel"), "--max-cpu", "1", "--cores", "2",
                                 "-q"]) == 0
    assert stitch_tiled_representation.main(["--representation-dir", str(run / "representation_retiled"),
                                             "--roi", str(run / "roi.tiff"), "--out-dir", str(run), "-q"]) == 0
    assert convert_npy2tiff.main(["--npy", str(run / "stitched_representation.npy"), "--ref-tiff",
                                  str(run / "roi.tiff"), "--no-png", "-q"]) == 0
    return run
