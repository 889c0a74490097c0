"""Shared contracts of the BTFM pipeline: grid, ROI, tile folder format, errors and logging.

Both halves of the pipeline (``btfm_preprocessing`` writes tiles, ``btfm_infer`` reads them)
import the tile contract from :mod:`btfm_core.tiles`; nothing else defines array names,
dtypes or the tile naming scheme.
"""

from btfm_core.errors import BTFMError
from btfm_core.grid import Grid

__all__ = ["BTFMError", "Grid"]
