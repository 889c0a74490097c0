"""The tile folder contract between preprocessing (writer) and inference (reader).

A tile folder ``<x0>_<y0>_<x1>_<y1>`` (ROI pixel offsets, column first) holds::

    bands.npy               (T, H, W, 10) uint16  S2 L2A reflectance x 1e4, pre-2022 scale
    masks.npy               (T, H, W)     uint8   1 = valid observation
    doys.npy                (T,)          uint16  day of year 1-366, ascending
    sar_ascending.npy       (T', H, W, 2) int16   VV, VH encoded as (dB + 50) * 200
    sar_ascending_doy.npy   (T',)         int32
    sar_descending.npy      (T'', H, W, 2) int16
    sar_descending_doy.npy  (T'',)        int32
    roi.tiff                (H, W)        uint8   ROI mask of this window, georeferenced
    tile.json               schema version, grid and per-date provenance

Folders are written under a temporary name and renamed when complete, so an existing folder
is a finished tile. This is the only module that knows these names, dtypes and shapes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio

from btfm_core.errors import TileFormatError
from btfm_core.fileio import atomic_path, create_npy, release_pages
from btfm_core.grid import Grid
from btfm_core.run import ROI_FILE

__all__ = ["BANDS_FILE", "DEFAULT_TILE_SIZE", "DOYS_FILE", "EMBEDDING_DIM", "MASKS_FILE", "ORBIT_DIRECTIONS",
           "ROI_FILE", "S1_BANDS", "S2_BANDS", "TileArrays", "TileId", "TileWriter",
           "check_single_run", "copy_dates", "list_tiles", "read_tile", "read_tile_metadata", "sar_doy_file",
           "sar_file", "tile_bytes", "tile_layout", "write_roi_tiff"]

SCHEMA_VERSION = 1
DEFAULT_TILE_SIZE = 500

#: S2 band order of ``bands.npy`` (and of the model's S2 input).
S2_BANDS: tuple[str, ...] = ("B04", "B02", "B03", "B08", "B8A", "B05", "B06", "B07", "B11", "B12")
#: Length of the embedding in ``representation_retiled/<tile>.npy`` (H, W, EMBEDDING_DIM) float32.
EMBEDDING_DIM = 128
#: S1 band order of ``sar_*.npy``.
S1_BANDS: tuple[str, ...] = ("VV", "VH")
ORBIT_DIRECTIONS: tuple[str, ...] = ("ascending", "descending")

BANDS_FILE = "bands.npy"
MASKS_FILE = "masks.npy"
DOYS_FILE = "doys.npy"
TILE_METADATA_FILE = "tile.json"

_TILE_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)$")


def sar_file(direction: str) -> str:
    """File name of the S1 backscatter array of one orbit direction."""
    return f"sar_{direction}.npy"


def sar_doy_file(direction: str) -> str:
    """File name of the S1 day-of-year array of one orbit direction."""
    return f"sar_{direction}_doy.npy"


@dataclass(frozen=True, order=True)
class TileId:
    """A tile's position in ROI pixel offsets: columns ``x0:x1``, rows ``y0:y1``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def name(self) -> str:
        """Folder name ``<x0>_<y0>_<x1>_<y1>`` (column first)."""
        return f"{self.x0}_{self.y0}_{self.x1}_{self.y1}"

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the tile in pixels."""
        return (self.y1 - self.y0, self.x1 - self.x0)

    @classmethod
    def parse(cls, name: str) -> TileId:
        """Parse a folder or file stem ``<x0>_<y0>_<x1>_<y1>``.

        Raises:
            TileFormatError: if the name does not follow the scheme.
        """
        match = _TILE_NAME.match(name)
        if not match:
            raise TileFormatError(f"'{name}' is not a tile name; expected <x0>_<y0>_<x1>_<y1>, "
                                  "e.g. 0_500_500_1000 (columns first, ROI pixel offsets).")
        x0, y0, x1, y1 = (int(v) for v in match.groups())
        if x1 <= x0 or y1 <= y0:
            raise TileFormatError(f"tile name '{name}' describes an empty window")
        return cls(x0, y0, x1, y1)

    def grid(self, roi_grid: Grid) -> Grid:
        """This tile's sub-grid of the ROI grid."""
        return roi_grid.window(self.x0, self.y0, self.x1, self.y1)


def tile_layout(height: int, width: int, tile_size: int = DEFAULT_TILE_SIZE) -> list[TileId]:
    """All tiles covering a ``height`` x ``width`` grid, row-major, edge tiles clamped."""
    if tile_size <= 0:
        raise ValueError(f"tile size must be positive, got {tile_size}")
    return [
        TileId(x0, y0, min(x0 + tile_size, width), min(y0 + tile_size, height))
        for y0 in range(0, height, tile_size)
        for x0 in range(0, width, tile_size)
    ]


@dataclass(frozen=True)
class TileArrays:
    """The arrays of one tile folder (possibly memory-mapped). Shapes as in the module doc."""

    bands: np.ndarray
    masks: np.ndarray
    doys: np.ndarray
    sar_ascending: np.ndarray
    sar_ascending_doy: np.ndarray
    sar_descending: np.ndarray
    sar_descending_doy: np.ndarray
    roi: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the tile."""
        return (int(self.roi.shape[0]), int(self.roi.shape[1]))


# name -> (dtype, ndim, trailing band count or None)
_ARRAY_SPECS: dict[str, tuple[np.dtype, int, int | None]] = {
    BANDS_FILE: (np.dtype(np.uint16), 4, len(S2_BANDS)),
    MASKS_FILE: (np.dtype(np.uint8), 3, None),
    DOYS_FILE: (np.dtype(np.uint16), 1, None),
    **{sar_file(d): (np.dtype(np.int16), 4, len(S1_BANDS)) for d in ORBIT_DIRECTIONS},
    **{sar_doy_file(d): (np.dtype(np.int32), 1, None) for d in ORBIT_DIRECTIONS},
}
REQUIRED_FILES: tuple[str, ...] = (*_ARRAY_SPECS, ROI_FILE)


def tile_bytes(shape: tuple[int, int], s2_dates: int, s1_dates: dict[str, int]) -> int:
    """Bytes the arrays of one tile take on disk at most (headers and ``roi.tiff`` aside).

    Args:
        shape: (H, W) of the tile in pixels.
        s2_dates: Sentinel-2 acquisition days T (a tile keeps at most this many).
        s1_dates: Sentinel-1 days per orbit direction (``ascending``/``descending``).
    """
    pixels = shape[0] * shape[1]
    total = s2_dates * pixels * (len(S2_BANDS) * 2 + 1) + s2_dates * 2
    for direction in ORBIT_DIRECTIONS:
        days = s1_dates.get(direction, 0)
        total += days * (pixels * len(S1_BANDS) * 2 + 4)
    return total


def _check_array(folder: Path, name: str, array: np.ndarray, height: int, width: int) -> None:
    dtype, ndim, nbands = _ARRAY_SPECS[name]
    where = folder / name
    if array.dtype != dtype:
        raise TileFormatError(f"{where}: dtype {array.dtype}, expected {dtype}")
    if array.ndim != ndim:
        raise TileFormatError(f"{where}: shape {array.shape} has {array.ndim} axes, expected {ndim}")
    if ndim >= 3 and tuple(array.shape[1:3]) != (height, width):
        raise TileFormatError(f"{where}: shape {array.shape}, expected (T, {height}, {width}, ...) "
                              "to match roi.tiff and the tile name")
    if nbands is not None and array.shape[-1] != nbands:
        raise TileFormatError(f"{where}: shape {array.shape}, expected {nbands} bands last")


def _validate(folder: Path, arrays: dict[str, np.ndarray], tile: TileId | None) -> None:
    roi = arrays[ROI_FILE]
    height, width = roi.shape
    if tile is not None and tile.shape != (height, width):
        raise TileFormatError(f"{folder}: roi.tiff is {height}x{width} but the tile name says "
                              f"{tile.shape[0]}x{tile.shape[1]}")
    for name in _ARRAY_SPECS:
        _check_array(folder, name, arrays[name], height, width)
    t = arrays[BANDS_FILE].shape[0]
    if arrays[MASKS_FILE].shape[0] != t or arrays[DOYS_FILE].shape[0] != t:
        raise TileFormatError(
            f"{folder}: inconsistent T: bands {arrays[BANDS_FILE].shape[0]}, masks "
            f"{arrays[MASKS_FILE].shape[0]}, doys {arrays[DOYS_FILE].shape[0]}")
    doys = np.asarray(arrays[DOYS_FILE])
    if doys.size and (doys.min() < 1 or doys.max() > 366 or np.any(np.diff(doys.astype(int)) < 0)):
        raise TileFormatError(f"{folder}/doys.npy: days of year must be 1-366 and ascending")
    for direction in ORBIT_DIRECTIONS:
        n_sar = arrays[sar_file(direction)].shape[0]
        n_doy = arrays[sar_doy_file(direction)].shape[0]
        if n_sar != n_doy:
            raise TileFormatError(f"{folder}: {sar_file(direction)} has {n_sar} dates but "
                                  f"{sar_doy_file(direction)} has {n_doy}")


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        array: np.ndarray = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        return array
    except (ValueError, OSError, EOFError) as exc:
        raise TileFormatError(f"{path}: not a readable .npy array ({exc}); the tile is corrupt, "
                              "delete its folder and re-run preprocessing to rebuild it") from exc


def read_tile(folder: str | os.PathLike[str], *, mmap: bool = True,
              tile: TileId | None = None) -> TileArrays:
    """Read and validate a tile folder.

    Args:
        folder: the tile folder.
        mmap: memory-map the arrays instead of loading them.
        tile: the tile id to check shapes against (default: parsed from the folder name).

    Raises:
        TileFormatError: naming the file and what is wrong with it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TileFormatError(f"tile folder {folder} does not exist")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise TileFormatError(f"tile folder {folder} is missing {', '.join(missing)}; delete it "
                              "and re-run preprocessing to rebuild it")
    arrays = {name: _load_npy(folder / name, mmap) for name in _ARRAY_SPECS}
    try:
        with rasterio.open(folder / ROI_FILE) as src:
            arrays[ROI_FILE] = (src.read(1) != 0).astype(np.uint8)
    except rasterio.errors.RasterioIOError as exc:
        raise TileFormatError(f"{folder / ROI_FILE}: unreadable ({exc})") from exc
    if tile is None:
        try:
            tile = TileId.parse(folder.name)
        except TileFormatError:
            tile = None
    _validate(folder, arrays, tile)
    return TileArrays(
        bands=arrays[BANDS_FILE],
        masks=arrays[MASKS_FILE],
        doys=arrays[DOYS_FILE],
        sar_ascending=arrays[sar_file("ascending")],
        sar_ascending_doy=arrays[sar_doy_file("ascending")],
        sar_descending=arrays[sar_file("descending")],
        sar_descending_doy=arrays[sar_doy_file("descending")],
        roi=arrays[ROI_FILE],
    )


def read_tile_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``tile.json`` of a tile folder (empty dict if absent)."""
    path = Path(folder) / TILE_METADATA_FILE
    if not path.is_file():
        return {}
    metadata: dict[str, Any] = json.loads(path.read_text())
    return metadata


def check_single_run(tiles_dir: str | os.PathLike[str], tiles: list[TileId]) -> str | None:
    """The run key all ``tiles`` share (None for tiles of an older version that record none).

    A folder whose tiles were made by runs with different settings (dates, sources, ROI) must
    never be consumed as one map.

    Raises:
        TileFormatError: the tiles record more than one run key (names a few tiles of each).
    """
    by_key: dict[str, list[str]] = {}
    for tile in tiles:
        try:
            key = str(read_tile_metadata(Path(tiles_dir) / tile.name).get("run_key", ""))
        except ValueError as exc:
            raise TileFormatError(f"tile {tile.name} has an unreadable {TILE_METADATA_FILE} ({exc}); delete the "
                                  "tile folder and rerun main_pipeline.sh to rebuild it") from exc
        by_key.setdefault(key, []).append(tile.name)
    if len(by_key) > 1:
        groups = "; ".join(f"run {key[:12] or '(none)'}: {len(names)} tile(s), e.g. {', '.join(names[:3])}"
                           for key, names in sorted(by_key.items(), key=lambda kv: -len(kv[1])))
        raise TileFormatError(f"{tiles_dir} mixes tiles of {len(by_key)} preprocessing runs with different settings "
                              f"({groups}); rerun main_pipeline.sh with --overwrite and one set of settings, or use "
                              "one --data-dir per run")
    key = next(iter(by_key), "")
    return key or None


def list_tiles(tiles_dir: str | os.PathLike[str]) -> list[TileId]:
    """Tile ids of all finished tile folders in ``tiles_dir``, sorted row-major.

    Raises:
        TileFormatError: if the folder is missing or holds no tile.
    """
    tiles_dir = Path(tiles_dir)
    if not tiles_dir.is_dir():
        raise TileFormatError(f"tiles folder {tiles_dir} does not exist; run "
                              "main_pipeline.sh first or pass --tiles-dir")
    tiles = sorted(
        (TileId.parse(p.name) for p in tiles_dir.iterdir() if p.is_dir() and _TILE_NAME.match(p.name)),
        key=lambda t: (t.y0, t.x0),
    )
    if not tiles:
        raise TileFormatError(f"tiles folder {tiles_dir} holds no tile folder "
                              "(<x0>_<y0>_<x1>_<y1>/); run main_pipeline.sh first")
    return tiles


def write_roi_tiff(path: Path, mask: np.ndarray, grid: Grid) -> None:
    """Write a (H, W) uint8 mask as a georeferenced single-band GeoTIFF."""
    profile = {"driver": "GTiff", "dtype": "uint8", "count": 1, **grid.profile(), "compress": "deflate",
               "nodata": None}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask.astype(np.uint8), 1)


def copy_dates(target: np.ndarray, sources: Sequence[np.ndarray], release_every: int) -> None:
    """Copy ``sources`` (T_i dates each, memory maps) one date at a time into ``target`` (a memory map of sum T_i).

    The pages of both are released every ``release_every`` dates (:func:`~btfm_core.fileio.release_pages`),
    so resident memory stays at a few dates whatever T.
    """
    index = 0
    for source in sources:
        for date in range(source.shape[0]):
            target[index] = source[date]
            index += 1
            if index % release_every == 0:
                release_pages(target)
                release_pages(source)
    if isinstance(target, np.memmap):
        target.flush()


class TileWriter:
    """Write one tile folder atomically, with large arrays going through memory maps.

    Example::

        with TileWriter(tiles_dir, tile_id, grid, roi_mask) as writer:
            bands = writer.allocate_bands(n_dates)      # (T, H, W, 10) uint16 memmap
            ...
            writer.set_s2_dates(doys, masks)
            writer.set_s1(direction, sar, doys)

    On a clean exit the folder is validated and renamed into place; on error nothing is left.
    """

    def __init__(self, tiles_dir: Path, tile: TileId, grid: Grid, roi_mask: np.ndarray,
                 metadata: dict[str, Any] | None = None) -> None:
        self.final = Path(tiles_dir) / tile.name
        self.tile = tile
        self.grid = grid
        self.roi_mask = roi_mask
        self.metadata = dict(metadata or {})
        self._ctx = atomic_path(self.final)
        self.folder: Path = Path()
        self._written: set[str] = set()

    def __enter__(self) -> TileWriter:
        self.folder = self._ctx.__enter__()
        self.folder.mkdir(parents=True)
        return self

    def allocate_bands(self, n_dates: int) -> np.ndarray:
        """A zeroed (T, H, W, 10) uint16 memory map for ``bands.npy``."""
        return self._allocate(BANDS_FILE, (n_dates, *self.tile.shape, len(S2_BANDS)))

    def allocate_masks(self, n_dates: int) -> np.ndarray:
        """A zeroed (T, H, W) uint8 memory map for ``masks.npy``."""
        return self._allocate(MASKS_FILE, (n_dates, *self.tile.shape))

    def allocate_sar(self, direction: str, n_dates: int) -> np.ndarray:
        """A zeroed (T', H, W, 2) int16 memory map for ``sar_<direction>.npy``."""
        return self._allocate(sar_file(direction), (n_dates, *self.tile.shape, len(S1_BANDS)))

    def _allocate(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        dtype = _ARRAY_SPECS[name][0]
        self._written.add(name)
        return create_npy(self.folder / name, dtype, shape)

    def shrink_dates(self, name: str, n_dates: int) -> None:
        """Keep only the first ``n_dates`` slices of an allocated array (copied slice by slice)."""
        path = self.folder / name
        old = np.load(path, mmap_mode="r")
        if old.shape[0] == n_dates:
            return
        tmp = path.with_name(f"shrink-{name}")
        new = create_npy(tmp, old.dtype, (n_dates, *old.shape[1:]))
        copy_dates(new, [old[:n_dates]], release_every=8)
        del new, old
        tmp.replace(path)

    def write_array(self, name: str, array: np.ndarray) -> None:
        """Write a whole array (cast to the contract dtype) under a contract file name."""
        dtype = _ARRAY_SPECS[name][0]
        np.save(self.folder / name, np.ascontiguousarray(array, dtype=dtype))
        self._written.add(name)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            try:
                for direction in ORBIT_DIRECTIONS:
                    if sar_file(direction) not in self._written:
                        self.allocate_sar(direction, 0)
                    if sar_doy_file(direction) not in self._written:
                        self.write_array(sar_doy_file(direction), np.zeros(0, np.int32))
                write_roi_tiff(self.folder / ROI_FILE, self.roi_mask, self.grid)
                meta = {
                    "schema_version": SCHEMA_VERSION,
                    "tile": self.tile.name,
                    **self.grid.to_record(),
                    "s2_bands": list(S2_BANDS),
                    "s1_bands": list(S1_BANDS),
                    **self.metadata,
                }
                (self.folder / TILE_METADATA_FILE).write_text(json.dumps(meta, indent=1))
                read_tile(self.folder, tile=self.tile)
            except BaseException as inner:
                self._ctx.__exit__(type(inner), inner, inner.__traceback__)
                raise
        self._ctx.__exit__(exc_type, exc, tb)
