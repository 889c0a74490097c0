"""Write a stitched embedding as a Cloud-Optimised GeoTIFF (float32, or int8 + per-pixel scale).

Two passes, both streaming:

1. the ``.npy`` is copied 256 x 256 pixels at a time into tiled staging GeoTIFFs (ZSTD level 1,
   fast), NaN (or -128) outside the ROI: the full resolution, and each overview level (2, 4, …
   until it fits one tile), decimated nearest-neighbour straight from the ``.npy``;
2. GDAL's COG driver copies a VRT of them (staging file + its overviews) into the final layout:
   the same tiles, deflate, the internal overviews and the IFDs first, ``LAYOUT=COG``.

Pass 1 holds one block; GDAL reads and writes tile by tile through its block cache (capped at
:data:`GDAL_CACHE_MB`), so memory stays flat whatever the ROI size. Files appear under their final names only when
complete (:func:`btfm_core.fileio.atomic_path`); the staging files are always removed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from btfm_core.fileio import atomic_path, temp_sibling
from btfm_core.grid import Grid
from btfm_core.progress import progress
from btfm_core.roi import Roi
from btfm_infer.embedding_map import EmbeddingMap, block_count
from btfm_infer.export_common import INT8_NODATA, CosineStats, band_names, open_export, overview_factors, quantise_int8

__all__ = ["SCALE_DESCRIPTION", "CogExport", "scales_path", "write_embedding_cog"]

log = logging.getLogger(__name__)

BLOCK_SIZE = 256
#: GDAL block cache while writing (MB): a few rows of 256 x 256 x 128 tiles, not a share of the RAM.
GDAL_CACHE_MB = 256
#: Description of the one band of ``<out>_scales.tif``.
SCALE_DESCRIPTION = "scale (embedding = value x scale)"

#: Creation options of the staging GeoTIFF (pass 1): tiled like the COG so pass 2 reads whole
#: tiles; pixel-interleaved like the input's (H, W, C) rows; ZSTD level 1 for speed.
STAGING_PROFILE: dict[str, object] = {
    "driver": "GTiff",
    "tiled": True,
    "blockxsize": BLOCK_SIZE,
    "blockysize": BLOCK_SIZE,
    "interleave": "pixel",
    "compress": "zstd",
    "zstd_level": 1,
    "BIGTIFF": "IF_SAFER",
}

#: Creation options of the COG driver (pass 2). Pixel interleaving (the COG driver's only
#: choice for multi-band rasters in GDAL < 3.11, checked in the tests) keeps a pixel's whole
#: embedding vector in one compressed tile, so reading the vectors of a few pixels (the common
#: access for embeddings) decompresses one tile instead of one per band. Deflate with the
#: floating-point predictor (int8: the horizontal one) is readable by every GDAL. Overviews use
#: nearest neighbour: an overview pixel is a real embedding vector, and an int8 tile and its
#: scale tile keep matching pixels (averaging q values with different scales would be wrong).
#: IF_SAFER switches to BigTIFF when the uncompressed size could pass 4 GB (≈ 2900 x 2900 px).
COG_OPTIONS: dict[str, str] = {
    "BLOCKSIZE": str(BLOCK_SIZE),
    "COMPRESS": "DEFLATE",
    "OVERVIEW_RESAMPLING": "NEAREST",
    "OVERVIEWS": "FORCE_USE_EXISTING",
    "BIGTIFF": "IF_SAFER",
    "NUM_THREADS": "ALL_CPUS",
}


@dataclass(frozen=True)
class CogExport:
    """What :func:`write_embedding_cog` wrote.

    Attributes:
        path: the embedding COG, C bands ``A00``….
        scales: the one-band float32 scale COG (int8 only), else None.
        dtype: ``float32`` or ``int8``.
        cosine: int8 reconstruction cosine over the ROI's non-zero pixels (int8 only), else None.
    """

    path: Path
    scales: Path | None
    dtype: str
    cosine: CosineStats | None


def scales_path(out_path: str | os.PathLike[str]) -> Path:
    """The per-pixel scale GeoTIFF written beside an int8 embedding GeoTIFF: ``<out>_scales.tif``."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}_scales.tif")


def cog_options(dtype: str) -> dict[str, str]:
    """COG creation options for a raster of ``dtype`` (the predictor depends on it)."""
    return {**COG_OPTIONS, "PREDICTOR": "FLOATING_POINT" if dtype == "float32" else "STANDARD"}


@contextlib.contextmanager
def _staging(final: Path, suffix: str = ".tif") -> Iterator[Path]:
    """A temporary sibling of ``final`` that is always deleted afterwards."""
    path = temp_sibling(final)
    path = path.with_name(f"{path.name}{suffix}")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _write_vrt(path: Path, main: Path, overviews: Sequence[Path], grid: Grid, dtype: str, nodata: str,
               descriptions: Sequence[str], tags: Mapping[str, str]) -> None:
    """A VRT of the staging file ``main`` with ``overviews`` as its overviews, descriptions and tags.

    The COG driver copies it with ``OVERVIEWS=FORCE_USE_EXISTING``: GDAL's own overview builder
    re-reads a 128-band pixel-interleaved tile once per band (minutes for a few hundred MB),
    while our overviews are decimated straight from the ``.npy`` in the first pass.
    """
    root = ET.Element("VRTDataset", rasterXSize=str(grid.width), rasterYSize=str(grid.height))
    ET.SubElement(root, "SRS").text = grid.crs
    t = grid.transform
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
    if tags:
        metadata = ET.SubElement(root, "Metadata")
        for key, value in sorted(tags.items()):
            ET.SubElement(metadata, "MDI", key=key).text = value
    # Int8 becomes 8-bit SampleFormat=2 (signed) on every IFD: GDAL >= 3.7 reads Int8, GDAL < 3.7
    # Byte + PIXELTYPE=SIGNEDBYTE (derived from that tag; nothing else to store). QGIS < 3.30 has no
    # signed byte type and shows 0..255 whatever the tags (scripts/check_qgis.sh): view float32 there.
    gdal_type = {"float32": "Float32", "int8": "Int8"}[dtype]
    for band, description in enumerate(descriptions, start=1):
        node = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(band))
        ET.SubElement(node, "Description").text = description
        ET.SubElement(node, "NoDataValue").text = nodata
        source = ET.SubElement(node, "SimpleSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = str(main)
        ET.SubElement(source, "SourceBand").text = str(band)
        for overview in overviews:
            ovr = ET.SubElement(node, "Overview")
            ET.SubElement(ovr, "SourceFilename", relativeToVRT="0").text = str(overview)
            ET.SubElement(ovr, "SourceBand").text = str(band)
    path.write_text(ET.tostring(root, encoding="unicode"))


def _write_level(emap: EmbeddingMap, stage: Path, scale_stage: Path | None, profile: Mapping[str, object],
                 factor: int, cosine: CosineStats | None, int8_rule: str = "v1.0") -> None:
    """Pass 1 for one level (factor 1 = full resolution): stream blocks into staging GeoTIFF(s)."""
    height, width = math.ceil(emap.grid.height / factor), math.ceil(emap.grid.width / factor)
    size = {"width": width, "height": height}
    with contextlib.ExitStack() as files:
        dst = files.enter_context(rasterio.open(stage, "w", **{**profile, **size}))
        scales = None
        if scale_stage is not None:
            scale_profile = {**profile, **size, "count": 1, "dtype": "float32", "nodata": float("nan")}
            scales = files.enter_context(rasterio.open(scale_stage, "w", **scale_profile))
        blocks = emap.blocks(BLOCK_SIZE, BLOCK_SIZE, factor)
        total = block_count(emap.grid.height, emap.grid.width, BLOCK_SIZE, BLOCK_SIZE, factor)
        desc = "GeoTIFF" if factor == 1 else f"overview 1/{factor}"
        for block in progress(blocks, total=total, desc=desc, unit="block"):
            h, w = block.shape
            target = Window(block.col0, block.row0, w, h)
            outside = ~block.inside
            if scales is None:
                block.values[outside] = np.nan
                dst.write(np.moveaxis(block.values, -1, 0), window=target)
                continue
            q, scale = quantise_int8(block.values, int8_rule)
            if cosine is not None:
                cosine.update(block.values[block.inside], q[block.inside], scale[block.inside])
            q[outside] = INT8_NODATA
            scale[outside] = np.nan
            dst.write(np.moveaxis(q, -1, 0), window=target)
            scales.write(scale[None], window=target)
    log.debug("wrote level 1/%d (%d x %d px) of %s", factor, width, height, stage.name)


def write_embedding_cog(embedding: EmbeddingMap | str | os.PathLike[str], roi: Roi | str | os.PathLike[str] | None,
                        out_path: str | os.PathLike[str], dtype: str = "float32",
                        tags: Mapping[str, str] | None = None, int8_rule: str = "v1.0") -> CogExport:
    """Write a stitched embedding as a COG on the ROI grid (float32, or int8 + a scale COG).

    With ``dtype="int8"`` the bands hold ``q`` (-128 outside the ROI) and a second, one-band
    float32 COG ``<out>_scales.tif`` holds the per-pixel scale (NaN outside the ROI), so that
    ``embedding = q * scale``; the reconstruction cosine is computed block by block and logged.

    Args:
        embedding: the map, or its (H, W, C) floating-point ``.npy`` (C = 128), H, W = the ROI's size.
        roi: for a ``.npy``, the ROI (or its GeoTIFF path): CRS, transform and the inside mask.
        out_path: the COG to write (replaced atomically if it exists).
        dtype: ``float32`` or ``int8``.
        tags: dataset metadata (GDAL default domain) to record, e.g. checkpoint and sources.
        int8_rule: the model family's int8 rule (:func:`~btfm_infer.export_common.quantise_int8`).

    Returns:
        What was written; the embedding has C bands ``A00``…, nodata NaN (float32) or -128 (int8)
        outside the ROI and the ``.npy`` values (or their quantisation) inside it.

    Raises:
        BTFMError: if ``dtype`` is not float32 or int8.
        InputDataError: if the embedding is unreadable, not floating point or not on the ROI grid.
        InvalidROIError: if the ROI cannot be used.
    """
    emap, out_path = open_export(embedding, roi, out_path, dtype)
    grid, (height, width, channels) = emap.grid, emap.shape
    quantise = dtype == "int8"
    base = {**STAGING_PROFILE, **grid.profile()}
    profile = {**base, "count": channels, "dtype": dtype,
               "nodata": INT8_NODATA if quantise else float("nan")}
    cosine = CosineStats() if quantise else None
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    factors = overview_factors(height, width, BLOCK_SIZE)
    with contextlib.ExitStack() as stack:  # closed in reverse: staging files, then the renames
        tmp = stack.enter_context(atomic_path(out_path))
        tmp_scales = stack.enter_context(atomic_path(scales_path(out_path))) if quantise else None
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_PAM_ENABLED="NO"))
        levels: list[tuple[Path, Path | None]] = []
        for factor in [1, *factors]:
            stage = stack.enter_context(_staging(out_path, f".{factor}.tif"))
            scale_stage = stack.enter_context(_staging(scales_path(out_path), f".{factor}.tif")) if quantise else None
            _write_level(emap, stage, scale_stage, profile, factor, cosine if factor == 1 else None, int8_rule)
            levels.append((stage, scale_stage))
        if cosine is not None:
            all_tags["BTFM_INT8_COSINE_MEAN"] = f"{cosine.mean:.6f}"
            all_tags["BTFM_INT8_COSINE_MIN"] = f"{cosine.minimum:.6f}"
            all_tags["BTFM_INT8_COSINE_PIXELS"] = str(cosine.count)
            all_tags["BTFM_EMBEDDING"] = f"value x scale, scale per pixel in {scales_path(out_path).name}"
        log.debug("building the COG layout of %s (overviews 1/%s)", out_path.name, factors)
        vrt = stack.enter_context(_staging(out_path, ".vrt"))
        _write_vrt(vrt, levels[0][0], [stage for stage, _ in levels[1:]], grid, dtype,
                   str(INT8_NODATA) if quantise else "nan", band_names(channels), all_tags)
        rasterio.shutil.copy(vrt, tmp, driver="COG", **cog_options(dtype))
        if tmp_scales is not None:
            scale_levels = [s for _, s in levels if s is not None]
            scale_vrt = stack.enter_context(_staging(scales_path(out_path), ".vrt"))
            _write_vrt(scale_vrt, scale_levels[0], scale_levels[1:], grid, "float32", "nan", [SCALE_DESCRIPTION],
                       all_tags)
            rasterio.shutil.copy(scale_vrt, tmp_scales, driver="COG", **cog_options("float32"))
    if cosine is None:
        log.info("wrote %s: %d x %d px, %d float32 bands (COG)", out_path, width, height, channels)
    else:
        log.info("wrote %s (int8, %d bands) and %s; reconstruction cosine mean %.6f, min %.6f over %d pixels",
                 out_path, channels, scales_path(out_path).name, cosine.mean, cosine.minimum, cosine.count)
    return CogExport(out_path, scales_path(out_path) if quantise else None, dtype, cosine)
