"""Errors of the evaluation tool; all are :class:`~btfm_core.errors.InputDataError` (exit code 2)."""

from __future__ import annotations

from btfm_core.errors import InputDataError


class EvaluationError(InputDataError):
    """The evaluation cannot run with the given inputs or options."""


class LabelError(EvaluationError):
    """Labels are missing, unreadable, outside the map, or lack the requested column."""


class GridMismatchError(EvaluationError):
    """Two rasters that must share a grid (embeddings, labels, raw features) do not."""


class TooFewSamplesError(EvaluationError):
    """Too few samples, classes or groups for the requested folds or split."""
