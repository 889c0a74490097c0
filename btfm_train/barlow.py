"""Barlow Twins pre-training (DESIGN §5): two random draws of a pixel's observations are its two views."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from btfm_core.fileio import atomic_path
from btfm_core.pixel_series import PixelSeries
from btfm_core.progress import progress
from btfm_infer.model import BTFM, Projector
from btfm_infer.sampling import SEQ_LEN, build_s1_input, build_s2_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the public TESSERA recipe, scaled down by default)."""

    steps: int = 1500
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    barlow_lambda: float = 5e-3
    projector_dim: int = 512
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 250


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """``sum_i (c_ii - 1)^2 + lambda sum_{i != j} c_ij^2`` with ``c`` the batch cross-correlation.

    Args:
        z1, z2: (B, D) projections of the two views.
    """
    batch = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / (z1.std(0) + 1e-6)
    z2 = (z2 - z2.mean(0)) / (z2.std(0) + 1e-6)
    c = z1.T @ z2 / batch
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 1 % of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_views(data: PixelSeries, index: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    """Two independent draws (S2, S1) of the pixels ``index``: (B, 40, 11) and (B, 40, 3) each."""
    empty = np.zeros((len(index), 0, 2), np.int16)
    empty_doys = np.zeros((len(index), 0), np.int32)
    bands, masks, doys = data.s2_bands[index], data.s2_masks[index], data.s2_doys[index]
    s1, s1_doys = data.s1[index], data.s1_doys[index]
    views = []
    for _ in range(2):
        views.append(torch.from_numpy(build_s2_input(bands, masks, doys, rng, SEQ_LEN)))
        views.append(torch.from_numpy(build_s1_input(s1, s1_doys, empty, empty_doys, rng, SEQ_LEN)))
    return tuple(views)


def _save_state(path: Path, step: int, model: BTFM, projector: Projector, optimizer: torch.optim.Optimizer,
                history: list[dict[str, float]]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"step": step, "model": model.state_dict(), "projector": projector.state_dict(),
                    "optimizer": optimizer.state_dict(), "history": history}, tmp)


def train(model: BTFM, data: PixelSeries, cfg: TrainConfig, *, device: str = "cpu", state_path: Path | None = None,
          validate: Callable[[BTFM, int], dict[str, float]] | None = None, validate_every: int = 500
          ) -> list[dict[str, float]]:
    """Pre-train ``model`` in place; resumable from ``state_path``.

    Returns:
        History rows (step, loss, lr, seconds and any validation metrics).
    """
    torch.manual_seed(cfg.seed)
    projector = Projector(model.config.embedding_dim, cfg.projector_dim).to(device)
    model.to(device).train()
    params = [*model.parameters(), *projector.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, float]] = []
    start = 0
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        projector.load_state_dict(state["projector"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), list(state["history"])
        log.info("resumed training at step %d from %s", start, state_path)
    use_amp = device.startswith("cuda")
    started = time.perf_counter()
    for step in progress(range(start, cfg.steps), desc="train", unit="step", initial=start, total=cfg.steps):
        rng = np.random.default_rng([cfg.seed, step])  # a resumed run draws exactly the same batches
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # ... and the same dropout masks
        index = rng.choice(len(data), size=min(cfg.batch_size, len(data)), replace=False)
        s2a, s1a, s2b, s1b = (v.to(device) for v in make_views(data, index, rng))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss = barlow_twins_loss(projector(model(s2a, s1a)).float(), projector(model(s2b, s1b)).float(),
                                     cfg.barlow_lambda)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        row = {"step": step + 1, "loss": float(loss.detach()), "lr": learning_rate(step, cfg),
               "seconds": time.perf_counter() - started}
        if validate is not None and ((step + 1) % validate_every == 0 or step + 1 == cfg.steps):
            model.eval()
            row.update(validate(model, step + 1))
            model.train()
        if (step + 1) % 50 == 0 or "probe_macro_f1" in row:
            log.info("step %d loss %.2f lr %.2e %s", step + 1, row["loss"], row["lr"],
                     {k: round(v, 4) for k, v in row.items() if k.startswith("probe")})
        history.append(row)
        if state_path is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            _save_state(state_path, step + 1, model, projector, optimizer, history)
    model.eval()
    return history


def config_dict(cfg: TrainConfig) -> dict[str, float]:
    """The training settings for the model card."""
    return asdict(cfg)
