"""Export a stitched (H, W, 128) embedding as a GeoTIFF on the ROI grid, plus a quick-look PNG.

The GeoTIFF has one float32 band per embedding dimension (``A00`` … ``A127``), the ROI's CRS
and transform, and NaN (the nodata value) outside the ROI. It is written 256 x 256 pixels at a
time from a memory-mapped ``.npy``, so memory use does not grow with the ROI.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from tqdm import tqdm

from btfm_core.cli import HelpFormatter, add_verbosity, entry_point
from btfm_core.errors import BTFMError
from btfm_core.fileio import atomic_path, ensure_writable_dir, refuse_overwrite
from btfm_core.logs import setup_logging
from btfm_core.roi import Roi, open_roi
from btfm_infer.quicklook import DEFAULT_MAX_SIZE, write_quicklook_png
from btfm_infer.stitch_tiled_representation import open_stitched, read_npy_window

log = logging.getLogger(__name__)

BLOCK_SIZE = 256
#: GDAL block cache while writing (MB): a few block rows, not a share of the machine's RAM.
GDAL_CACHE_MB = 256

#: Creation options of the embedding GeoTIFF. Pixel interleaving keeps a pixel's whole
#: embedding vector in one compressed block, so reading the vectors of a few pixels (the
#: common access for embeddings) decompresses one block instead of one per band; it also lets
#: readers fetch (rows, cols, 128) windows in one pass. Predictor 3 is the floating-point
#: predictor (much better deflate ratios on float32). IF_SAFER switches to BigTIFF when the
#: uncompressed size could pass 4 GB (≈ 2900 x 2900 px at 128 bands).
GEOTIFF_PROFILE: dict[str, object] = {
    "driver": "GTiff",
    "dtype": "float32",
    "tiled": True,
    "blockxsize": BLOCK_SIZE,
    "blockysize": BLOCK_SIZE,
    "compress": "deflate",
    "predictor": 3,
    "interleave": "pixel",
    "BIGTIFF": "IF_SAFER",
    "NUM_THREADS": "ALL_CPUS",
    "nodata": float("nan"),
}


#: int8 export (as geotessera stores embeddings): values = q * scale, one float32 scale per pixel.
INT8_NODATA = -128
INT8_MAX = 127


def quantise_int8(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-pixel int8 quantisation of a (C, h, w) float block.

    Returns:
        ``(q, scale)``: (C, h, w) int8 in [-127, 127] and (h, w) float32 with
        ``block ≈ q * scale`` (scale 0 for all-zero pixels).
    """
    peak = np.abs(block).max(axis=0)
    scale = (peak / INT8_MAX).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(block / safe), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


def scales_path(out_path: Path) -> Path:
    """The per-pixel scale GeoTIFF written beside an int8 embedding GeoTIFF."""
    return out_path.with_name(f"{out_path.stem}_scales.tif")


def band_names(count: int) -> list[str]:
    """Band descriptions ``A00``, ``A01``, … ``A127`` for ``count`` embedding dimensions."""
    return [f"A{i:02d}" for i in range(count)]


def _as_roi(roi: Roi | str | os.PathLike[str]) -> Roi:
    return roi if isinstance(roi, Roi) else open_roi(roi)


def write_embedding_geotiff(npy_path: str | os.PathLike[str], roi: Roi | str | os.PathLike[str],
                            out_path: str | os.PathLike[str], dtype: str = "float32") -> Path:
    """Write a stitched embedding as a float32 (or int8 + scale) GeoTIFF on the ROI grid.

    With ``dtype="int8"`` the bands hold ``q`` (nodata -128 outside the ROI) and a second,
    one-band float32 GeoTIFF ``<out>_scales.tif`` holds the per-pixel scale, so that
    ``embedding = q * scale``; the mean reconstruction cosine is logged.

    Args:
        npy_path: the (H, W, C) floating-point embedding (C = 128), H, W = the ROI's size.
        roi: the ROI (or its GeoTIFF path); gives CRS, transform and the inside mask.
        out_path: the GeoTIFF to write (replaced atomically if it exists).

    Returns:
        ``out_path``: C float32 bands ``A00``…, NaN (nodata) outside the ROI, values as in the
        ``.npy`` inside it.

    Raises:
        InputDataError: if the embedding is unreadable, not floating point or not on the ROI grid.
        InvalidROIError: if the ROI cannot be used.
    """
    out_path = Path(out_path)
    roi = _as_roi(roi)
    height, width, channels = open_stitched(npy_path, roi).shape
    grid = roi.grid
    if dtype not in ("float32", "int8"):
        raise BTFMError(f"--dtype must be float32 or int8, got {dtype}")
    quantise = dtype == "int8"
    profile = {**GEOTIFF_PROFILE, "width": width, "height": height, "count": channels,
               "crs": grid.rasterio_crs, "transform": grid.transform}
    if quantise:
        profile.update(dtype="int8", predictor=2, nodata=INT8_NODATA)
    scale_profile = {**GEOTIFF_PROFILE, "width": width, "height": height, "count": 1,
                     "crs": grid.rasterio_crs, "transform": grid.transform, "interleave": "band"}
    cosines: list[np.ndarray] = []
    with contextlib.ExitStack() as stack:  # closed in reverse: rasters first, then the renames
        tmp = stack.enter_context(atomic_path(out_path))
        tmp_scales = stack.enter_context(atomic_path(scales_path(out_path))) if quantise else None
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        dst = stack.enter_context(rasterio.open(tmp, "w", **profile))
        scales = stack.enter_context(rasterio.open(tmp_scales, "w", **scale_profile)) if tmp_scales else None
        for band, name in enumerate(band_names(channels), start=1):
            dst.set_band_description(band, name)
        for row0 in tqdm(range(0, height, BLOCK_SIZE), desc="GeoTIFF", unit="block row",
                         file=sys.stderr, disable=None):
            row1 = min(height, row0 + BLOCK_SIZE)
            outside = roi.read_mask(grid.window(0, row0, width, row1)) == 0
            for col0 in range(0, width, BLOCK_SIZE):
                col1 = min(width, col0 + BLOCK_SIZE)
                target = Window(col0, row0, col1 - col0, row1 - row0)
                window = read_npy_window(npy_path, np.s_[row0:row1, col0:col1])  # (h, w, C)
                block = np.array(np.moveaxis(window, -1, 0), dtype=np.float32, order="C")
                out_block = outside[:, col0:col1]
                if scales is None:
                    block[:, out_block] = np.nan
                    dst.write(block, window=target)
                    continue
                q, scale = quantise_int8(block)
                inside = ~out_block & (scale > 0)
                restored = q[:, inside].astype(np.float32) * scale[inside]
                original = block[:, inside]
                cosines.append((restored * original).sum(0) / (np.linalg.norm(restored, axis=0)
                                                                * np.linalg.norm(original, axis=0)))
                q[:, out_block] = INT8_NODATA
                scale[out_block] = np.nan
                dst.write(q, window=target)
                scales.write(scale[None], window=target)
        if scales is not None:
            scales.set_band_description(1, "scale (embedding = value x scale)")
    if not quantise:
        log.info("wrote %s: %d x %d px, %d float32 bands", out_path, width, height, channels)
        return out_path
    cos = np.concatenate(cosines) if cosines else np.ones(0)
    log.info("wrote %s (int8, %d bands) and %s; reconstruction cosine mean %.6f, min %.6f", out_path, channels,
             scales_path(out_path).name, cos.mean() if cos.size else 1.0, cos.min() if cos.size else 1.0)
    return out_path


def build_parser() -> argparse.ArgumentParser:
    """Command line of the export step."""
    parser = argparse.ArgumentParser(
        prog="convert_npy2tiff.py",
        description="Write a stitched (H, W, 128) embedding .npy as a 128-band float32 GeoTIFF on "
                    "the ROI grid (NaN outside the ROI), plus an RGB quick-look PNG of its first "
                    "three principal components.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  python btfm_infer/convert_npy2tiff.py --npy my_data/stitched_representation.npy \\\n"
               "      --ref-tiff my_data/roi.tiff --out my_data/stitched_representation.tif\n"
               "  python btfm_infer/convert_npy2tiff.py --npy emb.npy --ref-tiff roi.tiff --out emb.tif \\\n"
               "      --png preview.png --max-size 1024 --overwrite\n"
               "  python btfm_infer/convert_npy2tiff.py --npy emb.npy --ref-tiff roi.tiff --no-png\n",
    )
    parser.add_argument("--npy", type=Path, required=True, help="the stitched (H, W, 128) embedding")
    parser.add_argument("--ref-tiff", "--roi", dest="ref_tiff", type=Path, required=True,
                        help="the ROI GeoTIFF (grid, CRS and inside mask)")
    parser.add_argument("--out", type=Path, default=None,
                        help="GeoTIFF to write (default: --npy with a .tif suffix)")
    png = parser.add_mutually_exclusive_group()
    png.add_argument("--png", type=Path, default=None,
                     help="quick-look PNG to write (default: --out with a .png suffix)")
    png.add_argument("--no-png", action="store_true", help="do not write a quick-look PNG")
    parser.add_argument("--dtype", choices=["float32", "int8"], default="float32",
                        help="int8: 4x smaller, quantised per pixel with a float32 scale written to "
                             "<out>_scales.tif (embedding = value x scale), as geotessera stores them")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                        help="longest side of the quick-look in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the quick-look's PCA pixel sample")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--log-file", type=Path, default=None,
                        help="log file (default: logs/npy2tiff.log beside --out)")
    add_verbosity(parser)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Export the GeoTIFF (and PNG); print their paths. Exit 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    setup_logging(None, args.verbosity)
    if args.max_size < 1:
        raise BTFMError(f"--max-size must be >= 1, got {args.max_size}")
    npy = args.npy.expanduser().resolve()
    out = (args.out or npy.with_suffix(".tif")).expanduser().resolve()
    png = None if args.no_png else (args.png or out.with_suffix(".png")).expanduser().resolve()
    if out == npy or png in (out, npy):
        raise BTFMError("--npy, --out and --png must be three different files")
    for path in (out, png):
        if path is not None:
            refuse_overwrite(path, args.overwrite, "--out / --png")
    roi = open_roi(args.ref_tiff.expanduser())
    open_stitched(npy, roi)  # fail before writing anything
    ensure_writable_dir(out.parent, "output folder (--out)")
    if png is not None:
        ensure_writable_dir(png.parent, "quick-look folder (--png)")
    log_file = (args.log_file or out.parent / "logs" / "npy2tiff.log").expanduser()
    ensure_writable_dir(log_file.parent, "log folder (--log-file)")
    setup_logging(log_file, args.verbosity)
    print(write_embedding_geotiff(npy, roi, out, args.dtype))
    if png is not None:
        print(write_quicklook_png(npy, roi, png, max_size=args.max_size, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
