"""Stitch ``representation_retiled/<tile>.npy`` into one (H, W, 128) float32 array on the ROI grid.

Each tile file ``<x0>_<y0>_<x1>_<y1>.npy`` (ROI pixel offsets, column first) holds a
(y1 - y0, x1 - x0, 128) float32 embedding. The mosaic is written through a memory map under a
temporary name and renamed when complete; tiles are read memory-mapped and copied a few rows at
a time, so memory use does not grow with the ROI. Pixels covered by no tile are zero.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from btfm_core.cli import (
    HelpFormatter,
    add_log_file_option,
    add_overwrite_option,
    add_standard_options,
    add_tiles_dir_option,
    entry_point,
    prog_name,
)
from btfm_core.errors import BTFMError, InputDataError, TileFormatError
from btfm_core.fileio import (
    TMP_PREFIX,
    atomic_path,
    check_free_space,
    create_npy,
    ensure_writable_dir,
    file_digest,
    remove_stale_temporaries,
)
from btfm_core.locking import folder_lock
from btfm_core.logs import setup_logging
from btfm_core.progress import progress
from btfm_core.roi import Roi, open_roi
from btfm_core.run import INFERENCE_RECORD_FILE, STITCHED_STEM, InferenceRecord, RunLayout, RunRecordError
from btfm_core.tiles import EMBEDDING_DIM, TileId, check_single_run, list_tiles
from btfm_infer.embedding_map import EmbeddingMap, record_path

__all__ = ["DEFAULT_OUT_NAME", "StitchSummary", "main", "stitch"]

log = logging.getLogger(__name__)

DEFAULT_OUT_NAME = f"{STITCHED_STEM}.npy"
#: Bytes of tile data copied per step (bounds the working set of the copy loop).
_COPY_BYTES = 32 * 2**20
#: At most this many tile names are listed in an error message.
_MAX_LISTED = 50


@dataclass(frozen=True)
class TileFile:
    """A validated representation tile on disk.

    Attributes:
        tile: its position in ROI pixel offsets.
        path: the ``.npy`` file, (y1 - y0, x1 - x0, dim) float32.
        dim: its embedding length (128, or a v2 student's ``--dim``).
    """

    tile: TileId
    path: Path
    dim: int = EMBEDDING_DIM


@dataclass(frozen=True)
class StitchSummary:
    """What :func:`stitch` wrote.

    Attributes:
        tiles: number of tiles copied into the mosaic.
        height: rows of the mosaic (the ROI's height).
        width: columns of the mosaic (the ROI's width).
        covered_pixels: mosaic pixels covered by a tile (the rest are zero).
        uncovered_roi_pixels: ROI (non-zero) pixels covered by no tile.
        path: the ``.npy`` file written, (height, width, 128) float32.
        roi: the ROI it was stitched for (with ``path``: :attr:`embedding_map`).
    """

    tiles: int
    height: int
    width: int
    covered_pixels: int
    uncovered_roi_pixels: int
    path: Path
    roi: Roi | None = field(default=None, compare=False, repr=False)

    @property
    def embedding_map(self) -> EmbeddingMap:
        """The stitched map, for the exporters."""
        if self.roi is None:
            raise InputDataError(f"{self.path}: the summary does not name its ROI")
        return EmbeddingMap.open(self.path, self.roi)


def _name_list(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_MAX_LISTED])
    return shown if len(names) <= _MAX_LISTED else f"{shown} and {len(names) - _MAX_LISTED} more"


def check_tile_file(path: Path, roi_shape: tuple[int, int], dim: int | None = EMBEDDING_DIM) -> TileFile:
    """Validate one representation tile file without loading its data.

    Args:
        path: ``<x0>_<y0>_<x1>_<y1>.npy``.
        roi_shape: (height, width) of the ROI grid in pixels.
        dim: Embedding length the file must have (None: any, e.g. ``--dim`` of a v2 student).

    Raises:
        TileFormatError: naming the file, if its name does not parse, its window leaves the ROI
            grid, it is not a readable ``.npy``, or its shape or dtype is wrong.
    """
    try:
        tile = TileId.parse(path.stem)
    except TileFormatError as exc:
        raise TileFormatError(f"{path}: {exc}") from exc
    height, width = roi_shape
    if tile.x1 > width or tile.y1 > height:
        raise TileFormatError(
            f"{path}: tile {tile.name} reaches column {tile.x1}, row {tile.y1} but the ROI is "
            f"{width} x {height} px (columns x rows); it belongs to another ROI. Pass the ROI the "
            "tiles were made from (--roi), or delete the stale file.")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise TileFormatError(f"{path}: not a readable .npy array ({exc}); the file is corrupt or "
                              "truncated, delete it and re-run inference for this tile") from exc
    expected = (*tile.shape, dim if dim is not None else (array.shape[-1] if array.ndim == 3 else EMBEDDING_DIM))
    if array.shape != expected or expected[2] < 1:
        raise TileFormatError(f"{path}: shape {array.shape}, expected {expected} (rows, columns, "
                              "embedding) from its name; delete it and re-run inference for this tile")
    if array.dtype != np.dtype(np.float32):
        raise TileFormatError(f"{path}: dtype {array.dtype}, expected float32; delete it and re-run "
                              "inference for this tile")
    return TileFile(tile, path, int(array.shape[2]))


def _expected_dim(representation_dir: Path, paths: Sequence[Path]) -> int:
    """Embedding length all tiles must share: the inference record's, else the most common one."""
    try:
        record = InferenceRecord.read(representation_dir / INFERENCE_RECORD_FILE)
    except RunRecordError:
        record = None
    if record is not None and isinstance(record.model.get("embedding_dim"), int):
        return int(record.model["embedding_dim"])
    dims: list[int] = []
    for path in paths:
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except (ValueError, OSError, EOFError):
            continue  # reported by check_tile_file
        if len(shape) == 3:
            dims.append(int(shape[2]))
    return max(set(dims), key=dims.count) if dims else EMBEDDING_DIM


def find_tile_files(representation_dir: Path, roi_shape: tuple[int, int]) -> list[TileFile]:
    """All representation tiles in a folder, validated and sorted row-major.

    Files whose names start with ``.tmp-`` (writes in progress) are skipped, as is anything
    that is not a ``.npy`` file.

    Raises:
        TileFormatError: if the folder is missing, holds no tile, a tile file is invalid, or two
            tiles overlap.
    """
    if not representation_dir.is_dir():
        raise TileFormatError(f"representation folder {representation_dir} does not exist; run "
                              "infer_all_tiles.sh first or pass --representation-dir")
    paths: list[Path] = []
    for path in sorted(representation_dir.iterdir()):
        if path.name.startswith(TMP_PREFIX):
            log.debug("skipping %s: a write in progress or left by an interrupted run", path.name)
            continue
        if path.suffix == ".npy" and path.is_file():
            paths.append(path)
    dim = _expected_dim(representation_dir, paths)
    files = [check_tile_file(path, roi_shape, dim) for path in paths]
    if not files:
        raise TileFormatError(f"representation folder {representation_dir} holds no tile "
                              "(<x0>_<y0>_<x1>_<y1>.npy); run infer_all_tiles.sh first")
    files.sort(key=lambda f: (f.tile.y0, f.tile.x0))
    check_no_overlap([f.tile for f in files], representation_dir)
    return files


def check_no_overlap(tiles: Sequence[TileId], where: Path) -> None:
    """Raise :class:`TileFormatError` if two tiles share a pixel (mixed tile layouts)."""
    if len(tiles) < 2:
        return
    order = sorted(tiles, key=lambda t: (t.x0, t.y0))
    x0 = np.array([t.x0 for t in order])
    for i, tile in enumerate(order):
        # later tiles start at or after tile.x0; those starting before tile.x1 overlap in x
        stop = int(np.searchsorted(x0, tile.x1, side="left"))
        for other in order[i + 1:stop]:
            if other.y0 < tile.y1 and tile.y0 < other.y1:
                raise TileFormatError(
                    f"{where}: tiles {tile.name} and {other.name} overlap; the folder mixes two tile "
                    "layouts. Delete the stale files (or the folder) and re-run inference.")


def _check_expected(files: Sequence[TileFile], expected_tiles: Iterable[TileId],
                    representation_dir: Path) -> None:
    found = {f.tile for f in files}
    wanted = set(expected_tiles)
    expected = sorted(wanted, key=lambda t: (t.y0, t.x0))
    missing = [t.name for t in expected if t not in found]
    if missing:
        raise TileFormatError(
            f"{len(missing)} of {len(expected)} tile(s) have no representation in "
            f"{representation_dir}: {_name_list(missing)}. Run infer_all_tiles.sh to embed them "
            "(finished tiles are skipped), or leave out --tiles-dir to stitch what exists.")
    extra = [f.tile.name for f in files if f.tile not in wanted]
    if extra:
        log.warning("%d representation tile(s) have no tile folder and are stitched anyway: %s",
                    len(extra), _name_list(extra))


def _copy_tile(out_path: Path, tile_file: TileFile) -> None:
    """Copy one tile into its window of the mosaic ``out_path``, a bounded number of rows at a time.

    Both files are mapped only for this tile and unmapped after it, and the mosaic is flushed,
    so neither the process nor its dirty pages grow with the ROI.
    """
    tile = tile_file.tile
    data = np.load(tile_file.path, mmap_mode="r", allow_pickle=False)
    out = np.lib.format.open_memmap(out_path, mode="r+")
    height, width = tile.shape
    step = max(1, _COPY_BYTES // (width * tile_file.dim * 4))
    for row in range(0, height, step):
        stop = min(height, row + step)
        out[tile.y0 + row:tile.y0 + stop, tile.x0:tile.x1] = data[row:stop]
    out.flush()
    del out, data


def _inputs_digest(files: Sequence[TileFile], roi: Roi) -> str:
    """Digest of what decides the mosaic's bytes: each tile file's name and content, and the ROI (no file times)."""
    listing = [[f.path.name, file_digest(f.path)] for f in files]
    record = {"tiles": listing, "roi": file_digest(roi.path)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _stitch_record(roi: Roi, dim: int, nbytes: int, digest: str) -> dict[str, object]:
    grid = roi.grid.to_record()
    return {"schema_version": 1, **grid, "shape": [*grid["shape"], dim], "dtype": "float32", "bytes": nbytes,
            "inputs": digest}


def _is_current(out_path: Path, digest: str) -> bool:
    """Whether ``out_path`` is a complete mosaic of exactly these inputs (its record says so and its size fits)."""
    try:
        record = json.loads(record_path(out_path).read_text())
        return bool(record.get("inputs") == digest and out_path.stat().st_size == record.get("bytes"))
    except (OSError, ValueError, AttributeError):
        return False


def stitch(representation_dir: str | os.PathLike[str], roi: Roi | str | os.PathLike[str],
           out_path: str | os.PathLike[str], expected_tiles: Iterable[TileId] | None = None,
           *, overwrite: bool = False) -> StitchSummary:
    """Mosaic the representation tiles of a folder onto the ROI grid.

    Args:
        representation_dir: folder of ``<x0>_<y0>_<x1>_<y1>.npy`` files, each
            (y1 - y0, x1 - x0, 128) float32.
        roi: the ROI (or its GeoTIFF path); its grid gives the mosaic's (H, W).
        out_path: the ``.npy`` to write, (H, W, 128) float32; zero where no tile lies. Its record
            ``<out>.json`` (grid, inputs digest) is written beside it.
        expected_tiles: tiles that must all be present (e.g. the tile folders of the run);
            ``None`` stitches whatever exists and warns about ROI pixels left uncovered.
        overwrite: replace an existing ``out_path`` made from other inputs (one made from these
            inputs is kept as it is).

    Returns:
        A :class:`StitchSummary`.

    Raises:
        BTFMError: if ``out_path`` exists, was made from other inputs and ``overwrite`` is false.
        TileFormatError: naming the file, for a missing, malformed or overlapping tile.
        InvalidROIError: if the ROI cannot be used.
        DiskFullError: if the map does not fit on the disk.
    """
    representation_dir = Path(representation_dir)
    out_path = Path(out_path)
    if not isinstance(roi, Roi):
        roi = open_roi(roi)
    height, width = roi.grid.shape
    files = find_tile_files(representation_dir, (height, width))
    if expected_tiles is not None:
        _check_expected(files, expected_tiles, representation_dir)
    covered = sum(f.tile.shape[0] * f.tile.shape[1] for f in files)
    dim = files[0].dim
    digest = _inputs_digest(files, roi)
    covered_roi = sum(int(roi.read_mask(f.tile.grid(roi.grid)).sum()) for f in files)
    summary = StitchSummary(tiles=len(files), height=height, width=width, covered_pixels=covered,
                            uncovered_roi_pixels=roi.inside_pixels - covered_roi, path=out_path, roi=roi)
    if out_path.exists() and not overwrite:
        if _is_current(out_path, digest):
            log.info("%s is complete and made from these tiles; nothing to do (pass --overwrite to redo)", out_path)
            return summary
        raise BTFMError(f"output {out_path} already exists; pass --overwrite to replace it (it was made from "
                        f"other tiles, or its record {record_path(out_path).name} is missing), or choose another "
                        "--out-dir / --out-name")
    check_free_space(out_path.parent, height * width * dim * 4, f"the stitched {height} x {width} x {dim} map")
    log.info("stitching %d tile(s) into a %d x %d x %d float32 array (%.2f GB): %s", len(files),
             height, width, dim, height * width * dim * 4 / 1e9, out_path)
    with atomic_path(out_path) as tmp:
        created = create_npy(tmp, np.float32, (height, width, dim))
        del created  # zero-filled, its blocks reserved; the tiles are copied in one at a time
        for tile_file in progress(files, desc="stitch", unit="tile"):
            _copy_tile(tmp, tile_file)
        # the record first: a kill before the rename below leaves a record of a map that is absent, redone next time
        with atomic_path(record_path(out_path)) as record_tmp:
            record_tmp.write_text(json.dumps(_stitch_record(roi, dim, tmp.stat().st_size, digest), indent=1))
    if summary.uncovered_roi_pixels:
        log.warning("%d of %d ROI pixel(s) (%.1f%%) are covered by no tile and are zero in %s",
                    summary.uncovered_roi_pixels, roi.inside_pixels,
                    100 * summary.uncovered_roi_pixels / roi.inside_pixels, out_path.name)
    return summary


def build_parser() -> argparse.ArgumentParser:
    """Command line of the stitching step."""
    parser = argparse.ArgumentParser(
        prog=prog_name("btfm_infer.stitch_tiled_representation"),
        description="Stitch representation_retiled/<x0>_<y0>_<x1>_<y1>.npy tiles into one "
                    "(H, W, 128) float32 .npy on the ROI grid (zero where no tile lies).",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  python btfm_infer/stitch_tiled_representation.py \\\n"
               "      --representation-dir my_data/representation_retiled --roi my_data/roi.tiff\n"
               "  python btfm_infer/stitch_tiled_representation.py \\\n"
               "      --representation-dir my_data/representation_retiled --roi my_data/roi.tiff \\\n"
               "      --tiles-dir my_data/retiled_d_pixel --out-dir results --overwrite\n",
    )
    parser.add_argument("--representation-dir", "--representation_retiled_path", dest="representation_dir",
                        type=Path, required=True, help="folder of <tile>.npy embeddings")
    parser.add_argument("--roi", "--downstream_tiff", dest="roi", type=Path, required=True,
                        help="the ROI GeoTIFF (gives the output's height and width)")
    parser.add_argument("--out-dir", "--out_dir", dest="out_dir", type=Path, default=None,
                        help="output folder (default: the parent of --representation-dir)")
    parser.add_argument("--out-name", default=DEFAULT_OUT_NAME, help="output file name")
    add_tiles_dir_option(parser, "tile folders of the run: if given, every one must have a representation "
                                 "(default: stitch what exists and warn about uncovered ROI pixels)",
                         aliases=("--d_pixel_retiled_path",))
    add_overwrite_option(parser, "replace an existing output")
    add_log_file_option(parser, "<out-dir>/logs/stitch.log")
    add_standard_options(parser)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Stitch the tiles; print the output path. Exit 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    setup_logging(None, args.verbosity)
    representation_dir = args.representation_dir.expanduser().resolve()
    out_dir = (args.out_dir or representation_dir.parent).expanduser().resolve()
    if Path(args.out_name).name != args.out_name or not args.out_name:
        raise BTFMError(f"--out-name '{args.out_name}' must be a file name, not a path; use --out-dir "
                        "for the folder")
    out_path = out_dir / args.out_name
    roi = open_roi(args.roi.expanduser())
    expected = None
    if args.tiles_dir is not None:
        expected = list_tiles(args.tiles_dir.expanduser())
        check_single_run(args.tiles_dir.expanduser(), expected)
    ensure_writable_dir(out_dir, "output folder (--out-dir)")
    log_file = (args.log_file or RunLayout(out_dir).log_file("stitch")).expanduser()
    ensure_writable_dir(log_file.parent, "log folder (--log-file)")
    setup_logging(log_file, args.verbosity)
    with folder_lock(out_dir, "stitch"):
        remove_stale_temporaries(out_dir, names=[out_path.name, record_path(out_path).name])
        summary = stitch(representation_dir, roi, out_path, expected, overwrite=args.overwrite)
    log.info("wrote %s: %d tile(s), %d x %d px, %d px covered", summary.path, summary.tiles,
             summary.height, summary.width, summary.covered_pixels)
    print(summary.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
