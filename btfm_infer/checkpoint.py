"""Load and save BTFM checkpoints (official TESSERA layout or ours).

Dimensions are inferred from tensor shapes so any model of the family loads. The number of
heads cannot be inferred from shapes: it is read from our metadata (``btfm.config``) when
present, else taken as 8 when d_model is divisible by 8 (the official model), else 4.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from btfm_core.errors import CheckpointError
from btfm_core.fileio import atomic_path
from btfm_core.tiles import S1_BANDS, S2_BANDS
from btfm_infer.model import BTFM, ModelConfig
from btfm_infer.sampling import S1_MEAN, S1_STD, S2_MEAN, S2_STD

log = logging.getLogger(__name__)

FORMAT = "btfm-checkpoint"
VERSION = 1
_PREFIXES = ("_orig_mod.", "module.")
_PROBE = "s2_backbone.embedding.0.weight"


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass --checkpoint with the path "
                              "of a BTFM checkpoint (.pt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, not a torch file, unsafe pickle
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); it may be truncated "
                              "or corrupt: download or copy it again") from exc


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    raw = None
    if isinstance(obj, dict):
        for name in ("model_state_dict", "model_state"):
            if isinstance(obj.get(name), dict):
                raw = obj[name]
                break
        if raw is None and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raw = obj
    state = {}
    if raw is not None:
        state = {_strip(str(k)): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
        state = {k: v for k, v in state.items() if not k.startswith("projector.")}
    if _PROBE not in state:
        raise CheckpointError(f"{path} is not a BTFM checkpoint: expected keys like {_PROBE} "
                              "(under 'model_state_dict' or 'model_state'); pass --checkpoint with "
                              "a TESSERA/BTFM checkpoint")
    return state


def _infer_config(state: dict[str, torch.Tensor], meta: dict[str, Any] | None, path: Path) -> ModelConfig:
    try:
        d_model, s2_bands = state[_PROBE].shape
        s1_bands = state["s1_backbone.embedding.0.weight"].shape[1]
        pat = re.compile(r"s2_backbone\.transformer_encoder\.layers\.(\d+)\.")
        layers = {int(m.group(1)) for k in state if (m := pat.match(k))}
        num_layers = max(layers) + 1 if layers else 0
        ffn = state["s2_backbone.transformer_encoder.layers.0.linear1.weight"].shape[0]
        emb = state["dim_reducer.0.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} lacks BTFM weights ({exc}); it is not a complete BTFM "
                              "checkpoint: pass --checkpoint with another file") from exc
    nhead = None
    if meta and isinstance(meta.get("config"), dict):
        nhead = meta["config"].get("nhead")
    if nhead is None:
        nhead = 8 if d_model % 8 == 0 else 4
    return ModelConfig(d_model=int(d_model), nhead=int(nhead), num_layers=num_layers,
                       dim_feedforward=int(ffn), s2_bands=int(s2_bands), s1_bands=int(s1_bands),
                       embedding_dim=int(emb))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> BTFM:
    """Load a BTFM checkpoint into a model in eval mode on ``device`` (CPU if CUDA is absent)."""
    path = Path(path)
    obj = _read(path)
    state = _state_dict(obj, path)
    meta = obj.get("btfm") if isinstance(obj, dict) and isinstance(obj.get("btfm"), dict) else None
    config = _infer_config(state, meta, path)
    try:
        model = BTFM(config)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise CheckpointError(f"{path} does not match the BTFM layout inferred from its shapes "
                              f"({config}): {str(exc)[:500]}; pass --checkpoint with a matching "
                              "BTFM checkpoint") from exc
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"device {device} requested but CUDA is not available; using CPU",
                      RuntimeWarning, stacklevel=2)
        dev = torch.device("cpu")
    model.to(dev).eval()
    log.info("loaded %s (%s) on %s", path, config, dev)
    return model


def save_checkpoint(model: BTFM, path: str | Path, *, config: ModelConfig, model_card: str = "",
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (without projector) with our metadata, atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
             if not k.startswith("projector.")}
    meta: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "config": config.to_dict(),
        "normalisation": {"s2_mean": [float(v) for v in S2_MEAN], "s2_std": [float(v) for v in S2_STD],
                          "s1_mean": [float(v) for v in S1_MEAN], "s1_std": [float(v) for v in S1_STD]},
        "s2_bands": list(S2_BANDS), "s1_bands": list(S1_BANDS), "model_card": model_card,
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save({"model_state_dict": state, "btfm": meta}, tmp)
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """Our ``btfm`` metadata of a checkpoint ({} for official checkpoints without it)."""
    path = Path(path)
    obj = _read(path)
    meta = obj.get("btfm") if isinstance(obj, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}
