"""Embed one tile folder into ``representation_retiled/<tile>.npy`` (H, W, 128) float32.

The tile is read through memory maps in row blocks, so memory is bounded by the block size,
not the tile's number of dates times its area.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from btfm_core.errors import BTFMError
from btfm_core.fileio import atomic_path, file_digest
from btfm_core.tiles import EMBEDDING_DIM, TileId, read_tile
from btfm_infer.embed import embed_pixels

log = logging.getLogger(__name__)

#: Upper bound of the bytes of tile arrays gathered at once.
BLOCK_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class InferenceOptions:
    """How to run the model on tiles."""

    seed: int = 0
    repeat: int = 1
    batch_size: int = 1024
    precision: str = "fp32"
    engine: str = "torch"  # CPU engine of the forward: torch or onnxruntime (btfm_infer.onnx_engine)

    def autocast(self, device: torch.device) -> torch.autocast:
        """bf16 autocast when asked for (about 2x faster on CPUs with AVX-512 bf16 and on GPUs)."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


#: What made the tiles of a representation folder (checkpoint and sampling settings), written by
#: ``infer_all_tiles`` before any tile and read by the export's provenance.
INFERENCE_RECORD = "inference.json"


def model_summary(checkpoint: str | os.PathLike[str], config: dict[str, Any]) -> dict[str, Any]:
    """Name, sha256, size and model dimensions of a checkpoint, as recorded in provenance."""
    path = Path(checkpoint)
    return {"name": path.name, "sha256": file_digest(path), "size_bytes": path.stat().st_size, "config": config}


def inference_record(checkpoint: Path, config: dict[str, Any], options: InferenceOptions) -> dict[str, Any]:
    """The record of an inference run: what decides the embeddings' values (not batch size or engine)."""
    return {"model": model_summary(checkpoint, config),
            "seed": options.seed, "repeat": options.repeat, "precision": options.precision}


def check_or_write_record(output_dir: Path, record: dict[str, Any]) -> None:
    """Write ``record`` into ``output_dir``, or check it against the one already there.

    Raises:
        BTFMError: the folder holds tiles made with another checkpoint or sampling settings, which
            a resumed run would silently mix with the new ones.
    """
    path = Path(output_dir) / INFERENCE_RECORD
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = None
        if previous == record:
            return
        if previous is not None or any(Path(output_dir).glob("*.npy")):
            raise BTFMError(f"{output_dir} holds embeddings made with another checkpoint or --seed/--repeat/"
                            f"--precision (see {path.name}); use another --output-dir, or delete the folder "
                            "to start again")
    elif any(Path(output_dir).glob("*.npy")):
        log.warning("%s has tiles but no %s (made by an older version?); recording this run's settings",
                    output_dir, INFERENCE_RECORD)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2))


def read_inference_record(output_dir: Path) -> dict[str, Any] | None:
    """The record of the run that made ``output_dir``'s tiles, or None."""
    try:
        data = json.loads((Path(output_dir) / INFERENCE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def rows_per_block(width: int, n_s2: int, n_s1: int) -> int:
    """Rows of a tile read at once so one block stays under :data:`BLOCK_BYTES`."""
    bytes_per_row = width * (n_s2 * 21 + n_s1 * 4 + EMBEDDING_DIM * 4) + 1
    return max(1, BLOCK_BYTES // bytes_per_row)


def representation_path(output_dir: Path, tile: TileId) -> Path:
    """Where the embedding of ``tile`` goes."""
    return Path(output_dir) / f"{tile.name}.npy"


def infer_tile(model: torch.nn.Module, tile_dir: Path, out_path: Path, options: InferenceOptions) -> int:
    """Embed every ROI pixel of a tile; write (H, W, 128) float32 atomically.

    Pixels outside the ROI, or with all-zero S2 values, are zero vectors. The random draw of
    observations depends only on ``options.seed``, the tile's position and the row block, so
    outputs are reproducible whatever the batch size, worker or order of tiles.

    Returns:
        Number of ROI pixels embedded.
    """
    tile = TileId.parse(tile_dir.name)
    arrays = read_tile(tile_dir, mmap=True)
    height, width = arrays.shape
    n_s1 = arrays.sar_ascending.shape[0] + arrays.sar_descending.shape[0]
    block = rows_per_block(width, arrays.bands.shape[0], n_s1)
    embedded = 0
    with atomic_path(out_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(height, width, EMBEDDING_DIM))
        for row0 in range(0, height, block):
            row1 = min(height, row0 + block)
            inside = arrays.roi[row0:row1] != 0
            if not inside.any():
                continue
            rows, cols = np.nonzero(inside)

            def pixels(series: np.ndarray, rows: np.ndarray = rows, cols: np.ndarray = cols,
                       row0: int = row0, row1: int = row1) -> np.ndarray:
                """(N, T, ...) series of the ROI pixels of this block."""
                return np.moveaxis(np.asarray(series[:, row0:row1])[:, rows, cols], 0, 1)

            with options.autocast(next(model.parameters()).device):
                vectors = embed_pixels(
                    model,
                    pixels(arrays.bands), pixels(arrays.masks), np.asarray(arrays.doys),
                    pixels(arrays.sar_ascending), np.asarray(arrays.sar_ascending_doy),
                    pixels(arrays.sar_descending), np.asarray(arrays.sar_descending_doy),
                    seed=options.seed, repeat=options.repeat, batch_size=options.batch_size,
                    seed_key=(tile.x0, tile.y0, row0),
                )
            out[row0 + rows, cols] = vectors
            embedded += len(rows)
        out.flush()
        del out
    return embedded
