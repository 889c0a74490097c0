"""One day of GeoTIFF/COG granules read onto a grid and mosaicked: the read step of the STAC, ASF and HyP3 sources.

Each granule's bands are read with :func:`btfm_preprocessing.reader.read_assets_on_grid`
(reprojected when the granule is in another CRS, its bands of one grid warped together), in
parallel on the given pool, one granule at a time; :mod:`btfm_preprocessing.mosaic` does the
rest. A granule whose SCL covers none of the grid is skipped before its bands are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor

import numpy as np
from rasterio.enums import Resampling

from btfm_core.grid import Grid
from btfm_preprocessing.encoding import has_boa_offset
from btfm_preprocessing.mosaic import S2Day, S2Granule, mosaic_s1, mosaic_s2
from btfm_preprocessing.reader import read_assets_on_grid, read_on_grid
from btfm_preprocessing.sources._types import S1_SPEC, S2_SPEC, AcquisitionDay, SensorSpec

__all__ = ["read_s1_day", "read_s2_day", "unsigned"]


def unsigned(href: str) -> str:
    """The default URL signer: hrefs are read as they are."""
    return href


def _read_bands(assets: Mapping[str, str], spec: SensorSpec, grid: Grid, pool: Executor,
                sign: Callable[[str], str]) -> np.ndarray:
    """(H, W, bands) of one granule's ``spec.bands`` in ``spec.granule_dtype``, bilinear, read on ``pool``."""
    reads = read_assets_on_grid([sign(assets[band]) for band in spec.bands], grid, Resampling.bilinear,
                                spec.granule_dtype, spec.granule_nodata, pool)
    return np.stack(reads, axis=-1)


def _s2_granules(day: AcquisitionDay, grid: Grid, pool: Executor, sign: Callable[[str], str]) -> Iterator[S2Granule]:
    for scene in day.scenes:
        scl = read_on_grid(sign(scene.assets["SCL"]), grid, Resampling.nearest, "uint8", 0)
        if not (scl != 0).any():
            continue  # the granule misses the grid: its bands are not read
        yield S2Granule(bands=_read_bands(scene.assets, S2_SPEC, grid, pool, sign), scl=scl,
                        boa_offset=has_boa_offset(scene.day, scene.processing_baseline, scene.boa_offset_removed))


def read_s2_day(day: AcquisitionDay, grid: Grid, pool: Executor,
                sign: Callable[[str], str] = unsigned) -> S2Day | None:
    """Mosaic one day's S2 granules onto ``grid``, valid pixels first (:func:`~btfm_preprocessing.mosaic.mosaic_s2`).

    ``sign`` turns an asset href into a readable URL (e.g. a Planetary Computer SAS signature),
    at read time so that signatures never go stale in a resumed run.

    Returns:
        The day's :class:`~btfm_preprocessing.mosaic.S2Day`, or None if no granule covers the grid.

    Raises:
        SourceError: an asset cannot be read.
    """
    return mosaic_s2(_s2_granules(day, grid, pool, sign), grid.shape)


def read_s1_day(day: AcquisitionDay, grid: Grid, pool: Executor,
                sign: Callable[[str], str] = unsigned) -> np.ndarray | None:
    """Mosaic one day's S1 scenes onto ``grid`` in the int16 dB encoding (:func:`~btfm_preprocessing.mosaic.mosaic_s1`).

    Returns:
        (H, W, 2) int16 (VV, VH; 0 = no data), or None if no scene covers the grid.

    Raises:
        SourceError: an asset cannot be read.
    """
    granules = (_read_bands(scene.assets, S1_SPEC, grid, pool, sign) for scene in day.scenes)
    return mosaic_s1(granules, grid.shape)
