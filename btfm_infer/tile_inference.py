"""Embed one tile folder into ``representation_retiled/<tile>.npy`` (H, W, 128) float32.

The tile is read through memory maps in row blocks, so memory is bounded by the block size,
not the tile's number of dates times its area.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from btfm_core.errors import BTFMError, InputDataError
from btfm_core.fileio import atomic_path, create_npy, file_digest
from btfm_core.run import INFERENCE_RECORD_FILE, InferenceRecord, RunRecordError
from btfm_core.tiles import EMBEDDING_DIM, TileArrays, TileId, read_tile
from btfm_infer.embed import embed_pixels

if TYPE_CHECKING:
    from btfm_infer.onnx_engine import EngineModel

__all__ = ["InferenceOptions", "check_or_write_record", "infer_tile", "inference_record",
           "model_record", "output_dim", "read_inference_record", "representation_path"]

log = logging.getLogger(__name__)

#: Upper bound of the bytes of tile arrays gathered at once.
BLOCK_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class InferenceOptions:
    """How to run the model on tiles.

    Attributes:
        seed: Seed of the random draw (families with the ``sampled-40`` input rule only).
        repeat: Draws averaged (``sampled-40`` only).
        batch_size: Pixels per forward pass (memory only).
        precision: ``fp32``, ``bf16`` autocast, or ``int8`` (a model quantised by
            :func:`btfm_infer.model.quantise_dynamic_int8`), as :func:`btfm_infer.hardware.resolve_precision` gives.
        engine: CPU engine of the forward: torch or onnxruntime (:mod:`btfm_infer.onnx_engine`).
        family: ``auto`` or the family the checkpoint must be (``--model-family``).
        stats: v1.1 statistics ``mpc``/``aws`` when the checkpoint does not record them.
        dim: Embedding dimensions written (Matryoshka families; None = all).
    """

    seed: int = 0
    repeat: int = 1
    batch_size: int = 1024
    precision: str = "fp32"
    engine: str = "torch"
    family: str = "auto"
    stats: str | None = None
    dim: int | None = None

    def autocast(self, device: torch.device) -> torch.autocast:
        """bf16 autocast for ``precision == "bf16"`` (fast where bf16 is native: GPUs, CPUs with AVX512-BF16/AMX)."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


def model_summary(checkpoint: str | os.PathLike[str], config: dict[str, Any]) -> dict[str, Any]:
    """Name, sha256, size and model dimensions of a checkpoint, as recorded in provenance."""
    path = Path(checkpoint)
    return {"name": path.name, "sha256": file_digest(path), "size_bytes": path.stat().st_size, "config": config}


def model_record(checkpoint: str | os.PathLike[str], model: EngineModel,
                 dim: int | None = None) -> dict[str, Any]:
    """:func:`model_summary` plus the family, statistics, input rule, int8 rule and dimensions written."""
    family = model.family
    return {**model_summary(checkpoint, model.config.to_dict()), "family": family.name, "family_title": family.title,
            "embedding_dim": dim or int(model.embedding_dim), "stats": model.require_stats().name,
            "input_rule": family.input_rule, "int8_rule": family.int8_rule}


def output_dim(model: EngineModel, options: InferenceOptions) -> int:
    """Embedding dimensions written per pixel: ``options.dim`` or the model's whole embedding."""
    return options.dim or int(model.embedding_dim)


def inference_record(checkpoint: Path, model: EngineModel, options: InferenceOptions) -> InferenceRecord:
    """The record of an inference run: what decides the embeddings' values (not batch size or engine).

    Besides the checkpoint it names the family, the statistics set, the input rule, the
    dimensions written and the family's int8 rule; ``seed`` and ``repeat`` are ``"not applicable"``
    for families without a random draw.
    """
    family = model.family
    not_applicable = "not applicable"
    return InferenceRecord(model_record(checkpoint, model, output_dim(model, options)),
                           options.seed if family.randomised else not_applicable,
                           options.repeat if family.randomised else not_applicable, options.precision)


def check_or_write_record(output_dir: Path, record: InferenceRecord) -> bool:
    """Write ``record`` into ``output_dir``, or check it against the one already there.

    Returns:
        Whether the record was written now (False: the same record was there already).

    Raises:
        BTFMError: the folder holds tiles made with another checkpoint or sampling settings, which
            a resumed run would silently mix with the new ones.
    """
    path = Path(output_dir) / INFERENCE_RECORD_FILE
    if path.is_file():
        try:
            previous: InferenceRecord | None = InferenceRecord.read(path)
        except RunRecordError:
            previous = None
        if previous is not None and previous.same_embeddings(record):
            return False
        if previous is not None or any(Path(output_dir).glob("*.npy")):
            change = record.differences(previous) if previous else "the record there is unreadable"
            raise BTFMError(f"{output_dir} holds embeddings made with another checkpoint or --seed/--repeat/"
                            f"--precision/--dim/--stats/family ({change}; see {path.name}); use another "
                            "--output-dir, or delete the folder to start again")
    elif any(Path(output_dir).glob("*.npy")):
        log.warning("%s has tiles but no %s (made by an older version?); recording this run's settings",
                    output_dir, path.name)
    record.write(path)
    return True


def read_inference_record(output_dir: Path) -> InferenceRecord | None:
    """The record of the run that made ``output_dir``'s tiles, or None (none there, or unreadable)."""
    try:
        return InferenceRecord.read(Path(output_dir) / INFERENCE_RECORD_FILE)
    except RunRecordError:
        return None


def rows_per_block(width: int, n_s2: int, n_s1: int, d_model: int = 0) -> int:
    """Rows of a tile read at once so one block stays under :data:`BLOCK_BYTES`.

    Counts the tile arrays (and their float32 copies), the embedding and, for bucketed
    families, the two backbone outputs of ``d_model`` floats each.
    """
    bytes_per_row = width * (n_s2 * 21 + n_s1 * 12 + EMBEDDING_DIM * 4 + d_model * 8) + 1
    return max(1, BLOCK_BYTES // bytes_per_row)


def representation_path(output_dir: Path, tile: TileId) -> Path:
    """Where the embedding of ``tile`` goes."""
    return Path(output_dir) / f"{tile.name}.npy"


#: One block of a tile: first row, ROI pixels' rows and columns in it, embed_pixels' seven series.
Block = tuple[int, np.ndarray, np.ndarray, tuple[np.ndarray, ...]]


def _roi_blocks(arrays: TileArrays, block: int) -> Iterator[Block]:
    """The tile's row blocks that hold ROI pixels, as the series of those pixels (read from the memmaps)."""
    height = arrays.shape[0]
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

        yield row0, rows, cols, (pixels(arrays.bands), pixels(arrays.masks), np.asarray(arrays.doys),
                                 pixels(arrays.sar_ascending), np.asarray(arrays.sar_ascending_doy),
                                 pixels(arrays.sar_descending), np.asarray(arrays.sar_descending_doy))


def _prefetched(blocks: Iterator[Block], enabled: bool) -> Iterator[Block]:
    """``blocks``, the next one read in a background thread while the caller works on this one.

    Holds at most two blocks (2 × :data:`BLOCK_BYTES`); off (``enabled`` False), blocks are read
    on demand.
    """
    if not enabled:
        yield from blocks
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tile-reader") as reader:
        pending = reader.submit(next, blocks, None)
        while (current := pending.result()) is not None:
            pending = reader.submit(next, blocks, None)
            yield current


def infer_tile(model: EngineModel, tile_dir: Path, out_path: Path, options: InferenceOptions, *,
               progress: Callable[[int], None] | None = None) -> int:
    """Embed every ROI pixel of a tile; write (H, W, D) float32 atomically (D = :func:`output_dim`).

    The embedding is checked for NaN/inf before it is renamed into place
    (:class:`~btfm_core.errors.InputDataError` naming the tile and the count otherwise).

    On a GPU the next row block is read while the model runs on this one.

    Pixels outside the ROI are zero vectors, and so are pixels the family cannot embed (v1.0
    families: all-zero S2 values; v1.1, v2: no S2 and no S1 observation). The random draw of
    observations (v1.0 families) depends only on ``options.seed``, the tile's position and the
    row block, so outputs are reproducible whatever the batch size, worker or order of tiles.

    Args:
        progress: Called with the number of ROI pixels just finished (passed to
            :func:`~btfm_infer.embed.embed_pixels`); the increments add up to the return value.

    Returns:
        Number of ROI pixels embedded.
    """
    tile = TileId.parse(tile_dir.name)
    arrays = read_tile(tile_dir, mmap=True)
    height, width = arrays.shape
    n_s1 = arrays.sar_ascending.shape[0] + arrays.sar_descending.shape[0]
    bucketed = model.family.bucketed
    block = rows_per_block(width, arrays.bands.shape[0], n_s1, model.config.d_model if bucketed else 0)
    device = next(model.parameters()).device
    dim = output_dim(model, options)
    embedded = non_finite = 0
    with atomic_path(out_path) as tmp:
        out = create_npy(tmp, np.float32, (height, width, dim))
        for row0, rows, cols, series in _prefetched(_roi_blocks(arrays, block), device.type == "cuda"):
            with options.autocast(device):
                vectors = embed_pixels(model, *series, seed=options.seed, repeat=options.repeat,
                                       batch_size=options.batch_size, seed_key=(tile.x0, tile.y0, row0),
                                       progress=progress)
            out[row0 + rows, cols] = vectors[:, :dim]
            non_finite += int(np.count_nonzero(~np.isfinite(vectors[:, :dim])))  # the rest of the tile is zeros
            embedded += len(rows)
        out.flush()
        del out
        if non_finite:  # raised inside atomic_path: the temporary is deleted, nothing is renamed into place
            raise InputDataError(f"tile {tile.name}: {non_finite} embedding value(s) of {embedded} px x {dim} are "
                                 f"NaN or infinite; nothing written to {out_path.name}. Check the checkpoint and the "
                                 "tile's inputs, or retry with --precision fp32")
    return embedded
