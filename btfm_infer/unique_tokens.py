"""Run a backbone on each pixel's distinct time steps only: the same result with fewer FLOPs.

A pixel's model input often repeats time steps: the v1.0 rule draws 40 steps *with*
replacement when fewer than 40 are valid, and the bucketed rules (v1.1, v2) pad a pixel's
valid steps to its bucket length by repeating some. Identical tokens stay identical through
every transformer layer (each token's output depends only on itself and the set of keys), and
attention over ``k`` copies of a key equals attention over one copy with ``log k`` added to its
logit. So each backbone runs its transformer on the distinct steps with that bias (and
``-inf`` for the padding that batches pixels of different distinct counts), then expands the
outputs back to the full sequence before an order-sensitive GRU pooling, or folds the
multiplicities into the softmax of the v2 attention pooling
(:meth:`btfm_infer.model.TransformerEncoder.forward_distinct`).

Inputs are given as the step indices each pixel feeds the backbone (``steps``, (N, L)) into
its standardised series (``values``, (N, T, C)), so nothing is materialised at full length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from btfm_infer.model import TransformerEncoder

__all__ = ["DistinctSteps", "encode_distinct", "useful_tokens"]


class DistinctSteps:
    """The distinct steps of each row of an (N, L) step-index array.

    Attributes:
        index: (N, U) int64 distinct step indices, ascending, padded with each row's first
            distinct step (U = the largest distinct count).
        multiplicity: (N, U) int32 how often each distinct step occurs in the row; 0 = padding.
        expand: (N, L) int64 position in ``index`` of each of the row's original steps, so
            ``index[i, expand[i]] == steps[i]``.
        counts: (N,) int64 distinct steps per row.
    """

    def __init__(self, steps: np.ndarray) -> None:
        steps = np.asarray(steps, dtype=np.int64)
        if steps.ndim != 2 or steps.shape[1] == 0:
            raise ValueError(f"steps must be (N, L) with L >= 1, got shape {steps.shape}")
        n, length = steps.shape
        order = np.argsort(steps, axis=1, kind="stable")
        ordered = np.take_along_axis(steps, order, axis=1)
        first = np.ones((n, length), dtype=bool)
        first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        rank = np.cumsum(first, axis=1) - 1
        self.counts = first.sum(axis=1).astype(np.int64)
        width = int(self.counts.max()) if n else 0
        rows = np.repeat(np.arange(n), length).reshape(n, length)
        self.index = np.repeat(ordered[:, :1], width, axis=1) if n else np.zeros((0, 0), np.int64)
        self.index[rows[first], rank[first]] = ordered[first]
        self.multiplicity = np.bincount((rows * width + rank).ravel(), minlength=n * width).astype(
            np.int32).reshape(n, width)
        self.expand = np.empty_like(steps)
        np.put_along_axis(self.expand, order, rank, axis=1)


def useful_tokens(steps: np.ndarray) -> int:
    """Tokens a transformer must see for these (N, L) step indices: the sum of distinct counts."""
    return int(DistinctSteps(steps).counts.sum()) if len(steps) else 0


def encode_distinct(backbone: TransformerEncoder, values: np.ndarray, doys: np.ndarray, steps: np.ndarray, *,
                    tokens_per_batch: int, device: torch.device, dtype: torch.dtype) -> np.ndarray:
    """Pooled backbone outputs of every pixel, its transformer run on distinct steps only.

    Pixels are sorted by distinct count and batched so a batch holds about
    ``tokens_per_batch`` tokens, padded only to the largest count in that batch. A batch in
    which no step repeats runs the backbone's plain forward (PyTorch's fused fast path).

    Args:
        backbone: A :class:`~btfm_infer.model.TransformerEncoder` in eval mode.
        values: (N, T, C) float32 standardised values.
        doys: (N, T) day of year (a broadcast view is fine).
        steps: (N, L) int64 indices into T of the steps the pixel feeds the backbone, in the
            order the pooling sees them.
        tokens_per_batch: Transformer tokens (pixels × distinct steps) per forward.
        device: The backbone's device.
        dtype: The backbone's parameter dtype.

    Returns:
        (N, d_model) float32, equal (to float rounding) to ``backbone`` on the full sequences.
    """
    n, c = values.shape[0], values.shape[2]
    if n == 0:
        return np.empty((0, backbone.d_model), dtype=np.float32)
    distinct = DistinctSteps(steps)
    length = steps.shape[1]
    order = np.argsort(-distinct.counts, kind="stable")
    on_gpu = device.type == "cuda"
    pooled: list[torch.Tensor] = []
    start = 0
    while start < n:
        width = int(distinct.counts[order[start]])
        chunk = order[start:start + max(1, tokens_per_batch // width)]
        repeats = width < length or bool((distinct.multiplicity[chunk, :width] != 1).any())
        index = distinct.index[chunk, :width] if repeats else steps[chunk]
        x = np.empty((chunk.size, width, c + 1), dtype=np.float32)
        x[..., :c] = values[chunk[:, None], index]
        x[..., c] = doys[chunk[:, None], index]
        arrays = (x, distinct.multiplicity[chunk, :width], distinct.expand[chunk]) if repeats else (x,)
        inputs = [torch.from_numpy(a) for a in arrays]
        if on_gpu:  # pinned, asynchronous copies: numpy builds the next batch while the GPU runs this one
            inputs = [t.pin_memory().to(device, non_blocking=True) for t in inputs]
        if repeats:
            y = backbone.forward_distinct(inputs[0].to(device, dtype), inputs[1].to(device), inputs[2].to(device))
        else:  # nothing repeats in this batch: the plain forward (PyTorch's fused fast path)
            y = backbone.forward_unrepeated(inputs[0].to(device, dtype))
        pooled.append(y if on_gpu else y.float().cpu())
        start += chunk.size
    out = np.empty((n, backbone.d_model), dtype=np.float32)
    out[order] = torch.cat(pooled).float().cpu().numpy()  # one synchronisation per call on a GPU
    return out
