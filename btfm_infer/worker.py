"""One inference worker process: embeds a list of tiles on one device.

Started by :mod:`btfm_infer.infer_all_tiles`; can also be run by hand for a single tile::

    python -m btfm_infer.worker --tiles-dir D --output-dir O --checkpoint C --tiles 0_0_500_500
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from btfm_core.cli import HelpFormatter, add_verbosity, entry_point
from btfm_core.logs import setup_logging
from btfm_core.tiles import TileId
from btfm_infer.checkpoint import V11_SOURCES, load_model
from btfm_infer.families import FAMILY_NAMES
from btfm_infer.hardware import PRECISIONS, resolve_precision
from btfm_infer.model import quantise_dynamic_int8
from btfm_infer.onnx_engine import ENGINES, with_engine
from btfm_infer.progress import ProgressFile
from btfm_infer.tile_inference import InferenceOptions, infer_tile, representation_path

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA out-of-memory error."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_tiles(model: torch.nn.Module, tiles_dir: Path, output_dir: Path, tiles: Sequence[TileId],
              options: InferenceOptions, progress: ProgressFile | None = None) -> tuple[int, int]:
    """Embed each tile not yet done; halve the batch on GPU out-of-memory.

    Args:
        progress: Counts the pixels embedded as they are (and writes them to its progress file).

    Returns:
        (tiles written, pixels embedded).
    """
    written = pixels = 0
    batch = options.batch_size
    progress = ProgressFile(None) if progress is None else progress
    for tile in tiles:
        out_path = representation_path(output_dir, tile)
        if out_path.exists():
            log.info("tile %s already done, skipped", tile.name)
            continue
        started = time.perf_counter()
        while True:
            try:
                count = infer_tile(model, tiles_dir / tile.name, out_path, replace(options, batch_size=batch),
                                   progress=progress.add)
                break
            except RuntimeError as exc:
                if not is_out_of_memory(exc) or batch <= 1:
                    raise
                progress.restart_tile()
                batch //= 2
                torch.cuda.empty_cache()
                log.warning("out of memory on tile %s; retrying with batch size %d", tile.name, batch)
        seconds = time.perf_counter() - started
        log.info("tile %s: %d px in %.1f s (%.0f px/s)", tile.name, count, seconds,
                 count / max(seconds, 1e-9))
        written += 1
        pixels += count
        progress.tile_finished(count)
    return written, pixels


def load_worker_model(checkpoint: str | Path, device: str, options: InferenceOptions,
                      threads: int | None = None) -> torch.nn.Module:
    """The model a worker runs: loaded on ``device``, int8-quantised for ``precision int8``, in its engine."""
    model = load_model(checkpoint, device, family=options.family, stats=options.stats)
    if options.precision == "int8":
        model = quantise_dynamic_int8(model)
    return with_engine(model, options.engine, threads)


def build_parser() -> argparse.ArgumentParser:
    """Command line of one worker."""
    parser = argparse.ArgumentParser(prog="python -m btfm_infer.worker", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--tiles-dir", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--tiles", nargs="+", required=True, help="tile names to embed")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 where native on --device, else fp32; int8: CPU only")
    parser.add_argument("--engine", choices=ENGINES, default="torch", help="forward engine on the CPU")
    parser.add_argument("--model-family", choices=["auto", *FAMILY_NAMES], default="auto")
    parser.add_argument("--stats", choices=V11_SOURCES, default=None, help="v1.1 statistics")
    parser.add_argument("--dim", type=int, default=None, help="embedding dimensions written (Matryoshka)")
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument("--progress-file", type=Path, default=None,
                        help="write {pixels_done, tiles_done, updated} JSON here about every second")
    add_verbosity(parser)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker; prints ``<tiles written> <pixels>`` on stdout."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file, args.verbosity)
    torch.set_num_threads(max(1, args.threads))
    engine = args.engine if torch.device(args.device).type == "cpu" else "torch"
    options = InferenceOptions(args.seed, args.repeat, args.batch_size,
                               resolve_precision(args.precision, args.device), engine, args.model_family,
                               args.stats, args.dim)
    model = load_worker_model(args.checkpoint, args.device, options, args.threads)
    tiles = [TileId.parse(name) for name in args.tiles]
    written, pixels = run_tiles(model, args.tiles_dir, args.output_dir, tiles, options,
                                ProgressFile(args.progress_file))
    print(written, pixels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
