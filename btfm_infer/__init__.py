"""BTFM inference: embed tile folders with any TESSERA family, stitch the tiles, export GeoTIFF and quick-look."""

from btfm_infer.checkpoint import inspect_checkpoint, load_model, save_checkpoint
from btfm_infer.embed import embed_pixels
from btfm_infer.families import FAMILIES, Family, NormStats
from btfm_infer.model import BTFM, ModelConfig

__all__ = ["BTFM", "FAMILIES", "Family", "ModelConfig", "NormStats", "embed_pixels", "inspect_checkpoint",
           "load_model", "save_checkpoint"]
