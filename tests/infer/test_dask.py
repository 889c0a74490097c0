"""Tile jobs on a local Dask cluster give the same outputs as local worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from btfm_infer import infer_all_tiles
from btfm_preprocessing import pipeline
from tests.test_end_to_end import DATES, crop_roi, digest

pytest.importorskip("distributed")
pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]


def test_dask_local_cluster_matches_local_workers(tmp_path: Path) -> None:
    roi = crop_roi(tmp_path / "roi.tiff")
    assert pipeline.main([str(roi), *DATES, "--tile-size", "32", "-q"]) == 0
    tiles = str(tmp_path / "retiled_d_pixel")
    common = ["--tiles-dir", tiles, "--cores", "2", "--seed", "3", "-q"]
    assert infer_all_tiles.main([*common, "--output-dir", str(tmp_path / "local"), "--max-cpu", "2"]) == 0
    assert infer_all_tiles.main([*common, "--output-dir", str(tmp_path / "dask"), "--dask-local", "2"]) == 0
    assert len(list((tmp_path / "dask").glob("*.npy"))) == 4
    assert digest(tmp_path / "dask") == digest(tmp_path / "local")
    # resumed: nothing left to do
    assert infer_all_tiles.main([*common, "--output-dir", str(tmp_path / "dask"), "--dask-local", "2"]) == 0


def test_unreachable_scheduler(tmp_path: Path) -> None:
    from btfm_core.errors import BTFMError
    from btfm_core.tiles import TileId
    from btfm_infer.dask_backend import run_on_dask
    from btfm_infer.tile_inference import InferenceOptions

    with pytest.raises(BTFMError, match="cannot reach the Dask scheduler"):
        run_on_dask([TileId(0, 0, 10, 10)], tmp_path, tmp_path, tmp_path / "m.pt", InferenceOptions(),
                    scheduler="tcp://127.0.0.1:9", connect_timeout_s=1)
