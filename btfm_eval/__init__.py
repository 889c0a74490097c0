"""Downstream evaluation of BTFM embeddings: ``python -m btfm_eval --help``.

Embeddings (a map GeoTIFF or pixel/parcel time-series tables embedded with a checkpoint) are
compared with raw-band features and with an untrained model of the same architecture, by
classification (logistic regression, random forest, MLP) or regression (ridge, random forest)
under stratified k-fold, spatial-block and bottom-third splits, plus a training-fraction sweep.
Results go to ``<out>/report.md``, ``results.json`` and PNG plots.
"""

from btfm_eval.dataset import EvalData
from btfm_eval.errors import EvaluationError, GridMismatchError, LabelError, TooFewSamplesError
from btfm_eval.runner import EvalConfig, evaluate

__all__ = ["EvalConfig", "EvalData", "EvaluationError", "GridMismatchError", "LabelError", "TooFewSamplesError",
           "evaluate"]
