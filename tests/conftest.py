"""Shared fixtures. The network is disabled for every test (pytest-socket, see pyproject)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "data" / "demo_belgium"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def write_raster(path: Path, array: np.ndarray, *, crs: str = "EPSG:32631",
                 transform: Affine | None = None, nodata: float | None = None,
                 driver: str = "GTiff") -> Path:
    """Write a (H, W) or (C, H, W) array as a georeferenced raster."""
    data = array[None] if array.ndim == 2 else array
    transform = transform or Affine(10, 0, 664000, 0, -10, 5612000)
    with rasterio.open(path, "w", driver=driver, width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs=crs, transform=transform,
                       nodata=nodata) as dst:
        dst.write(data)
    return path


@pytest.fixture
def roi_tiff(tmp_path: Path) -> Path:
    """A 23 x 37 px 10 m ROI in UTM 31N with a zero corner."""
    mask = np.ones((23, 37), np.uint8)
    mask[:5, :7] = 0
    return write_raster(tmp_path / "roi.tiff", mask)
