"""Turn the eo-learn Slovenia example bundle into a BTFM run folder: ROI, tiles and a label raster.

The bundle (``eolearn_slovenia_bundle.npz``, repackaged from sentinel-hub/eo-learn
``example_data``) holds 5 dates x 13 bands of S2 **L1C** (top-of-atmosphere, not the L2A the
model expects) reflectance x 1e4, cloud masks on a 68-date axis, and a land-cover map (LULC), on a
101 x 100 px grid in EPSG:32633. The ten contract bands are written as a tile folder (no S1), so
the standard ``infer_all_tiles`` / ``stitch`` / ``convert_npy2tiff`` chain embeds it.

Its bounding box gives pixels of 9.995 x 9.997 m; the grid is written as exactly 10 m from the
upper-left corner (the ROI contract), a shift of at most 5 m at the far edge.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from affine import Affine

from btfm_core.grid import Grid
from btfm_core.run import RunLayout
from btfm_core.tiles import DOYS_FILE, MASKS_FILE, S2_BANDS, TileWriter, tile_layout, write_roi_tiff
from btfm_eval.errors import EvaluationError

log = logging.getLogger(__name__)

PIXEL_M = 10.0
NO_DATA_CLASS = 0


def bundle_grid(bundle: dict[str, np.ndarray]) -> Grid:
    """The bundle's 10 m grid (upper-left corner of its bounding box)."""
    height, width = bundle["lulc"].shape
    xmin, _, _, ymax = (float(v) for v in bundle["bbox_xmin_ymin_xmax_ymax"])
    crs = f"EPSG:{int(bundle['crs_epsg'])}"
    from rasterio.crs import CRS

    return Grid(CRS.from_user_input(crs).to_wkt(), Affine(PIXEL_M, 0, xmin, 0, -PIXEL_M, ymax), height, width)


def load_bundle(path: Path) -> dict[str, np.ndarray]:
    """The bundle's arrays.

    Raises:
        EvaluationError: missing file or arrays.
    """
    if not path.is_file():
        raise EvaluationError(f"eo-learn bundle {path} does not exist")
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    needed = {"s2_l1c_5dates_x10000", "s2_l1c_5dates_timestamps", "bands", "lulc", "lulc_classes", "crs_epsg",
              "bbox_xmin_ymin_xmax_ymax"}
    if not needed <= set(data):
        raise EvaluationError(f"{path} lacks {sorted(needed - set(data))}; not an eo-learn bundle")
    return data


def bundle_series(bundle: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, H, W, 10) uint16 contract bands, (T, H, W) uint8 validity, (T,) uint16 day of year, by date.

    Validity is ``is_valid`` and not cloudy (``clm``) on the matching date of the 68-date masks
    when the bundle has them, else all valid.
    """
    names = [str(b) for b in bundle["bands"]]
    stamps = pd.to_datetime(bundle["s2_l1c_5dates_timestamps"].astype(str))
    order = np.argsort(stamps.to_numpy())
    cube = bundle["s2_l1c_5dates_x10000"][order][..., [names.index(b) for b in S2_BANDS]]
    masks = np.ones(cube.shape[:3], np.uint8)
    if "timestamps_68" in bundle and "clm_68dates" in bundle and "is_valid_68dates" in bundle:
        all_stamps = list(bundle["timestamps_68"].astype(str))
        for i, stamp in enumerate(bundle["s2_l1c_5dates_timestamps"][order].astype(str)):
            if stamp in all_stamps:
                j = all_stamps.index(stamp)
                masks[i] = (bundle["is_valid_68dates"][j] != 0) & (bundle["clm_68dates"][j] == 0)
    doys = stamps[order].day_of_year.to_numpy().astype(np.uint16)
    return cube.astype(np.uint16), masks, doys


def prepare_run(bundle_path: Path, out: Path, tile_size: int = 50) -> dict[str, Path]:
    """Write ``roi.tiff``, ``retiled_d_pixel/<tiles>``, ``labels_lulc.tif`` and ``lulc_classes.json``.

    Returns:
        The paths written, by name (``roi``, ``tiles``, ``labels``, ``label_names``).
    """
    bundle = load_bundle(bundle_path)
    grid = bundle_grid(bundle)
    cube, masks, doys = bundle_series(bundle)
    out.mkdir(parents=True, exist_ok=True)
    roi = np.ones(grid.shape, np.uint8)
    write_roi_tiff(RunLayout(out).roi, roi, grid)
    tiles_dir = RunLayout(out).tiles_dir
    tiles_dir.mkdir(exist_ok=True)
    meta = {"source": f"eo-learn example bundle {bundle_path.name}", "s2_collection": "S2 L1C (TOA), not L2A",
            "s1": "none"}
    for tile in tile_layout(grid.height, grid.width, tile_size):
        if (tiles_dir / tile.name).exists():
            continue
        window = np.s_[:, tile.y0:tile.y1, tile.x0:tile.x1]
        with TileWriter(tiles_dir, tile, tile.grid(grid), roi[tile.y0:tile.y1, tile.x0:tile.x1], meta) as writer:
            bands = writer.allocate_bands(len(doys))
            bands[:] = cube[window]
            writer.write_array(MASKS_FILE, masks[window])
            writer.write_array(DOYS_FILE, doys)
    labels = out / "labels_lulc.tif"
    import rasterio

    with rasterio.open(labels, "w", driver="GTiff", dtype="uint16", count=1, height=grid.height, width=grid.width,
                       crs=grid.rasterio_crs, transform=grid.transform, nodata=None, compress="deflate") as dst:
        dst.write(bundle["lulc"].astype(np.uint16), 1)
    names = out / "lulc_classes.json"
    names.write_text(json.dumps({str(i): str(c) for i, c in enumerate(bundle["lulc_classes"])}, indent=1))
    log.info("wrote %s: %d tiles of %s, %d dates (S2 L1C, no S1)", out, len(list(tiles_dir.iterdir())),
             grid.shape, len(doys))
    return {"roi": out / "roi.tiff", "tiles": tiles_dir, "labels": labels, "label_names": names}
