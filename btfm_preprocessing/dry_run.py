"""``main_pipeline.sh --dry-run``: what a run will read, write and need, from the search alone.

For every pending tile the plan lists the Sentinel-2 and Sentinel-1 acquisition days and scenes
that cover it and the bytes its reads will fetch. Where an asset's header can be read (a COG, by
a range request), the bytes are exact: the compressed size of every internal block the tile's
window touches, each block counted once for the run (GDAL's cache keeps a block that two tiles
share), plus the header. Assets whose header cannot be read are estimated from the scene's
share of the tile (and labelled so). The tiles' size on disk follows from T, H, W and the dtypes
of the tile contract; memory per worker is an estimate from the tile size and the reads in flight
(days of a read group, :func:`~btfm_preprocessing.tile_tasks.tile_groups`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import rasterio
from rasterio.errors import RasterioIOError
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from btfm_core.fileio import human_bytes
from btfm_core.grid import Grid
from btfm_core.tiles import ORBIT_DIRECTIONS, TileId, tile_bytes
from btfm_preprocessing.reader import GDAL_COG_OPTIONS, gdal_env
from btfm_preprocessing.sources import AcquisitionDay, Scene

log = logging.getLogger(__name__)

__all__ = ["AssetLayout", "plan_report"]

#: Bytes GDAL reads to open a COG over HTTP (``GDAL_INGESTED_BYTES_AT_OPEN``'s default).
HEADER_BYTES = 16_384
#: Memory of a worker process before it reads anything (Python, numpy, GDAL, the sources), MB.
BASE_MEMORY_MB = 300
#: GDAL's cache of fetched blocks (``CPL_VSIL_CURL_CACHE_SIZE`` in reader.py), MB at most.
BLOCK_CACHE_MB = int(str(GDAL_COG_OPTIONS["CPL_VSIL_CURL_CACHE_SIZE"])) >> 20
#: Bytes per tile pixel a day being read holds (11 bands as float32 while warped, plus the uint16 result).
BYTES_PER_PIXEL_IN_FLIGHT = 11 * 4 + 10 * 2


@dataclass(frozen=True)
class AssetLayout:
    """What the header of one asset says: its grid and the compressed size of each internal block."""

    crs: str
    transform: tuple[float, ...]
    width: int
    height: int
    block: tuple[int, int]
    block_bytes: dict[tuple[int, int], int] = field(default_factory=dict, compare=False)

    def blocks_for(self, grid: Grid) -> list[tuple[int, int]]:
        """The (row, col) indices of the blocks that the window of ``grid`` touches (empty: no overlap)."""
        left, bottom, right, top = transform_bounds(grid.rasterio_crs, self.crs, *grid.bounds)
        window = from_bounds(left, bottom, right, top, transform=rasterio.Affine(*self.transform[:6]))
        try:
            window = window.intersection(Window(0, 0, self.width, self.height))
        except rasterio.errors.WindowError:
            return []
        if window.width <= 0 or window.height <= 0:
            return []
        (row0, row1), (col0, col1) = window.toranges()
        rows = range(int(row0) // self.block[0], (math.ceil(row1) - 1) // self.block[0] + 1)
        cols = range(int(col0) // self.block[1], (math.ceil(col1) - 1) // self.block[1] + 1)
        return [(row, col) for row in rows for col in cols]


def read_layout(href: str) -> AssetLayout | None:
    """The asset's :class:`AssetLayout` from its header (None: it cannot be opened, e.g. a service that processes)."""
    try:
        with gdal_env(), rasterio.open(href) as src:
            height, width = src.block_shapes[0]
            sizes = {}
            for row in range((src.height + height - 1) // height):
                for col in range((src.width + width - 1) // width):
                    sizes[(row, col)] = int(src.block_size(1, row, col))
            return AssetLayout(src.crs.to_string(), tuple(src.transform), src.width, src.height, (height, width), sizes)
    except (RasterioIOError, ValueError, AttributeError, OSError) as exc:
        log.debug("no header for %s (%s): estimated", href, exc)
        return None


@dataclass
class TilePlan:
    """The reads of one tile."""

    tile: TileId
    s2_days: set[str] = field(default_factory=set)
    s2_scenes: set[str] = field(default_factory=set)
    s1_days: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    s1_scenes: set[str] = field(default_factory=set)


def _assets(days: Iterable[AcquisitionDay]) -> list[tuple[AcquisitionDay, Scene, str]]:
    return [(day, scene, href) for day in days for scene in day.scenes for href in scene.assets.values()]


def plan_report(roi_grid: Grid, pending: Sequence[TileId], s2_days: Sequence[AcquisitionDay],
                s1_days: dict[str, list[AcquisitionDay]], *, workers: int, group_tiles: int = 1,
                sign: object = None) -> list[str]:
    """The lines ``--dry-run`` prints: per tile days, scenes and bytes; totals of reads, disk and memory.

    Args:
        roi_grid: the ROI's grid.
        pending: the tiles a run would write.
        s2_days, s1_days: the search's acquisition days.
        workers: reads in flight (``--workers``).
        group_tiles: tiles in the largest read group (``--read-group``): days in flight hold the group's arrays.
        sign: the source's URL signer (``href -> href``), if its assets need one.
    """
    signer = sign if callable(sign) else (lambda href: href)
    assets = _assets(s2_days)
    for direction in ORBIT_DIRECTIONS:
        assets += _assets(s1_days.get(direction, []))
    hrefs = sorted({href for _, _, href in assets})
    with gdal_env(), ThreadPoolExecutor(max(1, workers)) as pool:
        layouts = dict(zip(hrefs, pool.map(lambda href: read_layout(signer(href)), hrefs), strict=True))
    plans = {tile: TilePlan(tile) for tile in pending}
    blocks: set[tuple[str, int, int]] = set()
    estimated = 0
    for day, scene, href in assets:
        layout = layouts[href]
        for tile, plan in plans.items():
            grid = tile.grid(roi_grid)
            touched = layout.blocks_for(grid) if layout is not None else [(-1, -1)]
            if not touched:
                continue
            if layout is None:  # unknown layout: the tile's pixels at 2 bytes, uncompressed
                estimated += grid.height * grid.width * 2
            else:
                blocks.update((href, row, col) for row, col in touched)
            _note(plan, day, scene)
    exact = sum(layouts[href].block_bytes.get((row, col), 0) for href, row, col in blocks)  # type: ignore[union-attr]
    exact += HEADER_BYTES * sum(layout is not None for layout in layouts.values())
    return _lines(roi_grid, plans, exact, estimated, max(workers, group_tiles),
                  len(hrefs) - sum(v is None for v in layouts.values()), len(hrefs))


def _note(plan: TilePlan, day: AcquisitionDay, scene: Scene) -> None:
    if scene.orbit_state and scene.orbit_state.lower() in ORBIT_DIRECTIONS:
        plan.s1_days[scene.orbit_state.lower()].add(day.day.isoformat())
        plan.s1_scenes.add(scene.id)
    else:
        plan.s2_days.add(day.day.isoformat())
        plan.s2_scenes.add(scene.id)


def _lines(roi_grid: Grid, plans: dict[TileId, TilePlan], exact: int, estimated: int, tiles_in_flight: int,
           read_headers: int, assets: int) -> list[str]:
    lines = [f"dry run: {len(plans)} tile(s) to write on the {roi_grid.width} x {roi_grid.height} px ROI grid"]
    disk = 0
    largest = 0
    for tile, plan in plans.items():
        s1 = {direction: len(plan.s1_days.get(direction, ())) for direction in ORBIT_DIRECTIONS}
        size = tile_bytes(tile.shape, len(plan.s2_days), s1)
        disk += size
        largest = max(largest, tile.shape[0] * tile.shape[1])
        lines.append(f"  tile {tile.name}: S2 {len(plan.s2_days)} day(s), {len(plan.s2_scenes)} scene(s); S1 "
                     + ", ".join(f"{d} {s1[d]} day(s)" for d in ORBIT_DIRECTIONS)
                     + f", {len(plan.s1_scenes)} scene(s); {human_bytes(size)} on disk")
    reads = f"{human_bytes(exact)} from the COG block layout of {read_headers} of {assets} asset(s)"
    if estimated:
        reads += f", plus about {human_bytes(estimated)} estimated for assets without a readable header"
    memory = BASE_MEMORY_MB + BLOCK_CACHE_MB + tiles_in_flight * largest * BYTES_PER_PIXEL_IN_FLIGHT / 1e6
    lines += [f"reads will fetch: {reads}",
              f"tiles on disk: {human_bytes(disk)} (T, H, W and the tile dtypes; days without data over a tile are "
              "dropped, so at most this)",
              f"memory per worker: about {memory:.0f} MB (estimate: {BASE_MEMORY_MB} MB base, up to "
              f"{BLOCK_CACHE_MB} MB block cache, {tiles_in_flight} tile-day(s) in flight of the largest tile)",
              "nothing was written but the search cache; run again without --dry-run to write the tiles"]
    return lines
