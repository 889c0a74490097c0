"""Regenerate the embedded demo sample (data/demo_belgium) from the WorldCereal Belgian cube.

The cube (12 monthly composites, 100 x 100 px, 10 m, EPSG:32631) becomes a static STAC catalog
of per-date COGs laid out like Element84 Earth Search (S2 L2A asset names, 10/20 m bands, SCL)
and Planetary Computer (S1 ``vv``/``vh`` linear backscatter, nodata -32768), so the pipeline
reads it through the same STAC search and windowed COG reads as the remote sources. The output
(catalog, COGs, roi.tiff, roi.geojson, README.md, LICENSE) is byte-for-byte deterministic.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.warp import transform_bounds, transform_geom
from shapely.geometry import Polygon, box, mapping, shape

from btfm_core.cli import HelpFormatter, add_standard_options, entry_point, prog_name
from btfm_core.errors import InputDataError, SourceError
from btfm_core.logs import setup_logging

log = logging.getLogger("make_demo_catalog")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "demo_cube_belgium" / "worldcereal_preprocessed_inputs.nc"
DEFAULT_OUT = REPO_ROOT / "data" / "demo_belgium"

EPSG = 32631
RES = 10.0
CUBE_NODATA = 65535
S2_NODATA = 0
S1_NODATA = -32768.0
SCL_NO_DATA, SCL_UNCLASSIFIED = 0, 7
COG_MEDIA = "image/tiff; application=geotiff; profile=cloud-optimized"
COG_BLOCK = 128  # the smallest block GDAL's COG driver accepts; one block per 100 x 100 raster
DATE_TIME = dt.time(12, 0, tzinfo=dt.timezone.utc)

UPSTREAM_REPO = "https://github.com/WorldCereal/worldcereal-classification"
UPSTREAM_COMMIT = "6c574425857177d9476bcf0876895e368ce445bb"
UPSTREAM_PATH = "tests/worldcerealtests/testresources/worldcereal_preprocessed_inputs.nc"
COPYRIGHT = "Copyright (c) 2024 ESA WorldCereal"

EXTENSIONS = {
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "sar": "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
}


@dataclass(frozen=True)
class S2Band:
    """One Sentinel-2 asset: Earth Search key, cube variable, resolution and band metadata."""

    key: str
    variable: str
    resolution: int
    name: str
    common_name: str
    wavelength_um: float
    title: str


#: Earth Search asset order and metadata. ``nir08`` (B8A) is absent from the cube: B08 stands in.
S2_BANDS: tuple[S2Band, ...] = (
    S2Band("blue", "S2-L2A-B02", 10, "B02", "blue", 0.490, "Blue (band 2) - 10m"),
    S2Band("green", "S2-L2A-B03", 10, "B03", "green", 0.560, "Green (band 3) - 10m"),
    S2Band("red", "S2-L2A-B04", 10, "B04", "red", 0.665, "Red (band 4) - 10m"),
    S2Band("nir", "S2-L2A-B08", 10, "B08", "nir", 0.842, "NIR 1 (band 8) - 10m"),
    S2Band("rededge1", "S2-L2A-B05", 20, "B05", "rededge", 0.704, "Red edge 1 (band 5) - 20m"),
    S2Band("rededge2", "S2-L2A-B06", 20, "B06", "rededge", 0.740, "Red edge 2 (band 6) - 20m"),
    S2Band("rededge3", "S2-L2A-B07", 20, "B07", "rededge", 0.783, "Red edge 3 (band 7) - 20m"),
    S2Band("nir08", "S2-L2A-B08", 20, "B8A", "nir08", 0.842,
           "NIR 2 (band 8A) - 20m; SUBSTITUTE: B08 (842 nm) resampled to 20 m, the cube has no B8A"),
    S2Band("swir16", "S2-L2A-B11", 20, "B11", "swir16", 1.610, "SWIR 1 (band 11) - 20m"),
    S2Band("swir22", "S2-L2A-B12", 20, "B12", "swir22", 2.190, "SWIR 2 (band 12) - 20m"),
)
S2_VARIABLES = tuple(sorted({band.variable for band in S2_BANDS}))
S1_ASSETS = {"vv": "S1-SIGMA0-VV", "vh": "S1-SIGMA0-VH"}


@dataclass(frozen=True)
class Cube:
    """The parts of the WorldCereal cube the demo uses.

    Attributes:
        days: composite dates (first day of each month), ascending.
        transform: 10 m north-up transform of pixel corners (EPSG:32631).
        arrays: cube variable -> (T, H, W) uint16, 65535 = no data.
    """

    days: tuple[dt.date, ...]
    transform: Affine
    arrays: dict[str, np.ndarray]

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) at 10 m."""
        return self.arrays[S2_VARIABLES[0]].shape[1:]  # type: ignore[return-value]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in EPSG:32631 metres."""
        height, width = self.shape
        left, top = self.transform.c, self.transform.f
        return (left, top - RES * height, left + RES * width, top)


def read_cube(source: Path) -> Cube:
    """Read and check the netCDF cube: 10 m north-up grid of pixel centres, EPSG:32631, even size.

    Raises:
        SourceError: the file is missing or not a readable netCDF.
        InputDataError: the grid, CRS, time axis or a variable is not what the demo expects.
    """
    import netCDF4  # only needed to regenerate the sample, not to use it

    if not source.is_file():
        raise SourceError(f"source cube {source} not found; pass --source with the path of "
                          "worldcereal_preprocessed_inputs.nc (see data/demo_belgium/README.md)")
    try:
        ds = netCDF4.Dataset(source)
    except OSError as exc:
        raise SourceError(f"{source} is not a readable netCDF file: {exc}") from exc
    with ds:
        ds.set_auto_mask(False)
        missing = [v for v in (*S2_VARIABLES, *S1_ASSETS.values(), "x", "y", "t", "crs") if v not in ds.variables]
        if missing:
            raise InputDataError(f"{source} lacks variables {missing}")
        x, y = np.asarray(ds["x"][:], np.float64), np.asarray(ds["y"][:], np.float64)
        if not (np.allclose(np.diff(x), RES) and np.allclose(np.diff(y), -RES)):
            raise InputDataError(f"{source}: expected a north-up 10 m grid, got x/y steps "
                                 f"{np.unique(np.diff(x))}/{np.unique(np.diff(y))}")
        if len(x) % 2 or len(y) % 2:
            raise InputDataError(f"{source}: grid {len(y)} x {len(x)} is odd; 20 m bands need an even size")
        crs = CRS.from_wkt(ds["crs"].getncattr("crs_wkt"))
        if crs.to_epsg() != EPSG:
            raise InputDataError(f"{source}: CRS is {crs.to_string()}, expected EPSG:{EPSG}")
        units = ds["t"].getncattr("units")
        if units != "days since 1990-01-01":
            raise InputDataError(f"{source}: unexpected time units {units!r}")
        days = tuple(dt.date(1990, 1, 1) + dt.timedelta(days=int(v)) for v in ds["t"][:])
        if list(days) != sorted(set(days)):
            raise InputDataError(f"{source}: time axis is not strictly ascending: {days}")
        arrays = {}
        for name in (*S2_VARIABLES, *S1_ASSETS.values()):
            data = np.asarray(ds[name][:])
            if data.dtype != np.uint16 or data.shape != (len(days), len(y), len(x)):
                raise InputDataError(f"{source}: {name} is {data.dtype} {data.shape}, expected uint16 "
                                     f"{(len(days), len(y), len(x))}")
            arrays[name] = data
    # x/y are pixel centres: the corner is half a pixel up-left of the first centre.
    transform = Affine(RES, 0.0, float(x[0]) - RES / 2, 0.0, -RES, float(y[0]) + RES / 2)
    return Cube(days, transform, arrays)


def block_mean(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """2 x 2 mean over the valid pixels of each block, rounded half-to-even; 0 where none is valid."""
    h, w = data.shape
    values = np.where(valid, data, 0).astype(np.float64).reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
    count = valid.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
    return np.where(count > 0, np.round(values / np.maximum(count, 1)), 0).astype(data.dtype)


def s2_layers(cube: Cube, index: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """S2 assets of one date as written: (key -> array at its resolution, SCL at 20 m, 10 m no-data mask).

    No data (65535 in ANY S2 band) becomes 0 in every band; valid values are clipped to >= 1 so
    0 means no data only. 20 m bands are 2 x 2 means of valid pixels; SCL is 0 (NO_DATA) or
    7 (UNCLASSIFIED), taken from the top-left pixel of each 2 x 2 block (nearest).
    """
    nodata = np.zeros(cube.shape, bool)
    for variable in S2_VARIABLES:
        nodata |= cube.arrays[variable][index] == CUBE_NODATA
    layers = {}
    for band in S2_BANDS:
        values = np.where(nodata, S2_NODATA, np.maximum(cube.arrays[band.variable][index], 1)).astype(np.uint16)
        layers[band.key] = values if band.resolution == 10 else block_mean(values, values != S2_NODATA)
    scl = np.where(nodata, SCL_NO_DATA, SCL_UNCLASSIFIED).astype(np.uint8)[::2, ::2]
    return layers, scl, nodata


def dn_to_db(dn: np.ndarray) -> np.ndarray:
    """The cube's S1 encoding: dB = 20 log10(DN) - 83 (DN 65535 = no data, not handled here)."""
    return 20.0 * np.log10(dn.astype(np.float64)) - 83.0


def s1_linear(dn: np.ndarray) -> np.ndarray:
    """Linear power sigma0 = 10^(dB / 10) as float32; cube no data (and DN 0) become -32768."""
    bad = (dn == CUBE_NODATA) | (dn == 0)
    db = dn_to_db(np.where(bad, 1, dn))
    return np.where(bad, S1_NODATA, 10.0 ** (db / 10.0)).astype(np.float32)


def write_cog(path: Path, data: np.ndarray, transform: Affine, nodata: float, categorical: bool = False) -> None:
    """Write one band as a DEFLATE COG (predictor 2 for integers, 3 for floats; one 128 px block here)."""
    profile = {
        "driver": "COG", "width": data.shape[1], "height": data.shape[0], "count": 1, "dtype": data.dtype,
        "crs": CRS.from_epsg(EPSG), "transform": transform, "nodata": nodata, "compress": "DEFLATE",
        "predictor": 3 if data.dtype.kind == "f" else 2, "blocksize": COG_BLOCK,
        "overview_resampling": "nearest" if categorical else "average",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def raster_asset(href: str, data: np.ndarray, transform: Affine, nodata: float, title: str,
                 band_info: dict[str, object] | None = None, eo_band: dict[str, object] | None = None) -> pystac.Asset:
    """A COG asset with projection, raster (and optionally eo) band metadata."""
    fields: dict[str, object] = {
        "proj:shape": [int(n) for n in data.shape],
        "proj:transform": [float(v) for v in list(transform)[:6]],
        "raster:bands": [{"data_type": str(data.dtype), "nodata": nodata,
                          "spatial_resolution": float(transform.a), **(band_info or {})}],
    }
    if eo_band is not None:
        fields["eo:bands"] = [eo_band]
    return pystac.Asset(href=href, media_type=COG_MEDIA, roles=["data"], title=title, extra_fields=fields)


def s2_item(cube: Cube, index: int, item_dir: Path, footprint: dict, bbox: list[float]) -> pystac.Item:
    """Write the COGs of one S2 date and return its item (Earth Search asset names)."""
    day = cube.days[index]
    layers, scl, nodata = s2_layers(cube, index)
    item = pystac.Item(
        f"S2_DEMO_BE_{day:%Y%m%d}", footprint, bbox, dt.datetime.combine(day, DATE_TIME),
        properties={
            "platform": "sentinel-2", "constellation": "sentinel-2", "instruments": ["msi"],
            "eo:cloud_cover": round(float(nodata.mean()) * 100, 2),
            "proj:code": f"EPSG:{EPSG}", "proj:epsg": EPSG,
            "btfm:composite": "monthly", "btfm:b8a_substitute": "B08",
            "btfm:note": ("monthly composite (WorldCereal openEO export) standing in for one acquisition; "
                          "nir08 holds B08 resampled to 20 m (no B8A in the source); scl is derived from "
                          "the no-data mask (0 no data, 7 unclassified); eo:cloud_cover = % no-data pixels"),
        },
        stac_extensions=[EXTENSIONS[k] for k in ("eo", "proj", "raster")],
    )
    transform20 = cube.transform @ Affine.scale(2)
    for band in S2_BANDS:
        transform = cube.transform if band.resolution == 10 else transform20
        write_cog(item_dir / f"{band.key}.tif", layers[band.key], transform, S2_NODATA)
        eo_band: dict[str, object] = {"name": band.name, "common_name": band.common_name,
                                      "center_wavelength": band.wavelength_um}
        if band.key == "nir08":
            eo_band["description"] = "B08 (842 nm) resampled to 20 m, standing in for B8A (865 nm)"
        item.add_asset(band.key, raster_asset(
            f"./{band.key}.tif", layers[band.key], transform, S2_NODATA, band.title,
            {"scale": 0.0001, "offset": 0.0, "unit": "reflectance x 10000"}, eo_band))
    write_cog(item_dir / "scl.tif", scl, transform20, SCL_NO_DATA, categorical=True)
    item.add_asset("scl", raster_asset(
        "./scl.tif", scl, transform20, SCL_NO_DATA,
        "Scene classification map (SCL) - 20m; DERIVED from the no-data mask: 0 no data, 7 unclassified"))
    return item


def s1_item(cube: Cube, index: int, item_dir: Path, footprint: dict, bbox: list[float]) -> pystac.Item:
    """Write the VV/VH COGs of one S1 date and return its item (Planetary Computer asset names)."""
    day = cube.days[index]
    item = pystac.Item(
        f"S1_DEMO_BE_{day:%Y%m%d}", footprint, bbox, dt.datetime.combine(day, DATE_TIME),
        properties={
            "platform": "sentinel-1", "constellation": "sentinel-1", "instruments": ["c-sar"],
            "sat:orbit_state": "ascending", "sar:polarizations": ["VV", "VH"], "sar:instrument_mode": "IW",
            "sar:product_type": "GRD", "sar:frequency_band": "C",
            "btfm:backscatter": "sigma0", "btfm:composite": "monthly",
            "proj:code": f"EPSG:{EPSG}", "proj:epsg": EPSG,
            "btfm:note": ("monthly composite of sigma0 backscatter (the cube's S1-SIGMA0 bands; NOT gamma0 RTC) "
                          "as linear power; the source has no orbit direction, so every item is marked ascending"),
        },
        stac_extensions=[EXTENSIONS[k] for k in ("proj", "raster", "sat", "sar")],
    )
    for key, variable in S1_ASSETS.items():
        linear = s1_linear(cube.arrays[variable][index])
        write_cog(item_dir / f"{key}.tif", linear, cube.transform, S1_NODATA)
        item.add_asset(key, raster_asset(
            f"./{key}.tif", linear, cube.transform, S1_NODATA,
            f"{key.upper()}: sigma0 backscatter, linear power", {"unit": "linear power"}))
    return item


def collection(cid: str, title: str, description: str, extent: pystac.Extent,
               summaries: dict[str, list[object]]) -> pystac.Collection:
    """A collection with the WorldCereal licence and provenance."""
    result = pystac.Collection(
        cid, description, extent, title=title, license="MIT", summaries=pystac.Summaries(summaries),
        providers=[
            pystac.Provider("ESA WorldCereal", roles=[pystac.ProviderRole.PRODUCER, pystac.ProviderRole.LICENSOR],
                            url=UPSTREAM_REPO),
            pystac.Provider("BTFM", description="converted to per-date COGs by scripts/make_demo_catalog.py",
                            roles=[pystac.ProviderRole.PROCESSOR]),
        ],
    )
    result.add_link(pystac.Link("license", "../LICENSE", media_type="text/plain", title="MIT licence"))
    return result


def build(cube: Cube, out: Path) -> pystac.Catalog:
    """Write the catalog and its COGs under ``out`` (its collection folders are replaced)."""
    footprint = transform_geom(f"EPSG:{EPSG}", "EPSG:4326", mapping(box(*cube.bounds)), precision=7)
    west, south, east, north = transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", *cube.bounds, densify_pts=21)
    # round outwards so the bbox contains the (rounded) footprint
    bbox = [float(np.floor(west * 1e7) / 1e7), float(np.floor(south * 1e7) / 1e7),
            float(np.ceil(east * 1e7) / 1e7), float(np.ceil(north * 1e7) / 1e7)]
    for generated in ("sentinel-2-l2a", "sentinel-1-rtc"):
        shutil.rmtree(out / generated, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    extent = pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent(
        [[dt.datetime.combine(cube.days[0], DATE_TIME), dt.datetime.combine(cube.days[-1], DATE_TIME)]]))
    height, width = cube.shape
    where = f"a {height * RES / 1000:g} x {width * RES / 1000:g} km area in Belgium ({height} x {width} px at 10 m, " \
            f"EPSG:{EPSG}), {cube.days[0]:%Y-%m} to {cube.days[-1]:%Y-%m}"
    catalog = pystac.Catalog(
        "btfm-demo-belgium",
        f"BTFM embedded demo sample: real Sentinel-2 L2A and Sentinel-1 monthly composites over {where}, "
        "from the WorldCereal openEO test cube (MIT). See README.md for provenance and conversions.",
        title="BTFM demo sample (Belgium)")
    s2 = collection(
        "sentinel-2-l2a", "Sentinel-2 L2A monthly composites (demo)",
        f"Sentinel-2 L2A surface reflectance (uint16 x 10000, nodata 0) monthly composites over {where}, one item "
        "per month standing in for one acquisition. Asset names, 10/20 m resolutions and SCL follow Element84 "
        "Earth Search. nir08 (B8A) is B08 resampled to 20 m (the source has no B8A); scl is derived from "
        "the no-data mask (0 no data, 7 unclassified).", extent,
        {"platform": ["sentinel-2"], "constellation": ["sentinel-2"], "gsd": [10, 20]})
    s1 = collection(
        "sentinel-1-rtc", "Sentinel-1 sigma0 monthly composites (demo)",
        f"Sentinel-1 IW GRD backscatter monthly composites over {where}: sigma0 (NOT gamma0 RTC) as linear "
        "power, float32, nodata -32768, laid out like Planetary Computer's sentinel-1-rtc (assets vv, vh). "
        "The source has no orbit direction: every item is marked ascending (the descending series is empty).",
        extent, {"platform": ["sentinel-1"], "constellation": ["sentinel-1"], "sat:orbit_state": ["ascending"],
                 "sar:polarizations": ["VV", "VH"]})
    catalog.add_children([s2, s1])
    for index, day in enumerate(cube.days):
        for coll, make, prefix in ((s2, s2_item, "S2"), (s1, s1_item, "S1")):
            item_dir = out / coll.id / f"{prefix}_DEMO_BE_{day:%Y%m%d}"
            item_dir.mkdir(parents=True)
            coll.add_item(make(cube, index, item_dir, footprint, bbox))
    catalog.normalize_hrefs(str(out.resolve()))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    for path in sorted(out.rglob("*.json")):  # stable bytes: sorted keys, fixed indent
        path.write_text(json.dumps(json.loads(path.read_text()), indent=1, sort_keys=True) + "\n")
    return catalog


def write_rois(cube: Cube, out: Path) -> tuple[float, float]:
    """roi.tiff on the cube grid and roi.geojson (WGS84, 50 m inside the footprint).

    roi.tiff is 1 everywhere except a top-left corner triangle and a round hole (0 = outside).
    Returns the inside fractions of (roi.tiff, roi.geojson rasterised on the cube grid).
    """
    height, width = cube.shape
    rows, cols = np.mgrid[0:height, 0:width]
    inside = (rows + cols >= 25) & ~(((rows - 60) ** 2 + (cols - 65) ** 2) < 64)
    with rasterio.open(out / "roi.tiff", "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8",
                       crs=CRS.from_epsg(EPSG), transform=cube.transform, compress="deflate") as dst:
        dst.write(inside.astype(np.uint8), 1)
    left, bottom, right, top = cube.bounds
    west, south, east, north = left + 50, bottom + 50, right - 50, top - 50
    polygon = Polygon([(west, south), (east, south), (east, north - 300), (east - 300, north), (west, north)])
    geometry = transform_geom(f"EPSG:{EPSG}", "EPSG:4326", mapping(polygon), precision=7)
    feature = {"type": "Feature", "properties": {"name": "BTFM demo ROI (Belgium)"}, "geometry": geometry}
    (out / "roi.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]},
                                                indent=1) + "\n")
    back = transform_geom("EPSG:4326", f"EPSG:{EPSG}", geometry)
    burnt = rasterize([shape(back)], out_shape=(height, width), transform=cube.transform)
    if not burnt.any() or not box(*cube.bounds).contains(shape(back)):
        raise InputDataError("roi.geojson does not lie inside the cube footprint")  # guards edits of this script
    return float(inside.mean()), float(burnt.mean())


LICENSE_TEXT = f"""The data in this folder is derived from a file of the ESA WorldCereal project
({UPSTREAM_REPO}, commit {UPSTREAM_COMMIT},
{UPSTREAM_PATH}), distributed under the MIT License:

MIT License

{COPYRIGHT}

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

README_TEMPLATE = """# Embedded demo sample: Belgium, {first} .. {last}

Real Sentinel-2 L2A and Sentinel-1 data over a {km} km area in Belgium (EPSG:{epsg},
{height} x {width} px at 10 m), laid out as a small static STAC catalog of per-date COGs so that
the pipeline reads it with the same STAC search and windowed COG reads it uses for remote
sources. All links and asset hrefs are relative: the folder works from any location.

This file, `LICENSE` and everything else here are written by `scripts/make_demo_catalog.py`;
edit that script, not these files.

## Provenance and licence
- Source file: `worldcereal_preprocessed_inputs.nc`, a WorldCereal openEO export (openEO platform,
  Geotrellis backend), a test resource of the WorldCereal classification repository:
  - repository: {repo}
  - commit: `{commit}`
  - path: `{path}`
  - provenance line it was copied with: `classification/: github:WorldCereal/worldcereal-classification
    @{commit} (tests/worldcerealtests/testresources/*, ...) MIT.`
- Licence: MIT, "{copyright}" (the upstream repository's `LICENSE`). The full text and
  the attribution are in `LICENSE` in this folder and must travel with any copy of this data.
- Regenerate (deterministic: same input, same bytes), from the repository root:

      .venv/bin/python scripts/make_demo_catalog.py \\
          --source ../shared/data/demo_cube_belgium/worldcereal_preprocessed_inputs.nc --out data/demo_belgium

## What is here
- `catalog.json`: static STAC catalog (self-contained, relative links) with the collections
  `sentinel-2-l2a` and `sentinel-1-rtc`.
- `sentinel-2-l2a/S2_DEMO_BE_<YYYYMMDD>/`: {n} items with COG assets named like Element84 Earth
  Search: `blue` B02, `green` B03, `red` B04, `nir` B08 at 10 m ({height} x {width} px);
  `rededge1`-`rededge3` B05-B07, `nir08` "B8A" (see below), `swir16` B11, `swir22` B12 and `scl`
  at 20 m ({h20} x {w20} px).
- `sentinel-1-rtc/S1_DEMO_BE_<YYYYMMDD>/`: {n} items with `vv`, `vh` float32 linear power,
  nodata -32768, 10 m (the layout of Planetary Computer's `sentinel-1-rtc`).
- `roi.tiff`: 10 m uint8 ROI on the cube grid: 1 inside, 0 outside (a top-left corner triangle
  and a round hole; {roi_in:.1f} % inside).
- `roi.geojson`: a WGS84 (lon/lat) polygon 50 m inside the cube's footprint, with one cut corner,
  for the shapefile -> ROI step of the demo ({geo_in:.1f} % of the grid).
- `LICENSE`: the upstream MIT licence and attribution.

COGs (GDAL COG driver): DEFLATE, predictor 2 (integers) or 3 (float), 128 x 128 px blocks (the
smallest the driver accepts, so each raster is one block and has no overview). Every asset has
`proj:shape`, `proj:transform` and `raster:bands` (`data_type`, `nodata`, `spatial_resolution`;
S2 reflectance also `scale` 0.0001, `offset` 0).

## How the cube was converted (and what is not real about it)
- **Grid.** The cube's x/y coordinates are pixel centres; the COGs use the corner transform
  `(10, 0, {left:.0f}, 0, -10, {top:.0f})`. 20 m assets use the same origin with 20 m pixels.
- **Dates.** The cube holds {n} *monthly composites* labelled with the 1st of each month; each
  stands in for one acquisition, dated the 1st of its month at 12:00 UTC (`btfm:composite: monthly`).
- **S2 reflectance.** uint16, reflectance x 10000, as in the cube (pre-2022 scale: no +1000
  offset). A pixel that is no data (65535) in any S2 band becomes 0 (nodata) in every band;
  valid values are clipped to >= 1 so 0 always means no data. The 20 m bands are written at
  20 m as in real L2A: the mean of the valid pixels of each 2 x 2 block, rounded (0 if none is
  valid), so the pipeline's bilinear resampling to 10 m is exercised.
- **B8A.** The cube has no B8A. The `nir08` asset is **B08 (842 nm) resampled to 20 m**, the
  nearest band to B8A (865 nm); items record `btfm:b8a_substitute: "B08"` (the pipeline copies it
  into the run metadata) and the asset's title and `eo:bands` say so.
- **SCL.** The cube has no scene classification. `scl` (uint8, 20 m, nodata 0) is derived from
  the no-data mask, taking the top-left 10 m pixel of each 2 x 2 block (nearest): 0 (NO_DATA)
  where any S2 band is 65535, else 7 (UNCLASSIFIED, which the pipeline treats as valid). Real
  cloud, shadow or snow classes therefore never occur. `eo:cloud_cover` is the percentage of
  no-data pixels.
- **S1.** The cube's S1 is sigma0 backscatter (not gamma0 RTC) encoded as uint16 DN with
  `dB = 20 log10(DN) - 83` (65535 = no data); the assets hold linear power
  `sigma0 = 10^(dB / 10)` as float32, nodata -32768. Items record `btfm:backscatter: "sigma0"`.
  The cube has one S1 stream without orbit direction: every item is marked
  `sat:orbit_state: "ascending"`, so the tiles' descending series is empty (T' = 0), a real case
  the pipeline handles.
- Ignored cube variables: slope, elevation, AGERA5 precipitation and temperature.

## Per date
| date | S2 no data (`eo:cloud_cover`) | S1 VV dB (min / median / max) | S1 VH dB (min / median / max) |
|---|---|---|---|
{rows}

December and January are entirely no data in S2 (cloudy winter months), so the pipeline's
default `--max-cloud` skips them. VH goes below -25 dB in a few pixels of some months: the tile
contract's SAR encoding (`(2 dB + 50) x 200`, clipped at 0) stores those as 0.
"""


def write_docs(cube: Cube, out: Path, roi_in: float, geo_in: float) -> None:
    """README.md (provenance, conversions, per-date summary) and LICENSE."""
    rows = []
    for index, day in enumerate(cube.days):
        _, _, nodata = s2_layers(cube, index)
        stats = []
        for variable in S1_ASSETS.values():
            dn = cube.arrays[variable][index]
            db = dn_to_db(dn[(dn != CUBE_NODATA) & (dn != 0)])
            stats.append(f"{db.min():.1f} / {np.median(db):.1f} / {db.max():.1f}" if db.size else "no data")
        rows.append(f"| {day} | {nodata.mean() * 100:.0f} % | {stats[0]} | {stats[1]} |")
    height, width = cube.shape
    text = README_TEMPLATE.format(
        first=f"{cube.days[0]:%Y-%m}", last=f"{cube.days[-1]:%Y-%m}", km=f"{height / 100:g} x {width / 100:g}",
        epsg=EPSG, height=height, width=width, h20=height // 2, w20=width // 2, n=len(cube.days),
        repo=UPSTREAM_REPO, commit=UPSTREAM_COMMIT, path=UPSTREAM_PATH, copyright=COPYRIGHT,
        roi_in=roi_in * 100, geo_in=geo_in * 100, left=cube.transform.c, top=cube.transform.f,
        rows="\n".join(rows))
    (out / "README.md").write_text(text)
    (out / "LICENSE").write_text(LICENSE_TEXT)


def folder_size(path: Path) -> int:
    """Total bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate the demo catalog; return the exit code."""
    parser = argparse.ArgumentParser(
        prog=prog_name("make_demo_catalog.py"), description=__doc__, formatter_class=HelpFormatter,
        epilog="example:\n  .venv/bin/python scripts/make_demo_catalog.py --out data/demo_belgium")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help="the WorldCereal netCDF cube (worldcereal_preprocessed_inputs.nc)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output folder; its collection folders, catalog, ROI files, README and LICENSE "
                             "are replaced")
    add_standard_options(parser)
    args = parser.parse_args(argv)
    setup_logging(verbosity=args.verbosity)
    cube = read_cube(args.source)
    log.info("read %s: %d dates %s..%s, %d x %d px", args.source, len(cube.days), cube.days[0], cube.days[-1],
             *cube.shape)
    catalog = build(cube, args.out)
    roi_in, geo_in = write_rois(cube, args.out)
    write_docs(cube, args.out, roi_in, geo_in)
    counts = {c.id: len(list(c.get_items())) for c in catalog.get_children()}
    for cid, n in counts.items():
        log.info("collection %s: %d items", cid, n)
    print(f"wrote {args.out}: catalog.json with {counts.get('sentinel-2-l2a', 0)} Sentinel-2 and "
          f"{counts.get('sentinel-1-rtc', 0)} Sentinel-1 items, roi.tiff, roi.geojson, README.md, LICENSE "
          f"({folder_size(args.out) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
