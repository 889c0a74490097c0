"""Print a short summary of a BTFM run folder: tiles, observations, outputs and their sizes.

Usage: python scripts/summarise_run.py RUN_DIR
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from btfm_core.run import RunLayout
from btfm_core.tiles import list_tiles, read_tile


def summarise(run_dir: Path) -> list[str]:
    """Lines describing the run in ``run_dir``."""
    run = RunLayout(run_dir)
    tiles_dir = run.tiles_dir
    tiles = list_tiles(tiles_dir)
    valid: list[np.ndarray] = []
    s2_dates: set[int] = set()
    s1_dates = {"ascending": 0, "descending": 0}
    for tile in tiles:
        arrays = read_tile(tiles_dir / tile.name)
        valid.append(arrays.masks.sum(axis=0, dtype=np.int32)[arrays.roi != 0])
        s2_dates.update(int(d) for d in arrays.doys)
        s1_dates["ascending"] = max(s1_dates["ascending"], len(arrays.sar_ascending_doy))
        s1_dates["descending"] = max(s1_dates["descending"], len(arrays.sar_descending_doy))
    counts = np.concatenate(valid)
    lines = [
        f"run folder: {run_dir}",
        f"tiles: {len(tiles)}; ROI pixels: {counts.size}",
        f"S2 dates: {len(s2_dates)}; S1 dates: ascending {s1_dates['ascending']}, "
        f"descending {s1_dates['descending']}",
        f"valid S2 observations per pixel: mean {counts.mean():.1f}, min {counts.min()}, max {counts.max()}",
    ]
    stitched = run.stitched_npy
    if stitched.is_file():
        embedding = np.load(stitched, mmap_mode="r")
        norms = np.linalg.norm(embedding.reshape(-1, embedding.shape[-1]), axis=1)
        lines.append(f"embedding: {embedding.shape} {embedding.dtype}, non-zero pixels "
                     f"{int((norms > 0).sum())}, mean norm {norms[norms > 0].mean():.3f}")
    lines.append("outputs:")
    for path in (run.stitched(suffix) for suffix in (".npy", ".tif", ".png", ".stac.json")):
        if path.is_file():
            lines.append(f"  {path}  ({path.stat().st_size / 1e6:.2f} MB)")
    lines.append(f"  logs: {run.logs_dir}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary of one run folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    print("\n".join(summarise(args.run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
