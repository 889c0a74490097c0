"""Assemble tiles from day mosaics: group scenes by day, read the days, write the tiles' arrays.

The day mosaics come from the readers :func:`build_tiles` is given (a source's ``read_s2_day`` /
``read_s1_day``); this module reads no pixels itself. Neighbouring tiles are filled together from
one read per day on their union grid, so a COG block under several of them is fetched and decoded
once. Memory is bounded by the group: each day's arrays are (H, W, bands) of the union and go
straight into the tiles' memory-mapped ``bands.npy`` / ``sar_*.npy``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from btfm_core.errors import TileFormatError
from btfm_core.fileio import release_free_heap, release_pages
from btfm_core.grid import Grid
from btfm_core.tiles import (
    BANDS_FILE,
    DOYS_FILE,
    MASKS_FILE,
    ORBIT_DIRECTIONS,
    TileArrays,
    TileWriter,
    copy_dates,
    sar_doy_file,
    sar_file,
)
from btfm_preprocessing.mosaic import S2Day, s1_window
from btfm_preprocessing.sources import AcquisitionDay, Scene

log = logging.getLogger(__name__)

#: Days written between two :func:`~btfm_core.fileio.release_pages` of a tile's arrays.
RELEASE_EVERY_DAYS = 2
Item = TypeVar("Item")
Result = TypeVar("Result")


def group_by_day(scenes: Iterable[Scene]) -> list[AcquisitionDay]:
    """Group scenes by acquisition day, sorted by day of year (the tile contract's order)."""
    by_day: dict[dt.date, list[Scene]] = defaultdict(list)
    for scene in scenes:
        by_day[scene.day].append(scene)
    days = [AcquisitionDay(day, tuple(sorted(group, key=lambda s: s.id)))
            for day, group in by_day.items()]
    return sorted(days, key=lambda d: (d.doy, d.day))


def split_by_orbit(scenes: Iterable[Scene]) -> dict[str, list[Scene]]:
    """S1 scenes per orbit direction (``ascending``/``descending``); unknown ones are dropped."""
    out: dict[str, list[Scene]] = {direction: [] for direction in ORBIT_DIRECTIONS}
    for scene in scenes:
        direction = (scene.orbit_state or "").lower()
        if direction in out:
            out[direction].append(scene)
        else:
            log.warning("S1 scene %s has no orbit direction (sat:orbit_state); skipped", scene.id)
    return out


@dataclass(frozen=True)
class TileStats:
    """What went into one tile."""

    s2_dates: int
    s1_dates: dict[str, int]
    valid_per_pixel: np.ndarray  # (n_roi_pixels,) count of valid S2 observations
    scenes_used: frozenset[str] = frozenset()  # ids of the S2 and S1 scenes with data in the tile


def ordered_map(executor: Executor | None, fn: Callable[[Item], Result], items: Sequence[Item],
                ahead: int) -> Iterator[Result]:
    """``map(fn, items)`` run on ``executor`` with at most ``ahead`` calls in flight, results in order.

    Unlike ``Executor.map``, which submits everything at once, finished results waiting for a slow
    earlier one are bounded by ``ahead`` (memory stays a few days' arrays). Sequential if
    ``executor`` is None.
    """
    if executor is None or ahead <= 1:
        yield from map(fn, items)
        return
    pending: deque[Future[Result]] = deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


#: ``(day, grid, pool) -> S2Day | None``: an S2 source's ``read_s2_day``.
S2DayReader = Callable[[AcquisitionDay, Grid, Executor], "S2Day | None"]
#: ``(day, grid, pool) -> (H, W, 2) int16 | None``: an S1 source's ``read_s1_day``.
S1DayReader = Callable[[AcquisitionDay, Grid, Executor], "np.ndarray | None"]
#: Rows and columns of one tile inside the grid its days are read on.
Window = tuple[slice, slice]
Part = TypeVar("Part")


def _fill_days(days: Sequence[AcquisitionDay], read: Callable[[AcquisitionDay], Part | None],
               split: Callable[[Part, Window], Part | None], windows: Sequence[Window],
               store: Callable[[int, int, Part], None], day_pool: Executor | None,
               days_ahead: int) -> list[list[AcquisitionDay]]:
    """Read ``days`` once each (``days_ahead`` at a time) and store each tile's window of those that cover it.

    ``store(tile, index, part)`` writes tile ``tile``'s ``index``-th kept day; returns each tile's kept days.
    """
    kept: list[list[AcquisitionDay]] = [[] for _ in windows]
    for day, whole in zip(days, ordered_map(day_pool, read, days, days_ahead), strict=True):
        if whole is None:
            continue
        for tile, window in enumerate(windows):
            part = split(whole, window)
            if part is not None:
                store(tile, len(kept[tile]), part)
                kept[tile].append(day)
    return kept


def build_tiles(writers: Sequence[TileWriter], grid: Grid, windows: Sequence[Window],
                s2_days: Sequence[AcquisitionDay], s1_days: dict[str, list[AcquisitionDay]], pool: Executor,
                read_s2: S2DayReader, read_s1: S1DayReader,
                day_pool: Executor | None = None, days_ahead: int = 4) -> list[TileStats]:
    """Fill open :class:`TileWriter` s of neighbouring tiles with every day that has data over each.

    Each day is read once on ``grid`` (a single tile's grid, or the union of the tiles' grids
    when the source's reads split, :attr:`~btfm_preprocessing.sources.Source.group_reads`) with
    ``read_s2`` / ``read_s1`` (a source's ``read_s2_day`` / ``read_s1_day``), and tile ``i`` gets
    its window ``windows[i]`` of it; a day is kept in a tile when it covers one of the tile's
    pixels, so each tile is what a read on its own grid would give. With ``day_pool`` (not the
    ``pool`` the readers use, or they could wait on themselves) up to ``days_ahead`` days are
    read at once, and written in date order as they finish.

    Returns:
        Each tile's :class:`TileStats`, in the order of ``writers``.
    """
    kept, valid_per_pixel = _fill_s2(writers, lambda d: read_s2(d, grid, pool), windows, s2_days, day_pool,
                                     days_ahead)
    s1_kept: list[dict[str, list[AcquisitionDay]]] = [{} for _ in writers]
    for direction in ORBIT_DIRECTIONS:
        kept_s1 = _fill_s1(writers, direction, lambda d: read_s1(d, grid, pool), windows, s1_days.get(direction, []),
                           day_pool, days_ahead)
        for record, days in zip(s1_kept, kept_s1, strict=True):
            record[direction] = days
    return [_record(writer, days, s1, valid)
            for writer, days, s1, valid in zip(writers, kept, s1_kept, valid_per_pixel, strict=True)]


def _fill_s2(writers: Sequence[TileWriter], read: Callable[[AcquisitionDay], S2Day | None],
             windows: Sequence[Window], days: Sequence[AcquisitionDay], day_pool: Executor | None,
             days_ahead: int) -> tuple[list[list[AcquisitionDay]], list[np.ndarray]]:
    """Write the tiles' ``bands``/``masks``/``doys``; each tile's kept days and valid observations per ROI pixel."""
    bands = [writer.allocate_bands(len(days)) for writer in writers]
    masks = [writer.allocate_masks(len(days)) for writer in writers]

    def store(tile: int, index: int, part: S2Day) -> None:
        bands[tile][index], masks[tile][index] = part.bands, part.mask
        if (index + 1) % RELEASE_EVERY_DAYS == 0:  # the written days leave memory: RSS stays at a few days
            release_pages(bands[tile])
            release_free_heap()

    kept = _fill_days(days, read, lambda day, window: day.window(*window), windows, store, day_pool, days_ahead)
    valid_per_pixel = []
    for tile, (writer, tile_days) in enumerate(zip(writers, kept, strict=True)):
        bands[tile].flush()
        masks[tile].flush()
        valid_per_pixel.append(masks[tile][: len(tile_days)].sum(axis=0, dtype=np.int32)[writer.roi_mask != 0])
    bands.clear()  # the memory maps are closed before their files shrink
    masks.clear()
    for writer, tile_days in zip(writers, kept, strict=True):
        writer.shrink_dates(BANDS_FILE, len(tile_days))
        writer.shrink_dates(MASKS_FILE, len(tile_days))
        writer.write_array(DOYS_FILE, np.array([d.doy for d in tile_days], np.uint16))
    return kept, valid_per_pixel


def _fill_s1(writers: Sequence[TileWriter], direction: str, read: Callable[[AcquisitionDay], np.ndarray | None],
             windows: Sequence[Window], days: Sequence[AcquisitionDay], day_pool: Executor | None,
             days_ahead: int) -> list[list[AcquisitionDay]]:
    """Write the tiles' ``sar_<direction>`` arrays and days; each tile's kept days."""
    sar = [writer.allocate_sar(direction, len(days)) for writer in writers]

    def store(tile: int, index: int, part: np.ndarray) -> None:
        sar[tile][index] = part
        if (index + 1) % RELEASE_EVERY_DAYS == 0:
            release_pages(sar[tile])
            release_free_heap()

    kept = _fill_days(days, read, lambda codes, window: s1_window(codes, *window), windows, store, day_pool,
                      days_ahead)
    for tile in range(len(sar)):
        sar[tile].flush()
    sar.clear()  # the memory maps are closed before their files shrink
    for writer, tile_days in zip(writers, kept, strict=True):
        writer.shrink_dates(sar_file(direction), len(tile_days))
        writer.write_array(sar_doy_file(direction), np.array([d.doy for d in tile_days], np.int32))
    return kept


def join_day_parts(writer: TileWriter, parts: Sequence[TileArrays], parts_metadata: Sequence[dict[str, Any]],
                   s2_days: Sequence[AcquisitionDay], s1_days: dict[str, list[AcquisitionDay]]) -> TileStats:
    """Fill an open :class:`TileWriter` with partial tiles of consecutive day ranges, in their order.

    ``parts`` are :func:`build_tiles` outputs of the same tile for day ranges that follow each
    other (``parts_metadata`` their ``tile.json``); a day is kept in a tile or not whatever the
    other days, so the joined tile is what one :func:`build_tiles` over all the days gives, byte
    for byte, and so are its dates and scenes. Arrays are copied a day at a time.

    Args:
        s2_days, s1_days: all the days of the run (the parts' dates are looked up in them).

    Returns:
        The tile's :class:`TileStats`.
    """
    def kept_days(days: Sequence[AcquisitionDay], key: str) -> list[AcquisitionDay]:
        by_date = {day.day.isoformat(): day for day in days}
        return [by_date[date] for metadata in parts_metadata for date in metadata[key]]

    kept = kept_days(s2_days, "s2_dates")
    masks = writer.allocate_masks(len(kept))
    _copy_days(writer.allocate_bands(len(kept)), [part.bands for part in parts])
    _copy_days(masks, [part.masks for part in parts])
    valid_per_pixel = masks.sum(axis=0, dtype=np.int32)[writer.roi_mask != 0]
    del masks
    writer.write_array(DOYS_FILE, np.array([d.doy for d in kept], np.uint16))
    s1_kept: dict[str, list[AcquisitionDay]] = {}
    for direction in ORBIT_DIRECTIONS:
        s1_kept[direction] = kept_days(s1_days.get(direction, []), f"s1_{direction}_dates")
        _copy_days(writer.allocate_sar(direction, len(s1_kept[direction])),
                   [getattr(part, f"sar_{direction}") for part in parts])
        writer.write_array(sar_doy_file(direction), np.array([d.doy for d in s1_kept[direction]], np.int32))
    return _record(writer, kept, s1_kept, valid_per_pixel)


def _copy_days(target: np.ndarray, sources: Sequence[np.ndarray]) -> None:
    """Copy ``sources`` (memory maps of T_i days each) one day at a time into ``target`` (sum T_i days)."""
    held = sum(source.shape[0] for source in sources)
    if held != target.shape[0]:
        raise TileFormatError(f"partial tiles hold {held} days where their tile.json files name "
                              f"{target.shape[0]}; delete the run's cache folder and rerun")
    copy_dates(target, sources, RELEASE_EVERY_DAYS)


def _record(writer: TileWriter, kept: list[AcquisitionDay], s1_kept: dict[str, list[AcquisitionDay]],
            valid_per_pixel: np.ndarray) -> TileStats:
    """Record one tile's dates and scenes in its metadata; its :class:`TileStats`."""
    writer.metadata.update({
        "s2_dates": [d.day.isoformat() for d in kept],
        "s2_scenes": [[s.id for s in d.scenes] for d in kept],
        **{f"s1_{direction}_dates": [d.day.isoformat() for d in days] for direction, days in s1_kept.items()},
        **{f"s1_{direction}_scenes": [[s.id for s in d.scenes] for d in days] for direction, days in s1_kept.items()},
    })
    used = frozenset(s.id for d in [*kept, *(d for days in s1_kept.values() for d in days)] for s in d.scenes)
    return TileStats(len(kept), {k: len(v) for k, v in s1_kept.items()}, valid_per_pixel, used)
