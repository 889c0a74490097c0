"""Preprocessing memory benchmark: peak RSS must stay flat as the ROI grows; bytes read scale with area.

Builds a synthetic catalog of per-date COGs (1024 x 1024 px at 10 m, 20 m bands at 20 m, S1 at
10 m), serves them from a loopback HTTP server (range requests), and runs the pipeline on a 1x and
a 4x area ROI, each in its own process. Prints bytes fetched over HTTP and peak RSS per run and
their ratios. Not a test: figures depend on the machine.

Usage: python scripts/bench_preprocessing.py [--dates 6] [--size 256] [--tile-size 128]
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pystac
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping

from btfm_core.loopback import LoopbackServer

EPSG = 32631
ORIGIN = Affine(10, 0, 600000, 0, -10, 5700000)
S2_10M = ("red", "blue", "green", "nir")
S2_20M = ("nir08", "rededge1", "rededge2", "rededge3", "swir16", "swir22")


def write_cog(path: Path, data: np.ndarray, transform: Affine, nodata: float) -> None:
    with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=f"EPSG:{EPSG}", transform=transform, nodata=nodata,
                       compress="DEFLATE", blocksize=256) as dst:
        dst.write(data, 1)


def build_catalog(root: Path, base_url: str, dates: int, size: int = 1024) -> Path:
    """Synthetic S2 + S1 items with absolute http:// asset hrefs; returns catalog.json."""
    rng = np.random.default_rng(0)
    catalog = pystac.Catalog("bench", "synthetic benchmark catalog")
    s2 = pystac.Collection("sentinel-2-l2a", "S2", pystac.Extent(pystac.SpatialExtent([[-180, -90, 180, 90]]),
                                                               pystac.TemporalExtent([[None, None]])))
    s1 = pystac.Collection("sentinel-1-rtc", "S1", s2.extent)
    catalog.add_children([s2, s1])
    west, south, east, north = transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", ORIGIN.c, ORIGIN.f - 10 * size,
                                                ORIGIN.c + 10 * size, ORIGIN.f)
    bbox = [west, south, east, north]
    geometry = mapping(box(west, south, east, north))
    for d in range(dates):
        when = dt.datetime(2021, 1 + d, 15, 11, tzinfo=dt.timezone.utc)
        for collection, kind in ((s2, "s2"), (s1, "s1")):
            item_id = f"{kind}_{d}"
            folder = root / item_id
            folder.mkdir(parents=True)
            props = {"eo:cloud_cover": 10.0} if kind == "s2" else {"sat:orbit_state": "ascending"}
            item = pystac.Item(item_id, geometry, bbox, when, props)
            if kind == "s2":
                bands = [(k, ORIGIN, size) for k in S2_10M] + [(k, ORIGIN @ Affine.scale(2), size // 2) for k in S2_20M]
                for key, transform, n in bands:
                    write_cog(folder / f"{key}.tif", rng.integers(1, 5000, (n, n), dtype=np.uint16), transform, 0)
                    item.add_asset(key, pystac.Asset(f"{base_url}/{item_id}/{key}.tif"))
                scl = rng.choice(np.array([4, 5, 8, 9], np.uint8), (size // 2, size // 2))
                write_cog(folder / "scl.tif", scl, ORIGIN @ Affine.scale(2), 0)
                item.add_asset("scl", pystac.Asset(f"{base_url}/{item_id}/scl.tif"))
            else:
                for key in ("vv", "vh"):
                    values = rng.uniform(0.001, 0.5, (size, size)).astype(np.float32)
                    write_cog(folder / f"{key}.tif", values, ORIGIN, -32768)
                    item.add_asset(key, pystac.Asset(f"{base_url}/{item_id}/{key}.tif"))
            collection.add_item(item)
    catalog.normalize_hrefs(str(root / "stac"))
    catalog.save(pystac.CatalogType.ABSOLUTE_PUBLISHED)
    return root / "stac" / "catalog.json"


def run(roi_size: int, work: Path, catalog: Path, tile_size: int) -> float:
    """Run the pipeline on a ``roi_size`` square ROI in a new process; return its peak RSS in MB."""
    run_dir = work / f"roi_{roi_size}"
    run_dir.mkdir()
    with rasterio.open(run_dir / "roi.tiff", "w", driver="GTiff", width=roi_size, height=roi_size, count=1,
                       dtype="uint8", crs=f"EPSG:{EPSG}", transform=ORIGIN) as dst:
        dst.write(np.ones((1, roi_size, roi_size), np.uint8))
    subprocess.run([sys.executable, "-m", "btfm_preprocessing.pipeline", str(run_dir / "roi.tiff"), "2021-01-01",
                    "2021-12-31", "2021-01-01", "2021-12-31", "1", "--catalog", str(catalog), "--tile-size",
                    str(tile_size), "--workers", "4", "-q"], check=True)
    log = (run_dir / "logs" / "preprocess.log").read_text()
    return float(re.findall(r"peak memory \(RSS\): (\d+) MB", log)[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """Build the catalog, run both ROI sizes, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dates", type=int, default=6)
    parser.add_argument("--size", type=int, default=256, help="side of the 1x ROI in pixels (the 4x is twice it)")
    parser.add_argument("--tile-size", type=int, default=128)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with LoopbackServer(work / "cogs") as server:
            (work / "cogs").mkdir()
            catalog = build_catalog(work / "cogs", server.url, args.dates)
            rows = []
            for side in (args.size, 2 * args.size):
                server.bytes_served.clear()
                rss = run(side, work, catalog, args.tile_size)
                rows.append((side, sum(server.bytes_served.values()), rss))
        total = sum(p.stat().st_size for p in (work / "cogs").rglob("*.tif"))
    print(f"catalog: {args.dates} S2 + {args.dates} S1 dates, COGs 1024 x 1024 px, {total / 1e6:.0f} MB in all; "
          f"tile size {args.tile_size}")
    for side, sent, rss in rows:
        print(f"  ROI {side} x {side} px: {sent / 1e6:7.1f} MB read over HTTP, peak RSS {rss:5.0f} MB")
    (s1, b1, r1), (s2, b2, r2) = rows
    print(f"  area x{(s2 / s1) ** 2:.0f}: bytes read x{b2 / b1:.2f}, peak RSS x{r2 / r1:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
