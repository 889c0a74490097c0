"""The stitched map as one object: checked once, read by windows and blocks, handed to every writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from btfm_core.errors import InputDataError
from btfm_core.roi import open_roi
from btfm_infer.embedding_map import EmbeddingMap, as_map, block_count, overview_source_indices
from btfm_infer.export_cog import write_embedding_cog
from tests.conftest import write_raster

H, W, C = 13, 21, 4


@pytest.fixture
def stitched(tmp_path: Path) -> EmbeddingMap:
    mask = np.ones((H, W), np.uint8)
    mask[:3, :5] = 0
    roi = write_raster(tmp_path / "roi.tiff", mask, transform=Affine(10, 0, 600000, 0, -10, 5700000))
    values = np.arange(H * W * C, dtype=np.float32).reshape(H, W, C)
    np.save(tmp_path / "map.npy", values)
    return EmbeddingMap.open(tmp_path / "map.npy", roi)


def test_a_window_has_its_values_inside_mask_and_grid(stitched: EmbeddingMap) -> None:
    block = stitched.window(2, 6, 4, 9)
    full = np.load(stitched.path)
    np.testing.assert_array_equal(block.values, full[2:6, 4:9])
    assert block.inside.sum() == 4 * 5 - 1  # (2, 4) is outside
    assert block.grid is not None and block.grid.transform == Affine(10, 0, 600040, 0, -10, 5699980)
    assert stitched.shape == (H, W, C) and stitched.grid == open_roi(stitched.roi.path).grid


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_blocks_cover_the_map_or_its_overview_once(stitched: EmbeddingMap, factor: int) -> None:
    full = np.load(stitched.path)
    rows, cols = overview_source_indices(H, factor), overview_source_indices(W, factor)
    expected = full[np.ix_(rows, cols)]
    seen = np.zeros(expected.shape[:2], int)
    blocks = list(stitched.blocks(4, 8, factor))
    assert len(blocks) == block_count(H, W, 4, 8, factor)
    for block in blocks:
        h, w = block.shape
        np.testing.assert_array_equal(block.values, expected[block.row0:block.row0 + h, block.col0:block.col0 + w])
        seen[block.row0:block.row0 + h, block.col0:block.col0 + w] += 1
    assert (seen == 1).all()


def test_writers_take_the_map_or_its_path(stitched: EmbeddingMap, tmp_path: Path) -> None:
    from_map = write_embedding_cog(stitched, None, tmp_path / "a.tif")
    from_path = write_embedding_cog(stitched.path, stitched.roi.path, tmp_path / "b.tif")
    with rasterio.open(from_map.path) as a, rasterio.open(from_path.path) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    with pytest.raises(InputDataError, match="pass its ROI"):
        as_map(stitched.path, None)


def test_a_map_of_another_roi_is_refused(stitched: EmbeddingMap, tmp_path: Path) -> None:
    np.save(tmp_path / "small.npy", np.zeros((H - 1, W, C), np.float32))
    with pytest.raises(InputDataError, match="stitched for another ROI"):
        EmbeddingMap.open(tmp_path / "small.npy", stitched.roi)
