"""Write a stitched embedding as a Zarr v3 store (zarr-python 3), float32 or int8 + per-pixel scale.

Layout of the store (a Zarr group)::

    embedding   (y, x, band)  float32, NaN outside the ROI    (int8: q, -128 outside the ROI)
    scales      (y, x)        float32, NaN outside the ROI    (int8 only: embedding = q * scale)
    x, y        (x,), (y,)    float64 pixel-centre coordinates in the CRS (for xarray)
    spatial_ref ()            int8 0, CF grid-mapping attributes (crs_wkt, GeoTransform) as rioxarray writes them

Chunking: the axis order is the ``.npy``'s, (y, x, band), and every chunk holds **all bands**,
so one pixel's 128-d vector is one chunk read. Inner chunks are 32 x 32 px (512 KiB of float32,
128 KiB of int8): reading a pixel decompresses little, and a window reads whole chunks. They are
grouped into 256 x 256 px **shards** (one file each, 64 chunks plus an index), which keeps the
file count low (≈ 1 900 files for 110 x 110 km) and lets the writer stream one shard at a time:
memory holds one 256 x 256 x 128 block, never the ROI. Compression is Blosc-zstd (level 3) with
byte shuffle, which groups the float32 exponent bytes and is fast to decode; any Zarr v3 reader
with Blosc (zarr-python, zarrs, tensorstore) opens the store.

Group attributes record the CRS (WKT and EPSG code), the affine transform (rasterio order) and
GDAL GeoTransform, nodata, band names and the dtype and quantisation rule; the exporter's caller
adds provenance (checkpoint, sources). The store is written under a temporary name and renamed
when complete.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from btfm_core.fileio import atomic_path
from btfm_core.grid import Grid
from btfm_core.roi import Roi
from btfm_infer.export_common import (
    INT8_NODATA,
    CosineStats,
    band_names,
    block_count,
    iter_blocks,
    open_export,
    quantise_int8,
)

log = logging.getLogger(__name__)

#: Pixels per side of one shard (one file, the unit the writer streams).
SHARD_SIZE = 256
#: Pixels per side of one inner chunk (the unit a reader decompresses).
CHUNK_SIZE = 32
EMBEDDING_ARRAY = "embedding"
SCALES_ARRAY = "scales"
#: Format marker stored in the group attributes.
FORMAT = "btfm-embedding-zarr"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ZarrExport:
    """What :func:`write_embedding_zarr` wrote.

    Attributes:
        path: the store (a folder).
        dtype: ``float32`` or ``int8``.
        cosine: int8 reconstruction cosine over the ROI's non-zero pixels (int8 only), else None.
    """

    path: Path
    dtype: str
    cosine: CosineStats | None


def _compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def geotransform(grid: Grid) -> list[float]:
    """GDAL GeoTransform ``[x0, dx, rx, y0, ry, dy]`` of a grid."""
    t = grid.transform
    return [t.c, t.a, t.b, t.f, t.d, t.e]


def grid_attributes(grid: Grid) -> dict[str, Any]:
    """CRS (WKT, EPSG or None), affine transform (a, b, c, d, e, f) and GeoTransform of a grid."""
    return {
        "crs_wkt": grid.crs,
        "epsg": grid.rasterio_crs.to_epsg(),
        "transform": list(grid.transform)[:6],
        "geotransform": geotransform(grid),
        "shape": list(grid.shape),
    }


def _coordinates(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) float64 pixel-centre coordinates of a north-up grid."""
    t = grid.transform
    x = t.c + t.a * (np.arange(grid.width) + 0.5)
    y = t.f + t.e * (np.arange(grid.height) + 0.5)
    return x, y


def write_embedding_zarr(npy_path: str | os.PathLike[str], roi: Roi | str | os.PathLike[str],
                         out_path: str | os.PathLike[str], dtype: str = "float32",
                         attributes: Mapping[str, Any] | None = None, int8_rule: str = "v1.0") -> ZarrExport:
    """Write a stitched embedding as a Zarr v3 store on the ROI grid (layout in the module doc).

    Args:
        npy_path: the (H, W, C) floating-point embedding, H, W = the ROI's size.
        roi: the ROI (or its GeoTIFF path); gives CRS, transform and the inside mask.
        out_path: the store folder to write (replaced atomically if it exists).
        dtype: ``float32``, or ``int8`` (per-pixel symmetric quantisation + a ``scales`` array).
        attributes: more group attributes (JSON-serialisable), e.g. provenance.
        int8_rule: the model family's int8 rule (:func:`~btfm_infer.export_common.quantise_int8`).

    Returns:
        What was written.

    Raises:
        BTFMError: if ``dtype`` is not float32 or int8.
        InputDataError: if the embedding is unreadable, not floating point or not on the ROI grid.
        InvalidROIError: if the ROI cannot be used.
    """
    roi, out_path, (height, width, channels) = open_export(npy_path, roi, out_path, dtype)
    grid = roi.grid
    quantise = dtype == "int8"
    names = band_names(channels)
    nodata: float | int | str = INT8_NODATA if quantise else "nan"
    group_attrs: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, **grid_attributes(grid),
        "dimensions": ["y", "x", "band"], "band_names": names, "dtype": dtype, "nodata": nodata,
        "embedding": ("embedding = embedding_q * scales (per pixel); -128 = outside the ROI" if quantise
                      else "embedding values; NaN = outside the ROI"),
        **dict(attributes or {}),
    }
    cosine = CosineStats() if quantise else None
    with atomic_path(out_path) as tmp:
        root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", zarr_format=3, attributes=group_attrs)
        embedding = root.create_array(
            EMBEDDING_ARRAY, shape=(height, width, channels), dtype=dtype,
            chunks=(CHUNK_SIZE, CHUNK_SIZE, channels), shards=(SHARD_SIZE, SHARD_SIZE, channels),
            compressors=_compressor(), fill_value=INT8_NODATA if quantise else np.nan,
            dimension_names=("y", "x", "band"),
            attributes={"band_names": names, "nodata": nodata, "grid_mapping": "spatial_ref",
                        "long_name": "BTFM embedding" + (" (int8 q; multiply by scales)" if quantise else "")})
        scales = None
        if quantise:
            scales = root.create_array(
                SCALES_ARRAY, shape=(height, width), dtype="float32", chunks=(CHUNK_SIZE, CHUNK_SIZE),
                shards=(SHARD_SIZE, SHARD_SIZE), compressors=_compressor(), fill_value=np.nan,
                dimension_names=("y", "x"),
                attributes={"nodata": "nan", "grid_mapping": "spatial_ref",
                            "long_name": "per-pixel scale: embedding = embedding_q * scale"})
        x, y = _coordinates(grid)
        for name, values in (("x", x), ("y", y)):
            coord = root.create_array(name, shape=values.shape, dtype="float64", chunks=values.shape,
                                      dimension_names=(name,), attributes={"units": "m", "axis": name.upper()})
            coord[:] = values
        spatial_ref = root.create_array("spatial_ref", shape=(), dtype="int8", fill_value=0, attributes={
            "crs_wkt": grid.crs, "spatial_ref": grid.crs, "GeoTransform": " ".join(map(repr, geotransform(grid)))})
        spatial_ref[...] = 0
        total = block_count(height, width, SHARD_SIZE, SHARD_SIZE)
        for count, block in enumerate(iter_blocks(npy_path, roi, SHARD_SIZE, SHARD_SIZE), start=1):
            h, w = block.shape
            index = np.s_[block.row0:block.row0 + h, block.col0:block.col0 + w]
            outside = ~block.inside
            if scales is None:
                block.values[outside] = np.nan
                embedding[index] = block.values
            else:
                q, scale = quantise_int8(block.values, int8_rule)
                assert cosine is not None
                cosine.update(block.values[block.inside], q[block.inside], scale[block.inside])
                q[outside] = INT8_NODATA
                scale[outside] = np.nan
                embedding[index] = q
                scales[index] = scale
            if count % max(1, math.ceil(total / 10)) == 0:
                log.debug("zarr: %d / %d shards written", count, total)
        if cosine is not None:
            root.attrs["int8_cosine"] = cosine.as_dict()
    log.info("wrote %s: Zarr v3, %d x %d px, %d %s bands%s", out_path, width, height, channels, dtype,
             f"; reconstruction cosine mean {cosine.mean:.6f}, min {cosine.minimum:.6f}" if cosine else "")
    return ZarrExport(out_path, dtype, cosine)
