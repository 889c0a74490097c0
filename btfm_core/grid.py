"""The one description of where pixels are: an immutable (CRS, affine transform, shape) grid."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

__all__ = ["Grid"]


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid.

    Attributes:
        crs: coordinate reference system as WKT (hashable and exact).
        transform: affine transform from (col, row) to CRS coordinates of pixel corners.
        height: number of rows.
        width: number of columns.
    """

    crs: str
    transform: Affine
    height: int
    width: int

    @classmethod
    def from_dataset(cls, dataset: object) -> Grid:
        """Build the grid of an open rasterio dataset."""
        return cls(
            crs=dataset.crs.to_wkt(),  # type: ignore[attr-defined]
            transform=dataset.transform,  # type: ignore[attr-defined]
            height=int(dataset.height),  # type: ignore[attr-defined]
            width=int(dataset.width),  # type: ignore[attr-defined]
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Grid:
        """The grid of a JSON record written by :meth:`to_record` (``shape`` may name more axes after H, W).

        Raises:
            KeyError, TypeError, ValueError, IndexError: the record is not one.
        """
        return cls(str(record["crs"]), Affine(*record["transform"][:6]), int(record["shape"][0]),
                   int(record["shape"][1]))

    def to_record(self) -> dict[str, Any]:
        """JSON-ready ``{"crs": WKT, "transform": [a, b, c, d, e, f], "shape": [H, W]}``."""
        return {"crs": self.crs, "transform": list(self.transform)[:6], "shape": list(self.shape)}

    def profile(self) -> dict[str, Any]:
        """The georeference of a rasterio ``open(..., "w", **profile)``: crs, transform, width, height."""
        return {"crs": self.rasterio_crs, "transform": self.transform, "width": self.width, "height": self.height}

    def same_as(self, other: Grid, tolerance_px: float = 1e-6) -> bool:
        """Whether both grids are the same up to floating-point noise: shape, CRS, and the transform
        (``numpy.allclose``: ``tolerance_px`` pixels absolute, plus its default relative tolerance)."""
        return (self.shape == other.shape and self.rasterio_crs == other.rasterio_crs
                and bool(np.allclose(list(self.transform)[:6], list(other.transform)[:6],
                                     atol=tolerance_px * max(self.resolution))))

    def geotransform(self) -> list[float]:
        """GDAL GeoTransform ``[x0, dx, rx, y0, ry, dy]``."""
        t = self.transform
        return [t.c, t.a, t.b, t.f, t.d, t.e]

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.height, self.width)

    @property
    def rasterio_crs(self) -> CRS:
        """The CRS as a rasterio object."""
        return CRS.from_user_input(self.crs)

    @property
    def resolution(self) -> tuple[float, float]:
        """(x, y) pixel size in CRS units, both positive."""
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))

    def window(self, x0: int, y0: int, x1: int, y1: int) -> Grid:
        """Sub-grid of columns ``x0:x1`` and rows ``y0:y1`` (clamped to this grid)."""
        x0, x1 = max(0, x0), min(self.width, x1)
        y0, y1 = max(0, y0), min(self.height, y1)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"empty window {x0}_{y0}_{x1}_{y1} of a {self.width}x{self.height} grid")
        return Grid(self.crs, self.transform @ Affine.translation(x0, y0), y1 - y0, x1 - x0)

    def bounds_in(self, crs: str) -> tuple[float, float, float, float]:
        """Bounds of this grid transformed to another CRS (densified edges)."""
        from rasterio.warp import transform_bounds

        west, south, east, north = transform_bounds(self.rasterio_crs, CRS.from_user_input(crs), *self.bounds,
                                                    densify_pts=21)
        return (west, south, east, north)

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in WGS84 degrees, for STAC searches."""
        return self.bounds_in("EPSG:4326")
