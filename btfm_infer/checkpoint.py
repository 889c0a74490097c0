"""Load and save checkpoints of every TESSERA model family, recognised from the file.

Accepted files (always read with ``torch.load(..., weights_only=True)``), DESIGN §9:

- **v1.0** (the seed, ``best_model_fsdp_20250427_084307.pt``): a dict with the state dict under
  ``model_state_dict`` (or ``model_state``) whose pooling has ``nn.GRU`` keys
  (``attn_pool.temporal_context.weight_ih_l0``); also a bare state dict, or ours
  (:func:`save_checkpoint`: ``{"model_state_dict": …, "btfm": {metadata}}``);
- **v1.0 QAT**: the same container with the custom-GRU keys
  (``attn_pool.temporal_context.gru_cell.W_ir.weight``) and a one-Linear ``dim_reducer``;
- **v1.1** (mpc, aws): the same container plus ``config``, custom-GRU keys and an MLP
  ``dim_reducer`` (``dim_reducer.{0,1,4}``); ``config["data_source"]`` names its statistics;
- **v2 pixel students**: ``{"args": {...}, "model": state_dict}``, dimensions in ``args``;
- the **v2 teacher** (``encoder_state_dict``) is refused with a message naming the students.

Keys may be prefixed ``_orig_mod.`` (torch.compile) and/or ``module.`` (DDP/FSDP); training-only
keys (``projector.*``) are dropped, so the 1.3 B-parameter projector is never built. v1.x
dimensions are inferred from tensor shapes, so any model of a family loads. The number of
attention heads cannot be inferred from shapes; it is taken, in order, from the ``nhead``
argument, from our metadata (``btfm.config.nhead``), from a v1.1 file's ``config``, else from the
family rule: 4 for v1.0 QAT and v1.1; for v1.0, 8 when d_model is divisible by 8 (the official
model), else the largest of 4, 2, 1 that divides it. v2 files always carry ``nhead`` in ``args``,
and ``args`` that disagree with the tensor shapes are refused.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from btfm_core.errors import CheckpointError
from btfm_core.fileio import atomic_path
from btfm_core.tiles import EMBEDDING_DIM, S1_BANDS, S2_BANDS
from btfm_infer.families import FAMILIES, STATS, Family, NormStats, stats_for_source
from btfm_infer.model import BTFM, ModelConfig
from btfm_infer.sampling import S1_MEAN, S1_STD, S2_MEAN, S2_STD, SEQ_LEN

__all__ = ["V11_SOURCES", "CheckpointInfo", "inspect_checkpoint", "load_model", "read_checkpoint_metadata",
           "resolve_stats", "save_checkpoint"]

log = logging.getLogger(__name__)

FORMAT = "btfm-checkpoint"
VERSION = 1
_PREFIXES = ("_orig_mod.", "module.")
_PROBE = "s2_backbone.embedding.0.weight"
_GRU_KEY = "s2_backbone.attn_pool.temporal_context.weight_ih_l0"
_CUSTOM_GRU_KEY = "s2_backbone.attn_pool.temporal_context.gru_cell.W_ir.weight"
_MLP_REDUCER_KEY = "dim_reducer.1.weight"
#: The data sources a v1.1 checkpoint is trained for (``--stats``).
V11_SOURCES = ("mpc", "aws")
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
        if "unsupported global" in str(exc).lower():  # a pickled object, not random bytes (also "weights only")
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


def _raw_state(obj: Any) -> dict[str, torch.Tensor] | None:
    """The tensors of the state dict in a v1.x payload (or a bare state dict), prefixes stripped."""
    raw = None
    if isinstance(obj, dict):
        for name in ("model_state_dict", "model_state"):
            if isinstance(obj.get(name), dict):
                raw = obj[name]
                break
        if raw is None and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raw = obj
    if raw is None:
        return None
    return {_strip(str(k)): v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def _found(obj: Any, state: dict[str, torch.Tensor] | None) -> list[str]:
    if state:
        return sorted(state)[:5]
    return sorted(map(str, obj))[:5] if isinstance(obj, dict) else [type(obj).__name__]


def detect_family(obj: Any, path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """Recognise a checkpoint payload's family from its layout and key names (DESIGN §9).

    Returns:
        (family name, inference part of the state dict with prefixes stripped).

    Raises:
        CheckpointError: the v2 teacher, or a payload of no known family (the message lists the
            keys looked for and the first keys found).
    """
    if isinstance(obj, dict) and "encoder_state_dict" in obj:
        raise CheckpointError(
            f"{path} is the TESSERA v2 teacher (key 'encoder_state_dict'), a 2 B-parameter research model that "
            f"BTFM does not run; use one of the v2 pixel students distilled from it (student_nano.pt, "
            f"student_small.pt, student_medium.pt or student_large.pt from the Hugging Face organisation "
            f"geotessera, e.g. TESSERA-V-2.0-2B-M)")
    if isinstance(obj, dict) and isinstance(obj.get("args"), dict) and isinstance(obj.get("model"), dict):
        state = {_strip(str(k)): v for k, v in obj["model"].items() if isinstance(v, torch.Tensor)}
        family = "v2"
    else:
        state = _raw_state(obj) or {}
        if _PROBE not in state:
            raise CheckpointError(
                f"{path} is not a BTFM checkpoint: expected keys like {_PROBE} under 'model_state_dict' or "
                f"'model_state' (v1.0, v1.0 QAT, v1.1), or a v2 student's {{'args', 'model'}}, found "
                f"{_found(obj, state)}; {_FIX}")
        if _GRU_KEY in state:
            family = "v1.0"
        elif _CUSTOM_GRU_KEY in state:
            family = "v1.1" if _MLP_REDUCER_KEY in state else "v1.0-qat"
        elif _MLP_REDUCER_KEY in state:
            raise CheckpointError(
                f"{path} belongs to no known TESSERA family: it has an MLP dim_reducer ({_MLP_REDUCER_KEY}) but "
                f"neither {_GRU_KEY} (v1.0) nor {_CUSTOM_GRU_KEY} (v1.0 QAT, v1.1); a v2 student must be the "
                f"authors' file with its 'args' and 'model' entries; {_FIX}")
        else:
            family = "v1.0"  # the seed's layout; the shape check below says what is missing
    dropped = [k for k in state if not k.startswith(_INFERENCE_PARTS)]
    if dropped:
        log.debug("ignoring %d non-inference keys of %s (e.g. %s)", len(dropped), path, dropped[0])
    return family, {k: v for k, v in state.items() if k.startswith(_INFERENCE_PARTS)}


def _layer_count(state: dict[str, torch.Tensor], backbone: str, path: Path, qk_norm: bool = False) -> int:
    stack = r"transformer_encoder\." if qk_norm else r"transformer_encoder\.layers\."
    pat = re.compile(rf"{backbone}\.{stack}(\d+)\.")
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


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file is, read without building the model.

    Attributes:
        path: The file.
        config: Dimensions and family (``config.family``).
        data_source: v1.1: the ``config["data_source"]`` the file records (``mpc``/``aws``), else None.
        nhead_source: Where the number of heads came from (for the log).
    """

    path: Path
    config: ModelConfig
    data_source: str | None = None
    nhead_source: str = ""

    @property
    def family(self) -> Family:
        """The family (:data:`btfm_infer.families.FAMILIES`)."""
        return FAMILIES[self.config.family]


def _dims(state: dict[str, torch.Tensor], path: Path, qk_norm: bool) -> dict[str, int]:
    """d_model, band counts, layers and FFN width from tensor shapes."""
    layer0 = "transformer_encoder.0." if qk_norm else "transformer_encoder.layers.0."
    try:
        d_model, s2_bands = state[_PROBE].shape
        s1_bands = state["s1_backbone.embedding.0.weight"].shape[1]
        ffn = state[f"s2_backbone.{layer0}linear1.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path} lacks BTFM weights ({type(exc).__name__}: {_first_line(exc)}); it is not a "
                              f"complete BTFM checkpoint: {_FIX}") from exc
    num_layers = _layer_count(state, "s2_backbone", path, qk_norm)
    s1_layers = _layer_count(state, "s1_backbone", path, qk_norm)
    if s1_layers != num_layers:
        raise CheckpointError(f"{path} has {num_layers} S2 but {s1_layers} S1 transformer layers; BTFM backbones "
                              f"have the same depth: {_FIX}")
    return {"d_model": int(d_model), "s2_bands": int(s2_bands), "s1_bands": int(s1_bands),
            "num_layers": num_layers, "dim_feedforward": int(ffn)}


def _shape_config(dims: dict[str, int], **fields: Any) -> ModelConfig:
    """The :class:`ModelConfig` of the tensor-shape ``dims`` (:func:`_dims`) and the other ``fields``."""
    return ModelConfig(d_model=dims["d_model"], s2_bands=dims["s2_bands"], s1_bands=dims["s1_bands"],
                       num_layers=dims["num_layers"], dim_feedforward=dims["dim_feedforward"], **fields)


def _reducer_out(state: dict[str, torch.Tensor], key: str, path: Path) -> int:
    if key not in state:
        raise CheckpointError(f"{path} lacks {key}: the dim_reducer is incomplete; {_FIX}")
    return int(state[key].shape[0])


def _v2_config(obj: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> tuple[ModelConfig, str]:
    """A v2 student's config from its ``args``, checked against its tensor shapes."""
    args = obj["args"]
    qk_norm = bool(args.get("enable_qk_norm", False))
    has_qk_keys = any(k.startswith("s2_backbone.transformer_encoder.0.") for k in state)
    if has_qk_keys != qk_norm:
        raise CheckpointError(f"{path}: args say enable_qk_norm={qk_norm} but the weights are laid out "
                              f"{'with' if has_qk_keys else 'without'} QK-norm layers; the file is inconsistent: "
                              f"download it again")
    dims = _dims(state, path, qk_norm)
    repr_dim = _reducer_out(state, "dim_reducer.4.weight", path)
    try:
        stated = {"d_model": 4 * int(args["latent_dim"]), "num_layers": int(args["num_layers"]),
                  "dim_feedforward": int(args["dim_feedforward"]), "repr_dim": int(args.get("repr_dim", 128))}
        nhead = int(args["nhead"])
        matryoshka = tuple(int(d) for d in str(args.get("matryoshka_dims", "16,32,64,128")).split(",") if d.strip())
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the v2 'args' entry is incomplete or malformed ({type(exc).__name__}: "
                              f"{_first_line(exc)}); expected latent_dim, num_layers, nhead, dim_feedforward") from exc
    found = {**dims, "repr_dim": repr_dim}
    differ = {k: (v, found[k]) for k, v in stated.items() if v != found[k]}
    if differ:
        detail = ", ".join(f"{k} {a} in args but {b} in the weights" for k, (a, b) in differ.items())
        raise CheckpointError(f"{path}: the v2 args disagree with the tensor shapes ({detail}); the file is "
                              "inconsistent: download it again")
    try:
        config = _shape_config(dims, nhead=nhead, embedding_dim=repr_dim, family="v2", qk_norm=qk_norm,
                               matryoshka_dims=matryoshka)
    except ValueError as exc:
        raise CheckpointError(f"{path} has unusable dimensions: {exc}") from exc
    return config, "the checkpoint's args"


def _dict_entry(obj: object, key: str) -> dict[str, Any] | None:
    """``obj[key]`` where ``obj`` is a dict and that entry is a dict too, else None."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else None


def _v1_config(family: str, obj: Any, state: dict[str, torch.Tensor], path: Path,
               nhead: int | None) -> tuple[ModelConfig, str, str | None]:
    """Config of a v1.0 / v1.0 QAT / v1.1 file: dims from shapes, heads from the family rule."""
    spec = FAMILIES[family]
    dims = _dims(state, path, qk_norm=False)
    meta = _dict_entry(obj, "btfm")
    file_config = _dict_entry(obj, "config") or {}
    meta_config = meta.get("config") if meta else None
    source = "the nhead argument"
    if nhead is None and isinstance(meta_config, dict) and meta_config.get("nhead") is not None:
        nhead, source = int(meta_config["nhead"]), "the checkpoint's metadata"
    if nhead is None and family == "v1.1" and file_config.get("s2_num_heads") is not None:
        nhead, source = int(file_config["s2_num_heads"]), "the checkpoint's config"
    if nhead is None:
        if family == "v1.0":
            nhead, source = _guess_nhead(dims["d_model"]), "the default for its d_model"
        else:
            nhead, source = spec.default_nhead, f"the {family} family rule"
    if nhead < 1 or dims["d_model"] % nhead:
        raise CheckpointError(f"{path}: nhead {nhead} (from {source}) does not divide d_model {dims['d_model']}; "
                              "pass a number of heads that divides it")
    data_source = None
    extra: dict[str, Any] = {}
    if family == "v1.1":
        reducer = _reducer_out(state, "dim_reducer.4.weight", path)
        keep = min(int(file_config.get("save_embedding_dim", EMBEDDING_DIM)), reducer)
        extra = {"embedding_dim": keep, "representation_dim": reducer}
        buckets = file_config.get("num_obs_checkpoints")
        if buckets:
            extra["buckets"] = tuple(sorted({int(b) for b in buckets if int(b) > 0}))
        stated = {"d_model": 4 * int(file_config["latent_dim"])} if "latent_dim" in file_config else {}
        stated |= {k: int(file_config[c]) for k, c in (("num_layers", "s2_num_layers"),
                                                       ("dim_feedforward", "s2_dim_feedforward")) if c in file_config}
        differ = {k: (v, dims[k]) for k, v in stated.items() if v != dims[k]}
        if differ:
            raise CheckpointError(f"{path}: its config disagrees with the tensor shapes {differ} (config, weights); "
                                  "the file is inconsistent: download it again")
        raw_source = file_config.get("data_source")
        data_source = str(raw_source).lower() if raw_source else None
        if data_source is not None and data_source not in V11_SOURCES:
            raise CheckpointError(f"{path}: config data_source {raw_source!r} is neither mpc nor aws")
    else:
        extra = {"embedding_dim": _reducer_out(state, "dim_reducer.0.weight", path)}
    try:
        config = _shape_config(dims, nhead=int(nhead), family=family, **extra)
    except ValueError as exc:
        raise CheckpointError(f"{path} has unusable dimensions: {exc}") from exc
    if isinstance(meta_config, dict):
        stated_meta = {k: meta_config.get(k) for k in ("d_model", "num_layers", "dim_feedforward", "s2_bands",
                                                       "s1_bands", "embedding_dim") if k in meta_config}
        differ_meta = {k: (v, getattr(config, k)) for k, v in stated_meta.items() if v != getattr(config, k)}
        if differ_meta:
            warnings.warn(f"{path}: metadata config disagrees with the tensor shapes {differ_meta} "
                          "(stated, from shapes); using the shapes", RuntimeWarning, stacklevel=4)
    return config, source, data_source


def _family_mismatch(path: Path, asked: str, found: str) -> CheckpointError:
    return CheckpointError(f"--model-family {asked} was asked for, but {path} has the layout of the {found} family "
                           f"({FAMILIES[found].title}); drop --model-family (auto recognises the file) or pass a "
                           f"{asked} checkpoint")


def _inspect(obj: Any, path: Path, family: str, nhead: int | None) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    if family != "auto" and family not in FAMILIES:
        raise CheckpointError(f"unknown model family {family!r}; use auto or one of {', '.join(FAMILIES)}")
    found, state = detect_family(obj, path)
    if family not in ("auto", found):
        raise _family_mismatch(path, family, found)
    data_source = None
    if found == "v2":
        config, source = _v2_config(obj, state, path)
    else:
        config, source, data_source = _v1_config(found, obj, state, path, nhead)
    return CheckpointInfo(path, config, data_source, source), state


def inspect_checkpoint(path: str | Path, *, family: str = "auto", nhead: int | None = None) -> CheckpointInfo:
    """Recognise a checkpoint's family and dimensions without building the model.

    Args:
        path: Checkpoint file of any TESSERA family (DESIGN §9) or ours.
        family: ``auto`` or the family the file must be (``--model-family``).
        nhead: v1.x only: attention heads, overriding the family rule.

    Raises:
        CheckpointError: the file is missing, unreadable, of no known family, of another family
            than ``family``, or inconsistent.
    """
    path = Path(path)
    return _inspect(_read(path), path, family, nhead)[0]


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


def resolve_stats(info: CheckpointInfo, stats: str | None = None, run_s2_source: str | None = None) -> NormStats:
    """The normalisation statistics a checkpoint's embeddings need.

    For v1.1, in order: the checkpoint's own ``config["data_source"]``; ``stats`` (``--stats``);
    the run's recorded Sentinel-2 source (planetary → mpc, earthsearch → aws). Other families
    have one set each and refuse ``stats``.

    Raises:
        CheckpointError: ``stats`` contradicts the checkpoint's ``data_source`` or is given for a
            family with one set, or nothing decides a v1.1 checkpoint's statistics.
    """
    family = info.family
    if stats is not None and stats not in V11_SOURCES:
        raise CheckpointError(f"--stats must be one of {', '.join(V11_SOURCES)}, got {stats!r}")
    if family.stats is not None:
        if stats is not None:
            raise CheckpointError(f"--stats applies to v1.1 checkpoints only; {info.path.name} is {family.title}, "
                                  f"which has one set of statistics: drop --stats")
        return STATS[family.stats]
    if info.data_source is not None:
        if stats is not None and stats != info.data_source:
            raise CheckpointError(
                f"--stats {stats} contradicts {info.path.name}, whose config says data_source={info.data_source}: "
                f"each v1.1 checkpoint only works with the statistics it was trained with; drop --stats, or pass "
                f"the {stats} checkpoint")
        return STATS[f"v1.1-{info.data_source}"]
    if stats is not None:
        return STATS[f"v1.1-{stats}"]
    guessed = stats_for_source(run_s2_source)
    if guessed is not None:
        log.info("v1.1 statistics %s chosen from the run's Sentinel-2 source %s", guessed, run_s2_source)
        return STATS[f"v1.1-{guessed}"]
    raise CheckpointError(
        f"{info.path.name} is a v1.1 checkpoint without a recorded data_source, and the run's Sentinel-2 source "
        f"({run_s2_source or 'not recorded'}) does not say which statistics apply: pass --stats mpc (Planetary "
        "Computer data, the mpc checkpoint) or --stats aws (Earth Search data, the aws checkpoint)")


def _check_finite_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights with NaN or inf values (they give NaN embeddings), naming the first bad tensor."""
    bad = [(name, t) for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        name, tensor = bad[0]
        count = int((~torch.isfinite(tensor)).sum())
        more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise CheckpointError(f"{path}: tensor {name} holds {count} NaN or infinite value(s) of {tensor.numel()}"
                              f"{more}; the weights are broken (diverged training or a damaged file): {_FIX}")


def load_model(path: str | Path, device: str | torch.device = "cpu", *, nhead: int | None = None,
               family: str = "auto", stats: str | NormStats | None = None,
               run_s2_source: str | None = None) -> BTFM:
    """Load a checkpoint of any TESSERA family for inference.

    Args:
        path: Checkpoint file: v1.0 (official layout, a bare state dict, or ours), v1.0 QAT,
            v1.1 (mpc or aws) or a v2 pixel student (DESIGN §9).
        device: ``cpu``, ``cuda`` or ``cuda:N``; CUDA requested but unavailable warns and uses
            the CPU.
        nhead: v1.x only: attention heads, overriding the family rule (see module docstring).
        family: ``auto`` (recognise the file) or the family the file must be.
        stats: v1.1 only: ``mpc``, ``aws`` or a :class:`NormStats` when the checkpoint does not
            record its ``data_source`` (see :func:`resolve_stats`).
        run_s2_source: v1.1 only: the run's recorded Sentinel-2 source, the last resort of
            :func:`resolve_stats`.

    Returns:
        The model in eval mode on ``device`` with ``.family``, ``.embedding_dim`` and ``.stats``;
        only the backbones and ``dim_reducer`` are built.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated, of no known family, or its
            tensors do not fit its family's layout, or hold NaN/inf; or v1.1 statistics are undecided.
    """
    path = Path(path)
    info, state = _inspect(_read(path), path, family, nhead)
    norm = stats if isinstance(stats, NormStats) else resolve_stats(info, stats, run_s2_source)
    model = BTFM(info.config, norm)
    report = _mismatch_report(model, state)
    if report:
        raise CheckpointError(f"{path} does not fit the {info.config.family} layout inferred from its shapes "
                              f"({info.config}): {report}; {_FIX}")
    _check_finite_weights(state, path)
    model.load_state_dict(state, strict=True)
    dev = _resolve_device(device)
    model.to(dev).eval()
    log.debug("%s: nhead %d from %s", path, info.config.nhead, info.nhead_source)
    log.info("loaded %s: %s, %d-d embedding, %s statistics, on %s (%s)", path.name, info.family.title,
             info.config.embedding_dim, norm.name, dev, info.config)
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
