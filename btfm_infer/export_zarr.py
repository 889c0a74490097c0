"""Write a stitched embedding as a Zarr store that xarray, rioxarray and GDAL open georeferenced.

Layout (a Zarr group written by xarray + rioxarray, CF conventions)::

    embedding   (y, x, band)  float32, NaN outside the ROI  (int8: q, _FillValue -128 outside the ROI)
    scales      (y, x)        float32, NaN outside the ROI  (int8 only: embedding = q * scales)
    x, y        (x,), (y,)    float64 pixel centres in the map CRS (CF projection_x/y_coordinate)
    band        (band,)       band names A00, A01, ... (the GeoTIFF's band descriptions)
    spatial_ref ()            CF grid mapping: crs_wkt, spatial_ref (WKT) and GDAL GeoTransform

Each data variable names ``spatial_ref`` in ``grid_mapping`` *and* in ``coordinates``, so a plain
``xr.open_zarr(path)`` makes it a coordinate and ``.rio.crs`` / ``.rio.transform()`` work; CF
decoding masks the nodata (``_FillValue``): the int8 ``embedding`` reads as float32 q with NaN
outside the ROI, and ``ds.embedding * ds.scales`` is the embedding (``mask_and_scale=False``
keeps the raw int8). Metadata is consolidated.

Two layouts (:class:`ZarrLayout`); every chunk holds **all bands**, so one pixel's vector is one
chunk read:

- default: **Zarr v2**, 128 x 128 px chunks (8 MiB float32, 2 MiB int8 before compression),
  consolidated ``.zmetadata``. GDAL >= 3.9 (the 3.10 inside the rasterio wheels; QGIS built on
  it) opens ``ZARR:"emb.zarr":/embedding`` as a C-band raster (band metadata ``DIM_band_VALUE``
  = the band name) with CRS, transform and nodata: it finds x and y by their CF attributes and
  the CRS through ``grid_mapping``. (GDAL 3.6 lists the arrays but has neither multiband 3-D
  views, from 3.8, nor CF CRS, from 3.9; GDAL 3.10 reads no Zarr v3 that zarr-python 3 writes:
  "Unsupported codec: bytes".)
- ``sharding=True``: **Zarr v3**, 32 x 32 px chunks in 256 x 256 px shards (one file per shard,
  far fewer files, cheap pixel reads); read by zarr-python >= 3 (xarray), not by GDAL < 3.13.

Compression is Blosc-zstd (level 3) with byte shuffle. Group attributes also record the CRS (WKT,
EPSG), the affine transform, nodata, band names, dtype and layout; the caller adds provenance.

The writer streams: ``to_zarr(compute=False)`` of a template with lazy (never computed) data
variables writes the metadata and coordinates, then each 256 x 256 px block read from the
``.npy``'s memory map is masked (and quantised) and written with ``to_zarr(region=...)``, so
memory holds one block (32 MiB of float32 for C = 128), never the ROI. The store is written
under a temporary name and renamed when complete.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numcodecs
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from btfm_core.fileio import atomic_path
from btfm_core.grid import Grid
from btfm_core.roi import Roi
from btfm_infer.embedding_map import Block, EmbeddingMap, block_count
from btfm_infer.export_common import INT8_NODATA, CosineStats, band_names, open_export, quantise_int8

__all__ = ["DEFAULT_LAYOUT", "EMBEDDING_ARRAY", "SCALES_ARRAY", "SHARDED_LAYOUT", "ZarrExport", "ZarrLayout",
           "read_layout", "write_embedding_zarr"]

log = logging.getLogger(__name__)

EMBEDDING_ARRAY = "embedding"
SCALES_ARRAY = "scales"
GRID_MAPPING = "spatial_ref"
#: Format marker stored in the group attributes (version 2: xarray/CF layout, Zarr v2 by default).
FORMAT = "btfm-embedding-zarr"
FORMAT_VERSION = 2
#: Pixels per side of the blocks the writer streams (a multiple of every layout's chunk and shard).
BLOCK_SIZE = 256


@dataclass(frozen=True)
class ZarrLayout:
    """Zarr format and chunking of a store.

    Attributes:
        zarr_format: 2 or 3.
        chunk: pixels per side of a chunk (the unit a reader decompresses; all bands in each).
        shard: pixels per side of a shard (Zarr v3 sharding: one file of chunks), or None.
    """

    zarr_format: Literal[2, 3]
    chunk: int
    shard: int | None = None

    def chunks(self, channels: int) -> tuple[int, int, int]:
        """(y, x, band) chunk shape of the embedding."""
        return (self.chunk, self.chunk, channels)

    def shards(self, channels: int) -> tuple[int, int, int] | None:
        """(y, x, band) shard shape of the embedding, or None."""
        return None if self.shard is None else (self.shard, self.shard, channels)

    def as_dict(self, channels: int) -> dict[str, Any]:
        """``{"zarr_format", "chunks", "shards"}`` for attributes and STAC."""
        shards = self.shards(channels)
        return {"zarr_format": self.zarr_format, "chunks": list(self.chunks(channels)),
                "shards": None if shards is None else list(shards)}


#: The default: Zarr v2 without sharding, which GDAL 3.10 (rasterio wheels) and QGIS read.
DEFAULT_LAYOUT = ZarrLayout(zarr_format=2, chunk=128)
#: ``--zarr-sharding``: Zarr v3, 32 px chunks in 256 px shards (zarr-python >= 3, GDAL >= 3.13).
SHARDED_LAYOUT = ZarrLayout(zarr_format=3, chunk=32, shard=256)


@dataclass(frozen=True)
class ZarrExport:
    """What :func:`write_embedding_zarr` wrote.

    Attributes:
        path: the store (a folder).
        dtype: ``float32`` or ``int8``.
        cosine: int8 reconstruction cosine over the ROI's non-zero pixels (int8 only), else None.
        layout: Zarr format and chunking.
    """

    path: Path
    dtype: str
    cosine: CosineStats | None
    layout: ZarrLayout = DEFAULT_LAYOUT


def read_layout(path: str | os.PathLike[str]) -> ZarrLayout:
    """The layout of an existing store, read from its ``embedding`` array."""
    array = zarr.open_group(str(path), mode="r")[EMBEDDING_ARRAY]
    assert isinstance(array, zarr.Array)
    shards = array.shards
    return ZarrLayout(array.metadata.zarr_format, int(array.chunks[0]), None if shards is None else int(shards[0]))


def grid_attributes(grid: Grid) -> dict[str, Any]:
    """CRS (WKT, EPSG or None), affine transform (a, b, c, d, e, f) and GeoTransform of a grid."""
    record = grid.to_record()
    return {"crs_wkt": record.pop("crs"), "epsg": grid.rasterio_crs.to_epsg(), **record,
            "geotransform": grid.geotransform()}


def _coordinates(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) float64 pixel-centre coordinates of a north-up grid."""
    t = grid.transform
    x = t.c + t.a * (np.arange(grid.width) + 0.5)
    y = t.f + t.e * (np.arange(grid.height) + 0.5)
    return x, y


def _compressor(layout: ZarrLayout) -> numcodecs.Blosc | BloscCodec:
    if layout.zarr_format == 2:
        return numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def _encoding(layout: ZarrLayout, shape: tuple[int, ...], fill: float | int) -> dict[str, Any]:
    """Zarr encoding of a (y, x[, band]) data variable: chunks, shards, compression, nodata."""
    channels = shape[2] if len(shape) == 3 else 0
    chunks, shards = layout.chunks(channels)[:len(shape)], layout.shards(channels)
    encoding: dict[str, Any] = {"chunks": chunks, "compressors": (_compressor(layout),),
                                "coordinates": GRID_MAPPING}  # so that xarray decodes it as a coordinate
    if shards is not None:
        encoding["shards"] = shards[:len(shape)]
    if layout.zarr_format == 3:
        encoding["fill_value"] = fill  # the array's own fill value (v2 takes it from _FillValue)
    return encoding


def _template(grid: Grid, channels: int, dtype: str, layout: ZarrLayout, attrs: Mapping[str, Any]) -> xr.Dataset:
    """The store's Dataset with lazy, never-computed data variables: metadata and coordinates only."""
    height, width = grid.shape
    quantise = dtype == "int8"
    names = np.array(band_names(channels), dtype=object if layout.zarr_format == 3 else str)  # v3: vlen strings
    x, y = _coordinates(grid)
    variables: dict[str, Any] = {EMBEDDING_ARRAY: (
        ("y", "x", "band"), da.zeros((height, width, channels), dtype=dtype, chunks=(BLOCK_SIZE, BLOCK_SIZE, -1)),
        {"long_name": "BTFM embedding" + (" (int8 q; multiply by scales)" if quantise else "")})}
    if quantise:
        variables[SCALES_ARRAY] = (("y", "x"), da.zeros((height, width), dtype="float32", chunks=BLOCK_SIZE),
                                   {"long_name": "per-pixel scale: embedding = embedding_q * scale"})
    dataset: xr.Dataset = xr.Dataset(variables, coords={"y": y, "x": x,
                                                        "band": ("band", names, {"long_name": "band name"})})
    dataset = dataset.rio.write_crs(grid.rasterio_crs, grid_mapping_name=GRID_MAPPING)
    dataset = dataset.rio.write_transform(grid.transform).rio.write_coordinate_system()
    dataset.attrs.update(attrs)  # after rioxarray, which drops a "transform" attribute
    for name, fill in ((EMBEDDING_ARRAY, INT8_NODATA if quantise else np.nan), (SCALES_ARRAY, np.nan)):
        if name in dataset:
            variable = dataset[name].rio.write_nodata(fill, encoded=True)
            variable.encoding.update(_encoding(layout, variable.shape, fill))
            dataset[name] = variable
    return dataset


@contextmanager
def _quiet_consolidation() -> Iterator[None]:
    """Silence zarr-python's notice that v3 consolidated metadata is an extension (it reads it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        yield


def _block_dataset(block: Block, quantise: bool, int8_rule: str, cosine: CosineStats | None) -> xr.Dataset:
    """One block's data variables: masked float32, or int8 q + scales (the cosine statistics updated)."""
    outside = ~block.inside
    if not quantise:
        block.values[outside] = np.nan
        return xr.Dataset({EMBEDDING_ARRAY: (("y", "x", "band"), block.values)})
    q, scale = quantise_int8(block.values, int8_rule)
    assert cosine is not None
    cosine.update(block.values[block.inside], q[block.inside], scale[block.inside])
    q[outside] = INT8_NODATA
    scale[outside] = np.nan
    return xr.Dataset({EMBEDDING_ARRAY: (("y", "x", "band"), q), SCALES_ARRAY: (("y", "x"), scale)})


def write_embedding_zarr(embedding: EmbeddingMap | str | os.PathLike[str], roi: Roi | str | os.PathLike[str] | None,
                         out_path: str | os.PathLike[str], dtype: str = "float32",
                         attributes: Mapping[str, Any] | None = None, int8_rule: str = "v1.0",
                         sharding: bool = False) -> ZarrExport:
    """Write a stitched embedding as a Zarr store on the ROI grid (layout in the module doc).

    Args:
        embedding: the map, or its (H, W, C) floating-point ``.npy``, H, W = the ROI's size.
        roi: for a ``.npy``, the ROI (or its GeoTIFF path): CRS, transform and the inside mask.
        out_path: the store folder to write (replaced atomically if it exists).
        dtype: ``float32``, or ``int8`` (per-pixel symmetric quantisation + a ``scales`` array).
        attributes: more group attributes (JSON-serialisable), e.g. provenance.
        int8_rule: the model family's int8 rule (:func:`~btfm_infer.export_common.quantise_int8`).
        sharding: Zarr v3 with shards (:data:`SHARDED_LAYOUT`; not readable by GDAL < 3.13)
            instead of the GDAL-readable Zarr v2 default (:data:`DEFAULT_LAYOUT`).

    Returns:
        What was written.

    Raises:
        BTFMError: if ``dtype`` is not float32 or int8.
        InputDataError: if the embedding is unreadable, not floating point or not on the ROI grid.
        InvalidROIError: if the ROI cannot be used.
    """
    emap, out_path = open_export(embedding, roi, out_path, dtype)
    grid, (height, width, channels) = emap.grid, emap.shape
    layout = SHARDED_LAYOUT if sharding else DEFAULT_LAYOUT
    quantise = dtype == "int8"
    group_attrs: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, **grid_attributes(grid),
        "dimensions": ["y", "x", "band"], "band_names": band_names(channels), "dtype": dtype,
        "nodata": INT8_NODATA if quantise else "nan", "layout": layout.as_dict(channels),
        "embedding": ("embedding = embedding_q * scales (per pixel); -128 = outside the ROI" if quantise
                      else "embedding values; NaN = outside the ROI"),
        **dict(attributes or {}),
    }
    cosine = CosineStats() if quantise else None
    total = block_count(height, width, BLOCK_SIZE, BLOCK_SIZE)
    with atomic_path(out_path) as tmp, _quiet_consolidation():
        template = _template(grid, channels, dtype, layout, group_attrs)
        template.to_zarr(tmp, mode="w", compute=False, consolidated=True, zarr_format=layout.zarr_format)
        for count, block in enumerate(emap.blocks(BLOCK_SIZE, BLOCK_SIZE), start=1):
            h, w = block.shape
            region = {"y": slice(block.row0, block.row0 + h), "x": slice(block.col0, block.col0 + w)}
            _block_dataset(block, quantise, int8_rule, cosine).to_zarr(
                tmp, region=region, consolidated=True, zarr_format=layout.zarr_format)
            if count % max(1, math.ceil(total / 10)) == 0:
                log.debug("zarr: %d / %d blocks written", count, total)
        if cosine is not None:
            zarr.open_group(str(tmp), mode="r+", zarr_format=layout.zarr_format).attrs["int8_cosine"] = cosine.as_dict()
            zarr.consolidate_metadata(str(tmp), zarr_format=layout.zarr_format)
    log.info("wrote %s: Zarr v%d, %d x %d px, %d %s bands%s", out_path, layout.zarr_format, width, height, channels,
             dtype, f"; reconstruction cosine mean {cosine.mean:.6f}, min {cosine.minimum:.6f}" if cosine else "")
    return ZarrExport(out_path, dtype, cosine, layout)
