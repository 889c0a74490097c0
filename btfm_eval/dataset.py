"""The evaluation's input: feature sets, one target and the spatial bookkeeping of each sample."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from btfm_eval.errors import EvaluationError

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)


@dataclass(frozen=True)
class EvalData:
    """N labelled samples (pixels, parcels or table rows) and their feature sets.

    Attributes:
        features: feature-set name -> (N, F) float32 (e.g. ``embeddings``, ``untrained``, ``raw``).
        target: (N,) class names (str) for classification, float values for regression.
        groups: (N,) ids of units that are never split between train and test (parcel, sample).
        blocks: (N,) spatial block ids; every group lies in exactly one block.
        rows: (N,) north-south position, larger = further south (map row, or minus latitude).
        task: ``classification`` or ``regression``.
        notes: provenance lines for the report (what was loaded, subsampled, left out).
    """

    features: dict[str, np.ndarray]
    target: np.ndarray
    groups: np.ndarray
    blocks: np.ndarray
    rows: np.ndarray
    task: str
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.target)
        if self.task not in TASKS:
            raise EvaluationError(f"task must be one of {TASKS}, got {self.task!r}")
        for name, arr in (("groups", self.groups), ("blocks", self.blocks), ("rows", self.rows)):
            if len(arr) != n:
                raise EvaluationError(f"{name} has {len(arr)} entries but there are {n} samples")
        for name, feats in self.features.items():
            if feats.ndim != 2 or feats.shape[0] != n:
                raise EvaluationError(f"feature set {name!r} has shape {feats.shape}, expected ({n}, F)")

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, index: np.ndarray) -> EvalData:
        """The samples selected by a boolean mask or integer index."""
        return replace(self, features={k: v[index] for k, v in self.features.items()}, target=self.target[index],
                       groups=self.groups[index], blocks=self.blocks[index], rows=self.rows[index],
                       notes=list(self.notes))

    def with_note(self, note: str) -> EvalData:
        """A copy with one more provenance line."""
        return replace(self, notes=[*self.notes, note])


def blocks_per_group(groups: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Give every sample the block of its group's first sample, so no group spans two blocks."""
    first: dict[str, str] = {}
    for g, b in zip(groups.tolist(), blocks.tolist(), strict=True):
        first.setdefault(g, b)
    return np.array([first[g] for g in groups.tolist()], dtype=object)
