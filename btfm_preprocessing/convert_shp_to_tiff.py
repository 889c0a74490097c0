"""Rasterize a polygon file (shapefile, GeoJSON, GPKG, ...) into a 0/1 ROI GeoTIFF.

The output is what the pipeline expects as ROI: one uint8 band, ``--burn-value`` inside the
polygons and 0 outside, on a north-up grid in the local UTM zone (or ``--epsg``) whose origin is
a multiple of the resolution.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyogrio
import rasterio
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry.base import BaseGeometry

from btfm_core.cli import HelpFormatter, add_overwrite_option, add_standard_options, entry_point, prog_name
from btfm_core.errors import BTFMError, InvalidROIError, TooLargeError
from btfm_core.fileio import atomic_path, ensure_writable_dir, human_bytes, refuse_overwrite
from btfm_core.grid import Grid
from btfm_core.logs import setup_logging

log = logging.getLogger("btfm_preprocessing.convert_shp_to_tiff")

PIPELINE_RESOLUTION_M = 10.0
BLOCK_SIZE = 256
_WGS84 = CRS.from_epsg(4326)
_POLYGONAL = (shapely.Polygon, shapely.MultiPolygon)


def utm_epsg_for(lon: float, lat: float) -> int:
    """EPSG code of the WGS84 UTM zone containing a point.

    Applies the Norway (zone 32V widened to 3°E–12°E) and Svalbard (zones 31X/33X/35X/37X)
    exceptions of the UTM grid.

    Args:
        lon: longitude in degrees (-180..180).
        lat: latitude in degrees (-90..90).

    Returns:
        326xx for the northern hemisphere (lat >= 0), 327xx for the southern one.
    """
    lon = ((lon + 180.0) % 360.0) - 180.0 if not -180.0 <= lon <= 180.0 else lon
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        zone = 32
    elif 72.0 <= lat <= 84.0 and 0.0 <= lon < 42.0:
        if lon < 9.0:
            zone = 31
        elif lon < 21.0:
            zone = 33
        elif lon < 33.0:
            zone = 35
        else:
            zone = 37
    return (32600 if lat >= 0 else 32700) + zone


#: Largest ROI raster written by default: 10^9 px (1 GB of uint8 in memory), a 316 x 316 km square at 10 m.
DEFAULT_MAX_PIXELS = 1_000_000_000


def check_grid_size(grid: Grid, max_pixels: int) -> None:
    """Refuse an ROI raster larger than ``max_pixels`` before allocating it.

    Raises:
        TooLargeError: with its size in pixels and bytes and the flag that raises the limit.
    """
    pixels = grid.height * grid.width
    if pixels > max_pixels:
        raise TooLargeError(
            f"the ROI raster would be {grid.width} x {grid.height} px ({pixels:,} px, {human_bytes(pixels)} of uint8), "
            f"more than the limit of {max_pixels:,} px; check the polygons' extent and --resolution, split the "
            "region, or raise the limit with --max-pixels")


def check_resolution(resolution: float) -> None:
    """Reject a pixel size that is not a positive, finite number of metres.

    Raises:
        BTFMError: naming ``--resolution`` and the value given.
    """
    if not (math.isfinite(resolution) and resolution > 0):
        raise BTFMError(f"--resolution must be a positive number of metres, got {resolution:g}")


def _polygon_parts(geom: BaseGeometry | None) -> list[BaseGeometry]:
    """The polygonal parts of a geometry (collections are searched recursively)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, _POLYGONAL):
        return [geom]
    if isinstance(geom, shapely.GeometryCollection):
        return [part for sub in geom.geoms for part in _polygon_parts(sub)]
    return []


def _within_lonlat(bounds: tuple[float, float, float, float]) -> bool:
    minx, miny, maxx, maxy = bounds
    return -180.0 <= minx <= maxx <= 180.0 and -90.0 <= miny <= maxy <= 90.0


def read_polygons(path: str | Path, layer: str | None = None) -> tuple[BaseGeometry, str]:
    """Read a vector file and return the union of its (multi)polygons.

    A file without a CRS is assumed to be WGS84 lon/lat when all coordinates are within
    lon/lat bounds (with a warning); otherwise it is rejected.

    Args:
        path: any vector file GDAL reads (shapefile, GeoJSON, GPKG, ...).
        layer: layer name for multi-layer files; the first layer when None.

    Returns:
        (union of all polygons, CRS of the file as WKT).

    Raises:
        InvalidROIError: missing or unreadable file, unknown layer, no polygon, empty union,
            or no CRS with coordinates that are not lon/lat.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidROIError(f"vector file {path} does not exist (--shapefile). Give a shapefile, "
                              "GeoJSON or GeoPackage with the ROI polygons.")
    try:
        meta, _fids, wkbs, _fields = pyogrio.raw.read(path, layer=layer, columns=[], read_geometry=True)
    except Exception as exc:  # pyogrio raises several DataSource/DataLayer errors
        raise InvalidROIError(f"cannot read vector file {path}"
                              f"{f' layer {layer!r}' if layer else ''}: {exc}") from exc
    geoms = shapely.from_wkb(wkbs, on_invalid="ignore") if wkbs is not None else np.array([])
    parts = [part for geom in geoms for part in _polygon_parts(geom)]
    if not parts:
        kinds = sorted({g.geom_type for g in geoms if g is not None and not g.is_empty})
        found = f"only {', '.join(kinds)} geometries" if kinds else "no geometry"
        raise InvalidROIError(f"vector file {path} has {found}; expected polygons or multipolygons "
                              "outlining the ROI.")
    union = shapely.union_all([shapely.make_valid(p) for p in parts])
    union = shapely.union_all(_polygon_parts(union)) if not isinstance(union, _POLYGONAL) else union
    if union.is_empty or union.area == 0:
        raise InvalidROIError(f"the polygons in {path} are empty (zero area).")
    crs_text = meta.get("crs")
    if crs_text:
        try:
            crs_wkt = CRS.from_user_input(crs_text).to_wkt()
        except CRSError as exc:
            raise InvalidROIError(f"vector file {path} has a CRS pyproj cannot read ({exc}).") from exc
    elif _within_lonlat(union.bounds):
        log.warning("%s has no CRS; assuming WGS84 longitude/latitude (EPSG:4326)", path)
        crs_wkt = _WGS84.to_wkt()
    else:
        raise InvalidROIError(
            f"vector file {path} has no CRS and its coordinates {tuple(round(b, 3) for b in union.bounds)} "
            "are not longitude/latitude. Add a .prj file (e.g. with ogr2ogr -a_srs EPSG:xxxx)."
        )
    return union, crs_wkt


def _reproject(geometry: BaseGeometry, src: CRS, dst: CRS) -> BaseGeometry:
    """Reproject a geometry, densifying its edges first so curved edges stay accurate."""
    if src == dst:
        return geometry
    minx, miny, maxx, maxy = geometry.bounds
    step = max(maxx - minx, maxy - miny) / 200.0
    if step > 0:
        geometry = shapely.segmentize(geometry, step)
    transformer = Transformer.from_crs(src, dst, always_xy=True)
    out = shapely.transform(geometry, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
    if not np.all(np.isfinite(out.bounds)):
        raise InvalidROIError(f"the polygons cannot be projected to {dst.to_string()} (outside its area of use).")
    return shapely.make_valid(out)


def roi_grid_for(geometry: BaseGeometry, crs: str, resolution: float = PIPELINE_RESOLUTION_M,
                 epsg: int | None = None) -> tuple[Grid, BaseGeometry]:
    """Choose the output grid for an ROI geometry.

    Args:
        geometry: polygons in ``crs``.
        crs: CRS of ``geometry`` (WKT, "EPSG:n", ...).
        resolution: pixel size in metres.
        epsg: output CRS; the UTM zone of the geometry's WGS84 centroid when None.

    Returns:
        (grid whose bounds are the geometry's bounds snapped outward to multiples of
        ``resolution``, geometry reprojected to the grid's CRS).

    Raises:
        BTFMError: non-positive resolution; unknown ``epsg``, or one that is geographic or not
            in metres.
    """
    check_resolution(resolution)
    src = CRS.from_user_input(crs)
    if epsg is None:
        centroid = _reproject(geometry, src, _WGS84).centroid
        epsg = utm_epsg_for(centroid.x, centroid.y)
        if not -80.0 <= centroid.y <= 84.0:
            log.warning("the ROI centre (latitude %.2f) is outside the UTM zones (80°S..84°N); using "
                        "EPSG:%d, but a polar CRS given with --epsg (e.g. 3413, 3031) distorts less",
                        centroid.y, epsg)
    try:
        dst = CRS.from_epsg(epsg)
    except CRSError as exc:
        raise BTFMError(f"--epsg {epsg} is not a known EPSG code ({exc})") from exc
    if not dst.is_projected:
        raise BTFMError(f"--epsg {epsg} ({dst.name}) is not a projected CRS; the ROI needs metres, "
                        "e.g. a UTM zone 326xx/327xx")
    units = {axis.unit_name for axis in dst.axis_info}
    if units != {"metre"}:
        raise BTFMError(f"--epsg {epsg} ({dst.name}) has axes in {', '.join(sorted(units))}; the ROI "
                        "needs metres, e.g. a UTM zone 326xx/327xx")
    projected = _reproject(geometry, src, dst)
    minx, miny, maxx, maxy = projected.bounds
    left = math.floor(minx / resolution) * resolution
    bottom = math.floor(miny / resolution) * resolution
    right = max(math.ceil(maxx / resolution) * resolution, left + resolution)
    top = max(math.ceil(maxy / resolution) * resolution, bottom + resolution)
    width = round((right - left) / resolution)
    height = round((top - bottom) / resolution)
    grid = Grid(crs=rasterio.crs.CRS.from_epsg(epsg).to_wkt(),
                transform=Affine(resolution, 0.0, left, 0.0, -resolution, top),
                height=height, width=width)
    return grid, projected


def rasterize_roi(geometry: BaseGeometry, grid: Grid, burn_value: int = 1,
                  all_touched: bool = False) -> np.ndarray:
    """Burn a geometry (in the grid's CRS) into a (H, W) uint8 array: ``burn_value`` inside, 0 outside.

    Raises:
        InvalidROIError: when no pixel is inside (polygon smaller than a pixel).
    """
    mask = rasterio.features.rasterize([(geometry, burn_value)], out_shape=grid.shape,
                                       transform=grid.transform, fill=0, all_touched=all_touched,
                                       dtype="uint8")
    if not mask.any():
        raise InvalidROIError("no pixel centre falls inside the polygons; they are smaller than a "
                              "pixel. Pass --all-touched or a smaller --resolution.")
    return mask


def _write_geotiff(path: Path, mask: np.ndarray, grid: Grid) -> None:
    profile = {
        "driver": "GTiff", "dtype": "uint8", "count": 1, **grid.profile(), "compress": "deflate",
        "tiled": True, "blockxsize": BLOCK_SIZE, "blockysize": BLOCK_SIZE,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask, 1)


def convert(shapefile: str | Path, out: str | Path, *, resolution: float = PIPELINE_RESOLUTION_M,
            burn_value: int = 1, epsg: int | None = None, layer: str | None = None,
            all_touched: bool = False, overwrite: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> Path:
    """Rasterize the polygons of a vector file into an ROI GeoTIFF.

    Args:
        shapefile: input vector file.
        out: output GeoTIFF, written atomically.
        resolution: pixel size in metres (the pipeline needs 10).
        burn_value: value of pixels inside the polygons (1..255).
        epsg: output CRS; the local UTM zone when None.
        layer: input layer name; the first layer when None.
        all_touched: burn every pixel the polygons touch, not only those whose centre is inside.
        overwrite: replace an existing ``out``.
        max_pixels: refuse a raster of more pixels (checked before it is allocated).

    Returns:
        the path written.

    Raises:
        BTFMError: bad flags or an existing output without ``overwrite``.
        InvalidROIError: unusable input polygons.
        OutputNotWritableError: output folder not writable.
        TooLargeError: the raster would have more than ``max_pixels`` pixels.
    """
    out = Path(out)
    check_resolution(resolution)
    if not 1 <= burn_value <= 255:
        raise BTFMError(f"--burn-value must be in 1..255 (uint8, 0 = outside), got {burn_value}")
    if out.is_dir():
        raise BTFMError(f"--out {out} is a folder; give a file name such as {out / 'roi.tiff'}")
    refuse_overwrite(out, overwrite, "--out")
    if resolution != PIPELINE_RESOLUTION_M:
        log.warning("--resolution %g: the pipeline needs a 10 m ROI; this raster will be rejected "
                    "by main_pipeline.sh", resolution)
    ensure_writable_dir(out.parent if str(out.parent) else Path("."), "output folder (--out)")
    geometry, crs_wkt = read_polygons(shapefile, layer)
    grid, projected = roi_grid_for(geometry, crs_wkt, resolution, epsg)
    check_grid_size(grid, max_pixels)
    mask = rasterize_roi(projected, grid, burn_value, all_touched)
    with atomic_path(out) as tmp:
        _write_geotiff(tmp, mask, grid)
    inside = int(np.count_nonzero(mask))
    log.info("wrote %s: %d x %d pixels of %g m in EPSG:%s, %d inside (%.3f km²)", out, grid.width,
             grid.height, resolution, grid.rasterio_crs.to_epsg(), inside, inside * resolution**2 / 1e6)
    return out


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the converter."""
    parser = argparse.ArgumentParser(
        prog=prog_name("btfm_preprocessing.convert_shp_to_tiff"),
        description="Rasterize the polygons of a vector file (shapefile, GeoJSON, GPKG, ...) into "
                    "the ROI GeoTIFF main_pipeline.sh takes: uint8, burn value inside, 0 outside, "
                    "north-up in the local UTM zone, origin snapped to the resolution.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  python btfm_preprocessing/convert_shp_to_tiff.py --shapefile field.shp --out my_data/roi.tiff\n"
               "  python btfm_preprocessing/convert_shp_to_tiff.py --shapefile area.geojson \\\n"
               "      --out my_data/roi.tiff --all-touched --overwrite\n"
               "  python btfm_preprocessing/convert_shp_to_tiff.py --shapefile parcels.gpkg --layer fields \\\n"
               "      --out roi.tiff --epsg 32631\n",
    )
    parser.add_argument("--shapefile", required=True, type=Path,
                        help="input polygons: any vector format GDAL reads (shp, GeoJSON, GPKG)")
    parser.add_argument("--out", required=True, type=Path, help="output ROI GeoTIFF, e.g. roi.tiff")
    parser.add_argument("--resolution", type=float, default=PIPELINE_RESOLUTION_M,
                        help="pixel size in metres (the pipeline needs 10)")
    parser.add_argument("--burn-value", type=int, default=1, help="value inside the polygons (1..255)")
    parser.add_argument("--epsg", type=int, default=None,
                        help="output CRS as an EPSG code (default: UTM zone of the ROI's centroid)")
    parser.add_argument("--layer", default=None, help="layer of a multi-layer file (default: the first)")
    parser.add_argument("--all-touched", action="store_true",
                        help="burn every pixel touched by a polygon, not only pixel centres inside")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse an ROI raster of more pixels (it is built in memory, 1 byte a pixel)")
    add_overwrite_option(parser, "replace an existing --out")
    add_standard_options(parser)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Convert from the command line; exit code 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    setup_logging(None, args.verbosity)
    out = convert(args.shapefile, args.out, resolution=args.resolution, burn_value=args.burn_value,
                  epsg=args.epsg, layer=args.layer, all_touched=args.all_touched,
                  overwrite=args.overwrite, max_pixels=args.max_pixels)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
