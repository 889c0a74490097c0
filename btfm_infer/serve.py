"""``btfm-serve``: a local web explorer of an embedding map (quick-look, similarity, few-shot classes).

One page (Leaflet, vendored under ``btfm_infer/static/``; nothing is fetched from the internet
unless ``--basemap`` names a tile server) shows the quick-look on a slippy map. A click asks the
server for the cosine similarity of every pixel to the clicked one; labelled points ask it for
a logistic-regression class map. Both are computed here, block by block on the memory-mapped
``.npy`` (or the exported GeoTIFF), on the quick-look's strided grid, and come back as PNGs.

Map coordinates: without a basemap the map uses Leaflet's ``L.CRS.Simple`` in the embedding's
pixel units (``lat = -row``, ``lng = col``), so a click names a pixel exactly and overlays are
the grid itself. With ``--basemap`` the map is Web Mercator: overlays are reprojected here to
EPSG:3857 (nearest neighbour) and clicks are sent as longitude/latitude, turned into the grid's
row and column here with the grid's CRS.

Endpoints (all GET unless said): ``/`` the page, ``/static/...`` its scripts and styles,
``/meta.json`` the grid, ``/quicklook.png``, ``/similarity?row=&col=`` (or ``lat=&lon=``) a PNG,
``/similarity.npy`` the (h, w) float32 values, POST ``/classify`` with ``[{"row", "col",
"label"}, ...]`` a PNG (``/classify.npy``: (h, w) int16 class indices, -1 outside), and
``/files/<path>`` the files of the served folder. Paths outside the served folders (``..``,
absolute paths, symlinks leading out) are refused with 403.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import logging
import math
import mimetypes
import shutil
import socket
import struct
import threading
import warnings
import webbrowser
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.warp import calculate_default_transform, reproject
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from btfm_core.cli import HelpFormatter, add_standard_options, describe_unexpected, entry_point, prog_name
from btfm_core.errors import BTFMError, InputDataError
from btfm_core.grid import Grid
from btfm_core.logs import setup_logging
from btfm_core.roi import Roi, open_roi
from btfm_core.run import RunLayout
from btfm_infer.embedding_map import EmbeddingMap
from btfm_infer.export_common import INT8_NODATA
from btfm_infer.quicklook import (
    DEFAULT_MAX_SIZE,
    HIGH_PERCENTILE,
    LOW_PERCENTILE,
    MAX_SAMPLES,
    fit_pca,
    project,
    quicklook_stride,
    robust_stretch,
)

__all__ = ["BadRequestError", "EmbeddingSource", "Explorer", "ExplorerServer", "NpySource", "Settings", "TiffSource",
           "main", "make_server", "open_source"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
STATIC_DIR = Path(__file__).with_name("static")
PAGE = "explorer.html"
NPY_NAME = RunLayout(Path()).stitched_npy.name
ROI_NAME = "roi.tiff"
WEB_MERCATOR = "EPSG:3857"
OSM_ATTRIBUTION = "&copy; OpenStreetMap contributors"
#: Bytes of float32 embedding held per block of rows.
_BLOCK_BYTES = 32 * 2**20
MAX_BODY_BYTES = 2**20
MAX_POINTS = 1000
MAX_LABEL_CHARS = 64
#: Viridis at 0, 1/8, ..., 1 (interpolated to 256 colours): the similarity ramp, low to high.
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")
#: Class colours (tab10, then its light variants): at most this many classes.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class BadRequestError(BTFMError, ValueError):
    """A request the explorer cannot answer as asked (a pixel off the map, too few labels); HTTP 400."""


# --------------------------------------------------------------------------- images


def encode_png(rgba: np.ndarray) -> bytes:
    """Encode an (H, W, 4) uint8 RGBA image as PNG bytes (no georeferencing)."""
    height, width, _ = rgba.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgba.reshape(height, width * 4)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def read_rgba_png(path: Path) -> np.ndarray | None:
    """An (H, W, 4) uint8 image of a 3- or 4-band 8-bit PNG; None if it is not one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if src.count not in (3, 4) or set(src.dtypes) != {"uint8"}:
                    return None
                bands = src.read()
    except RasterioIOError:
        return None
    if bands.shape[0] == 3:
        bands = np.concatenate([bands, np.full_like(bands[:1], 255)])
    return np.ascontiguousarray(np.moveaxis(bands, 0, -1))


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def colour_ramp(anchors: Sequence[str] = VIRIDIS, size: int = 256) -> np.ndarray:
    """A (size, 3) uint8 lookup table interpolating ``anchors`` (``#rrggbb``) evenly."""
    stops = np.array([_hex_rgb(c) for c in anchors], np.float64)
    where = np.linspace(0, len(anchors) - 1, size)
    table = [np.interp(where, np.arange(len(anchors)), stops[:, k]) for k in range(3)]
    return np.rint(np.stack(table, axis=1)).astype(np.uint8)


def paint(codes: np.ndarray, valid: np.ndarray, table: np.ndarray) -> np.ndarray:
    """RGBA (h, w, 4) uint8 of integer ``codes`` (h, w) looked up in ``table`` (n, 3); clear where not ``valid``."""
    rgba = np.zeros((*codes.shape, 4), np.uint8)
    rgba[..., :3] = table[np.where(valid, codes, 0)]
    rgba[..., 3] = np.where(valid, 255, 0)
    return rgba


# --------------------------------------------------------------------------- embedding sources


class EmbeddingSource(Protocol):
    """A (H, W, C) embedding map on a grid, read in blocks of rows or at a few pixels.

    ``valid`` marks pixels with an embedding: inside the ROI, finite and not all zero.
    """

    @property
    def path(self) -> Path:
        """The embedding file."""
        ...

    @property
    def grid(self) -> Grid:
        """Its (H, W) grid."""
        ...

    @property
    def channels(self) -> int:
        """C, the embedding length."""
        ...

    def read_rows(self, row0: int, row1: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``row0:row1:stride``, columns ``::stride`` → ((h, w, C) float32 zero where invalid, (h, w) valid)."""
        ...

    def read_pixels(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,) pixel indices → ((N, C) float32, (N,) valid)."""
        ...


def _valid_vectors(vectors: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(…, C) vectors zeroed where invalid, and the (…) mask: ``inside``, finite and not all zero."""
    valid = inside & np.all(np.isfinite(vectors), axis=-1) & np.any(vectors != 0, axis=-1)
    return np.where(valid[..., None], vectors, 0).astype(np.float32, copy=False), valid


@dataclass(frozen=True)
class NpySource:
    """A stitched ``.npy`` (memory-mapped for each read) with its ROI GeoTIFF."""

    embedding_map: EmbeddingMap

    @classmethod
    def open(cls, npy: Path, roi_path: Path) -> NpySource:
        """Check the ``.npy`` against the ROI (:meth:`EmbeddingMap.open`) and describe it."""
        return cls(EmbeddingMap.open(npy, open_roi(roi_path)))

    @property
    def path(self) -> Path:
        return self.embedding_map.path

    @property
    def roi(self) -> Roi:
        return self.embedding_map.roi

    @property
    def grid(self) -> Grid:
        return self.embedding_map.grid

    @property
    def channels(self) -> int:
        return self.embedding_map.channels

    def read_rows(self, row0: int, row1: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`EmbeddingSource`."""
        window = self.grid.window(0, row0, self.grid.width, row1)
        inside = self.roi.read_mask(window)[::stride, ::stride] != 0
        vectors = self.embedding_map.read(np.s_[row0:row1:stride, ::stride]).astype(np.float32, copy=False)
        return _valid_vectors(vectors, inside)

    def read_pixels(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`EmbeddingSource`."""
        vectors = self.embedding_map.read((rows, cols)).astype(np.float32, copy=False)
        with rasterio.open(self.roi.path) as src:
            values = np.array([src.read(1, window=Window(int(c), int(r), 1, 1))[0, 0]
                               for r, c in zip(rows, cols, strict=True)])
        return _valid_vectors(vectors, self.roi.inside(values))


@dataclass(frozen=True)
class TiffSource:
    """An exported embedding GeoTIFF: float32 (NaN outside) or int8 codes (-128 outside) x ``<name>_scales.tif``."""

    path: Path
    grid: Grid
    channels: int
    scales: Path | None

    @classmethod
    def open(cls, path: Path) -> TiffSource:
        """Open and check an embedding GeoTIFF (and its scales when int8)."""
        from btfm_infer.export_cog import scales_path

        try:
            with rasterio.open(path) as src:
                grid, channels, dtype = Grid.from_dataset(src), src.count, src.dtypes[0]
                if src.crs is None:
                    raise InputDataError(f"{path} has no CRS; export the embedding with btfm-npy2tiff")
        except RasterioIOError as exc:
            raise InputDataError(f"{path} is not a raster GDAL can read ({exc}); pass a run folder, a "
                                 f"{NPY_NAME} or an exported embedding .tif") from exc
        if channels < 2 or dtype not in ("float32", "int8"):
            raise InputDataError(f"{path} has {channels} {dtype} band(s); expected an embedding GeoTIFF "
                                 "(float32 or int8, one band per dimension) from btfm-npy2tiff")
        scales = scales_path(path) if dtype == "int8" else None
        if scales is not None and not scales.is_file():
            raise InputDataError(f"{path} holds int8 codes but its scales {scales.name} are not beside it; put the "
                                 "scales file back or serve the float32 GeoTIFF or the .npy")
        return cls(path, grid, channels, scales)

    def _read(self, window: Window, stride: int) -> tuple[np.ndarray, np.ndarray]:
        with rasterio.open(self.path) as src:
            data = src.read(window=window, out_dtype=np.float32)[:, ::stride, ::stride]
        vectors = np.moveaxis(data, 0, -1)
        inside = np.ones(vectors.shape[:2], bool)
        if self.scales is not None:
            inside = ~np.all(vectors == INT8_NODATA, axis=-1)
            with rasterio.open(self.scales) as src:
                vectors = vectors * src.read(1, window=window, out_dtype=np.float32)[::stride, ::stride, None]
        return _valid_vectors(vectors, inside)

    def read_rows(self, row0: int, row1: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`EmbeddingSource`; full-resolution reads are bounded by the block size."""
        step = stride * max(1, _BLOCK_BYTES // (self.grid.width * self.channels * 4 * stride))
        parts = [self._read(Window(0, r, self.grid.width, min(row1, r + step) - r), stride)
                 for r in range(row0, row1, step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def read_pixels(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`EmbeddingSource`."""
        parts = [self._read(Window(int(c), int(r), 1, 1), 1) for r, c in zip(rows, cols, strict=True)]
        return (np.concatenate([p[0].reshape(1, -1) for p in parts]),
                np.concatenate([p[1].reshape(1) for p in parts]))


def _embedding_tiffs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.tif") if not p.name.endswith("_scales.tif"))


def open_source(target: Path, roi: Path | None = None) -> tuple[EmbeddingSource, Path]:
    """The embedding to serve and the folder whose files are served.

    Args:
        target: a run folder (its ``stitched_representation.npy``, else its one embedding ``.tif``), a
            stitched ``.npy`` or an exported embedding GeoTIFF.
        roi: the ROI GeoTIFF of a ``.npy`` (default: ``roi.tiff`` beside it).

    Raises:
        InputDataError: if nothing servable is found or the files do not fit together.
    """
    target = target.expanduser().absolute()
    if target.is_dir():
        folder = target
        if (target / NPY_NAME).is_file():
            target = target / NPY_NAME
        else:
            tiffs = _embedding_tiffs(target)
            if len(tiffs) != 1:
                found = ", ".join(p.name for p in tiffs) or "none"
                raise InputDataError(f"{folder} has no {NPY_NAME} and {len(tiffs)} embedding .tif file(s) ({found});"
                                     " pass the file to serve instead of the folder")
            target = tiffs[0]
    elif target.is_file():
        folder = target.parent
    else:
        raise InputDataError(f"{target} does not exist; pass a BTFM run folder, a {NPY_NAME} or an embedding .tif")
    if target.suffix == ".npy":
        roi_path = (roi.expanduser() if roi is not None else folder / ROI_NAME)
        if not roi_path.is_file():
            raise InputDataError(f"{target} needs its ROI GeoTIFF and {roi_path} does not exist; pass it with --roi")
        return NpySource.open(target, roi_path), folder
    if target.suffix.lower() in (".tif", ".tiff"):
        return TiffSource.open(target), folder
    raise InputDataError(f"{target} is neither a .npy nor a GeoTIFF; pass a run folder, a {NPY_NAME} or a .tif")


# --------------------------------------------------------------------------- the explorer


@dataclass(frozen=True)
class Settings:
    """What the command line decides about the page.

    Attributes:
        basemap: XYZ tile URL template (``{z}/{x}/{y}``, optional ``{s}``) under the overlays; None: no
            basemap, pixel coordinates, no network.
        attribution: the basemap's attribution (HTML).
        max_size: longest side, in pixels, of the strided grid the layers are computed on.
    """

    basemap: str | None = None
    attribution: str = ""
    max_size: int = DEFAULT_MAX_SIZE


@dataclass(frozen=True)
class WarpTarget:
    """The Web Mercator grid overlays are reprojected onto (basemap mode)."""

    transform: Affine
    width: int
    height: int
    #: Leaflet bounds [[south, west], [north, east]] in degrees.
    latlng_bounds: list[list[float]]


class Explorer:
    """The explorer's state and computations, independent of HTTP.

    Layers are computed on the display grid: the embedding sampled every ``stride`` pixels (the
    quick-look's stride), shape (h, w) = (ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, source: EmbeddingSource, root: Path, settings: Settings) -> None:
        self.source = source
        self.root = root
        self.settings = settings
        grid = source.grid
        self.stride = quicklook_stride(grid.height, grid.width, settings.max_size)
        self.display_shape = (math.ceil(grid.height / self.stride), math.ceil(grid.width / self.stride))
        self.display_grid = Grid(grid.crs, grid.transform @ Affine.scale(self.stride), *self.display_shape)
        self.warp = self._warp_target() if settings.basemap else None
        self._quicklook: bytes | None = None
        self._lock = threading.Lock()

    def _warp_target(self) -> WarpTarget:
        """GDAL's resolution for the display grid in Web Mercator, on a grid covering all of its (densified) bounds."""
        grid = self.display_grid
        default, _, _ = calculate_default_transform(grid.rasterio_crs, WEB_MERCATOR, grid.width, grid.height,
                                                    *grid.bounds)
        left, bottom, right, top = grid.bounds_in(WEB_MERCATOR)
        res = abs(default.a)
        width, height = max(1, math.ceil((right - left) / res)), max(1, math.ceil((top - bottom) / res))
        (west, east), (south, north) = transform_points(WEB_MERCATOR, "EPSG:4326", [left, left + res * width],
                                                        [top - res * height, top])
        return WarpTarget(Affine(res, 0, left, 0, -res, top), width, height, [[south, west], [north, east]])

    def meta(self) -> dict[str, object]:
        """What the page needs: sizes, CRS, bounds and the overlays' placement."""
        grid = self.source.grid
        height, width = self.display_shape
        if self.warp is not None:
            overlay = self.warp.latlng_bounds
        else:  # L.CRS.Simple: lat = -row, lng = col, in full-resolution pixels
            overlay = [[-height * self.stride, 0], [0, width * self.stride]]
        return {"source": self.source.path.name, "height": grid.height, "width": grid.width,
                "channels": self.source.channels, "crs": grid.rasterio_crs.to_string(),
                "bounds_4326": list(grid.lonlat_bounds()), "stride": self.stride,
                "display": {"height": height, "width": width},
                "mode": "geographic" if self.warp is not None else "pixel", "overlay_bounds": overlay,
                "basemap": self.settings.basemap, "attribution": self.settings.attribution, "palette": PALETTE,
                "files": sorted(p.name for p in self.root.iterdir() if p.is_file())}

    def display_blocks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(row0, vectors, valid)``: blocks of display rows, (h, w, C) float32 and (h, w) bool."""
        height, width = self.display_shape
        rows = max(1, _BLOCK_BYTES // (width * self.source.channels * 4))
        for d0 in range(0, height, rows):
            d1 = min(height, d0 + rows)
            vectors, valid = self.source.read_rows(d0 * self.stride, (d1 - 1) * self.stride + 1, self.stride)
            yield d0, vectors, valid

    def to_png(self, rgba: np.ndarray) -> bytes:
        """PNG of a display-grid (h, w, 4) image, reprojected to Web Mercator in basemap mode."""
        if self.warp is None:
            return encode_png(rgba)
        warped = np.zeros((4, self.warp.height, self.warp.width), np.uint8)
        reproject(np.ascontiguousarray(np.moveaxis(rgba, -1, 0)), warped, src_transform=self.display_grid.transform,
                  src_crs=self.display_grid.rasterio_crs, dst_transform=self.warp.transform, dst_crs=WEB_MERCATOR,
                  resampling=Resampling.nearest)
        return encode_png(np.ascontiguousarray(np.moveaxis(warped, 0, -1)))

    # ----------------------------------------------------------------- quick-look

    def quicklook_png(self) -> bytes:
        """The quick-look: the PNG beside the embedding if it is on the display grid, else rendered (PCA)."""
        with self._lock:
            if self._quicklook is None:
                existing = self.source.path.with_suffix(".png")
                rgba = read_rgba_png(existing) if existing.is_file() else None
                if rgba is not None and rgba.shape[:2] == self.display_shape:
                    log.info("quick-look: %s", existing)
                    self._quicklook = existing.read_bytes() if self.warp is None else self.to_png(rgba)
                else:
                    self._quicklook = self.to_png(self.render_quicklook())
            return self._quicklook

    def sample_vectors(self, count: int = MAX_SAMPLES, seed: int = 0) -> np.ndarray:
        """Up to ``count`` valid display pixels drawn uniformly in one pass (smallest random keys), (N, C)."""
        rng = np.random.default_rng(seed)
        keys = np.empty(0)
        kept = np.empty((0, self.source.channels), np.float32)
        for _, vectors, valid in self.display_blocks():
            keys = np.concatenate([keys, rng.random(int(valid.sum()))])
            kept = np.concatenate([kept, vectors[valid]])
            if keys.size > count:
                best = np.argpartition(keys, count)[:count]
                keys, kept = keys[best], kept[best]
        return kept

    def render_quicklook(self) -> np.ndarray:
        """(h, w, 4) uint8: the first three principal components as RGB (2nd-98th percentile stretch)."""
        rgba = np.zeros((*self.display_shape, 4), np.uint8)
        samples = self.sample_vectors()
        if samples.shape[0] == 0:
            log.warning("%s has no valid embedding: the quick-look is transparent", self.source.path)
            return rgba
        n_components = min(3, self.source.channels)
        mean, components = fit_pca(samples, n_components)
        coords = project(samples, mean, components)
        low = np.percentile(coords, LOW_PERCENTILE, axis=0)
        high = np.percentile(coords, HIGH_PERCENTILE, axis=0)
        for d0, vectors, valid in self.display_blocks():
            block = project(vectors, mean, components)
            for band in range(3):
                k = min(band, n_components - 1)
                stretched = robust_stretch(block[..., k], low[k], high[k])
                rgba[d0:d0 + valid.shape[0], :, band] = np.where(valid, stretched, 0)
            rgba[d0:d0 + valid.shape[0], :, 3] = np.where(valid, 255, 0)
        log.info("quick-look rendered: PCA of %d sampled pixel(s), %d x %d px", samples.shape[0],
                 self.display_shape[1], self.display_shape[0])
        return rgba

    # ----------------------------------------------------------------- pixels, similarity, classes

    def pixel_of(self, query: Mapping[str, object]) -> tuple[int, int]:
        """(row, col) on the full grid from ``row``/``col``, or ``lat``/``lon`` (degrees, WGS84).

        Raises:
            BadRequestError: missing or non-numeric coordinates, or a pixel off the map.
        """
        if "row" in query and "col" in query:
            row_value, col_value = _number(query["row"], "row"), _number(query["col"], "col")
            if row_value != int(row_value) or col_value != int(col_value):
                raise BadRequestError(f"row {row_value:g} and col {col_value:g} must be whole pixel indices")
            row, col = int(row_value), int(col_value)
        elif "lat" in query and "lon" in query:
            grid = self.source.grid
            (x,), (y,) = transform_points("EPSG:4326", grid.rasterio_crs, [_number(query["lon"], "lon")],
                                          [_number(query["lat"], "lat")])
            col_f, row_f = ~grid.transform @ (x, y)
            row, col = math.floor(row_f), math.floor(col_f)
        else:
            raise BadRequestError("give the pixel as row= and col= (or lat= and lon=)")
        height, width = self.source.grid.shape
        if not (0 <= row < height and 0 <= col < width):
            raise BadRequestError(f"pixel (row {row}, col {col}) is off the {height} x {width} map; click on the map")
        return row, col

    def similarity(self, row: int, col: int) -> np.ndarray:
        """Cosine similarity of every display pixel to pixel (row, col): (h, w) float32, NaN where invalid.

        Raises:
            BadRequestError: if that pixel has no embedding.
        """
        vectors, valid = self.source.read_pixels(np.array([row]), np.array([col]))
        if not valid[0]:
            raise BadRequestError(f"pixel (row {row}, col {col}) has no embedding (outside the ROI); click inside it")
        unit = vectors[0].astype(np.float64) / np.linalg.norm(vectors[0].astype(np.float64))
        out = np.full(self.display_shape, np.nan, np.float32)
        for d0, block, block_valid in self.display_blocks():
            norms = np.linalg.norm(block, axis=-1)
            with np.errstate(invalid="ignore", divide="ignore"):
                cosine = (block.astype(np.float64) @ unit) / norms
            out[d0:d0 + block.shape[0]] = np.where(block_valid, cosine, np.nan)
        return out

    def similarity_rgba(self, values: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(h, w, 4) viridis image of ``values``, stretched from the 2nd to the 98th percentile → (rgba, low, high)."""
        valid = np.isfinite(values)
        inside = values[valid]
        low, high = (float(np.percentile(inside, p)) for p in (LOW_PERCENTILE, HIGH_PERCENTILE))
        if not high > low:
            low = high - 1e-6
        return paint(robust_stretch(values, low, high), valid, colour_ramp()), low, high

    def classify(self, points: Sequence[tuple[int, int, str]]) -> tuple[np.ndarray, list[str]]:
        """Fit a logistic regression on labelled pixels and predict every display pixel.

        Args:
            points: (row, col, label) on the full grid.

        Returns:
            ``(classes, names)``: (h, w) int16 indices into ``names`` (first-appearance order), -1 where invalid.

        Raises:
            BadRequestError: fewer than two labels, more than :data:`PALETTE` has colours, or a point without embedding.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        names = list(dict.fromkeys(label for _, _, label in points))
        if not 2 <= len(names) <= len(PALETTE):
            raise BadRequestError(f"{len(names)} label(s) given; label points with 2 to {len(PALETTE)} different "
                                  "labels to classify")
        rows, cols = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        vectors, valid = self.source.read_pixels(rows, cols)
        if not valid.all():
            bad = int(np.flatnonzero(~valid)[0])
            raise BadRequestError(f"point (row {rows[bad]}, col {cols[bad]}) has no embedding (outside the ROI); "
                                  "remove it")
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(vectors.astype(np.float64), np.array([names.index(p[2]) for p in points]))
        out = np.full(self.display_shape, -1, np.int16)
        for d0, block, block_valid in self.display_blocks():
            part = out[d0:d0 + block.shape[0]]
            if block_valid.any():
                part[block_valid] = model.predict(block[block_valid].astype(np.float64))
        return out, names


def _number(value: object, name: str) -> float:
    """A finite float from a JSON number or a query string value."""
    if isinstance(value, list) and len(value) == 1:  # parse_qs gives lists
        value = value[0]
    if isinstance(value, bool):
        raise BadRequestError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadRequestError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise BadRequestError(f"{name} must be a finite number, got {value!r}")
    return number


def parse_points(explorer: Explorer, body: bytes) -> list[tuple[int, int, str]]:
    """(row, col, label) of a ``/classify`` body ``[{"row", "col", "label"}, ...]`` (or lat/lon; or ``{"points"}``)."""
    try:
        data = json.loads(body)
    except ValueError:
        raise BadRequestError('the body is not JSON; send [{"row": 1, "col": 2, "label": "water"}, ...]') from None
    if isinstance(data, dict):
        data = data.get("points")
    if not isinstance(data, list) or not data or len(data) > MAX_POINTS:
        raise BadRequestError(f"send a JSON list of 1 to {MAX_POINTS} points {{row, col, label}}")
    points = []
    for item in data:
        if not isinstance(item, dict):
            raise BadRequestError(f"each point must be an object with row, col and label, got {item!r}")
        label = item.get("label")
        if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL_CHARS:
            raise BadRequestError(f"each point needs a label of 1 to {MAX_LABEL_CHARS} characters, got {label!r}")
        points.append((*explorer.pixel_of(item), label.strip()))
    return points


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: a body (bytes, or a file streamed from disk), its status and headers."""

    body: bytes | Path
    status: int = 200
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(data: object, status: int = 200) -> Reply:
    """A JSON answer."""
    return Reply(json.dumps(data).encode(), status, "application/json")


def error_reply(status: int, message: str) -> Reply:
    """A JSON ``{"error": message}`` answer."""
    return json_reply({"error": message}, status)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in ``.npy`` format."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def resolve_inside(root: Path, relative: str) -> Path | None:
    """The path that URL-encoded ``relative`` names under ``root``, or None if it leads outside ``root``.

    Refused: ``..`` components, absolute paths, backslashes and NUL bytes, and anything whose real
    path (symlinks followed) is not under ``root``'s real path.
    """
    name = unquote(relative)
    if not name or "\x00" in name or "\\" in name or name.startswith("/") or ".." in PurePosixPath(name).parts:
        return None
    real_root = root.resolve()
    path = (real_root / name).resolve()
    return path if path == real_root or path.is_relative_to(real_root) else None


def file_reply(root: Path, relative: str) -> Reply:
    """A file under ``root``: 403 if the path leads outside it, 404 if it is not a file there."""
    path = resolve_inside(root, relative)
    if path is None:
        return error_reply(403, "that path is outside the served folder")
    if not path.is_file():
        return error_reply(404, f"no file {unquote(relative)!r} here")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix == ".js":
        content_type = "text/javascript"
    return Reply(path, 200, content_type)


def _image_reply(png: bytes, headers: dict[str, str] | None = None) -> Reply:
    return Reply(png, 200, "image/png", {"Cache-Control": "no-store", **(headers or {})})


def route(explorer: Explorer, method: str, target: str, body: bytes | None) -> Reply:
    """Answer one request (``target`` is the raw request path with its query)."""
    path, _, query_string = target.partition("?")
    query = parse_qs(query_string)
    if method == "POST" and path in ("/classify", "/classify.npy"):
        classes, names = explorer.classify(parse_points(explorer, body or b""))
        if path == "/classify.npy":
            return Reply(npy_bytes(classes), 200, "application/x-npy")
        table = np.array([_hex_rgb(c) for c in PALETTE], np.uint8)
        legend = json.dumps([[name, PALETTE[i]] for i, name in enumerate(names)])  # ASCII: a valid header
        return _image_reply(explorer.to_png(paint(classes, classes >= 0, table)), {"X-Legend": legend})
    if method != "GET":
        return error_reply(405, f"{method} {path} is not supported")
    if path in ("/", "/index.html"):
        return file_reply(STATIC_DIR, PAGE)
    if path.startswith("/static/"):
        return file_reply(STATIC_DIR, path[len("/static/"):])
    if path.startswith("/files/"):
        return file_reply(explorer.root, path[len("/files/"):])
    if path == "/meta.json":
        return json_reply(explorer.meta())
    if path == "/quicklook.png":
        return _image_reply(explorer.quicklook_png())
    if path in ("/similarity", "/similarity.png", "/similarity.npy"):
        row, col = explorer.pixel_of(query)
        values = explorer.similarity(row, col)
        if path == "/similarity.npy":
            return Reply(npy_bytes(values), 200, "application/x-npy")
        rgba, low, high = explorer.similarity_rgba(values)
        return _image_reply(explorer.to_png(rgba), {"X-Pixel": f"{row},{col}", "X-Range": f"{low:.6f},{high:.6f}"})
    return error_reply(404, f"no page {path!r} here")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host.strip("[]") in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def content_security_policy(basemap: str | None) -> str:
    """The page may load only from this server (and the basemap's tile host): no CDN, no other network."""
    tiles = ""
    if basemap:
        parts = urlsplit(basemap.replace("{s}", "*"))
        tiles = f" {parts.scheme}://{parts.netloc}"
    return (f"default-src 'self'; img-src 'self' blob: data:{tiles}; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; connect-src 'self'; frame-ancestors 'none'")


class ExplorerServer(ThreadingHTTPServer):
    """The HTTP server of one :class:`Explorer`."""

    daemon_threads = True

    def __init__(self, explorer: Explorer, host: str, port: int) -> None:
        self.explorer = explorer
        self.bind_host = host
        self.csp = content_security_policy(explorer.settings.basemap)
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), ExplorerHandler)

    @property
    def url(self) -> str:
        """The page's address."""
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else str(host)  # a str for AF_INET and AF_INET6
        return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"

    def host_allowed(self, header: str | None) -> bool:
        """On a loopback address, answer only requests for this machine's names (no DNS rebinding)."""
        if header is None or not is_loopback(self.bind_host):
            return True
        name = urlsplit(f"//{header}").hostname or ""
        return is_loopback(name) or name == self.bind_host


class ExplorerHandler(BaseHTTPRequestHandler):
    """Route requests to :func:`route`; BTFM errors become JSON error answers."""

    server: ExplorerServer

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._answer(None)

    def do_POST(self) -> None:
        declared = self.headers.get("Content-Length") or "0"
        length = int(declared) if declared.isdigit() else MAX_BODY_BYTES + 1
        if length > MAX_BODY_BYTES:
            self._send(error_reply(413, f"the body is larger than {MAX_BODY_BYTES} bytes; send fewer points"))
            return
        self._answer(self.rfile.read(length))

    def _answer(self, body: bytes | None) -> None:
        if not self.server.host_allowed(self.headers.get("Host")):
            self._send(error_reply(403, "this server answers only to localhost / 127.0.0.1"))
            return
        try:
            reply = route(self.server.explorer, self.command, self.path, body)
        except BadRequestError as exc:
            reply = error_reply(400, str(exc))
        except BTFMError as exc:
            log.error("%s", exc)
            reply = error_reply(500, str(exc))
        except Exception as exc:  # a bug or an unreadable file: answer, log, keep serving
            log.exception("request %s failed", self.path)
            reply = error_reply(500, describe_unexpected(exc))
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        size = reply.body.stat().st_size if isinstance(reply.body, Path) else len(reply.body)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(size))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", self.server.csp)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if isinstance(reply.body, Path):
            with reply.body.open("rb") as stream:
                shutil.copyfileobj(stream, self.wfile)
        else:
            self.wfile.write(reply.body)


def make_server(explorer: Explorer, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> ExplorerServer:
    """Bind the explorer's server (port 0: any free port); call ``serve_forever`` to run it.

    Raises:
        BTFMError: if the address cannot be bound (the port is in use, the host is not this machine's).
    """
    try:
        return ExplorerServer(explorer, host, port)
    except OSError as exc:
        raise BTFMError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                        "or --host") from exc


# --------------------------------------------------------------------------- command line


def check_basemap(url: str | None) -> str | None:
    """An XYZ tile URL template, checked: http(s) with ``{z}``, ``{x}`` and ``{y}``."""
    if url is None:
        return None
    if urlsplit(url).scheme not in ("http", "https") or not all(k in url for k in ("{z}", "{x}", "{y}")):
        raise BTFMError(f"--basemap {url!r} is not an XYZ tile URL; give one like "
                        "https://tile.openstreetmap.org/{z}/{x}/{y}.png")
    return url


def build_parser() -> argparse.ArgumentParser:
    """Command line of ``btfm-serve``."""
    parser = argparse.ArgumentParser(
        prog=prog_name("btfm_infer.serve"),
        description="Explore an embedding map in the browser: its quick-look on a map, a click shows the cosine "
                    "similarity of every pixel to that one, labelled points give a logistic-regression class map. "
                    "Serves only this machine by default and fetches nothing from the internet unless --basemap.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  btfm-serve demo_run\n"
               "  btfm-serve demo_run/stitched_representation.tif --port 8080 --open\n"
               "  btfm-serve demo_run --basemap 'https://tile.openstreetmap.org/{z}/{x}/{y}.png'\n",
    )
    parser.add_argument("target", type=Path, metavar="RUN_DIR_OR_FILE",
                        help=f"a run folder (its {NPY_NAME} and {ROI_NAME}), a stitched .npy or an embedding .tif")
    parser.add_argument("--roi", type=Path, default=None, help=f"ROI GeoTIFF of a .npy (default: {ROI_NAME} beside it)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on; 0.0.0.0 lets other machines read the folder's files")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (0: any free port)")
    parser.add_argument("--basemap", default=None, metavar="URL",
                        help="XYZ tile URL under the overlays, e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png "
                             "(default: none, pixel coordinates, no network)")
    parser.add_argument("--attribution", default=None,
                        help="the basemap's attribution (default: OpenStreetMap's for openstreetmap.org tiles)")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                        help="longest side, in pixels, of the grid the layers are computed on")
    parser.add_argument("--open", action="store_true", help="open the page in the default web browser")
    add_standard_options(parser)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted; print the page's address. Exit 0 when stopped, 2 on bad input."""
    args = build_parser().parse_args(argv)
    setup_logging(None, args.verbosity)
    basemap = check_basemap(args.basemap)
    if args.max_size < 1:
        raise BTFMError(f"--max-size {args.max_size} must be at least 1")
    attribution = args.attribution
    if attribution is None:
        attribution = OSM_ATTRIBUTION if basemap and "openstreetmap.org" in basemap else ""
    source, root = open_source(args.target, args.roi)
    explorer = Explorer(source, root, Settings(basemap, attribution, args.max_size))
    server = make_server(explorer, args.host, args.port)
    if not is_loopback(args.host):
        log.warning("listening on %s: other machines can read the files of %s", args.host, root)
    print(server.url, flush=True)
    log.info("serving %s (%d x %d px, %d dims) at %s; Ctrl-C stops", source.path, source.grid.width,
             source.grid.height, source.channels, server.url)
    if args.open:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
    return 0
