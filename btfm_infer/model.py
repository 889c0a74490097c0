"""The BTFM (TESSERA) model as plain ``nn.Module``s, matching the official checkpoint layout.

State-dict keys are those of the official checkpoint (DESIGN §4): ``s2_backbone.*``,
``s1_backbone.*`` and ``dim_reducer.0.*``. The training-only :class:`Projector` is never
built for inference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Dimensions of a BTFM model."""

    d_model: int
    nhead: int
    num_layers: int
    dim_feedforward: int
    s2_bands: int = 10
    s1_bands: int = 2
    embedding_dim: int = 128

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in names})


OFFICIAL = ModelConfig(d_model=512, nhead=8, num_layers=8, dim_feedforward=4096)
DEMO = ModelConfig(d_model=64, nhead=4, num_layers=2, dim_feedforward=256)


def sinusoidal_encoding(doy: torch.Tensor, d_model: int) -> torch.Tensor:
    """(..., ) raw day of year → (..., d_model) fixed sinusoidal encoding (base 10000)."""
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=doy.device)
                    * -(math.log(10000.0) / d_model))
    angle = doy.to(torch.float32).unsqueeze(-1) * div
    pe = torch.zeros((*doy.shape, d_model), dtype=torch.float32, device=doy.device)
    pe[..., 0::2] = torch.sin(angle)
    pe[..., 1::2] = torch.cos(angle[..., : d_model // 2])
    return pe


class AttentionPooling(nn.Module):
    """GRU context → softmax weights over time → weighted sum of the inputs."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.query = nn.Linear(d_model, 1)
        self.temporal_context = nn.GRU(d_model, d_model, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx, _ = self.temporal_context(x)
        w = torch.softmax(self.query(ctx), dim=1)
        return (w * x).sum(dim=1)


class TransformerEncoder(nn.Module):
    """One modality's backbone (TESSERA's ``TransformerEncoder``)."""

    def __init__(self, bands: int, d_model: int, nhead: int, num_layers: int,
                 dim_feedforward: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Sequential(nn.Linear(bands, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0.1,
                                           activation="relu", batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.attn_pool = AttentionPooling(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, bands + 1) with the raw day of year last → (B, d_model)."""
        h = self.embedding(x[..., :-1]) + sinusoidal_encoding(x[..., -1], self.d_model)
        h = self.transformer_encoder(h)
        return self.attn_pool(h)


class BTFM(nn.Module):
    """Two backbones (S2, S1) fused by ``dim_reducer`` into the embedding."""

    def __init__(self, config: ModelConfig = OFFICIAL) -> None:
        super().__init__()
        c = config
        self.config = config
        self.s2_backbone = TransformerEncoder(c.s2_bands, c.d_model, c.nhead, c.num_layers,
                                              c.dim_feedforward)
        self.s1_backbone = TransformerEncoder(c.s1_bands, c.d_model, c.nhead, c.num_layers,
                                              c.dim_feedforward)
        self.dim_reducer = nn.Sequential(nn.Linear(2 * c.d_model, c.embedding_dim))

    def forward(self, s2_x: torch.Tensor, s1_x: torch.Tensor) -> torch.Tensor:
        """s2_x (B, T, s2_bands + 1), s1_x (B, T', s1_bands + 1) → (B, embedding_dim)."""
        return self.dim_reducer(torch.cat([self.s2_backbone(s2_x), self.s1_backbone(s1_x)], dim=-1))


class Projector(nn.Module):
    """Training-only Barlow Twins projector: (Linear, BatchNorm1d, ReLU) × (n_layers-1), Linear."""

    def __init__(self, in_dim: int = 128, hidden: int = 16384, n_layers: int = 6) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(n_layers - 1):
            layers += [nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
            dim = hidden
        layers.append(nn.Linear(dim, hidden))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
