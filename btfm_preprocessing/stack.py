"""Assemble one tile from day mosaics: group scenes by day, read the days, write the tile's arrays.

The day mosaics come from the readers :func:`build_tile` is given (a source's ``read_s2_day`` /
``read_s1_day``); this module reads no pixels itself. Memory is bounded by one tile: each day's
arrays are (H, W, bands) and go straight into the tile's memory-mapped ``bands.npy`` / ``sar_*.npy``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from btfm_core.fileio import release_pages
from btfm_core.grid import Grid
from btfm_core.tiles import (
    BANDS_FILE,
    DOYS_FILE,
    MASKS_FILE,
    ORBIT_DIRECTIONS,
    TileWriter,
    sar_doy_file,
    sar_file,
)
from btfm_preprocessing.sources import AcquisitionDay, Scene

log = logging.getLogger(__name__)

#: Days written between two :func:`~btfm_core.fileio.release_pages` of a tile's arrays.
RELEASE_EVERY_DAYS = 8
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


#: ``(day, grid, pool) -> (bands (H, W, 10) uint16, mask (H, W) uint8) | None``: an S2 source's ``read_s2_day``.
S2DayReader = Callable[[AcquisitionDay, Grid, Executor], "tuple[np.ndarray, np.ndarray] | None"]
#: ``(day, grid, pool) -> (H, W, 2) int16 | None``: an S1 source's ``read_s1_day``.
S1DayReader = Callable[[AcquisitionDay, Grid, Executor], "np.ndarray | None"]


def build_tile(writer: TileWriter, grid: Grid, s2_days: Sequence[AcquisitionDay],
               s1_days: dict[str, list[AcquisitionDay]], pool: Executor,
               read_s2: S2DayReader, read_s1: S1DayReader,
               day_pool: Executor | None = None, days_ahead: int = 4) -> TileStats:
    """Fill an open :class:`TileWriter` with every day that has data over the tile.

    ``read_s2`` / ``read_s1`` give one day's mosaic on the tile grid (a source's
    ``read_s2_day`` / ``read_s1_day``). With ``day_pool`` (not the ``pool`` the readers use, or
    they could wait on themselves) up to ``days_ahead`` days are read at once, and written in
    date order as they finish.
    """
    bands = writer.allocate_bands(len(s2_days))
    masks = writer.allocate_masks(len(s2_days))
    kept: list[AcquisitionDay] = []
    for day, result in zip(s2_days, ordered_map(day_pool, lambda d: read_s2(d, grid, pool), s2_days, days_ahead),
                           strict=True):
        if result is None:
            continue
        bands[len(kept)], masks[len(kept)] = result
        kept.append(day)
        if len(kept) % RELEASE_EVERY_DAYS == 0:  # the written days leave memory: RSS stays at a few days
            release_pages(bands)
    bands.flush()
    masks.flush()
    valid_per_pixel = masks[: len(kept)].sum(axis=0, dtype=np.int32)[writer.roi_mask != 0]
    del bands, masks
    writer.shrink_dates(BANDS_FILE, len(kept))
    writer.shrink_dates(MASKS_FILE, len(kept))
    writer.write_array(DOYS_FILE, np.array([d.doy for d in kept], np.uint16))
    s1_kept: dict[str, list[AcquisitionDay]] = {}
    for direction in ORBIT_DIRECTIONS:
        days = s1_days.get(direction, [])
        sar = writer.allocate_sar(direction, len(days))
        kept_s1: list[AcquisitionDay] = []
        for day, codes in zip(days, ordered_map(day_pool, lambda d: read_s1(d, grid, pool), days, days_ahead),
                              strict=True):
            if codes is not None:
                sar[len(kept_s1)] = codes
                kept_s1.append(day)
                if len(kept_s1) % RELEASE_EVERY_DAYS == 0:
                    release_pages(sar)
        sar.flush()
        del sar
        writer.shrink_dates(sar_file(direction), len(kept_s1))
        writer.write_array(sar_doy_file(direction), np.array([d.doy for d in kept_s1], np.int32))
        s1_kept[direction] = kept_s1
    writer.metadata.update({
        "s2_dates": [d.day.isoformat() for d in kept],
        "s2_scenes": [[s.id for s in d.scenes] for d in kept],
        **{f"s1_{direction}_dates": [d.day.isoformat() for d in days] for direction, days in s1_kept.items()},
        **{f"s1_{direction}_scenes": [[s.id for s in d.scenes] for d in days] for direction, days in s1_kept.items()},
    })
    used = frozenset(s.id for d in [*kept, *(d for days in s1_kept.values() for d in days)] for s in d.scenes)
    return TileStats(len(kept), {k: len(v) for k, v in s1_kept.items()}, valid_per_pixel, used)
