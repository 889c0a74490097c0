"""Checks of preprocessing flags and results: tile size, cloud threshold, tiles without valid S2 data."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from btfm_core.errors import BTFMError
from btfm_core.tiles import S1_BANDS, S2_BANDS

log = logging.getLogger(__name__)

#: Smallest ``--tile-size``: below it the per-tile overhead (files, searches, model calls) dominates.
MIN_TILE_SIZE = 32
#: Above this ``--tile-size`` a warning gives the size of one tile.
LARGE_TILE_SIZE = 4096
#: Dates assumed by the size estimate when the number of dates is not known yet (before the search).
ESTIMATE_DATES = 100
#: Bytes per pixel and date of a tile (DESIGN §3): S2 bands (uint16) + mask (uint8); S1 bands (int16).
S2_BYTES_PER_DATE = 2 * len(S2_BANDS) + 1
S1_BYTES_PER_DATE = 2 * len(S1_BANDS)


def tile_bytes(height: int, width: int, s2_dates: int, s1_dates: int = 0) -> int:
    """Bytes of one tile's arrays (DESIGN §3), ``s1_dates`` counting both orbit directions."""
    pixels = height * width
    return pixels * (s2_dates * S2_BYTES_PER_DATE + s1_dates * S1_BYTES_PER_DATE) + pixels + s2_dates * 2


def _gigabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def check_flags(tile_size: int, max_cloud: float) -> None:
    """Refuse a ``--tile-size`` below :data:`MIN_TILE_SIZE` or a ``--max-cloud`` outside 0–100.

    Warns (with the size of one tile per :data:`ESTIMATE_DATES` dates) above :data:`LARGE_TILE_SIZE`.
    Called on the parsed arguments, before the ROI is read or any search runs.

    Raises:
        BTFMError: naming the flag, the value given and the range accepted.
    """
    if not 0.0 <= max_cloud <= 100.0:  # also refuses NaN
        raise BTFMError(f"--max-cloud must lie in 0-100 (percent cloud cover of a scene), got {max_cloud:g}")
    if tile_size < MIN_TILE_SIZE:
        raise BTFMError(f"--tile-size must be at least {MIN_TILE_SIZE} px, got {tile_size} (tiny tiles multiply "
                        "files and per-tile work); use the default 500 or a value of 32 or more")
    if tile_size > LARGE_TILE_SIZE:
        s2_only = tile_bytes(tile_size, tile_size, ESTIMATE_DATES)
        with_s1 = tile_bytes(tile_size, tile_size, ESTIMATE_DATES, ESTIMATE_DATES)
        log.warning("--tile-size %d: one tile of %d x %d px takes about %s per %d Sentinel-2 dates (%s with as many "
                    "Sentinel-1 dates; the number of dates is known only after the search), on disk and in memory "
                    "while it is read; a --tile-size of %d or less (default 500) keeps tiles small",
                    tile_size, tile_size, tile_size, _gigabytes(s2_only), ESTIMATE_DATES, _gigabytes(with_s1),
                    LARGE_TILE_SIZE)


def unobserved_tiles(valid_counts: Sequence[np.ndarray]) -> tuple[int, int]:
    """(tiles, ROI pixels) of tiles whose ROI pixels have no valid S2 observation at any date.

    ``valid_counts`` holds one array per tile: valid S2 observations of each of its ROI pixels.
    """
    empty = [counts for counts in valid_counts if counts.size and not counts.any()]
    return len(empty), sum(int(counts.size) for counts in empty)


def unobserved_line(valid_counts: Sequence[np.ndarray]) -> str:
    """Summary line: tiles and ROI pixels without any valid S2 observation."""
    tiles, pixels = unobserved_tiles(valid_counts)
    return f"tiles with no valid S2 observation at any date: {tiles} ({pixels} ROI px)"


def warn_unobserved(valid_counts: Sequence[np.ndarray]) -> None:
    """WARNING when some tiles have no valid S2 observation at all (every date masked, or none)."""
    tiles, pixels = unobserved_tiles(valid_counts)
    if tiles:
        log.warning("%d tile(s) (%d ROI px) have no valid Sentinel-2 observation at any date (all cloud/no data, "
                    "or no date): their embeddings will be zero vectors or rest on masked or S1-only data; widen "
                    "the dates or raise --max-cloud", tiles, pixels)
