"""ROI validation: every bad ROI gets a clear error before any work starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from btfm_core.errors import InvalidROIError
from btfm_core.roi import open_roi
from tests.conftest import write_raster


def test_valid_roi(roi_tiff: Path) -> None:
    roi = open_roi(roi_tiff)
    assert roi.grid.shape == (23, 37)
    assert roi.inside_pixels == 23 * 37 - 35
    window = roi.grid.window(5, 2, 10, 8)
    assert roi.read_mask(window).shape == (6, 5)
    assert roi.read_mask(window)[0, 0] == 0 and roi.read_mask(window)[-1, -1] == 1


def test_missing_roi(tmp_path: Path) -> None:
    with pytest.raises(InvalidROIError, match="does not exist"):
        open_roi(tmp_path / "nope.tiff")


def test_not_a_raster(tmp_path: Path) -> None:
    path = tmp_path / "roi.tiff"
    path.write_text("not a tiff")
    with pytest.raises(InvalidROIError, match="not a raster"):
        open_roi(path)


def test_not_a_geotiff(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "roi.png", np.ones((10, 10), np.uint8), driver="PNG")
    with pytest.raises(InvalidROIError, match="expected a GeoTIFF"):
        open_roi(path)


def test_geographic_crs(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "roi.tiff", np.ones((10, 10), np.uint8), crs="EPSG:4326",
                        transform=Affine(0.0001, 0, 4.5, 0, -0.0001, 50.6))
    with pytest.raises(InvalidROIError, match="geographic CRS"):
        open_roi(path)


def test_20m_pixels(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "roi.tiff", np.ones((10, 10), np.uint8),
                        transform=Affine(20, 0, 664000, 0, -20, 5612000))
    with pytest.raises(InvalidROIError, match="20 x 20 m pixels; expected 10 x 10 m"):
        open_roi(path)


def test_all_zero_roi(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "roi.tiff", np.zeros((10, 10), np.uint8))
    with pytest.raises(InvalidROIError, match="no pixel inside"):
        open_roi(path)


def test_multi_band_roi(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "roi.tiff", np.ones((3, 10, 10), np.uint8))
    with pytest.raises(InvalidROIError, match="has 3 bands"):
        open_roi(path)


def test_rotated_roi(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "roi.tiff", np.ones((10, 10), np.uint8),
                        transform=Affine(10, 1, 664000, 1, -10, 5612000))
    with pytest.raises(InvalidROIError, match="rotated"):
        open_roi(path)
