"""The BTFM (TESSERA) model as plain ``nn.Module``s, matching the official checkpoint layout.

State-dict keys are exactly those of the official checkpoint (DESIGN §4)::

    s2_backbone.embedding.{0,2}.{weight,bias}
    s2_backbone.transformer_encoder.layers.<i>.{self_attn.in_proj_weight, self_attn.in_proj_bias,
        self_attn.out_proj.*, linear1.*, linear2.*, norm1.*, norm2.*}
    s2_backbone.attn_pool.query.{weight,bias}
    s2_backbone.attn_pool.temporal_context.{weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0}
    s1_backbone.…  (the same)
    dim_reducer.0.{weight,bias}

The day-of-year position encoding has no parameters, so it adds no key. The training-only
:class:`Projector` is a separate module and is never built for inference.

Class names follow TESSERA (``TransformerEncoder``, ``TemporalPositionalEncoder``,
``TemporalAwarePooling``) so the code can be read side by side with the published model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Dimensions of a BTFM model.

    Attributes:
        d_model: Width of each backbone (512 in the official model).
        nhead: Attention heads per transformer layer (8 official); must divide ``d_model``.
        num_layers: Transformer layers per backbone (8 official).
        dim_feedforward: Hidden width of each layer's feed-forward block (4096 official).
        s2_bands: Sentinel-2 bands per time step (10).
        s1_bands: Sentinel-1 bands per time step (2).
        embedding_dim: Length of the output embedding (128).
    """

    d_model: int
    nhead: int
    num_layers: int
    dim_feedforward: int
    s2_bands: int = 10
    s1_bands: int = 2
    embedding_dim: int = 128

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{f.name} must be a positive integer, got {value!r}")
        if self.d_model % self.nhead:
            raise ValueError(f"ModelConfig.nhead ({self.nhead}) must divide d_model ({self.d_model})")
        if self.d_model % 2:
            raise ValueError(f"ModelConfig.d_model must be even (sine/cosine pairs), got {self.d_model}")

    def to_dict(self) -> dict[str, int]:
        """Plain ``{field: int}`` dict (safe for ``torch.load(weights_only=True)`` and JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored.

        Raises:
            ValueError: a required field is missing or a value is invalid.
        """
        names = {f.name for f in fields(cls)}
        missing = {"d_model", "nhead", "num_layers", "dim_feedforward"} - set(data)
        if missing:
            raise ValueError(f"model config lacks {sorted(missing)}")
        return cls(**{k: int(v) for k, v in data.items() if k in names})


#: The published TESSERA model (``best_model_fsdp_20250427_084307.pt``), ≈ 87.8 M parameters.
OFFICIAL = ModelConfig(d_model=512, nhead=8, num_layers=8, dim_feedforward=4096)
#: The small demo size (≈ 0.28 M parameters, ≈ 1.1 MB checkpoint), quick on a CPU.
DEMO = ModelConfig(d_model=64, nhead=4, num_layers=2, dim_feedforward=256)


def sinusoidal_encoding(doy: torch.Tensor, d_model: int) -> torch.Tensor:
    """Fixed sinusoidal encoding of the raw day of year (TESSERA's ``TemporalPositionalEncoder``).

    ``pe[..., 2i] = sin(doy · 10000^(-2i/d))``, ``pe[..., 2i+1] = cos(doy · 10000^(-2i/d))``,
    computed in float32.

    Args:
        doy: (...) day of year as a number (1–366), any float or integer dtype.
        d_model: Even encoding width.

    Returns:
        (..., d_model) float32 tensor on ``doy``'s device.
    """
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=doy.device)
                    * -(math.log(10000.0) / d_model))
    angle = doy.to(torch.float32).unsqueeze(-1) * div
    pe = torch.empty((*doy.shape, d_model), dtype=torch.float32, device=doy.device)
    pe[..., 0::2] = torch.sin(angle)
    pe[..., 1::2] = torch.cos(angle)
    return pe


class TemporalPositionalEncoder(nn.Module):
    """Parameter-free module wrapper of :func:`sinusoidal_encoding`."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model

    def forward(self, doy: torch.Tensor) -> torch.Tensor:
        """(B, T) day of year → (B, T, d_model) float32."""
        return sinusoidal_encoding(doy, self.d_model)


class TemporalAwarePooling(nn.Module):
    """Attention pooling over time with weights from a GRU's context.

    ``ctx = GRU(x)``; ``w = softmax_t(query(ctx))``; output ``Σ_t w_t · x_t`` — the weighted sum
    is of the *inputs* ``x`` (the transformer outputs), not of the GRU outputs.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.query = nn.Linear(d_model, 1)
        self.temporal_context = nn.GRU(d_model, d_model, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) → (B, d_model)."""
        ctx, _ = self.temporal_context(x)
        w = torch.softmax(self.query(ctx), dim=1)
        return (w * x).sum(dim=1)


class TransformerEncoder(nn.Module):
    """One modality's backbone (TESSERA's ``TransformerEncoder``).

    Band embedding (Linear → ReLU → Linear) plus the day-of-year encoding, a stack of post-norm
    ``nn.TransformerEncoderLayer`` (ReLU, dropout 0.1 in training, no mask), then
    :class:`TemporalAwarePooling`.
    """

    def __init__(self, bands: int, d_model: int, nhead: int, num_layers: int, dim_feedforward: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Sequential(nn.Linear(bands, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.temporal_encoder = TemporalPositionalEncoder(d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=dropout,
                                           activation="relu", batch_first=True, norm_first=False)
        # No padding mask is ever used, so nested tensors would bring nothing (and warn).
        self.transformer_encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.attn_pool = TemporalAwarePooling(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed one modality's sequences.

        Args:
            x: (B, T, bands + 1) float32: standardised bands, then the raw day of year.

        Returns:
            (B, d_model) pooled representation.
        """
        h = self.embedding(x[..., :-1]) + self.temporal_encoder(x[..., -1])
        h = self.transformer_encoder(h)
        return self.attn_pool(h)


class BTFM(nn.Module):
    """Two backbones (S2, S1) whose outputs are concatenated and reduced by ``dim_reducer``."""

    def __init__(self, config: ModelConfig = OFFICIAL) -> None:
        super().__init__()
        c = config
        self.config = config
        self.s2_backbone = TransformerEncoder(c.s2_bands, c.d_model, c.nhead, c.num_layers, c.dim_feedforward)
        self.s1_backbone = TransformerEncoder(c.s1_bands, c.d_model, c.nhead, c.num_layers, c.dim_feedforward)
        self.dim_reducer = nn.Sequential(nn.Linear(2 * c.d_model, c.embedding_dim))

    def forward(self, s2_x: torch.Tensor, s1_x: torch.Tensor) -> torch.Tensor:
        """Embed pixels.

        Args:
            s2_x: (B, T, s2_bands + 1) standardised S2 bands + raw day of year.
            s1_x: (B, T', s1_bands + 1) standardised S1 bands + raw day of year.

        Returns:
            (B, embedding_dim) embeddings.
        """
        return self.dim_reducer(torch.cat([self.s2_backbone(s2_x), self.s1_backbone(s1_x)], dim=-1))


class Projector(nn.Module):
    """Training-only Barlow Twins projector (keys ``net.{0,1,3,4,…,15}`` for 6 layers).

    ``n_layers - 1`` blocks of (Linear, BatchNorm1d, ReLU), then a final Linear; every layer is
    ``hidden`` wide (the official one: 128 → 16384 → … → 16384, ≈ 1.3 B parameters).
    """

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
        """(B, in_dim) → (B, hidden)."""
        return self.net(x)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (works on the ``meta`` device)."""
    return sum(p.numel() for p in module.parameters())
