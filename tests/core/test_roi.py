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


def _float_roi(outside: float) -> np.ndarray:
    """A 12 x 15 float32 ROI: 1.0 in a 7 x 9 block (63 px), ``outside`` elsewhere, a zero hole of 4 px."""
    data = np.full((12, 15), outside, np.float32)
    data[2:9, 3:12] = 1.0
    data[4:6, 5:7] = 0.0
    return data


@pytest.mark.parametrize(("outside", "nodata"), [(-9999.0, -9999.0), (np.nan, np.nan), (np.nan, None)],
                         ids=["nodata-9999", "nan-nodata", "nan-no-nodata"])
def test_nodata_and_nan_are_outside(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                    outside: float, nodata: float | None) -> None:
    path = write_raster(tmp_path / "roi.tiff", _float_roi(outside), nodata=nodata)
    with caplog.at_level("INFO", logger="btfm_core.roi"):
        roi = open_roi(path)
    assert roi.inside_pixels == 63 - 4  # not the 180 px of the bounding rectangle
    mask = roi.read_mask()
    assert mask.dtype == np.uint8 and int(mask.sum()) == 59 and mask[0, 0] == 0
    assert f"{12 * 15 - 63} pixel(s) treated as outside because they are nodata" in caplog.text


def test_uint8_nodata_value_is_outside(tmp_path: Path) -> None:
    data = np.full((10, 10), 255, np.uint8)
    data[:4, :5] = 1
    assert open_roi(write_raster(tmp_path / "roi.tiff", data, nodata=255)).inside_pixels == 20


def test_all_nodata_roi(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "roi.tiff", np.full((5, 5), -9999, np.float32), nodata=-9999)
    with pytest.raises(InvalidROIError, match=r"no pixel inside the region \(all zero or nodata \(25 px\)\)"):
        open_roi(path)


def test_feet_crs_is_refused(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "roi.tiff", np.ones((10, 10), np.uint8), crs="EPSG:2263",
                        transform=Affine(10, 0, 980000, 0, -10, 200000))
    with pytest.raises(InvalidROIError, match=r"EPSG:2263, whose unit is the US survey foot .* not the metre.*UTM"):
        open_roi(path)


@pytest.mark.parametrize("crs", ["EPSG:3857", "EPSG:27700"])
def test_other_metric_crs_accepted(tmp_path: Path, crs: str) -> None:
    path = write_raster(tmp_path / "roi.tiff", np.ones((10, 10), np.uint8), crs=crs,
                        transform=Affine(10, 0, 400000, 0, -10, 300000))
    assert open_roi(path).inside_pixels == 100
