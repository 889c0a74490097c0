"""Train a BTFM model with Barlow Twins and report a linear probe: ``python -m btfm_train --help``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from btfm_core.cli import (
    HelpFormatter,
    add_log_file_option,
    add_seed_option,
    add_standard_options,
    entry_point,
    prog_name,
)
from btfm_core.errors import BTFMError
from btfm_core.logs import setup_logging
from btfm_core.pixel_series import PixelSeries, concat
from btfm_infer.checkpoint import save_checkpoint
from btfm_infer.model import BTFM, DEMO, OFFICIAL, ModelConfig
from btfm_train.barlow import TrainConfig, config_dict, train
from btfm_train.data import group_split, load_tiles, load_worldcereal_long, load_worldcereal_wide
from btfm_train.probe import embed_series, linear_probe, probe_split, raw_band_series

log = logging.getLogger("btfm_train")
CONFIGS = {"demo": DEMO, "official": OFFICIAL}


def load_table(path: Path, mapping: dict[str, str] | None) -> PixelSeries:
    """A WorldCereal table in either layout."""
    import pyarrow.parquet as pq

    columns = pq.read_schema(path).names
    loader = load_worldcereal_long if "timestamp" in columns else load_worldcereal_wide
    return loader(path, mapping)


def build_parser() -> argparse.ArgumentParser:
    """Command line of the trainer."""
    parser = argparse.ArgumentParser(prog=prog_name("btfm_train"), description=__doc__, formatter_class=HelpFormatter,
                                     epilog="example:\n  python -m btfm_train --table a.parquet --tiles-dir run/"
                                            "retiled_d_pixel --steps 1500 --out checkpoints/btfm_demo.pt\n")
    parser.add_argument("--table", type=Path, nargs="*", default=[], help="WorldCereal parquet tables")
    parser.add_argument("--tiles-dir", type=Path, nargs="*", default=[], help="tile folders (unlabelled)")
    parser.add_argument("--max-tile-pixels", type=int, default=5000, help="pixels drawn from the tiles")
    parser.add_argument("--class-mapping", type=Path, default=None, help="WorldCereal class_mappings.json")
    parser.add_argument("--mapping-key", default="CROPTYPE28", help="which mapping of the JSON to use")
    parser.add_argument("--eval-fraction", type=float, default=0.3,
                        help="share of labelled samples held out of pre-training and used to test the probe")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="demo", help="model size")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--projector-dim", type=int, default=TrainConfig.projector_dim)
    add_seed_option(parser, "seed of the data split, initialisation and batches")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--validate-every", type=int, default=500, help="steps between linear probes")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    add_log_file_option(parser, "<out>.log")
    add_standard_options(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Refuse flags and inputs the training cannot use, before any work.

    Raises:
        BTFMError: naming the flag or file to fix.
    """
    if not args.table and not args.tiles_dir:
        raise BTFMError("give training data: --table FILE.parquet and/or --tiles-dir DIR")
    for path in [*args.table, *args.tiles_dir, *([args.class_mapping] if args.class_mapping else [])]:
        if not path.exists():
            raise BTFMError(f"{path} does not exist; check --table, --tiles-dir and --class-mapping")
    if not 0 < args.eval_fraction < 1:
        raise BTFMError(f"--eval-fraction must lie strictly between 0 and 1, got {args.eval_fraction}")
    for flag in ("steps", "batch_size", "max_tile_pixels", "validate_every"):
        if getattr(args, flag) < 1:
            raise BTFMError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")


def read_class_mapping(path: Path, key: str) -> dict[str, str]:
    """The ``key`` legend of a WorldCereal ``class_mappings.json``.

    Raises:
        BTFMError: the file is not JSON, or has no such legend (the message lists the ones it has).
    """
    try:
        legends = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BTFMError(f"--class-mapping {path} is not a readable JSON file ({exc})") from exc
    if not isinstance(legends, dict) or key not in legends:
        known = ", ".join(sorted(legends)) if isinstance(legends, dict) else "none"
        raise BTFMError(f"--mapping-key {key} is not a legend of {path}; it has: {known}")
    return dict(legends[key])


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Pre-train, probe against baselines, and save a checkpoint with its model card."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file or args.out.with_suffix(".log"), args.verbosity)
    if args.threads:
        torch.set_num_threads(args.threads)
    check_args(args)
    mapping = None
    if args.class_mapping:
        mapping = read_class_mapping(args.class_mapping, args.mapping_key)
    parts = [load_table(path, mapping) for path in args.table]
    parts += [load_tiles(d, args.max_tile_pixels, args.seed) for d in args.tiles_dir]
    data = concat(parts)
    eval_mask = group_split(data.groups, args.eval_fraction) & (data.labels != "")
    pretrain = data.subset(~eval_mask)
    probe_train, probe_test = probe_split(data, eval_mask)
    log.info("data: %d pixels, %d for pre-training, probe %d train / %d held-out test in %d classes",
             len(data), len(pretrain), len(probe_train), len(probe_test), len(np.unique(probe_train.labels)))

    def probe(model: BTFM, step: int) -> dict[str, float]:
        if len(probe_test) == 0:
            return {}
        result = linear_probe(embed_series(model, probe_train), probe_train.labels,
                              embed_series(model, probe_test), probe_test.labels)
        return {"probe_accuracy": result.accuracy, "probe_macro_f1": result.macro_f1}

    config: ModelConfig = CONFIGS[args.config]
    torch.manual_seed(args.seed)
    model = BTFM(config)
    untrained = probe(model.eval(), 0)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, projector_dim=args.projector_dim,
                      seed=args.seed)
    started = time.perf_counter()
    history = train(model, pretrain, cfg, device=args.device, state_path=args.out.with_suffix(".train_state.pt"),
                    validate=probe, validate_every=args.validate_every)
    seconds = time.perf_counter() - started
    model.cpu()
    trained = probe(model, cfg.steps)
    raw = linear_probe(raw_band_series(probe_train), probe_train.labels, raw_band_series(probe_test),
                       probe_test.labels) if len(probe_test) else None
    report = {
        "data": {"tables": [p.name for p in args.table], "tiles_dirs": [d.name for d in args.tiles_dir],
                 "pretrain_pixels": len(pretrain), "probe_train": len(probe_train), "probe_test": len(probe_test),
                 "classes": sorted(np.unique(probe_train.labels).tolist()), "eval_fraction": args.eval_fraction,
                 "mapping": args.mapping_key if mapping else None},
        "model": config.to_dict(), "training": {**config_dict(cfg), "device": args.device,
                                                "seconds": round(seconds, 1), "final_loss": history[-1]["loss"]},
        "probe": {"trained": trained, "untrained_same_architecture": untrained,
                  "raw_bands_logistic_regression": {"probe_accuracy": raw.accuracy, "probe_macro_f1": raw.macro_f1}
                  if raw else {}},
    }
    card = (f"BTFM demo model trained by us with Barlow Twins: {config.to_dict()}, {cfg.steps} steps of batch "
            f"{cfg.batch_size} on {len(pretrain)} real S1+S2 pixel series ({seconds / 60:.1f} min, {args.device}). "
            f"Linear probe on {len(probe_test)} held-out labelled samples: {json.dumps(report['probe'])}. "
            "Not the official TESSERA weights; a small model for demos and tests.")
    save_checkpoint(model, args.out, config=config, model_card=card, extra={"training_report": json.dumps(report)})
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["probe"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
