"""Evaluate BTFM embeddings on labelled maps or time-series tables: ``python -m btfm_eval --help``."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from btfm_core.cli import (
    HelpFormatter,
    add_checkpoint_option,
    add_overwrite_option,
    add_seed_option,
    add_standard_options,
    add_version,
    entry_point,
    prog_name,
)
from btfm_core.errors import BTFMError
from btfm_core.fileio import ensure_writable_dir, refuse_overwrite
from btfm_core.logs import setup_logging
from btfm_eval.dataset import CLASSIFICATION, REGRESSION, EvalData, blocks_per_group
from btfm_eval.errors import EvaluationError, LabelError
from btfm_eval.runner import DEFAULT_FRACTIONS, EvalConfig, evaluate
from btfm_eval.splits import SPLITS, drop_rare_classes

log = logging.getLogger("btfm_eval")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "btfm_demo.pt"

EPILOG = """examples:
  # WorldCereal crop types, only the samples held out of the demo model's pre-training
  python -m btfm_eval table --table my_data/worldcereal/*.parquet \\
      --class-mapping my_data/worldcereal/class_mappings.json --mapping-key CROPTYPE28 \\
      --holdout-of-pretraining 0.3 --out build/eval/worldcereal
  # regression on a Presto folder (fuel moisture), k-fold, by-site blocks and the bottom third
  python -m btfm_eval table --table my_data/presto/fuel_moisture \\
      --splits spatial,kfold,bottom-third --out build/eval/fuel_moisture
  # a land-cover map: embedding GeoTIFF + label raster, 10 px spatial blocks, tiles for baselines
  python -m btfm_eval map --embeddings run/stitched_representation.tif --labels lulc.tif \\
      --label-names lulc_classes.json --ignore-labels 0 --raw-features run/retiled_d_pixel --out build/eval/map
  # parcels from a GeoPackage, one mean embedding per polygon
  python -m btfm_eval map --embeddings emb.tif --labels parcels.gpkg --label-column crop --aggregate parcel \\
      --out build/eval/parcels
"""


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"training fractions must be in (0, 1], got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    """Command line: ``table``, ``map`` and ``prepare-eolearn`` subcommands sharing evaluation options."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("evaluation")
    group.add_argument("--out", type=Path, required=True, help="output folder (report.md, results.json, PNGs)")
    group.add_argument("--task", choices=[CLASSIFICATION, REGRESSION], default=None,
                       help="default: classification for class labels, regression for Presto tables")
    group.add_argument("--splits", type=_names, default=("spatial", "kfold"),
                       help=f"comma-separated, from {', '.join(SPLITS)}; the first drives the sweep and plots")
    group.add_argument("--folds", type=int, default=5, help="k of the k-fold splits")
    group.add_argument("--models", type=_names, default=(),
                       help="comma-separated; default all: logreg,rf,mlp (classification), ridge,rf (regression)")
    group.add_argument("--train-fractions", type=_floats, default=DEFAULT_FRACTIONS,
                       help="training fractions of the sweep, comma-separated ('' for none)")
    add_checkpoint_option(group, "BTFM checkpoint: embeds tables, and sets the untrained model's architecture",
                          DEFAULT_CHECKPOINT)
    group.add_argument("--no-untrained", action="store_true", help="skip the untrained-model baseline")
    group.add_argument("--max-samples", type=int, default=None,
                       help="evaluate a random subset of this many groups/pixels (seeded)")
    add_seed_option(group, "seed of folds, subsamples, models and the untrained init")
    group.add_argument("--title", default=None, help="report title")
    add_overwrite_option(group, "replace an existing report in --out")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    group.add_argument("--jobs", type=int, default=0,
                       help="model fits run side by side, one thread each (0: every usable core); same numbers")
    add_standard_options(common)

    parser = argparse.ArgumentParser(prog=prog_name("btfm_eval"), description=__doc__, formatter_class=HelpFormatter,
                                     epilog=EPILOG)
    add_version(parser)
    sub = parser.add_subparsers(dest="command", metavar="{table,map,prepare-eolearn}")
    table = sub.add_parser("table", parents=[common], formatter_class=HelpFormatter, epilog=EPILOG,
                           help="per-pixel / per-parcel time-series tables (WorldCereal parquets, Presto folders)")
    table.add_argument("--table", type=Path, nargs="+", required=True,
                       help="WorldCereal parquet tables (long or wide) or one Presto npy folder")
    table.add_argument("--class-mapping", type=Path, default=None, help="WorldCereal class_mappings.json")
    table.add_argument("--mapping-key", default="CROPTYPE28", help="legend of --class-mapping")
    table.add_argument("--holdout-of-pretraining", type=float, default=None, metavar="FRACTION",
                       help="keep only samples with btfm_train.data.group_split(groups, FRACTION) (the part held "
                            "out of the checkpoint's pre-training, salt 'btfm')")
    table.add_argument("--block-degrees", type=float, default=0.1,
                       help="spatial block side in degrees of lat/lon (tables without a site column)")
    emap = sub.add_parser("map", parents=[common], formatter_class=HelpFormatter, epilog=EPILOG,
                          help="an embedding map (GeoTIFF, or .npy + --roi) with raster or vector labels")
    emap.add_argument("--embeddings", type=Path, required=True, help="embedding GeoTIFF or stitched .npy")
    emap.add_argument("--roi", type=Path, default=None, help="ROI GeoTIFF (needed with a .npy)")
    emap.add_argument("--labels", type=Path, required=True,
                      help="label raster (GeoTIFF) or vector file (GeoPackage, GeoJSON, shapefile)")
    emap.add_argument("--label-column", default=None, help="class or value column of a vector file")
    emap.add_argument("--label-names", type=Path, default=None, help="JSON {value: class name} for raster ids")
    emap.add_argument("--ignore-labels", type=_names, default=(), help="label values or names to leave out")
    emap.add_argument("--all-touched", action="store_true", help="burn every pixel a polygon touches")
    emap.add_argument("--aggregate", choices=["pixel", "parcel"], default="pixel",
                      help="parcel: one sample per polygon, the mean of its pixels' features")
    emap.add_argument("--block-size", type=int, default=10, help="spatial block side in pixels")
    emap.add_argument("--raw-features", type=Path, default=None,
                      help="raw-feature raster on the map grid, or the run's tile folder (retiled_d_pixel: "
                           "raw bands + seasonal statistics, and the untrained-model embeddings)")
    emap.add_argument("--untrained-embeddings", type=Path, default=None,
                      help="embedding GeoTIFF of an untrained model on the same grid (alternative to tiles)")
    prep = sub.add_parser("prepare-eolearn", formatter_class=HelpFormatter,
                          help="write ROI, tiles and LULC labels from the eo-learn Slovenia bundle")
    prep.add_argument("bundle", type=Path, help="eolearn_slovenia_bundle.npz")
    prep.add_argument("--out", type=Path, required=True, help="run folder to create")
    prep.add_argument("--tile-size", type=int, default=50, help="tile side in pixels")
    add_standard_options(prep)
    return parser


def _subsample_groups(groups: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray | None:
    """Indices of a seeded random subset of ``max_samples`` groups (None: keep all)."""
    uniq = np.unique(groups)
    if max_samples is None or len(uniq) <= max_samples:
        return None
    keep = np.random.default_rng(seed).choice(uniq, max_samples, replace=False)
    return np.flatnonzero(np.isin(groups, keep))


def table_data(args: argparse.Namespace) -> EvalData:
    """Load tables, restrict and subsample them, and compute the feature sets."""
    from btfm_eval.features import embedding_features, raw_band_statistics
    from btfm_eval.tables import is_presto_folder, load_class_mapping, load_presto, load_worldcereal
    from btfm_train.data import group_split

    notes: list[str] = []
    if len(args.table) == 1 and is_presto_folder(args.table[0]):
        samples = load_presto(args.table[0])
        task = args.task or REGRESSION
        if task != REGRESSION:
            raise EvaluationError("Presto folders hold regression targets: use --task regression")
        keep = np.isfinite(samples.target)
    else:
        if any(p.is_dir() for p in args.table):
            raise EvaluationError("--table takes WorldCereal parquet files, or exactly one Presto folder")
        if args.class_mapping is None:
            raise LabelError("WorldCereal tables need --class-mapping class_mappings.json (and --mapping-key)")
        samples = load_worldcereal(args.table, load_class_mapping(args.class_mapping, args.mapping_key))
        task = args.task or CLASSIFICATION
        if task != CLASSIFICATION:
            raise EvaluationError("WorldCereal tables hold crop classes: use --task classification")
        labels = samples.series.labels
        keep = (labels != "") & (labels != "ignore")
        notes.append(f"{int(keep.sum())} of {len(labels)} samples have a {args.mapping_key} class "
                     "other than 'ignore'")
    notes.insert(0, f"source: {samples.source}")
    if args.holdout_of_pretraining is not None:
        held = group_split(samples.series.groups, args.holdout_of_pretraining)
        notes.append(f"restricted to the {int((keep & held).sum())} samples held out of pre-training "
                     f"(group_split(sample ids, {args.holdout_of_pretraining}), salt 'btfm'); the other "
                     f"{int((keep & ~held).sum())} were seen (unlabelled) by the checkpoint and are not used")
        keep &= held
    samples = samples.subset(np.flatnonzero(keep))
    if len(samples.series) == 0:
        raise LabelError("no labelled sample is left to evaluate; check --table, --class-mapping and "
                         "--holdout-of-pretraining")
    pick = _subsample_groups(samples.series.groups, args.max_samples, args.seed)
    if pick is not None:
        notes.append(f"subsampled {len(pick)} of {len(samples.series)} samples (--max-samples, seed {args.seed})")
        samples = samples.subset(pick)
    series = samples.series
    feats = embedding_features(series, args.checkpoint, seed=args.seed, untrained=not args.no_untrained)
    feats["raw"] = raw_band_statistics(series)
    if samples.blocks is not None:
        blocks = samples.blocks.astype(object)
        notes.append("spatial blocks = sites (site.npy)")
    else:
        d = args.block_degrees
        known = np.isfinite(samples.lat) & np.isfinite(samples.lon)
        cells = np.char.add(np.char.add(np.floor(np.nan_to_num(samples.lat) / d).astype(int).astype(str), "_"),
                            np.floor(np.nan_to_num(samples.lon) / d).astype(int).astype(str))
        blocks = np.where(known, cells, series.groups.astype(str)).astype(object)
        notes.append(f"spatial blocks = {d:g}° lat/lon cells")
    target = series.labels.astype(str).astype(object) if task == CLASSIFICATION else samples.target
    groups = series.groups.astype(str).astype(object)
    return EvalData(features=feats, target=target, groups=groups, blocks=blocks_per_group(groups, blocks),
                    rows=-np.nan_to_num(samples.lat), task=task, notes=notes)


def map_data(args: argparse.Namespace) -> EvalData:
    """Read the map and labels, subsample, add baselines from tiles/rasters, aggregate parcels."""
    from btfm_eval.maps import (
        aggregate_parcels,
        label_names,
        map_eval_data,
        map_labels,
        read_embedding_map,
        read_feature_raster,
        tile_series,
    )

    task = args.task or CLASSIFICATION
    if args.block_size < 1:
        raise EvaluationError(f"--block-size must be >= 1 pixel, got {args.block_size}")
    emap = read_embedding_map(args.embeddings, args.roi)
    labels = map_labels(args.labels, emap.grid, task, args.label_column, args.all_touched)
    extra: dict[str, np.ndarray] = {}
    notes = [f"map: {args.embeddings.name} ({emap.grid.width} x {emap.grid.height} px), labels: {args.labels.name}"]
    tiles_dir = None
    if args.untrained_embeddings is not None:
        extra["untrained"] = read_embedding_map(args.untrained_embeddings).data
    if args.raw_features is not None:
        if args.raw_features.is_dir():
            tiles_dir = args.raw_features
        else:
            extra["raw"] = read_feature_raster(args.raw_features, emap.grid)
    else:
        notes.append("no raw-band baseline: pass --raw-features (the run's tile folder or a feature raster)")
    data, rows, cols = map_eval_data(emap, labels, task, names=label_names(args.label_names),
                                     ignore=tuple(args.ignore_labels), block_size=args.block_size, extra=extra)
    data = replace(data, notes=notes)
    pick = _subsample_groups(data.groups, args.max_samples, args.seed)
    if pick is not None:
        data = data.subset(pick).with_note(f"subsampled {len(pick)} labelled pixels/parcels "
                                           f"(--max-samples {args.max_samples}, seed {args.seed})")
        rows, cols = rows[pick], cols[pick]
    if tiles_dir is not None:
        from btfm_eval.features import raw_band_statistics

        series = tile_series(tiles_dir, emap.grid, rows, cols)
        feats = dict(data.features, raw=raw_band_statistics(series))
        if not args.no_untrained and "untrained" not in feats:
            from btfm_eval.features import untrained_like
            from btfm_infer.checkpoint import load_model
            from btfm_train.probe import embed_series

            feats["untrained"] = embed_series(untrained_like(load_model(args.checkpoint), args.seed), series,
                                              seed=args.seed)
            data = data.with_note(f"untrained model: architecture of {args.checkpoint.name}, seed {args.seed}, "
                                  f"embedded from the tiles in {tiles_dir.name}")
        data = replace(data, features=feats)
    elif "untrained" not in data.features:
        data = data.with_note("no untrained-model baseline: it needs the time series (--raw-features TILES_DIR) "
                              "or --untrained-embeddings")
    if args.aggregate == "parcel":
        if not (np.char.startswith(data.groups.astype(str), "parcel")).any():
            raise LabelError("--aggregate parcel needs vector labels (polygons); a label raster has no parcels")
        data = aggregate_parcels(data)
    data = data.with_note(f"spatial blocks = {args.block_size} x {args.block_size} px")
    return data


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run one evaluation and print its summary line. Exit 0 on success, 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 1
    if args.command == "prepare-eolearn":
        from btfm_eval.eolearn import prepare_run

        setup_logging(None, args.verbosity)
        paths = prepare_run(args.bundle, args.out, args.tile_size)
        for path in paths.values():
            print(path)
        return 0
    out = ensure_writable_dir(args.out, "output folder (--out)")
    refuse_overwrite(out / "report.md", args.overwrite, "--out")
    setup_logging(out / "eval.log", args.verbosity)
    unknown = [s for s in args.splits if s not in SPLITS]
    if unknown or not args.splits:
        raise BTFMError(f"--splits {','.join(args.splits)}: choose from {', '.join(SPLITS)}")
    if args.max_samples is not None and args.max_samples < 2:
        raise BTFMError(f"--max-samples must be at least 2, got {args.max_samples}")
    if args.jobs < 0:
        raise BTFMError(f"--jobs must be 0 (every usable core) or a positive number of fits, got {args.jobs}")
    data = table_data(args) if args.command == "table" else map_data(args)
    unit = "groups" if "kfold" in args.splits else "blocks"
    if any(s != "bottom-third" for s in args.splits):
        data = drop_rare_classes(data, args.folds, unit)
    config = EvalConfig(splits=tuple(args.splits), folds=args.folds, models=tuple(args.models),
                        fractions=tuple(args.train_fractions), seed=args.seed, n_jobs=args.jobs,
                        progress=not args.no_progress)
    result = evaluate(data, config)
    from btfm_eval.report import summary_line, write_outputs

    command = "python -m btfm_eval " + " ".join(shlex.quote(str(a)) for a in (argv if argv is not None
                                                                              else sys.argv[1:]))
    title = args.title or f"BTFM evaluation: {result['task']} ({args.command})"
    report = write_outputs(result, out, title, command)
    print(summary_line(result, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
