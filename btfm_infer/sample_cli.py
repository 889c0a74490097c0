"""``btfm-sample``: the embedding vectors at points, as a Parquet or CSV table.

Reads only the pixels asked for (see :func:`btfm_infer.outputs.sample_points`); the table has
the points' attributes, their map coordinates, row and column, and one column per band.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from btfm_core.cli import HelpFormatter, add_overwrite_option, add_standard_options, entry_point, prog_name
from btfm_core.errors import BTFMError
from btfm_core.fileio import atomic_path, ensure_writable_dir, refuse_overwrite
from btfm_core.logs import setup_logging

__all__ = ["main"]

log = logging.getLogger(__name__)

#: Table formats by the suffix of ``--out``.
TABLE_SUFFIXES = (".parquet", ".csv")


def parse_lonlat(text: str) -> tuple[float, float]:
    """``"LON,LAT"`` in degrees → (lon, lat)."""
    parts = text.replace(" ", "").split(",")
    try:
        lon, lat = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LON,LAT in degrees (e.g. 4.35,50.85), got {text!r}") from None
    return lon, lat


def build_parser() -> argparse.ArgumentParser:
    """Command line of ``btfm-sample``."""
    parser = argparse.ArgumentParser(
        prog=prog_name("btfm_infer.sample_cli"),
        description="Sample an embedding map (GeoTIFF, int8 GeoTIFF + scales, Zarr store or stitched .npy) at "
                    "points and write one row per point: the points' attributes, x and y in the map's CRS, row, "
                    "col and the bands A00... (NaN off the map or on nodata).",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  btfm-sample --embeddings my_data/stitched_representation.tif --points fields.gpkg \\\n"
               "      --out fields_embeddings.parquet\n"
               "  btfm-sample --embeddings my_data/emb.zarr --lonlat 4.35,50.85 --lonlat 4.36,50.84 --out pts.csv\n",
    )
    parser.add_argument("--embeddings", type=Path, required=True,
                        help="the embedding map: GeoTIFF, Zarr store, or stitched .npy with its .json beside it")
    points = parser.add_mutually_exclusive_group(required=True)
    points.add_argument("--points", type=Path, default=None,
                        help="points file: GeoJSON, GeoPackage, shapefile (any CRS) or CSV with lon, lat columns")
    points.add_argument("--lonlat", type=parse_lonlat, action="append", default=None, metavar="LON,LAT",
                        help="a point in degrees (repeat for more)")
    parser.add_argument("--layer", default=None, help="layer of a multi-layer --points file (default: the first)")
    parser.add_argument("--out", type=Path, required=True, help="table to write: .parquet or .csv")
    parser.add_argument("--codes", action="store_true",
                        help="int8 maps: write the int8 codes and a scale column instead of code x scale")
    add_overwrite_option(parser, "replace an existing --out")
    add_standard_options(parser)
    return parser


def write_table(frame: pd.DataFrame, out: Path) -> Path:
    """Write ``frame`` as Parquet or CSV (by the suffix of ``out``), atomically.

    Raises:
        BTFMError: an unknown suffix.
    """
    suffix = out.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise BTFMError(f"--out {out} must end in .parquet or .csv")
    with atomic_path(out) as tmp:
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
    return out


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Sample the map and print the table's path. Exit 0 on success, 2 on bad input."""
    from btfm_infer.outputs import sample_points

    args = build_parser().parse_args(argv)
    setup_logging(None, args.verbosity)
    out = args.out.expanduser()
    if out.suffix.lower() not in TABLE_SUFFIXES:
        raise BTFMError(f"--out {out} must end in .parquet or .csv")
    refuse_overwrite(out, args.overwrite, "--out")
    ensure_writable_dir(out.parent, "output folder of --out")
    points = args.points.expanduser() if args.points is not None else args.lonlat
    frame = sample_points(args.embeddings.expanduser(), points, dequantise=not args.codes, layer=args.layer)
    write_table(frame, out)
    log.info("wrote %d row(s) to %s", len(frame), out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
