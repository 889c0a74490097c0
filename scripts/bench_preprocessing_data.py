"""Synthetic S2 L2A + S1 RTC data for ``bench_preprocessing.py``: deterministic COGs, a STAC catalog and ROIs.

The ROI lies in UTM 31N just west of the 6°E zone edge. Every S2 day is a granule in EPSG:32631
(per-band COGs: 10 m bands at 10 m, 20 m bands and SCL at 20 m); some days are cut by a diagonal
swath edge, and :attr:`Scale.split_days` days come as two granules of one datatake: a 31N granule
covering the west of the ROI and a 32N granule (EPSG:32632) covering the east, overlapping by a
tenth of the ROI's width. Reflectance is a parcel pattern with seasonal gains, clouds (SCL 8, 9),
cirrus (10) and shadows (3); days from 2022-01-25 on are processing baseline 04.00 with the +1000
BOA offset still in the pixels (``earthsearch:boa_offset_applied: false``). S1 days are VV/VH linear
backscatter float32 COGs (nodata -32768) on a 10 m grid shifted half a pixel from the S2 one.
COGs: deflate, predictor, ``Scale.block``-px internal blocks, overviews. Pixel values are a pure
function of the seed, the scale and the map coordinates, so the two granules of a day agree.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.warp import transform_bounds, transform_geom
from shapely.geometry import Polygon, mapping, shape

#: Version of the generator: a cached dataset of another version is rebuilt.
DATA_VERSION = 3
#: Asset key -> (pixel size in m, dtype) of an S2 granule (the Earth Search names the sources read).
S2_ASSETS: dict[str, tuple[int, str]] = {
    "red": (10, "uint16"), "blue": (10, "uint16"), "green": (10, "uint16"), "nir": (10, "uint16"),
    "nir08": (20, "uint16"), "rededge1": (20, "uint16"), "rededge2": (20, "uint16"), "rededge3": (20, "uint16"),
    "swir16": (20, "uint16"), "swir22": (20, "uint16"), "scl": (20, "uint8"),
}
#: Reflectance range (x 10000) of each band's parcels: visible low, NIR high, SWIR in between.
BAND_RANGE = {"red": (300, 1500), "blue": (200, 1000), "green": (300, 1300), "nir": (1500, 5000),
              "nir08": (1600, 5000), "rededge1": (600, 1800), "rededge2": (1000, 3500), "rededge3": (1400, 4500),
              "swir16": (900, 3500), "swir22": (500, 2500)}
S1_ASSETS = ("vv", "vh")
S1_NODATA = -32768.0
ZONE_EDGE_CRS = ("EPSG:32631", "EPSG:32632")
#: Top-left corner of the S2 granule grid in UTM 31N (about 5.67°E, 50.35°N; 6°E is at x ≈ 713 km).
ORIGIN_31 = (689_520.0, 5_580_480.0)
MARGIN_PX = 48  # granule pixels around the 4x ROI
S2_START, S1_START = dt.date(2021, 11, 3), dt.date(2021, 11, 5)
BASELINE_04_START = dt.date(2022, 1, 25)


@dataclass(frozen=True)
class Scale:
    """Size of one rehearsal.

    Attributes:
        name: ``issue`` (the issue's size), ``small`` (development) or ``tiny`` (the smoke test).
        roi_px: side of the 1x ROI in 10 m pixels (the 4x ROI is twice it).
        tile_px: pipeline tile size.
        s2_days: S2 acquisition days, one every 5 days.
        split_days: of which two granules (31N + 32N).
        s1_days: S1 days, one every 6 days, alternately ascending and descending.
        block: COG internal block size in pixels.
        seed: random seed.
    """

    name: str
    roi_px: int
    tile_px: int
    s2_days: int
    split_days: int
    s1_days: int
    block: int
    seed: int = 12

    @property
    def granule_px(self) -> int:
        """Side of a 31N granule and an S1 scene in 10 m pixels (the 4x ROI plus a margin; even)."""
        return 2 * self.roi_px + 2 * MARGIN_PX

    def roi_window(self, area: int) -> tuple[int, int, int]:
        """(column, row, side) of the 1x or 4x ROI in the 31N granule grid (the 1x is centred in the 4x)."""
        if area == 4:
            return MARGIN_PX, MARGIN_PX, 2 * self.roi_px
        return MARGIN_PX + self.roi_px // 2, MARGIN_PX + self.roi_px // 2, self.roi_px


SCALES = {"issue": Scale("issue", 1000, 500, 70, 20, 60, 1024), "small": Scale("small", 400, 200, 20, 6, 12, 512),
          "tiny": Scale("tiny", 200, 100, 6, 2, 4, 256)}


def granule_transform(pixel: int) -> Affine:
    """Transform of the 31N granule grid at ``pixel`` m."""
    return Affine(pixel, 0, ORIGIN_31[0], 0, -pixel, ORIGIN_31[1])


def zone32_grid(scale: Scale) -> tuple[Affine, int, int, float]:
    """(10 m transform, width, height, data west edge x) of the 32N granules, in EPSG:32632.

    The raster covers the 31N granule east of the 1x ROI's middle minus 2 km; data start at the
    column under the 1x ROI's middle (a straight edge in 32N, tilted by the grid convergence in 31N).
    """
    side = scale.granule_px * 10
    col, row, n = scale.roi_window(1)
    middle_x = ORIGIN_31[0] + 10 * (col + n // 2)
    west, south, east, north = transform_bounds(ZONE_EDGE_CRS[0], ZONE_EDGE_CRS[1], middle_x - 2000,
                                                ORIGIN_31[1] - side, ORIGIN_31[0] + side, ORIGIN_31[1], densify_pts=51)
    west, south, east, north = (np.floor(west / 20) * 20, np.floor(south / 20) * 20, np.ceil(east / 20) * 20,
                                np.ceil(north / 20) * 20)
    edge_x, _ = Transformer.from_crs(ZONE_EDGE_CRS[0], ZONE_EDGE_CRS[1], always_xy=True).transform(
        middle_x, ORIGIN_31[1] - 10 * (row + n // 2))
    return (Affine(10, 0, west, 0, -10, north), int((east - west) / 10), int((north - south) / 10),
            float(np.floor(edge_x / 20) * 20))


# ------------------------------------------------------------------------------------------ the surface


def parcel_ids(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Parcel index 0..4095 of UTM 31N coordinates (m): skewed 230 x 170 m fields."""
    u = np.floor((x + 0.35 * y) / 230.0).astype(np.int64)
    v = np.floor((y - 0.2 * x) / 170.0).astype(np.int64)
    return ((u * 73856093) ^ (v * 19349663)) % 4096


def cloud_field(x: np.ndarray, y: np.ndarray, day_seed: int) -> np.ndarray:
    """A smooth field of a day (about -2..2) whose upper part is cloud: four 2-9 km waves."""
    rng = np.random.default_rng(day_seed)
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    for _ in range(4):
        kx, ky = 2 * np.pi / rng.uniform(2000, 9000, 2)
        px, py = rng.uniform(0, 2 * np.pi, 2)
        out += (np.cos(kx * x + px) * np.cos(ky * y + py)).astype(np.float32)
    return out


@dataclass(frozen=True)
class Day:
    """One S2 day: its date, seed, layout and cloud threshold."""

    index: int
    date: str
    layout: str  # "full", "swath" (diagonal edge) or "split" (31N west + 32N east)
    cloud_level: float  # cloud where cloud_field > cloud_level
    seed: int

    @property
    def offset(self) -> bool:
        """Whether the day is processing baseline 04.00 (+1000 in the pixels)."""
        return dt.date.fromisoformat(self.date) >= BASELINE_04_START


def s2_days(scale: Scale) -> list[Day]:
    """The S2 days: evenly spread split days, every 4th other day cut by the swath edge, 0-65 % cloud (SCL 8-10)."""
    rng = np.random.default_rng(scale.seed)
    split = set(np.linspace(1, scale.s2_days - 2, scale.split_days).round().astype(int).tolist())
    days = []
    for i in range(scale.s2_days):
        layout = "split" if i in split else "swath" if i % 4 == 3 else "full"
        days.append(Day(i, (S2_START + dt.timedelta(days=5 * i)).isoformat(), layout,
                        float(np.quantile(rng.standard_normal(4000), 1 - rng.uniform(0, 0.65))),
                        scale.seed * 1000 + i))
    return days


def pixel_noise(x: np.ndarray, y: np.ndarray, salt: int) -> np.ndarray:
    """Uniform -1..1 texture of the 10 m cell under each point (the same in every granule)."""
    h = (np.floor(x / 10).astype(np.int64) * 2654435761) ^ (np.floor(y / 10).astype(np.int64) * 40503) ^ salt
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) % 2001).astype(np.float32) / 1000.0 - 1.0


def s2_surface(x: np.ndarray, y: np.ndarray, day: Day) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What every band of ``day`` shares at UTM 31N points ``x``, ``y`` (m): (parcel ids, cloud field, shadow)."""
    shadow = cloud_field(x - 400.0, y + 300.0, day.seed) > day.cloud_level
    return parcel_ids(x, y), cloud_field(x, y, day.seed), shadow


def s2_pixels(key: str, x: np.ndarray, y: np.ndarray, day: Day,
              surface: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """One band's uint16 DN (or SCL class) of ``day`` at UTM 31N points ``x``, ``y`` (m); never 0.

    ``surface``: :func:`s2_surface` of the same points, if already computed.
    """
    ids, cloud, shadow = surface or s2_surface(x, y, day)
    band = list(S2_ASSETS).index(key)
    table = np.random.default_rng(7 + band).random(4096)
    if key == "scl":
        scl = np.select([table[ids] < 0.7, table[ids] < 0.93], [4, 5], 6).astype(np.uint8)
        scl[shadow] = 3
        scl[cloud > day.cloud_level - 0.15] = 10
        scl[cloud > day.cloud_level] = 8
        scl[cloud > day.cloud_level + 0.4] = 9
        return scl
    low, high = BAND_RANGE[key]
    gain = 0.75 + 0.5 * np.random.default_rng([day.seed, band]).random()
    noise = 60 * pixel_noise(x, y, day.seed * 16 + band)
    value = (low + (high - low) * table[ids]) * gain + noise
    value = np.where(shadow, value * 0.5, value)
    value = np.where(cloud > day.cloud_level, 3500 + 2500 * np.tanh(cloud - day.cloud_level) + noise, value)
    return np.clip(value + (1000 if day.offset else 0), 1, 20000).astype(np.uint16)


def s1_pixels(key: str, x: np.ndarray, y: np.ndarray, index: int) -> np.ndarray:
    """Linear backscatter (float32) of S1 day ``index``: parcel means with gamma speckle."""
    ids = parcel_ids(x, y)
    vv = 0.02 + 0.2 * np.random.default_rng(41).random(4096)[ids]
    mean = vv if key == "vv" else vv * (0.15 + 0.15 * np.random.default_rng(43).random(4096)[ids])
    u = 0.5 * (pixel_noise(x, y, index * 4 + len(key)) + 1.0) * 0.998 + 0.001
    speckle = (-np.log(u)) ** 0.8  # a skewed multiplicative speckle, mean about 0.9
    return (mean * (0.8 + 0.4 * np.random.default_rng([index, 5]).random()) * speckle).astype(np.float32)


# ------------------------------------------------------------------------------------------ granules


@dataclass(frozen=True)
class Granule:
    """One STAC item to write: an S2 granule or an S1 scene.

    Attributes:
        id: item id.
        collection: ``sentinel-2-l2a`` or ``sentinel-1-rtc``.
        when: acquisition time (ISO, UTC).
        crs: its CRS.
        transform: its 10 m grid (a, b, c, d, e, f).
        width, height: its 10 m grid's size (even).
        coverage: ``full``, ``swath`` (diagonal edge), ``west`` (up to ``edge``) or ``east`` (from ``edge``).
        edge: x (m, in ``crs``) of the west/east data edge.
        day: index of its S2 or S1 day.
        cloud_level: S2 cloud threshold of the day.
        seed: S2 day seed.
    """

    id: str
    collection: str
    when: str
    crs: str
    transform: tuple[float, ...]
    width: int
    height: int
    coverage: str
    edge: float
    day: int
    cloud_level: float = 0.0
    seed: int = 0

    @property
    def is_s2(self) -> bool:
        return self.collection == "sentinel-2-l2a"

    def folder(self) -> str:
        """Its folder under the data root (``s2/<id>`` or ``s1/<id>``)."""
        return f"{'s2' if self.is_s2 else 's1'}/{self.id}"

    def s2_day(self) -> Day:
        return Day(self.day, self.when[:10], "", self.cloud_level, self.seed)


def granules(scale: Scale) -> list[Granule]:
    """Every S2 granule and S1 scene of ``scale``, S2 first."""
    side = scale.granule_px
    g31 = tuple(granule_transform(10))[:6]
    t32, w32, h32, edge32 = zone32_grid(scale)
    col, _, n = scale.roi_window(1)
    edge31 = ORIGIN_31[0] + 20 * ((col + int(0.6 * n)) // 2)
    out = []
    for day in s2_days(scale):
        stamp = day.date.replace("-", "")
        common = {"collection": "sentinel-2-l2a", "day": day.index, "cloud_level": day.cloud_level, "seed": day.seed}
        platform = "A" if day.index % 2 else "B"
        coverage, edge = {"full": ("full", 0.0), "swath": ("swath", 0.0), "split": ("west", edge31)}[day.layout]
        out.append(Granule(f"S2{platform}_31UGR_{stamp}_0_L2A", when=f"{day.date}T10:30:21Z", crs=ZONE_EDGE_CRS[0],
                           transform=g31, width=side, height=side, coverage=coverage, edge=edge, **common))
        if day.layout == "split":  # the same datatake's 32N granule: 4 s earlier, its id sorts after
            out.append(Granule(f"S2{platform}_32ULA_{stamp}_0_L2A", when=f"{day.date}T10:30:17Z",
                               crs=ZONE_EDGE_CRS[1], transform=tuple(t32)[:6], width=w32, height=h32,
                               coverage="east", edge=edge32, **common))
    s1_grid = tuple(granule_transform(10) * Affine.translation(0.5, 0.5))[:6]  # half a pixel off the S2 grid
    for i in range(scale.s1_days):
        date = S1_START + dt.timedelta(days=6 * i)
        ascending = i % 2 == 0
        when = f"{date.isoformat()}T{'17:34:10' if ascending else '05:51:40'}Z"
        out.append(Granule(f"S1A_IW_GRDH_1SDV_{when[:19].replace('-', '').replace(':', '')}_RTC", "sentinel-1-rtc",
                           when, ZONE_EDGE_CRS[0], s1_grid, side, side, "swath" if i % 4 == 3 else "full", 0.0, i))
    return out


def coverage_mask(granule: Granule, pixel: int) -> np.ndarray:
    """(H, W) bool: where ``granule`` has data on its ``pixel``-m grid (decided at 20 m for S2, 10 m for S1)."""
    step = 20 if granule.is_s2 else 10
    w, h = granule.width * 10 // step, granule.height * 10 // step
    cols, rows = np.arange(w)[None, :], np.arange(h)[:, None]
    x = granule.transform[2] + step * (cols + 0.5)
    if granule.coverage == "swath":
        mask = (cols + rows < 1.35 * w) if granule.is_s2 else ((w - cols) + rows < 1.35 * w)
    elif granule.coverage == "west":
        mask = np.broadcast_to(x < granule.edge, (h, w))
    elif granule.coverage == "east":
        mask = np.broadcast_to(x >= granule.edge, (h, w))
    else:
        mask = np.ones((h, w), bool)
    mask = np.asarray(mask)
    return mask if pixel == step else np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)


def footprint(granule: Granule) -> dict[str, object]:
    """GeoJSON footprint (WGS84) of the granule's data."""
    a, _, c, _, e, f = granule.transform
    x0, x1 = c, c + a * granule.width
    y0, y1 = f + e * granule.height, f
    ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if granule.coverage in ("west", "east"):
        xe = granule.edge
        ring = [(x0, y0), (xe, y0), (xe, y1), (x0, y1)] if granule.coverage == "west" else \
            [(xe, y0), (x1, y0), (x1, y1), (xe, y1)]
    poly = Polygon(ring)
    if granule.coverage == "swath":  # cols + rows < 1.35 W (S2) or (W - cols) + rows < 1.35 W (S1), in pixels
        k = 1.35 * (x1 - x0)
        corner, sign = (x0, 1) if granule.is_s2 else (x1, -1)
        poly = poly.intersection(Polygon([(corner, y1), (corner + sign * k, y1), (corner, y1 - k)]))
    return transform_geom(granule.crs, "EPSG:4326", mapping(poly), precision=7)


def centres_31(granule: Granule, pixel: int) -> tuple[np.ndarray, np.ndarray]:
    """UTM 31N coordinates (m) of the ``pixel``-m grid's pixel centres: broadcastable (1, W), (H, 1) in 31N,
    (H, W) arrays for a 32N granule."""
    w, h = granule.width * 10 // pixel, granule.height * 10 // pixel
    x = granule.transform[2] + pixel * (np.arange(w) + 0.5)
    y = granule.transform[5] - pixel * (np.arange(h) + 0.5)
    if granule.crs == ZONE_EDGE_CRS[0]:
        return x[None, :], y[:, None]
    xx, yy = np.meshgrid(x, y)
    return Transformer.from_crs(granule.crs, ZONE_EDGE_CRS[0], always_xy=True).transform(xx, yy)


def write_cog(path: Path, data: np.ndarray, granule: Granule, pixel: int, nodata: float, block: int) -> None:
    """One band as a COG: deflate with predictor, ``block``-px blocks, overviews."""
    a, b, c, d, e, f = granule.transform
    transform = Affine(a * pixel / 10, b, c, d, e * pixel / 10, f)
    predictor = "FLOATING_POINT" if data.dtype.kind == "f" else "STANDARD"
    resampling = "NEAREST" if data.dtype == np.uint8 else "AVERAGE"
    with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=granule.crs, transform=transform, nodata=nodata, compress="DEFLATE",
                       predictor=predictor, blocksize=block, overview_resampling=resampling) as dst:
        dst.write(data, 1)


def write_granule(root: Path, granule: Granule, block: int) -> dict[str, object]:
    """Write a granule's COGs under ``root / granule.folder()``; return its manifest entry."""
    folder = root / granule.folder()
    folder.mkdir(parents=True, exist_ok=True)
    assets: dict[str, dict[str, object]] = {}
    keys = S2_ASSETS if granule.is_s2 else {key: (10, "float32") for key in S1_ASSETS}
    cloudy = covered = 0
    for pixel in (10, 20):
        todo = [k for k, (p, _) in keys.items() if p == pixel]
        if not todo:
            continue
        x, y = centres_31(granule, pixel)
        inside = coverage_mask(granule, pixel)
        surface = s2_surface(x, y, granule.s2_day()) if granule.is_s2 else None
        for key in todo:
            if granule.is_s2:
                values, nodata = s2_pixels(key, x, y, granule.s2_day(), surface), 0.0
            else:
                values, nodata = s1_pixels(key, x, y, granule.day), S1_NODATA
            values = np.where(inside, values, np.array(nodata, values.dtype))
            if key == "scl":
                cloudy, covered = int(np.isin(values, (8, 9, 10)).sum()), int(inside.sum())
            write_cog(folder / f"{key}.tif", values, granule, pixel, nodata, block)
            a, b, c, d, e, f = granule.transform
            assets[key] = {"href": f"{granule.folder()}/{key}.tif", "nodata": nodata, "data_type": str(values.dtype),
                           "shape": list(values.shape), "transform": [a * pixel / 10, b, c, d, e * pixel / 10, f],
                           "resolution": pixel}
    cloud_cover = round(100.0 * cloudy / max(covered, 1), 2) if granule.is_s2 else None
    return {"granule": asdict(granule), "assets": assets, "cloud_cover": cloud_cover,
            "footprint": footprint(granule)}


def _write_one(args: tuple[Path, Granule, int]) -> dict[str, object]:
    """A granule's manifest entry, writing it unless an earlier (interrupted) generation finished it."""
    root, granule, block = args
    done = root / granule.folder() / "entry.json"
    if done.is_file() and json.loads(done.read_text())["granule"] == json.loads(json.dumps(asdict(granule))):
        return json.loads(done.read_text())
    entry = write_granule(root, granule, block)
    done.write_text(json.dumps(entry))  # last: the granule is complete
    return entry


def ensure_dataset(data_dir: Path, scale: Scale, processes: int | None = None) -> Path:
    """The root folder of ``scale``'s dataset under ``data_dir``, generated unless a complete one is there.

    Returns:
        ``data_dir / scale.name``, holding ``s2/``, ``s1/`` and ``manifest.json`` (written last).
    """
    root = data_dir / scale.name
    manifest = root / "manifest.json"
    wanted = {"version": DATA_VERSION, "scale": asdict(scale)}
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if {k: found.get(k) for k in wanted} == wanted:
            return root
    todo = granules(scale)
    print(f"generating {len(todo)} granules under {root} (cached for later runs) ...", flush=True)
    with ProcessPoolExecutor(processes or os.cpu_count() or 2) as pool:
        entries = list(pool.map(_write_one, [(root, g, scale.block) for g in todo]))
    manifest.write_text(json.dumps({**wanted, "items": entries}))
    return root


# ------------------------------------------------------------------------------------------ catalog, ROIs

PROJ_EXT = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER_EXT = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"


def stac_item(entry: dict[str, object], base_url: str) -> pystac.Item:
    """The STAC item of a manifest entry, its assets served under ``base_url``."""
    granule = Granule(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry["granule"].items()})
    geometry = entry["footprint"]
    when = dt.datetime.fromisoformat(granule.when.replace("Z", "+00:00"))
    props: dict[str, object] = {"proj:code": granule.crs, "constellation": "sentinel-2" if granule.is_s2 else
                                "sentinel-1"}
    if granule.is_s2:
        offset = when.date() >= BASELINE_04_START
        props.update({"platform": f"sentinel-2{granule.id[2].lower()}", "eo:cloud_cover": entry["cloud_cover"],
                      "s2:processing_baseline": "04.00" if offset else "03.01",
                      "earthsearch:boa_offset_applied": False})
    else:
        props.update({"platform": "sentinel-1a", "sat:orbit_state": "ascending" if when.hour > 12 else "descending",
                      "sar:polarizations": ["VV", "VH"], "sar:product_type": "GRD"})
    item = pystac.Item(granule.id, geometry, list(shape(geometry).bounds), when, props,
                       stac_extensions=[PROJ_EXT, RASTER_EXT], collection=granule.collection)
    for key, asset in entry["assets"].items():
        item.add_asset(key, pystac.Asset(f"{base_url}/{asset['href']}", media_type=pystac.MediaType.COG,
                                         roles=["data"], extra_fields={
                                             "proj:shape": asset["shape"], "proj:transform": asset["transform"],
                                             "raster:bands": [{"nodata": asset["nodata"],
                                                               "data_type": asset["data_type"],
                                                               "spatial_resolution": asset["resolution"]}]}))
    return item


def write_catalog(root: Path, base_url: str, out: Path) -> Path:
    """A static STAC catalog (``out/catalog.json``) of the dataset in ``root``, assets under ``base_url``."""
    entries = json.loads((root / "manifest.json").read_text())["items"]
    extent = pystac.Extent(pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]), pystac.TemporalExtent([[None, None]]))
    catalog = pystac.Catalog("bench-preprocessing", "synthetic S2 L2A + S1 RTC at the 31N/32N zone edge")
    collections = {cid: pystac.Collection(cid, cid, extent) for cid in ("sentinel-2-l2a", "sentinel-1-rtc")}
    catalog.add_children(list(collections.values()))
    for entry in entries:
        collections[entry["granule"]["collection"]].add_item(stac_item(entry, base_url))
    catalog.normalize_hrefs(str(out))
    catalog.save(pystac.CatalogType.ABSOLUTE_PUBLISHED)
    return out / "catalog.json"


def write_roi(path: Path, scale: Scale, area: int) -> Path:
    """The 1x or 4x ROI GeoTIFF (all inside, UTM 31N, 10 m) of ``scale``."""
    col, row, side = scale.roi_window(area)
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=1, dtype="uint8",
                       crs=ZONE_EDGE_CRS[0], transform=granule_transform(10) * Affine.translation(col, row)) as dst:
        dst.write(np.ones((1, side, side), np.uint8))
    return path


def period(scale: Scale) -> list[str]:
    """The pipeline's S2 and S1 date arguments covering every day of ``scale``."""
    s2_end = S2_START + dt.timedelta(days=5 * (scale.s2_days - 1))
    s1_end = S1_START + dt.timedelta(days=6 * (scale.s1_days - 1))
    return [S2_START.isoformat(), s2_end.isoformat(), S1_START.isoformat(), s1_end.isoformat()]
