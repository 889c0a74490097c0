"""BTFM inference: embed tile folders with any TESSERA family, stitch the tiles, export GeoTIFF and quick-look.

The names below are imported on first use, so the stitch and export commands (which need no
torch) start without importing it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from btfm_infer.checkpoint import inspect_checkpoint, load_model, save_checkpoint
    from btfm_infer.embed import embed_pixels
    from btfm_infer.families import FAMILIES, Family, NormStats
    from btfm_infer.model import BTFM, ModelConfig
    from btfm_infer.outputs import open_embedding, sample_points

#: Public name -> the module that defines it.
_LAZY = {
    "inspect_checkpoint": "btfm_infer.checkpoint", "load_model": "btfm_infer.checkpoint",
    "save_checkpoint": "btfm_infer.checkpoint", "embed_pixels": "btfm_infer.embed",
    "FAMILIES": "btfm_infer.families", "Family": "btfm_infer.families", "NormStats": "btfm_infer.families",
    "BTFM": "btfm_infer.model", "ModelConfig": "btfm_infer.model",
    "open_embedding": "btfm_infer.outputs", "sample_points": "btfm_infer.outputs",
}

__all__ = ["BTFM", "FAMILIES", "Family", "ModelConfig", "NormStats", "embed_pixels", "inspect_checkpoint",
           "load_model", "open_embedding", "sample_points", "save_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'btfm_infer' has no attribute {name!r}")
