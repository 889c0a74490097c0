"""``btfm-coverage``: maps of the valid S2 and S1 observations per pixel of a run's tiles.

The first thing to look at when an embedding looks odd: a pixel with few valid observations
gets a poorly sampled embedding. Output, on the ROI grid:

- ``coverage.tif``: 3-band uint16 GeoTIFF, band 1 = valid S2 observations (``masks.npy`` != 0,
  summed over time), band 2 / 3 = S1 ascending / descending observations (dates with VV or VH
  != 0: 0 encodes no data in ``sar_*.npy``); 65535 (nodata) outside the ROI and where no tile
  was made;
- ``coverage_<band>.png``: one quick-look per band, viridis from 0 (dark) to the band's
  maximum (yellow), transparent at nodata; the range is in the PNG's ``Description`` text.

Tiles are read one at a time, a few rows at a time, and the quick-looks are read decimated, so
memory does not grow with the ROI. Files appear under their final names only when complete.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from btfm_core.cli import (
    HelpFormatter,
    add_log_file_option,
    add_overwrite_option,
    add_standard_options,
    entry_point,
    prog_name,
)
from btfm_core.errors import InvalidROIError, TileFormatError
from btfm_core.fileio import atomic_path, check_free_space, ensure_writable_dir, refuse_overwrite
from btfm_core.grid import Grid
from btfm_core.logs import setup_logging
from btfm_core.progress import progress
from btfm_core.roi import Roi, open_roi
from btfm_core.run import ROI_FILE, TILES_DIRNAME, RunLayout
from btfm_core.tiles import (
    DEFAULT_TILE_SIZE,
    TileArrays,
    TileId,
    check_single_run,
    list_tiles,
    read_tile,
    read_tile_metadata,
    tile_layout,
)

log = logging.getLogger(__name__)

COVERAGE_NAME = "coverage.tif"
#: Band keys (PNG names) and GeoTIFF band descriptions, in band order.
BANDS: tuple[tuple[str, str], ...] = (
    ("s2", "valid S2 observations (masks.npy != 0)"),
    ("s1_ascending", "S1 ascending observations (VV or VH != 0)"),
    ("s1_descending", "S1 descending observations (VV or VH != 0)"),
)
NODATA = 65535
#: Rows of a tile read at once (bounds the working set: T x rows x width x 2 bands of int16).
ROWS_PER_STEP = 64
#: Longest side of a quick-look PNG in pixels.
PNG_MAX_SIZE = 2048
COLOUR_MAP = "viridis"
_PROFILE: dict[str, object] = {"driver": "GTiff", "dtype": "uint16", "count": len(BANDS), "nodata": NODATA,
                               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
                               "predictor": 2, "BIGTIFF": "IF_SAFER"}


@dataclass(frozen=True)
class CoverageResult:
    """What :func:`write_coverage` wrote.

    Attributes:
        tif: the 3-band GeoTIFF.
        pngs: one quick-look per band, in band order.
        maxima: the largest count of each band (0 when the band has no observation).
        tiles: tile folders read.
        missing_tiles: tiles of the ROI's layout with ROI pixels but no folder (nodata in the maps).
    """

    tif: Path
    pngs: tuple[Path, ...]
    maxima: tuple[int, ...]
    tiles: int
    missing_tiles: int


def tile_counts(arrays: TileArrays, rows: int = ROWS_PER_STEP) -> np.ndarray:
    """Observation counts of one tile: (3, H, W) uint16 (S2 valid, S1 ascending, S1 descending), NODATA outside."""
    height, width = arrays.shape
    counts = np.zeros((len(BANDS), height, width), np.uint16)
    for row0 in range(0, height, rows):
        part = slice(row0, min(height, row0 + rows))
        counts[0, part] = np.count_nonzero(np.asarray(arrays.masks[:, part]), axis=0)
        for band, sar in ((1, arrays.sar_ascending), (2, arrays.sar_descending)):
            counts[band, part] = np.count_nonzero(np.asarray(sar[:, part]).any(axis=-1), axis=0)
    counts[:, arrays.roi == 0] = NODATA
    return counts


def find_roi(run_dir: Path, roi_path: Path | None = None) -> Roi:
    """The run's ROI: ``roi_path``, else ``roi.tiff`` in the run folder, else the one its metadata records.

    Raises:
        InvalidROIError: none found, or it cannot be used.
    """
    if roi_path is not None:
        return open_roi(roi_path)
    metadata = RunLayout(run_dir).run_metadata(strict=False)
    recorded = metadata.roi if metadata else None
    for candidate in (run_dir / ROI_FILE, Path(recorded) if isinstance(recorded, str) else None):
        if candidate is not None and candidate.is_file():
            return open_roi(candidate)
    raise InvalidROIError(f"no ROI for {run_dir}: neither {run_dir / ROI_FILE} nor the one its run_metadata.json "
                          "records exists; pass --roi")


def _check_on_grid(folder: Path, tile: TileId, grid: Grid) -> None:
    """Refuse a tile that does not lie on the ROI grid (made for another ROI)."""
    if tile.x1 > grid.width or tile.y1 > grid.height:
        raise TileFormatError(f"tile {folder} lies outside the {grid.width} x {grid.height} px ROI; pass the --roi "
                              "of the run that made the tiles")
    recorded = read_tile_metadata(folder).get("transform")
    expected = list(tile.grid(grid).transform)[:6]
    if recorded is not None and not np.allclose(recorded, expected, atol=1e-6 * max(grid.resolution)):
        raise TileFormatError(f"tile {folder} (transform {recorded}) does not lie on the ROI's grid (expected "
                              f"{expected}); pass the --roi of the run that made the tiles")


def _gaps(tiles: list[TileId], grid: Grid, tile_size: int) -> list[TileId]:
    """Windows of the ROI grid no tile folder covers, to be written as nodata."""
    layout = tile_layout(grid.height, grid.width, tile_size)
    if set(tiles) <= set(layout):
        return [t for t in layout if t not in set(tiles)]
    log.debug("tiles do not follow a %d px layout: filling the whole grid with nodata first", tile_size)
    return tile_layout(grid.height, grid.width, 256)


def _write_counts(tiles_dir: Path, tiles: list[TileId], roi: Roi, out: Path, tile_size: int) -> tuple[int, ...]:
    """Write the GeoTIFF tile by tile; returns each band's maximum."""
    grid = roi.grid
    maxima = np.zeros(len(BANDS), np.int64)
    profile = {**_PROFILE, **grid.profile()}
    with rasterio.open(out, "w", **profile) as dst:
        for gap in _gaps(tiles, grid, tile_size):
            dst.write(np.full((len(BANDS), *gap.shape), NODATA, np.uint16), window=_window(gap))
        for tile in progress(tiles, desc="coverage", unit="tile"):
            folder = tiles_dir / tile.name
            _check_on_grid(folder, tile, grid)
            counts = tile_counts(read_tile(folder, mmap=True, tile=tile))
            valid = counts != NODATA
            maxima = np.maximum(maxima, np.where(valid, counts, 0).reshape(len(BANDS), -1).max(axis=1))
            dst.write(counts, window=_window(tile))
        for band, (_, description) in enumerate(BANDS, start=1):
            dst.set_band_description(band, description)
        dst.update_tags(BTFM_COVERAGE="observations per pixel; 65535 = outside the ROI or no tile")
    return tuple(int(m) for m in maxima)


def _window(tile: TileId) -> Window:
    return Window(tile.x0, tile.y0, tile.x1 - tile.x0, tile.y1 - tile.y0)


def write_png(tif: Path, band: int, out: Path, maximum: int, description: str) -> Path:
    """A quick-look of one band of ``tif``: viridis 0..``maximum``, transparent at nodata, longest side ≤ 2048 px."""
    import matplotlib
    from matplotlib.image import imsave

    with rasterio.open(tif) as src:
        step = max(1, math.ceil(max(src.height, src.width) / PNG_MAX_SIZE))
        shape = (math.ceil(src.height / step), math.ceil(src.width / step))
        counts = src.read(band, out_shape=shape, resampling=Resampling.nearest)
    nodata = counts == NODATA
    scaled = np.where(nodata, 0, counts).astype(np.float32) / max(maximum, 1)
    rgba = matplotlib.colormaps[COLOUR_MAP](scaled, bytes=True)
    rgba[nodata, 3] = 0
    text = f"{description}: {COLOUR_MAP} from 0 (dark) to {maximum} (yellow); transparent = outside the ROI or no tile"
    with atomic_path(out) as tmp:
        imsave(tmp, rgba, format="png", metadata={"Description": text})
    return out


def write_coverage(run_dir: Path, out_dir: Path, roi: Roi | None = None, overwrite: bool = False) -> CoverageResult:
    """Write the coverage GeoTIFF and its quick-looks for a run folder's tiles.

    Args:
        run_dir: the run folder (holds ``retiled_d_pixel/``).
        out_dir: where ``coverage.tif`` and ``coverage_<band>.png`` go.
        roi: the run's ROI (default: :func:`find_roi`).
        overwrite: replace existing outputs.

    Raises:
        TileFormatError: no tile folder, tiles of several runs or of another ROI, a corrupt tile.
        InvalidROIError: no usable ROI.
        BTFMError: an output exists and ``overwrite`` is false.
        DiskFullError: the GeoTIFF would not fit.
    """
    tiles_dir = RunLayout(run_dir).tiles_dir
    tiles = list_tiles(tiles_dir)
    check_single_run(tiles_dir, tiles)
    roi = roi or find_roi(run_dir)
    tif = out_dir / COVERAGE_NAME
    pngs = tuple(out_dir / f"{tif.stem}_{key}.png" for key, _ in BANDS)
    for path in (tif, *pngs):
        refuse_overwrite(path, overwrite, "--out-dir")
    ensure_writable_dir(out_dir, "coverage output folder (--out-dir)")
    check_free_space(out_dir, roi.grid.width * roi.grid.height * 2 * len(BANDS), "the coverage GeoTIFF (uncompressed)")
    metadata = RunLayout(run_dir).run_metadata(strict=False)
    tile_size = int((metadata.tile_size if metadata else None) or max(max(t.shape) for t in tiles)
                    or DEFAULT_TILE_SIZE)
    with atomic_path(tif) as tmp:
        maxima = _write_counts(tiles_dir, tiles, roi, tmp, tile_size)
    for band, ((_, description), png) in enumerate(zip(BANDS, pngs, strict=True), start=1):
        write_png(tif, band, png, maxima[band - 1], description)
    present = set(tiles)
    missing = [t for t in tile_layout(*roi.grid.shape, tile_size)
               if t not in present and roi.read_mask(t.grid(roi.grid)).any()]
    if missing:
        log.warning("%d tile(s) with ROI pixels have no folder (nodata in the maps), e.g. %s", len(missing),
                    ", ".join(t.name for t in missing[:5]))
    log.info("wrote %s: max %d valid S2, %d S1 ascending, %d S1 descending observations per pixel", tif, *maxima)
    return CoverageResult(tif, pngs, maxima, len(tiles), len(missing))


def build_parser() -> argparse.ArgumentParser:
    """Command line of ``btfm-coverage``."""
    parser = argparse.ArgumentParser(
        prog=prog_name("btfm_preprocessing.coverage"),
        description="Map the valid observations per pixel of a run's tiles: a 3-band uint16 GeoTIFF on the ROI grid "
                    "(valid S2 observations, S1 ascending and S1 descending observations; 65535 outside the ROI) "
                    "and one quick-look PNG per band. Look here first when an embedding looks odd.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  btfm-coverage my_data\n"
               "  btfm-coverage my_data --out-dir my_data/coverage --overwrite\n",
    )
    parser.add_argument("run_dir", type=Path, help="the run folder (holds retiled_d_pixel/)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write (default: the run folder)")
    parser.add_argument("--roi", type=Path, default=None,
                        help="the run's ROI GeoTIFF (default: roi.tiff in the run folder, else the one recorded)")
    add_overwrite_option(parser)
    add_log_file_option(parser, "logs/coverage.log in the output folder")
    add_standard_options(parser)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Write the maps and print their paths, one a line. Exit 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    setup_logging(None, args.verbosity)
    run_dir = args.run_dir.expanduser()
    if not run_dir.is_dir():
        raise TileFormatError(f"run folder {run_dir} does not exist")
    if not (run_dir / TILES_DIRNAME).is_dir():
        raise TileFormatError(f"{run_dir} is not a run folder: it has no {TILES_DIRNAME}/; run main_pipeline.sh "
                              "first, or pass the folder given to it as --data-dir")
    out_dir = (args.out_dir or run_dir).expanduser()
    roi = find_roi(run_dir, args.roi.expanduser() if args.roi else None)
    log_file = (args.log_file or RunLayout(out_dir).log_file("coverage")).expanduser()
    ensure_writable_dir(log_file.parent, "log folder (--log-file)")
    setup_logging(log_file, args.verbosity)
    result = write_coverage(run_dir, out_dir, roi, overwrite=args.overwrite)
    for path in (result.tif, *result.pngs):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
