"""The tile folder contract: naming, layout, writer and validating reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from btfm_core.errors import TileFormatError
from btfm_core.grid import Grid
from btfm_core.tiles import (
    S2_BANDS,
    TileId,
    TileWriter,
    list_tiles,
    read_tile,
    read_tile_metadata,
    tile_layout,
)

GRID = Grid("EPSG:32631", Affine(10, 0, 600000, 0, -10, 5600000), 30, 40)


def test_tile_name_is_column_first_and_round_trips() -> None:
    tile = TileId(x0=0, y0=3500, x1=500, y1=4000)
    assert tile.name == "0_3500_500_4000"
    assert tile.shape == (500, 500)
    assert TileId.parse("0_3500_500_4000") == tile


@pytest.mark.parametrize("name", ["0_0_0_10", "a_b_c_d", "0_0_10", "10_0_5_5"])
def test_bad_tile_names_are_rejected(name: str) -> None:
    with pytest.raises(TileFormatError):
        TileId.parse(name)


def test_layout_clamps_edge_tiles_and_covers_grid() -> None:
    tiles = tile_layout(height=30, width=45, tile_size=20)
    assert [t.name for t in tiles] == ["0_0_20_20", "20_0_40_20", "40_0_45_20",
                                       "0_20_20_30", "20_20_40_30", "40_20_45_30"]
    assert sum(t.shape[0] * t.shape[1] for t in tiles) == 30 * 45


def test_tile_grid_is_the_roi_window() -> None:
    grid = TileId(10, 20, 40, 30).grid(GRID)
    assert grid.shape == (10, 30)
    assert grid.transform == Affine(10, 0, 600100, 0, -10, 5599800)


def _write_tile(tiles_dir: Path, tile: TileId, n_s2: int = 3, n_asc: int = 2, n_desc: int = 0) -> Path:
    grid = tile.grid(GRID)
    roi = np.ones(grid.shape, np.uint8)
    with TileWriter(tiles_dir, tile, grid, roi, {"note": "test"}) as writer:
        bands = writer.allocate_bands(n_s2)
        bands[:] = 7
        writer.allocate_masks(n_s2)[:] = 1
        writer.write_array("doys.npy", np.arange(1, n_s2 + 1) * 10)
        writer.allocate_sar("ascending", n_asc)[:] = 9000
        writer.write_array("sar_ascending_doy.npy", np.arange(n_asc) + 5)
        writer.allocate_sar("descending", n_desc)
        writer.write_array("sar_descending_doy.npy", np.arange(n_desc))
    return tiles_dir / tile.name


def test_writer_output_reads_back_with_contract_dtypes(tmp_path: Path) -> None:
    folder = _write_tile(tmp_path, TileId(0, 0, 20, 10))
    tile = read_tile(folder)
    assert tile.bands.shape == (3, 10, 20, len(S2_BANDS)) and tile.bands.dtype == np.uint16
    assert tile.masks.dtype == np.uint8 and tile.doys.dtype == np.uint16
    assert tile.sar_ascending.shape == (2, 10, 20, 2) and tile.sar_ascending.dtype == np.int16
    assert tile.sar_descending.shape == (0, 10, 20, 2)
    assert tile.sar_descending_doy.dtype == np.int32
    meta = read_tile_metadata(folder)
    assert meta["tile"] == "0_0_20_10" and meta["note"] == "test" and meta["schema_version"] == 1
    assert list_tiles(tmp_path) == [TileId(0, 0, 20, 10)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    tile = TileId(0, 0, 20, 10)
    with pytest.raises(RuntimeError), TileWriter(tmp_path, tile, tile.grid(GRID), np.ones((10, 20))) as w:
        w.allocate_bands(2)
        raise RuntimeError("crash mid-tile")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_inconsistent_dates(tmp_path: Path) -> None:
    tile = TileId(0, 0, 20, 10)
    with pytest.raises(TileFormatError, match="inconsistent T"), \
            TileWriter(tmp_path, tile, tile.grid(GRID), np.ones((10, 20))) as writer:
        writer.allocate_bands(3)
        writer.allocate_masks(2)
        writer.write_array("doys.npy", np.array([1, 2, 3]))
    assert list(tmp_path.iterdir()) == []


def test_missing_file_is_named(tmp_path: Path) -> None:
    folder = _write_tile(tmp_path, TileId(0, 0, 20, 10))
    (folder / "masks.npy").unlink()
    with pytest.raises(TileFormatError, match=r"missing masks\.npy"):
        read_tile(folder)


def test_wrong_dtype_is_named(tmp_path: Path) -> None:
    folder = _write_tile(tmp_path, TileId(0, 0, 20, 10))
    np.save(folder / "bands.npy", np.zeros((3, 10, 20, 10), np.float32))
    with pytest.raises(TileFormatError, match=r"bands.npy: dtype float32, expected uint16"):
        read_tile(folder)


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _write_tile(tmp_path, TileId(0, 0, 20, 10))
    np.save(folder / "masks.npy", np.zeros((3, 10, 21), np.uint8))
    with pytest.raises(TileFormatError, match=r"masks\.npy"):
        read_tile(folder)


def test_truncated_array_is_reported_as_corrupt(tmp_path: Path) -> None:
    folder = _write_tile(tmp_path, TileId(0, 0, 20, 10))
    data = (folder / "bands.npy").read_bytes()
    (folder / "bands.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(TileFormatError, match="corrupt"):
        read_tile(folder)


def test_unsorted_doys_are_rejected(tmp_path: Path) -> None:
    folder = _write_tile(tmp_path, TileId(0, 0, 20, 10))
    np.save(folder / "doys.npy", np.array([30, 10, 20], np.uint16))
    with pytest.raises(TileFormatError, match="ascending"):
        read_tile(folder)


def test_empty_or_missing_tiles_dir(tmp_path: Path) -> None:
    with pytest.raises(TileFormatError, match="does not exist"):
        list_tiles(tmp_path / "nope")
    with pytest.raises(TileFormatError, match="holds no tile"):
        list_tiles(tmp_path)
