"""Regenerate the embedded demo sample (data/demo_belgium) from the WorldCereal Belgian cube.

The cube (12 monthly composites, 100 x 100 px, 10 m, EPSG:32631) becomes a static STAC catalog
of per-date COGs laid out like Earth Search (S2 L2A) and Planetary Computer (S1 RTC), so the
pipeline reads it through the same STAC search and windowed COG reads as the remote sources.

Usage: python scripts/make_demo_catalog.py [--source NC] [--out data/demo_belgium]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import netCDF4
import numpy as np
import pystac
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.warp import transform_bounds, transform_geom
from shapely.geometry import Polygon, box, mapping

log = logging.getLogger("make_demo_catalog")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "demo_cube_belgium" / "worldcereal_preprocessed_inputs.nc"
EPSG = 32631
NODATA_IN = 65535
S1_NODATA = -32768.0
COG_MEDIA = "image/tiff; application=geotiff; profile=cloud-optimized"
#: Earth Search asset key -> (cube variable, native resolution in m)
S2_ASSETS: dict[str, tuple[str, int]] = {
    "blue": ("S2-L2A-B02", 10), "green": ("S2-L2A-B03", 10), "red": ("S2-L2A-B04", 10),
    "nir": ("S2-L2A-B08", 10), "rededge1": ("S2-L2A-B05", 20), "rededge2": ("S2-L2A-B06", 20),
    "rededge3": ("S2-L2A-B07", 20), "nir08": ("S2-L2A-B08", 20),  # B8A absent: B08 stands in
    "swir16": ("S2-L2A-B11", 20), "swir22": ("S2-L2A-B12", 20),
}
S1_ASSETS = {"vv": "S1-SIGMA0-VV", "vh": "S1-SIGMA0-VH"}
SCL_NO_DATA, SCL_UNCLASSIFIED = 0, 7


def block_mean(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """2 x 2 mean over valid pixels (0 where none is valid), as uint16."""
    h, w = data.shape
    d = np.where(valid, data, 0).astype(np.float64).reshape(h // 2, 2, w // 2, 2)
    n = valid.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
    total = d.sum(axis=(1, 3))
    return np.where(n > 0, np.round(total / np.maximum(n, 1)), 0).astype(np.uint16)


def write_cog(path: Path, data: np.ndarray, transform: Affine, nodata: float) -> None:
    """Write one band as a deflate-compressed cloud-optimised GeoTIFF."""
    predictor = 3 if data.dtype.kind == "f" else 2
    profile = {"driver": "COG", "width": data.shape[1], "height": data.shape[0], "count": 1,
               "dtype": data.dtype, "crs": CRS.from_epsg(EPSG), "transform": transform,
               "nodata": nodata, "compress": "DEFLATE", "predictor": predictor, "blocksize": 128}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def asset(href: str, data: np.ndarray, transform: Affine, nodata: float, title: str) -> pystac.Asset:
    """A STAC asset with projection and raster metadata."""
    return pystac.Asset(href=href, media_type=COG_MEDIA, roles=["data"], title=title, extra_fields={
        "proj:shape": list(data.shape), "proj:transform": list(transform)[:6],
        "raster:bands": [{"data_type": str(data.dtype), "nodata": nodata,
                          "spatial_resolution": transform.a}]})


def build(source: Path, out: Path) -> tuple[int, int]:
    """Write the catalog, COGs, ROI files; return (S2 items, S1 items)."""
    ds = netCDF4.Dataset(source)
    ds.set_auto_mask(False)
    x, y = np.asarray(ds["x"][:]), np.asarray(ds["y"][:])
    transform10 = Affine(10, 0, float(x[0]) - 5, 0, -10, float(y[0]) + 5)
    transform20 = transform10 @ Affine.scale(2)
    days = [dt.date(1990, 1, 1) + dt.timedelta(days=int(v)) for v in ds["t"][:]]
    cube = {name: np.asarray(ds[name][:]) for name in {*(v for v, _ in S2_ASSETS.values()), *S1_ASSETS.values()}}
    height, width = len(y), len(x)
    bounds = (transform10.c, transform10.f - 10 * height, transform10.c + 10 * width, transform10.f)
    footprint = transform_geom(f"EPSG:{EPSG}", "EPSG:4326", mapping(box(*bounds)))
    bbox = list(transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", *bounds))
    for generated in ("sentinel-2-l2a", "sentinel-1-rtc"):  # README.md and LICENSE are kept
        shutil.rmtree(out / generated, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    extent = pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent(
        [[dt.datetime.combine(days[0], dt.time(12), dt.timezone.utc),
          dt.datetime.combine(days[-1], dt.time(12), dt.timezone.utc)]]))
    catalog = pystac.Catalog("btfm-demo-belgium", "BTFM demo sample: WorldCereal monthly S1+S2 composites "
                             "over Belgium (2020-11..2021-10), 100 x 100 px at 10 m")
    s2 = pystac.Collection("sentinel-2-l2a", "Sentinel-2 L2A monthly composites, Earth Search asset names",
                           extent, license="MIT")
    s1 = pystac.Collection("sentinel-1-rtc", "Sentinel-1 sigma0 (linear power) monthly composites",
                           extent, license="MIT")
    catalog.add_children([s2, s1])
    for day in days:
        index = days.index(day)
        when = dt.datetime.combine(day, dt.time(12), dt.timezone.utc)
        stamp = day.strftime("%Y%m%d")
        nodata = np.zeros((height, width), bool)
        for var, _ in S2_ASSETS.values():
            nodata |= cube[var][index] == NODATA_IN
        item_dir = out / "sentinel-2-l2a" / f"S2_DEMO_BE_{stamp}"
        item_dir.mkdir(parents=True)
        item = pystac.Item(f"S2_DEMO_BE_{stamp}", footprint, bbox, when, properties={
            "platform": "sentinel-2", "constellation": "sentinel-2",
            "eo:cloud_cover": round(float(nodata.mean() * 100), 2), "proj:code": f"EPSG:{EPSG}",
            "proj:epsg": EPSG, "btfm:composite": "monthly", "btfm:b8a_substitute": "B08",
            "btfm:note": "monthly composite standing in for one acquisition; SCL derived from no-data"})
        for key, (var, res) in S2_ASSETS.items():
            values = np.where(nodata, 0, np.maximum(cube[var][index], 1)).astype(np.uint16)
            transform = transform10
            if res == 20:
                values, transform = block_mean(values, values > 0), transform20
            write_cog(item_dir / f"{key}.tif", values, transform, 0)
            item.add_asset(key, asset(f"./{key}.tif", values, transform, 0, f"{var[-3:]} ({res} m)"))
        scl = np.where(nodata, SCL_NO_DATA, SCL_UNCLASSIFIED).astype(np.uint8)[::2, ::2]
        write_cog(item_dir / "scl.tif", scl, transform20, 0)
        item.add_asset("scl", asset("./scl.tif", scl, transform20, 0, "SCL (derived from no-data, 20 m)"))
        s2.add_item(item)

        item_dir = out / "sentinel-1-rtc" / f"S1_DEMO_BE_{stamp}"
        item_dir.mkdir(parents=True)
        item = pystac.Item(f"S1_DEMO_BE_{stamp}", footprint, bbox, when, properties={
            "platform": "sentinel-1", "constellation": "sentinel-1", "sat:orbit_state": "ascending",
            "sar:polarizations": ["VV", "VH"], "sar:instrument_mode": "IW", "sar:product_type": "GRD",
            "btfm:backscatter": "sigma0", "proj:code": f"EPSG:{EPSG}", "proj:epsg": EPSG,
            "btfm:composite": "monthly"})
        for key, var in S1_ASSETS.items():
            dn = cube[var][index].astype(np.float64)
            linear = np.where(dn == NODATA_IN, S1_NODATA, 10 ** ((20 * np.log10(np.maximum(dn, 1)) - 83) / 10))
            linear = linear.astype(np.float32)
            write_cog(item_dir / f"{key}.tif", linear, transform10, S1_NODATA)
            item.add_asset(key, asset(f"./{key}.tif", linear, transform10, S1_NODATA,
                                      f"{key.upper()} sigma0, linear power"))
        s1.add_item(item)
    catalog.normalize_hrefs(str(out))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    for path in out.rglob("*.json"):  # stable bytes: sorted keys, no trailing whitespace
        path.write_text(json.dumps(json.loads(path.read_text()), indent=1, sort_keys=True) + "\n")
    write_rois(out, transform10, height, width)
    return len(days), len(days)


def write_rois(out: Path, transform: Affine, height: int, width: int) -> None:
    """roi.tiff on the cube grid (with outside pixels) and roi.geojson (WGS84, inset 50 m)."""
    rows, cols = np.mgrid[0:height, 0:width]
    inside = (rows + cols >= 25) & ~(((rows - 60) ** 2 + (cols - 65) ** 2) < 64)
    with rasterio.open(out / "roi.tiff", "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="uint8", crs=CRS.from_epsg(EPSG), transform=transform, compress="deflate") as dst:
        dst.write(inside.astype(np.uint8), 1)
    left, top = transform.c, transform.f
    west, south, east, north = left + 50, top - 10 * height + 50, left + 10 * width - 50, top - 50
    polygon = Polygon([(west, south), (east, south), (east, north - 300), (east - 300, north), (west, north)])
    geometry = transform_geom(f"EPSG:{EPSG}", "EPSG:4326", mapping(polygon), precision=7)
    feature = {"type": "Feature", "properties": {"name": "BTFM demo ROI (Belgium)"}, "geometry": geometry}
    (out / "roi.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]},
                                                indent=1) + "\n")
    assert rasterize([polygon], out_shape=(height, width), transform=transform).any()


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate data/demo_belgium."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the WorldCereal netCDF cube")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "demo_belgium")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if not args.source.is_file():
        log.error("source cube %s not found; pass --source", args.source)
        return 2
    n_s2, n_s1 = build(args.source, args.out)
    print(f"{args.out}: {n_s2} Sentinel-2 and {n_s1} Sentinel-1 items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
