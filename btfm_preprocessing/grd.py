"""Sentinel-1 IW GRD to calibrated backscatter on a target grid, without SNAP, in bounded memory.

A GRD product (a ``.SAFE`` folder, or the ``.zip`` as downloaded from ASF, read in place through
GDAL's ``/vsizip/``) is turned into linear sigma0 on a :class:`~btfm_core.grid.Grid`:

1. **Radiometric calibration**: ``sigma0 = DN^2 / A^2`` with ``A`` the ``sigmaNought`` LUT of
   ``annotation/calibration/calibration-*.xml``, bilinearly interpolated over (line, pixel).
2. **Thermal noise removal**: ``sigma0 = (DN^2 - N) / A^2`` with ``N`` the range noise LUT of
   ``noise-*.xml`` (``noiseRangeVectorList``, or ``noiseVectorList`` before IPF 2.9), times the
   azimuth noise vectors (``noiseAzimuthVectorList``, IPF >= 2.9) where present. Values that
   become <= 0 are set to :data:`NOISE_FLOOR` (-50 dB; the tile encoding maps it to 0 = "no
   data or <= -25 dB"), not NaN, so that low-backscatter areas (water) are not dropped from
   the resampling average and biased upwards. DN == 0 (outside the swath) is NaN.
3. **Geocoding** with the product's GCPs (the annotation geolocation grid, carried by the
   measurement TIFF): each output pixel centre goes to lon/lat and through the inverse
   thin-plate-spline GCP transform (GDAL's, exact on every 16th pixel of the grid, bilinear in
   between) to a (line, pixel) position, sampled bilinearly in linear power (NaN neighbours
   dropped). The GCPs sit at the terrain height of the annotation grid, so this is
   ellipsoid/GCP geocoding: **no terrain correction and no radiometric terrain flattening**
   (not RTC). No orbit file is applied, no border-noise removal and no speckle filter.

Bounded memory: the output grid is processed in blocks of ``block`` x ``block`` pixels; for each
block only the measurement window its pixels map to (+ a margin) is read, calibrated and
sampled. A block whose window would exceed :data:`MAX_WINDOW_FACTOR` x ``block``^2 pixels (a
grid much coarser than the product) is split into quadrants, so memory depends on ``block``,
not on the grid or product size. A pixel's value does not depend on the block size.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.transform import GCPTransformer
from rasterio.warp import transform as transform_coords
from rasterio.windows import Window

from btfm_core.errors import InputDataError, SourceError
from btfm_core.fileio import atomic_path
from btfm_core.grid import Grid

__all__ = ["BACKSCATTER_DESCRIPTION", "GrdMetadata", "GrdResult", "geocode_grd", "read_grd_metadata"]

log = logging.getLogger(__name__)

#: Linear sigma0 given to pixels whose noise-corrected power is <= 0 (-50 dB).
NOISE_FLOOR = 1e-5
#: What the output holds, for run metadata (the model's normalisation depends on it).
BACKSCATTER_DESCRIPTION = (
    "sigma0 (linear power), calibrated with the GRD sigmaNought LUT, thermal noise removed "
    "(range x azimuth noise LUTs), ellipsoid-geocoded from the GRD GCPs (thin-plate spline); "
    "not terrain-corrected, not terrain-flattened, no orbit refinement, no speckle filter"
)
#: Source pixels of margin around each block's window (covers the resampling kernel).
WINDOW_MARGIN = 8
#: A block's source window may hold at most this many times block^2 pixels before it is split.
MAX_WINDOW_FACTOR = 4
#: Output pixels between exact evaluations of the inverse GCP transform (interpolated between).
LATTICE_STEP = 16
#: GDAL raster block cache while processing (MB), so memory does not grow with the product.
GDAL_CACHE_MB = 128
_WGS84 = CRS.from_epsg(4326)


@dataclass(frozen=True)
class GrdMetadata:
    """What ``manifest.safe`` says about a GRD product (no pixels read).

    Attributes:
        product_id: SAFE name without ``.SAFE`` (e.g. ``S1A_IW_GRDH_1SDV_...``).
        mission: ``S1A``, ``S1B`` or ``S1C``.
        mode: acquisition mode, e.g. ``IW``.
        product_type: ``GRD``.
        start: acquisition start (UTC, timezone-aware).
        stop: acquisition stop (UTC, timezone-aware).
        orbit_direction: ``ascending`` or ``descending``.
        polarisations: e.g. ``("VV", "VH")``.
        footprint: closed ring of (lon, lat) degrees, from the manifest's frame.
        ipf_version: processor version, e.g. ``003.31`` (None if absent).
        relative_orbit: relative orbit number (None if absent).
    """

    product_id: str
    mission: str
    mode: str
    product_type: str
    start: dt.datetime
    stop: dt.datetime
    orbit_direction: str
    polarisations: tuple[str, ...]
    footprint: tuple[tuple[float, float], ...]
    ipf_version: str | None
    relative_orbit: int | None


@dataclass(frozen=True)
class GrdResult:
    """The outcome of :func:`geocode_grd`.

    Attributes:
        path: the written GeoTIFF: float32 linear sigma0, NaN = no data, one band per
            polarisation (band descriptions VV, VH), on the requested grid.
        orbit_direction: ``ascending`` or ``descending``.
        acquired: acquisition start (UTC, timezone-aware).
        backscatter: what the values are (:data:`BACKSCATTER_DESCRIPTION`).
        coverage: fraction of grid pixels with a finite value in at least one band (0..1).
        polarisations: band order of the file.
    """

    path: Path
    orbit_direction: str
    acquired: dt.datetime
    backscatter: str
    coverage: float
    polarisations: tuple[str, ...] = ("VV", "VH")


# ----------------------------------------------------------------------------- product access


class _Product:
    """Read-only access to the files of a SAFE folder or zipped SAFE, without extracting it."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if path.name == "manifest.safe":
            path = path.parent
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self._prefix = ""
            self.names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            try:
                self._zip = zipfile.ZipFile(path)
                members = self._zip.namelist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise SourceError(f"{path} is not a readable zip file ({exc}); the download may be "
                                  "incomplete or corrupt: delete it and download the product again") from exc
            manifests = sorted((m for m in members if PurePosixPath(m).name == "manifest.safe"), key=len)
            if not manifests:
                raise InputDataError(f"{path} holds no manifest.safe: not a Sentinel-1 SAFE product")
            self._prefix = manifests[0][: -len("manifest.safe")]
            self.names = sorted(m[len(self._prefix):] for m in members
                                if m.startswith(self._prefix) and not m.endswith("/"))
        else:
            raise InputDataError(f"GRD product {path} does not exist; pass a .SAFE folder or its .zip")
        if "manifest.safe" not in self.names:
            raise InputDataError(f"{path} has no manifest.safe: not a Sentinel-1 SAFE product")
        root = PurePosixPath(self._prefix.rstrip("/")).name if self._prefix else path.name
        self.product_id = re.sub(r"\.(SAFE|zip)$", "", root, flags=re.IGNORECASE)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def read_bytes(self, name: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(self._prefix + name)
            return (self.path / name).read_bytes()
        except (zipfile.BadZipFile, zlib.error, OSError, KeyError) as exc:
            raise SourceError(f"cannot read {name} in {self.path}: {exc}; the product may be corrupt, "
                              "download it again") from exc

    def xml(self, name: str) -> ET.Element:
        try:
            return ET.fromstring(self.read_bytes(name))
        except ET.ParseError as exc:
            raise SourceError(f"{name} in {self.path} is not valid XML ({exc}); the product may be corrupt") from exc

    def gdal_path(self, name: str) -> str:
        if self._zip is not None:
            return f"/vsizip/{self.path.resolve()}/{self._prefix}{name}"
        return str(self.path / name)

    def find(self, folder: str, prefix: str, pol: str, suffix: str) -> str | None:
        """The file ``folder/prefix*-<pol>-*suffix`` (lower-case polarisation), or None."""
        pattern = re.compile(rf"^{re.escape(folder)}/{re.escape(prefix)}[^/]*-{pol.lower()}-[^/]*{re.escape(suffix)}$")
        matches = [n for n in self.names if pattern.match(n)]
        return matches[0] if matches else None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _iter(root: ET.Element, name: str) -> Iterator[ET.Element]:
    return (e for e in root.iter() if _local(e.tag) == name)


def _text(root: ET.Element, name: str) -> str | None:
    element = next(_iter(root, name), None)
    return element.text.strip() if element is not None and element.text else None


def _child_text(element: ET.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return None


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.rstrip("Z")).replace(tzinfo=dt.timezone.utc)


def _parse_manifest(product: _Product) -> GrdMetadata:
    root = product.xml("manifest.safe")
    product_type = _text(root, "productType")
    if product_type != "GRD":
        raise InputDataError(f"{product.path} is a Sentinel-1 {product_type or 'unknown'} product, not a GRD; "
                             "only GRD products can be processed here")
    family, number = _text(root, "familyName") or "", _text(root, "number") or ""
    mission = f"S1{number}" if family.upper().startswith("SENTINEL-1") else product.product_id[:3]
    orbit_pass = (_text(root, "pass") or "").lower()
    if orbit_pass not in ("ascending", "descending"):
        raise InputDataError(f"manifest.safe of {product.path} gives no orbit pass (ASCENDING/DESCENDING)")
    start, stop = _text(root, "startTime"), _text(root, "stopTime")
    if start is None or stop is None:
        raise InputDataError(f"manifest.safe of {product.path} gives no acquisition period")
    coords = _text(root, "coordinates") or ""
    ring = [(float(lon), float(lat)) for lat, lon in (pair.split(",") for pair in coords.split())]
    if ring and ring[0] != ring[-1]:
        ring.append(ring[0])
    software = next((e for e in _iter(root, "software") if "IPF" in e.get("name", "")), None)
    relative = next((e.text for e in _iter(root, "relativeOrbitNumber") if e.get("type") == "start"), None)
    return GrdMetadata(
        product_id=product.product_id,
        mission=mission,
        mode=_text(root, "mode") or "",
        product_type=product_type,
        start=_time(start),
        stop=_time(stop),
        orbit_direction=orbit_pass,
        polarisations=tuple(e.text.strip().upper() for e in _iter(root, "transmitterReceiverPolarisation")
                            if e.text),
        footprint=tuple(ring),
        ipf_version=software.get("version") if software is not None else None,
        relative_orbit=int(relative) if relative else None,
    )


def read_grd_metadata(product: Path) -> GrdMetadata:
    """Mission, times, pass direction, polarisations and footprint of a GRD, from its manifest.

    Args:
        product: a ``.SAFE`` folder (or its ``manifest.safe``) or the zipped product.

    Raises:
        InputDataError: not a Sentinel-1 GRD SAFE, or the manifest lacks the pass or times.
        SourceError: the zip or the manifest is unreadable (corrupt download).
    """
    safe = _Product(Path(product))
    try:
        return _parse_manifest(safe)
    finally:
        safe.close()


# ----------------------------------------------------------------------------- LUTs (pure)


@dataclass(frozen=True)
class LutGrid:
    """A LUT given as vectors along pixels at a few image lines (the S1 annotation layout).

    Attributes:
        lines: (n,) increasing line coordinates of the vectors.
        pixels: n arrays of increasing pixel coordinates (may differ between vectors).
        values: n arrays of LUT values at those pixels.
    """

    lines: np.ndarray
    pixels: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Bilinear interpolation on the (rows x cols) lattice; (len(rows), len(cols)) float64.

        Linear along pixels within each vector, then linear between the two vectors that
        bracket each row; held constant beyond the first/last node.
        """
        rows = np.asarray(rows, dtype=np.float64)
        cols = np.asarray(cols, dtype=np.float64)
        n = len(self.lines)
        lo = int(np.clip(np.searchsorted(self.lines, rows.min(), side="right") - 1, 0, n - 1))
        hi = int(np.clip(np.searchsorted(self.lines, rows.max(), side="left"), 0, n - 1))
        used = range(lo, hi + 1)
        along = np.stack([np.interp(cols, self.pixels[i], self.values[i]) for i in used])
        if len(used) == 1:
            return np.broadcast_to(along[0], (len(rows), len(cols))).copy()
        lines = self.lines[lo:hi + 1]
        idx = np.clip(np.searchsorted(lines, rows, side="right") - 1, 0, len(lines) - 2)
        t = np.clip((rows - lines[idx]) / (lines[idx + 1] - lines[idx]), 0.0, 1.0)[:, None]
        return (1.0 - t) * along[idx] + t * along[idx + 1]


@dataclass(frozen=True)
class AzimuthNoiseBlock:
    """One ``noiseAzimuthVector``: a LUT along lines for a rectangle of the image."""

    first_line: float
    last_line: float
    first_pixel: float
    last_pixel: float
    lines: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class NoiseModel:
    """Thermal noise power (DN^2 units) = range LUT x azimuth LUT (1 outside azimuth blocks)."""

    range_lut: LutGrid
    azimuth: tuple[AzimuthNoiseBlock, ...] = ()

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Noise power on the (rows x cols) lattice, (len(rows), len(cols)) float64."""
        noise = self.range_lut.sample(rows, cols)
        for block in self.azimuth:
            r = (rows >= block.first_line) & (rows <= block.last_line)
            c = (cols >= block.first_pixel) & (cols <= block.last_pixel)
            if r.any() and c.any():
                factor = np.interp(rows[r], block.lines, block.values)
                noise[np.ix_(r, c)] *= factor[:, None]
        return noise


def _floats(element: ET.Element, name: str, where: str) -> np.ndarray:
    text = _child_text(element, name)
    if text is None:
        raise InputDataError(f"{where}: a vector has no <{name}>")
    return np.array(text.split(), dtype=np.float64)


def _lut(vectors: list[ET.Element], value_tag: str, where: str) -> LutGrid:
    if not vectors:
        raise InputDataError(f"{where} holds no LUT vectors")
    rows = []
    for vector in vectors:
        line = float(_child_text(vector, "line") or "nan")
        pixels, values = _floats(vector, "pixel", where), _floats(vector, value_tag, where)
        if len(pixels) != len(values) or len(pixels) == 0:
            raise InputDataError(f"{where}: vector at line {line} has {len(pixels)} pixels but "
                                 f"{len(values)} {value_tag} values")
        rows.append((line, pixels, values))
    rows.sort(key=lambda r: r[0])
    return LutGrid(np.array([r[0] for r in rows]), tuple(r[1] for r in rows), tuple(r[2] for r in rows))


def parse_calibration(xml: ET.Element, where: str = "calibration XML") -> LutGrid:
    """The ``sigmaNought`` LUT of a ``calibration-*.xml``."""
    return _lut(list(_iter(xml, "calibrationVector")), "sigmaNought", where)


def parse_noise(xml: ET.Element, where: str = "noise XML") -> NoiseModel:
    """Range (and, from IPF 2.9, azimuth) thermal noise LUTs of a ``noise-*.xml``."""
    range_vectors = list(_iter(xml, "noiseRangeVector"))
    if range_vectors:
        range_lut = _lut(range_vectors, "noiseRangeLut", where)
    else:  # IPF < 2.9: one range LUT, no azimuth component
        range_lut = _lut(list(_iter(xml, "noiseVector")), "noiseLut", where)
    blocks = []
    for vector in _iter(xml, "noiseAzimuthVector"):
        lines, values = _floats(vector, "line", where), _floats(vector, "noiseAzimuthLut", where)
        if len(lines) != len(values):
            raise InputDataError(f"{where}: azimuth noise vector has {len(lines)} lines, {len(values)} values")
        blocks.append(AzimuthNoiseBlock(
            *(float(_child_text(vector, k) or default) for k, default in (
                ("firstAzimuthLine", lines[0]), ("lastAzimuthLine", lines[-1]),
                ("firstRangeSample", 0), ("lastRangeSample", math.inf))),
            lines=lines, values=values))
    return NoiseModel(range_lut, tuple(blocks))


def calibrate(dn: np.ndarray, row0: int, col0: int, calibration: LutGrid,
              noise: NoiseModel | None = None) -> np.ndarray:
    """Linear sigma0 of a window of GRD digital numbers.

    Args:
        dn: (h, w) amplitude DN of measurement rows ``row0:row0+h`` and columns ``col0:col0+w``.
        row0, col0: offset of the window in the measurement (LUT line/pixel coordinates).
        calibration: the sigmaNought LUT.
        noise: thermal noise LUTs, or None to skip noise removal.

    Returns:
        (h, w) float32 sigma0 = (DN^2 - noise) / A^2; NaN where DN == 0, :data:`NOISE_FLOOR`
        where noise removal leaves a value <= 0.
    """
    rows = np.arange(row0, row0 + dn.shape[0], dtype=np.float64)
    cols = np.arange(col0, col0 + dn.shape[1], dtype=np.float64)
    power = dn.astype(np.float64) ** 2
    if noise is not None:
        power -= noise.sample(rows, cols)
    sigma0 = power / calibration.sample(rows, cols) ** 2
    if noise is not None:
        sigma0 = np.where(sigma0 > 0, sigma0, NOISE_FLOOR)
    return np.where(dn == 0, np.nan, sigma0).astype(np.float32)


# ----------------------------------------------------------------------------- geocoding


@dataclass
class _Band:
    """One polarisation's open measurement and its annotations."""

    pol: str
    dataset: rasterio.io.DatasetReader
    gcps: list[GroundControlPoint]
    inverse: GCPTransformer
    calibration: LutGrid
    noise: NoiseModel | None


def _open_band(product: _Product, pol: str, stack: ExitStack) -> _Band:
    measurement = product.find("measurement", "", pol, ".tiff")
    cal_name = product.find("annotation/calibration", "calibration-", pol, ".xml")
    noise_name = product.find("annotation/calibration", "noise-", pol, ".xml")
    if measurement is None or cal_name is None:
        missing = "measurement TIFF" if measurement is None else "calibration XML"
        raise InputDataError(f"{product.path} has no {pol} {missing}; choose polarisations the product has "
                             f"(files: measurement/*-{pol.lower()}-*.tiff, annotation/calibration/calibration-*)")
    calibration = parse_calibration(product.xml(cal_name), cal_name)
    noise = parse_noise(product.xml(noise_name), noise_name) if noise_name else None
    if noise is None:
        log.warning("%s: no %s noise XML, thermal noise is not removed", product.product_id, pol)
    try:
        dataset = stack.enter_context(rasterio.open(product.gdal_path(measurement)))
    except RasterioError as exc:
        raise SourceError(f"cannot open {measurement} of {product.path}: {exc}; the product may be corrupt") from exc
    gcps, gcp_crs = dataset.gcps
    if len(gcps) < 3:
        raise InputDataError(f"{measurement} of {product.path} carries no ground control points")
    if gcp_crs is not None and CRS.from_user_input(gcp_crs) != _WGS84:
        raise InputDataError(f"{measurement}: GCPs are in {gcp_crs}, expected EPSG:4326")
    # annotation (line, pixel) index sample centres; GDAL's image space puts centres at +0.5
    centred = [GroundControlPoint(row=g.row + 0.5, col=g.col + 0.5, x=g.x, y=g.y, z=g.z, id=g.id) for g in gcps]
    inverse = stack.enter_context(GCPTransformer(centred, tps=True))
    return _Band(pol, dataset, centred, inverse, calibration, noise)


def source_coordinates(band: _Band, grid: Grid, x0: int, y0: int, width: int, height: int,
                       step: int = LATTICE_STEP) -> tuple[np.ndarray, np.ndarray]:
    """Measurement (row, col) sample coordinates of the centres of a block of ``grid``.

    The inverse GCP transform (thin-plate spline) is evaluated exactly on a lattice of every
    ``step``-th pixel of the whole grid and interpolated bilinearly in between, so the result
    for a pixel does not depend on how the grid is cut into blocks.

    Returns:
        (height, width) float64 arrays of fractional sample rows and columns (NaN if unmapped).
    """
    ly = np.arange((y0 // step) * step, y0 + height + step, step)
    lx = np.arange((x0 // step) * step, x0 + width + step, step)
    gx, gy = np.meshgrid(lx + 0.5, ly + 0.5)
    t = grid.transform
    xs, ys = t.a * gx.ravel() + t.b * gy.ravel() + t.c, t.d * gx.ravel() + t.e * gy.ravel() + t.f
    lons, lats = transform_coords(grid.rasterio_crs, _WGS84, np.asarray(xs), np.asarray(ys))
    rows, cols = band.inverse.rowcol(np.asarray(lons), np.asarray(lats), op=np.positive)
    # GDAL image space (sample centres at +0.5) -> sample indices
    lrows = np.asarray(rows, dtype=np.float64).reshape(gx.shape) - 0.5
    lcols = np.asarray(cols, dtype=np.float64).reshape(gx.shape) - 0.5
    py, px = np.arange(y0, y0 + height), np.arange(x0, x0 + width)
    iy = np.minimum((py - ly[0]) // step, len(ly) - 2)
    ix = np.minimum((px - lx[0]) // step, len(lx) - 2)
    ty = ((py - ly[iy]) / step)[:, None]
    tx = ((px - lx[ix]) / step)[None, :]

    def interp(lattice: np.ndarray) -> np.ndarray:
        a, b = lattice[iy][:, ix], lattice[iy][:, ix + 1]
        c, d = lattice[iy + 1][:, ix], lattice[iy + 1][:, ix + 1]
        return (1 - ty) * ((1 - tx) * a + tx * b) + ty * ((1 - tx) * c + tx * d)

    return interp(lrows), interp(lcols)


def bilinear_sample(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear sample of ``image`` (NaN = no data) at fractional sample coordinates.

    Weights of NaN neighbours are dropped and the rest renormalised (as GDAL's warper does);
    points more than half a pixel outside the image, or with no valid neighbour, are NaN.
    """
    h, w = image.shape
    out = np.full(rows.shape, np.nan, dtype=np.float32)
    inside = (rows >= -0.5) & (rows <= h - 0.5) & (cols >= -0.5) & (cols <= w - 0.5)
    if not inside.any():
        return out
    r, c = np.clip(rows[inside], 0, h - 1), np.clip(cols[inside], 0, w - 1)
    r0 = np.minimum(np.floor(r).astype(np.intp), max(h - 2, 0))
    c0 = np.minimum(np.floor(c).astype(np.intp), max(w - 2, 0))
    fr, fc = r - r0, c - c0
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    total = np.zeros(r.shape)
    weight = np.zeros(r.shape)
    for rr, cc, wgt in ((r0, c0, (1 - fr) * (1 - fc)), (r0, c1, (1 - fr) * fc),
                        (r1, c0, fr * (1 - fc)), (r1, c1, fr * fc)):
        value = image[rr, cc]
        ok = np.isfinite(value) & (wgt > 0)
        total += np.where(ok, value * wgt, 0.0)
        weight += np.where(ok, wgt, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[inside] = np.where(weight > 0, total / weight, np.nan)
    return out


def _warp_block(band: _Band, grid: Grid, x0: int, y0: int, width: int, height: int, max_pixels: int,
                min_block: int = 2 * LATTICE_STEP) -> np.ndarray:
    """Calibrated sigma0 of ``band`` on a block of ``grid`` (float32, NaN = no data)."""
    rows, cols = source_coordinates(band, grid, x0, y0, width, height)
    finite = np.isfinite(rows) & np.isfinite(cols)
    empty = np.full((height, width), np.nan, dtype=np.float32)
    if not finite.any():
        return empty
    r0 = max(0, int(np.floor(rows[finite].min())) - WINDOW_MARGIN)
    r1 = min(band.dataset.height, int(np.ceil(rows[finite].max())) + WINDOW_MARGIN + 1)
    c0 = max(0, int(np.floor(cols[finite].min())) - WINDOW_MARGIN)
    c1 = min(band.dataset.width, int(np.ceil(cols[finite].max())) + WINDOW_MARGIN + 1)
    if r1 <= r0 or c1 <= c0:
        return empty
    if (r1 - r0) * (c1 - c0) > max_pixels and min(width, height) >= 2 * min_block:
        out = np.empty((height, width), dtype=np.float32)
        hh, hw = (height // 2) // LATTICE_STEP * LATTICE_STEP, (width // 2) // LATTICE_STEP * LATTICE_STEP
        for oy, sh in ((0, hh), (hh, height - hh)):
            for ox, sw in ((0, hw), (hw, width - hw)):
                out[oy:oy + sh, ox:ox + sw] = _warp_block(band, grid, x0 + ox, y0 + oy, sw, sh, max_pixels,
                                                          min_block)
        return out
    try:
        dn = band.dataset.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
    except RasterioError as exc:
        raise SourceError(f"cannot read {band.pol} pixels of {band.dataset.name}: {exc}; "
                          "the product may be corrupt") from exc
    sigma0 = calibrate(dn, r0, c0, band.calibration, band.noise)
    return bilinear_sample(sigma0, rows - r0, cols - c0)


def _blocks(grid: Grid, block: int) -> Iterator[tuple[int, int, Grid]]:
    for y0 in range(0, grid.height, block):
        for x0 in range(0, grid.width, block):
            yield x0, y0, grid.window(x0, y0, x0 + block, y0 + block)


def _gcp_bounds_overlap(bands: Sequence[_Band], grid: Grid) -> bool:
    west, south, east, north = grid.lonlat_bounds()
    for band in bands:
        lons = [g.x for g in band.gcps]
        lats = [g.y for g in band.gcps]
        if min(lons) <= east and max(lons) >= west and min(lats) <= north and max(lats) >= south:
            return True
    return False


def geocode_grd(product: Path, grid: Grid, out_path: Path, *, polarisations: Sequence[str] = ("VV", "VH"),
                block: int = 1024) -> GrdResult:
    """Calibrate, denoise and geocode a Sentinel-1 IW GRD onto ``grid``, written atomically.

    Args:
        product: a ``.SAFE`` folder or the zipped product (read in place, never extracted).
        grid: target grid (e.g. the ROI's 10 m UTM grid or a tile of it).
        out_path: GeoTIFF to write: float32 linear sigma0, NaN = no data, one band per
            polarisation, band descriptions = polarisation names.
        polarisations: bands to write, in order.
        block: output block size in pixels (a multiple of 16); memory scales with block^2.

    Returns:
        A :class:`GrdResult`. A product that does not overlap ``grid`` is **not** an error: the
        file is written all-NaN and ``coverage`` is 0.0, so callers can skip it.

    Raises:
        InputDataError: not a GRD SAFE, a missing polarisation, or unusable annotations.
        SourceError: a corrupt zip, XML or TIFF.
        ValueError: ``block`` is not a positive multiple of 16.
    """
    if block < 16 or block % 16:
        raise ValueError(f"block must be a positive multiple of 16, got {block}")
    pols = tuple(p.upper() for p in polarisations)
    if not pols:
        raise InputDataError("no polarisation requested; pass e.g. polarisations=('VV', 'VH')")
    out_path = Path(out_path)
    safe = _Product(Path(product))
    with ExitStack() as stack:
        stack.callback(safe.close)
        meta = _parse_manifest(safe)
        missing = [p for p in pols if p not in meta.polarisations]
        if missing:
            raise InputDataError(f"{safe.product_id} has polarisations {'/'.join(meta.polarisations)}, "
                                 f"not {'/'.join(missing)}; choose from those it has")
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"))
        bands = [_open_band(safe, p, stack) for p in pols]
        overlaps = _gcp_bounds_overlap(bands, grid)
        if not overlaps:
            log.info("%s does not overlap the grid", safe.product_id)
        tile = math.gcd(block, 512)
        profile = {"driver": "GTiff", "dtype": "float32", "count": len(pols), **grid.profile(), "nodata": np.nan,
                   "tiled": True, "blockxsize": tile, "blockysize": tile, "compress": "deflate",
                   "predictor": 3, "BIGTIFF": "IF_SAFER"}
        max_pixels = MAX_WINDOW_FACTOR * block * block
        covered = 0
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for x0, y0, sub in _blocks(grid, block):
                data = np.full((len(pols), sub.height, sub.width), np.nan, dtype=np.float32)
                if overlaps:
                    for i, band in enumerate(bands):
                        data[i] = _warp_block(band, grid, x0, y0, sub.width, sub.height, max_pixels)
                covered += int(np.isfinite(data).any(axis=0).sum())
                dst.write(data, window=Window(x0, y0, sub.width, sub.height))
            for i, pol in enumerate(pols, start=1):
                dst.set_band_description(i, pol)
            dst.update_tags(PRODUCT=safe.product_id, ORBIT_DIRECTION=meta.orbit_direction,
                            ACQUIRED=meta.start.isoformat(), BACKSCATTER=BACKSCATTER_DESCRIPTION,
                            UNITS="linear power")
    coverage = covered / float(grid.height * grid.width)
    log.info("%s -> %s (%.1f%% covered)", safe.product_id, out_path, 100 * coverage)
    return GrdResult(out_path, meta.orbit_direction, meta.start, BACKSCATTER_DESCRIPTION, coverage, pols)
