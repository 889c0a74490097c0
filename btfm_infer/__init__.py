"""BTFM inference: embed tile folders, stitch the tiles, and export GeoTIFF and quick-look."""

from btfm_infer.checkpoint import load_model, save_checkpoint
from btfm_infer.embed import embed_pixels
from btfm_infer.model import BTFM, ModelConfig

__all__ = ["BTFM", "ModelConfig", "embed_pixels", "load_model", "save_checkpoint"]
