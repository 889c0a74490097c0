"""Load and save BTFM checkpoints: the official TESSERA layout, and ours.

Accepted files (always read with ``torch.load(..., weights_only=True)``):

- the official checkpoint: a dict with the state dict under ``model_state_dict`` (or
  ``model_state``), keys possibly prefixed ``_orig_mod.`` (torch.compile) and/or ``module.``
  (DDP/FSDP), including the training-only ``projector.*`` keys, which are dropped (the
  1.3 B-parameter projector is never built);
- a bare state dict;
- ours (:func:`save_checkpoint`): ``{"model_state_dict": …, "btfm": {metadata}}``.

The dimensions are inferred from tensor shapes (d_model, band counts, layers, FFN width,
embedding size), so any model of the family loads. The number of attention heads cannot be
inferred from shapes; it is taken, in order, from the ``nhead`` argument, from our metadata
(``btfm.config.nhead``), else it is 8 when d_model is divisible by 8 (the official model), else
the largest of 4, 2, 1 that divides d_model.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from btfm_core.errors import CheckpointError
from btfm_core.fileio import atomic_path
from btfm_core.tiles import S1_BANDS, S2_BANDS
from btfm_infer.model import BTFM, ModelConfig
from btfm_infer.sampling import S1_MEAN, S1_STD, S2_MEAN, S2_STD, SEQ_LEN

log = logging.getLogger(__name__)

FORMAT = "btfm-checkpoint"
VERSION = 1
_PREFIXES = ("_orig_mod.", "module.")
_PROBE = "s2_backbone.embedding.0.weight"
_INFERENCE_PARTS = ("s2_backbone.", "s1_backbone.", "dim_reducer.")
_RESERVED = {"format", "version", "config", "normalisation", "s2_bands", "s1_bands", "model_card",
             "seq_len"}
_FIX = "pass --checkpoint with a BTFM/TESSERA checkpoint (.pt)"


def _first_line(exc: BaseException) -> str:
    """The informative line of an exception's message, without terminal escape codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    if not text:
        return type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = next((line for line in lines if "Unsupported global" in line), lines[0])
    detail = detail.split(" was not an allowed global")[0]
    return detail.split(". ")[0][:200]  # the first sentence


def _read(path: Path) -> Any:
    """``torch.load`` with errors turned into :class:`CheckpointError`."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; {_FIX}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file; {_FIX}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise CheckpointError(
                f"checkpoint {path} holds Python objects other than tensors, which a safe load "
                f"(weights_only=True) refuses ({_first_line(exc)}). If you trust its source, re-save just "
                "its weights once: python -c \"import torch; c = torch.load('IN.pt', weights_only=False); "
                "torch.save({'model_state_dict': c['model_state_dict']}, 'OUT.pt')\" and pass OUT.pt"
            ) from exc
        raise CheckpointError(f"checkpoint {path} is not a readable torch file ({_first_line(exc)}); it may be "
                              f"corrupt or not a checkpoint at all: download or copy it again, or {_FIX}") from exc
    except Exception as exc:  # any failure to parse (EOFError, RuntimeError, BadZipFile, …) means unreadable
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {_first_line(exc)}); "
                              f"it may be truncated or corrupt: download or copy it again, or {_FIX}") from exc


def _strip(key: str) -> str:
    """Remove any sequence of ``_orig_mod.`` / ``module.`` prefixes."""
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The inference part (backbones + dim_reducer) of the state dict in ``obj``."""
    raw = None
    if isinstance(obj, dict):
        for name in ("model_state_dict", "model_state"):
            if isinstance(obj.get(name), dict):
                raw = obj[name]
                break
        if raw is None and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raw = obj
    state: dict[str, torch.Tensor] = {}
    if raw is not None:
        state = {_strip(str(k)): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if _PROBE not in state:
        found = sorted(state)[:5] if state else (sorted(map(str, obj))[:5] if isinstance(obj, dict) else
                                                 [type(obj).__name__])
        raise CheckpointError(f"{path} is not a BTFM checkpoint: expected keys like {_PROBE} under "
                              f"'model_state_dict' or 'model_state', found {found}; {_FIX}")
    dropped = [k for k in state if not k.startswith(_INFERENCE_PARTS)]
    if dropped:
        log.debug("ignoring %d non-inference keys of %s (e.g. %s)", len(dropped), path, dropped[0])
    return {k: v for k, v in state.items() if k.startswith(_INFERENCE_PARTS)}


def _layer_count(state: dict[str, torch.Tensor], backbone: str, path: Path) -> int:
    pat = re.compile(rf"{backbone}\.transformer_encoder\.layers\.(\d+)\.")
    layers = sorted({int(m.group(1)) for k in state if (m := pat.match(k))})
    if not layers:
        raise CheckpointError(f"{path} has no {backbone} transformer layers; it is not a complete BTFM "
                              f"checkpoint: {_FIX}")
    if layers != list(range(len(layers))):
        raise CheckpointError(f"{path} has {backbone} transformer layers {layers}, not 0..{len(layers) - 1}; "
                              f"the checkpoint is incomplete: {_FIX}")
    return len(layers)


def _guess_nhead(d_model: int) -> int:
    return next(h for h in (8, 4, 2, 1) if d_model % h == 0)


def _infer_config(state: dict[str, torch.Tensor], meta: dict[str, Any] | None, path: Path,
                  nhead: int | None) -> ModelConfig:
    """Model dimensions from tensor shapes (+ nhead from the argument, metadata or a guess)."""
    try:
        d_model, s2_bands = state[_PROBE].shape
        s1_bands = state["s1_backbone.embedding.0.weight"].shape[1]
        ffn = state["s2_backbone.transformer_encoder.layers.0.linear1.weight"].shape[0]
        emb = state["dim_reducer.0.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path} lacks BTFM weights ({type(exc).__name__}: {_first_line(exc)}); it is not a "
                              f"complete BTFM checkpoint: {_FIX}") from exc
    num_layers = _layer_count(state, "s2_backbone", path)
    s1_layers = _layer_count(state, "s1_backbone", path)
    if s1_layers != num_layers:
        raise CheckpointError(f"{path} has {num_layers} S2 but {s1_layers} S1 transformer layers; BTFM backbones "
                              f"have the same depth: {_FIX}")
    source = "the nhead argument"
    meta_config = meta.get("config") if meta else None
    if nhead is None and isinstance(meta_config, dict) and meta_config.get("nhead") is not None:
        nhead, source = int(meta_config["nhead"]), "the checkpoint's metadata"
    if nhead is None:
        nhead, source = _guess_nhead(int(d_model)), "the default for its d_model"
    if nhead < 1 or d_model % nhead:
        raise CheckpointError(f"{path}: nhead {nhead} (from {source}) does not divide d_model {d_model}; "
                              "pass a number of heads that divides it")
    try:
        config = ModelConfig(d_model=int(d_model), nhead=int(nhead), num_layers=num_layers,
                             dim_feedforward=int(ffn), s2_bands=int(s2_bands), s1_bands=int(s1_bands),
                             embedding_dim=int(emb))
    except ValueError as exc:
        raise CheckpointError(f"{path} has unusable dimensions: {exc}") from exc
    log.debug("%s: nhead %d from %s", path, nhead, source)
    if isinstance(meta_config, dict):
        stated = {k: meta_config.get(k) for k in config.to_dict() if k != "nhead" and k in meta_config}
        differ = {k: (v, getattr(config, k)) for k, v in stated.items() if v != getattr(config, k)}
        if differ:
            warnings.warn(f"{path}: metadata config disagrees with the tensor shapes {differ} "
                          "(stated, from shapes); using the shapes", RuntimeWarning, stacklevel=3)
    return config


def _mismatch_report(model: BTFM, state: dict[str, torch.Tensor]) -> str:
    """Missing, unexpected and wrongly shaped keys, a few of each."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    parts = []
    for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{len(items)} {name}: {', '.join(items[:3])}{more}")
    return "; ".join(parts)


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"device {device} requested but CUDA is not available; using the CPU",
                      RuntimeWarning, stacklevel=3)
        return torch.device("cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def load_model(path: str | Path, device: str | torch.device = "cpu", *, nhead: int | None = None) -> BTFM:
    """Load a BTFM checkpoint for inference.

    Args:
        path: Checkpoint file (official TESSERA layout, a bare state dict, or ours).
        device: ``cpu``, ``cuda`` or ``cuda:N``; CUDA requested but unavailable warns and uses
            the CPU.
        nhead: Attention heads, overriding the metadata and the default (see module docstring).

    Returns:
        The model in eval mode on ``device``; only the backbones and ``dim_reducer`` are built.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated, not a BTFM checkpoint, or
            its tensors do not fit the BTFM layout.
    """
    path = Path(path)
    obj = _read(path)
    state = _state_dict(obj, path)
    meta = obj.get("btfm") if isinstance(obj, dict) and isinstance(obj.get("btfm"), dict) else None
    config = _infer_config(state, meta, path, nhead)
    model = BTFM(config)
    report = _mismatch_report(model, state)
    if report:
        raise CheckpointError(f"{path} does not fit the BTFM layout inferred from its shapes ({config}): "
                              f"{report}; {_FIX}")
    model.load_state_dict(state, strict=True)
    dev = _resolve_device(device)
    model.to(dev).eval()
    log.info("loaded %s (%s) on %s", path, config, dev)
    return model


def _check_safe(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is made only of types a weights-only load accepts."""
    if value is None or isinstance(value, (str, int, float, bool, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_safe(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"metadata key {where}[{k!r}] must be a str or int")
            _check_safe(item, f"{where}[{k!r}]")
        return
    raise TypeError(f"metadata {where} is a {type(value).__name__}; only str, int, float, bool, None, "
                    "tensors, lists and dicts of them can be stored (torch.load weights_only=True)")


def save_checkpoint(model: BTFM, path: str | Path, *, config: ModelConfig | None = None, model_card: str = "",
                    extra_metadata: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (backbones + dim_reducer only) with our metadata, atomically.

    The file is ``{"model_state_dict": state, "btfm": metadata}`` where metadata holds
    ``format``, ``version``, ``config``, ``normalisation`` (the S2/S1 means and stds),
    ``s2_bands``, ``s1_bands``, ``seq_len``, ``model_card`` and the extra entries; it loads with
    ``torch.load(weights_only=True)`` and with :func:`load_model`.

    Args:
        model: The model to save.
        path: Output file; its folder is created.
        config: The model's dimensions (default ``model.config``).
        model_card: Plain-text description: what the weights are and are not.
        extra_metadata: More metadata (str, int, float, bool, None, lists and dicts of them).
        extra: Same as ``extra_metadata`` (older name).

    Returns:
        ``path``.

    Raises:
        TypeError: metadata holds a type a weights-only load would refuse.
        ValueError: an extra key would overwrite a reserved one, or ``config`` differs from the model's.
    """
    path = Path(path)
    config = config or model.config
    if config != getattr(model, "config", config):
        raise ValueError(f"config {config} differs from the model's {model.config}")
    extras = {**(extra or {}), **(extra_metadata or {})}
    clash = _RESERVED & set(extras)
    if clash:
        raise ValueError(f"extra metadata may not set the reserved keys {sorted(clash)}")
    _check_safe(extras, "extra_metadata")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.startswith(_INFERENCE_PARTS)}
    meta: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "config": config.to_dict(),
        "normalisation": {"s2_mean": [float(v) for v in S2_MEAN], "s2_std": [float(v) for v in S2_STD],
                          "s1_mean": [float(v) for v in S1_MEAN], "s1_std": [float(v) for v in S1_STD],
                          "eps": 1e-9},
        "s2_bands": list(S2_BANDS), "s1_bands": list(S1_BANDS), "seq_len": SEQ_LEN, "model_card": model_card,
        **extras,
    }
    # Serialise to memory first: torch names the zip's root folder after the file, and the
    # temporary name is random, so saving to ``tmp`` directly would make the bytes differ per run.
    buffer = io.BytesIO()
    torch.save({"model_state_dict": state, "btfm": meta}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """Our ``btfm`` metadata of a checkpoint; ``{}`` for files without it (e.g. the official one).

    Raises:
        CheckpointError: the file is missing or unreadable.
    """
    path = Path(path)
    obj = _read(path)
    meta = obj.get("btfm") if isinstance(obj, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}
