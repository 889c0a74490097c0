"""The TESSERA model families as plain ``nn.Module``s, matching each family's checkpoint layout.

Every family (DESIGN §9) has two backbones of one class, ``s2_backbone`` (10 bands) and
``s1_backbone`` (2 bands), each a band embedding plus the day-of-year encoding, a post-norm
transformer stack and a pooling over time, then concat fusion and a ``dim_reducer``. The v1.0
state-dict keys are exactly those of the official checkpoint (DESIGN §4)::

    s2_backbone.embedding.{0,2}.{weight,bias}
    s2_backbone.transformer_encoder.layers.<i>.{self_attn.in_proj_weight, self_attn.in_proj_bias,
        self_attn.out_proj.*, linear1.*, linear2.*, norm1.*, norm2.*}
    s2_backbone.attn_pool.query.{weight,bias}
    s2_backbone.attn_pool.temporal_context.{weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0}
    s1_backbone.…  (the same)
    dim_reducer.0.{weight,bias}

v1.0 QAT and v1.1 pool with ``attn_pool.temporal_context.gru_cell.{W_ir,…,W_hh}.weight``,
``gru_cell.{b_r,b_z,b_h}`` and ``attn_pool.layer_norm.*``; v1.1 and v2 reduce with
``dim_reducer.{0,1,4}``; v2 pools with ``attn_pool.query`` alone and, with QK-norm, keeps its
layers as ``transformer_encoder.<i>.{q_proj,k_proj,v_proj,out_proj,q_norm,k_norm,…}``.

The day-of-year position encoding has no parameters, so it adds no key. The training-only
:class:`Projector` is a separate module and is never built for inference.

Class names follow TESSERA (``TransformerEncoder``, ``TemporalPositionalEncoder``,
``TemporalAwarePooling``) so the code can be read side by side with the published models.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from btfm_core.errors import InputDataError
from btfm_infer.families import FAMILIES, STATS, Family, NormStats

__all__ = ["BTFM", "DEMO", "OFFICIAL", "ModelConfig", "Projector", "TransformerEncoder", "count_parameters",
           "quantise_dynamic_int8", "sinusoidal_encoding"]


@dataclass(frozen=True)
class ModelConfig:
    """Dimensions and family of a TESSERA model.

    Attributes:
        d_model: Width of each backbone (512 in the official v1.0 model; 4 × ``latent_dim``).
        nhead: Attention heads per transformer layer (8 official v1.0); must divide ``d_model``.
        num_layers: Transformer layers per backbone (8 official v1.0).
        dim_feedforward: Hidden width of each layer's feed-forward block (4096 official v1.0).
        s2_bands: Sentinel-2 bands per time step (10).
        s1_bands: Sentinel-1 bands per time step (2).
        embedding_dim: Length of the output embedding (128).
        family: Model family (:data:`btfm_infer.families.FAMILIES`): ``v1.0``, ``v1.0-qat``,
            ``v1.1`` or ``v2``; it decides the pooling, the ``dim_reducer`` and the input rule.
        representation_dim: Outputs of the ``dim_reducer`` before the first ``embedding_dim`` are
            kept (v1.1: 192); 0 means ``embedding_dim``.
        qk_norm: v2 only: transformer layers with per-head RMSNorm on queries and keys.
        matryoshka_dims: v2 only: embedding lengths usable alone (16, 32, 64, 128).
        buckets: Bucketed families: the sequence lengths observation counts are rounded up to
            (empty: 8, 16, …, 256).
    """

    d_model: int
    nhead: int
    num_layers: int
    dim_feedforward: int
    s2_bands: int = 10
    s1_bands: int = 2
    embedding_dim: int = 128
    family: str = "v1.0"
    representation_dim: int = 0
    qk_norm: bool = False
    matryoshka_dims: tuple[int, ...] = ()
    buckets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("d_model", "nhead", "num_layers", "dim_feedforward", "s2_bands", "s1_bands", "embedding_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.nhead:
            raise ValueError(f"ModelConfig.nhead ({self.nhead}) must divide d_model ({self.d_model})")
        if self.d_model % 2:
            raise ValueError(f"ModelConfig.d_model must be even (sine/cosine pairs), got {self.d_model}")
        if self.family not in FAMILIES:
            raise ValueError(f"ModelConfig.family must be one of {sorted(FAMILIES)}, got {self.family!r}")
        if self.representation_dim and self.representation_dim < self.embedding_dim:
            raise ValueError(f"ModelConfig.representation_dim ({self.representation_dim}) is smaller than "
                             f"embedding_dim ({self.embedding_dim})")
        if any(d < 1 or d > self.embedding_dim for d in self.matryoshka_dims):
            raise ValueError(f"ModelConfig.matryoshka_dims {self.matryoshka_dims} must lie in 1..{self.embedding_dim}")
        if any(b < 1 for b in self.buckets) or list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"ModelConfig.buckets must be increasing positive lengths, got {self.buckets}")

    @property
    def reducer_dim(self) -> int:
        """Outputs of the ``dim_reducer`` (``representation_dim`` or ``embedding_dim``)."""
        return self.representation_dim or self.embedding_dim

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of JSON types (safe for ``torch.load(weights_only=True)`` and JSON)."""
        data = asdict(self)
        data["matryoshka_dims"] = list(self.matryoshka_dims)
        data["buckets"] = list(self.buckets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored.

        Raises:
            ValueError: a required field is missing or a value is invalid.
        """
        missing = {"d_model", "nhead", "num_layers", "dim_feedforward"} - set(data)
        if missing:
            raise ValueError(f"model config lacks {sorted(missing)}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name == "family":
                kwargs[f.name] = str(value)
            elif f.name == "qk_norm":
                kwargs[f.name] = bool(value)
            elif f.name in ("matryoshka_dims", "buckets"):
                kwargs[f.name] = tuple(int(v) for v in value)
            else:
                kwargs[f.name] = int(value)
        return cls(**kwargs)


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
    """Attention pooling over time with weights from a GRU's context (v1.0).

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

    def pool_distinct(self, x: torch.Tensor, log_multiplicity: torch.Tensor, expand: torch.Tensor) -> torch.Tensor:
        """Pool distinct-step outputs: expanded back to the full sequence (the GRU is order-sensitive)."""
        pooled: torch.Tensor = self(_expand_steps(x, expand))
        return pooled


def _expand_steps(x: torch.Tensor, expand: torch.Tensor) -> torch.Tensor:
    """(B, U, D) distinct-step outputs and (B, L) positions → (B, L, D) outputs of the full sequence."""
    return x.gather(1, expand.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class CustomGRUCell(nn.Module):
    """The hand-written GRU cell of v1.0 QAT and v1.1 (bias-free Linears plus three biases).

    ``r = σ(W_ir x + W_hr h + b_r)``, ``z = σ(W_iz x + W_hz h + b_z)``,
    ``n = tanh(W_ih x + W_hh (r ⊙ h) + b_h)``, ``h' = (1 − z) ⊙ h + z ⊙ n``. Note the reset gate
    multiplies ``h`` *before* ``W_hh``, unlike ``nn.GRU``.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.W_ir = nn.Linear(size, size, bias=False)
        self.W_iz = nn.Linear(size, size, bias=False)
        self.W_ih = nn.Linear(size, size, bias=False)
        self.W_hr = nn.Linear(size, size, bias=False)
        self.W_hz = nn.Linear(size, size, bias=False)
        self.W_hh = nn.Linear(size, size, bias=False)
        self.b_r = nn.Parameter(torch.zeros(size))
        self.b_z = nn.Parameter(torch.zeros(size))
        self.b_h = nn.Parameter(torch.zeros(size))


class CustomGRU(nn.Module):
    """Runs :class:`CustomGRUCell` over time from ``h₀ = 0`` (state-dict prefix ``gru_cell.``)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.gru_cell = CustomGRUCell(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) → (B, T, D) hidden states.

        The input projections of all steps are computed in one matrix product each; only the
        recurrent part loops over time.
        """
        cell = self.gru_cell
        x_r, x_z, x_n = cell.W_ir(x) + cell.b_r, cell.W_iz(x) + cell.b_z, cell.W_ih(x) + cell.b_h
        recurrent = torch.cat([cell.W_hr.weight, cell.W_hz.weight], dim=0)
        h = x.new_zeros(x.shape[0], x.shape[2])
        states = []
        for t in range(x.shape[1]):
            h_rz = F.linear(h, recurrent)
            r = torch.sigmoid(x_r[:, t] + h_rz[:, :h.shape[1]])
            z = torch.sigmoid(x_z[:, t] + h_rz[:, h.shape[1]:])
            n = torch.tanh(x_n[:, t] + cell.W_hh(r * h))
            h = (1 - z) * h + z * n
            states.append(h)
        return torch.stack(states, dim=1)


class CustomTemporalAwarePooling(nn.Module):
    """v1.0 QAT / v1.1 pooling: ``w = softmax_t(query(LayerNorm(CustomGRU(x))))``, output ``Σ_t w_t · x_t``.

    A sequence of length 1 is returned as it is (the reference skips the GRU there).
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.temporal_context = CustomGRU(d_model)
        self.query = nn.Linear(d_model, 1)
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) → (B, d_model)."""
        if x.shape[1] == 1:
            return x[:, 0]
        w = torch.softmax(self.query(self.layer_norm(self.temporal_context(x))), dim=1)
        return (w * x).sum(dim=1)

    def pool_distinct(self, x: torch.Tensor, log_multiplicity: torch.Tensor, expand: torch.Tensor) -> torch.Tensor:
        """Pool distinct-step outputs: expanded back to the full sequence (the GRU is order-sensitive)."""
        pooled: torch.Tensor = self(_expand_steps(x, expand))
        return pooled


class AttentionPooling(nn.Module):
    """v2 pooling: ``w = softmax_t(query(x))``, output ``Σ_t w_t · x_t`` (no GRU)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.query = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) → (B, d_model)."""
        if x.shape[1] == 1:
            return x[:, 0]
        w = torch.softmax(self.query(x), dim=1)
        return (w * x).sum(dim=1)

    def pool_distinct(self, x: torch.Tensor, log_multiplicity: torch.Tensor, expand: torch.Tensor) -> torch.Tensor:
        """Pool distinct-step outputs with each step's multiplicity folded into the softmax.

        ``softmax`` over k copies of a logit equals ``softmax`` over one copy plus ``log k``.
        """
        logits = self.query(x).squeeze(-1).float() + log_multiplicity
        w = torch.softmax(logits, dim=1).to(x.dtype).unsqueeze(-1)
        return (w * x).sum(dim=1)


class QKNormEncoderLayer(nn.Module):
    """Post-norm transformer layer with per-head RMSNorm on queries and keys (v2 ``enable_qk_norm``).

    Separate ``q_proj``/``k_proj``/``v_proj`` Linears, RMSNorm (learned gain, default eps) of each
    head's q and k, scaled-dot-product attention, ``out_proj``, then the residual + LayerNorm and
    ReLU feed-forward of ``nn.TransformerEncoderLayer`` (dropout only in training).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.nhead = nhead
        self.head_dim = d_model // nhead
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.q_norm = nn.RMSNorm(self.head_dim)
        self.k_norm = nn.RMSNorm(self.head_dim)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d_model) → (B, T, d_model); ``key_bias`` (B, T) is added to every query's logit of each key."""
        b, t, d = x.shape
        heads = (b, t, self.nhead, self.head_dim)
        q = self.q_norm(self.q_proj(x).view(heads)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(heads)).transpose(1, 2)
        v = self.v_proj(x).view(heads).transpose(1, 2)
        mask = None if key_bias is None else key_bias[:, None, None, :].to(q.dtype)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                              dropout_p=self.dropout.p if self.training else 0.0)
        x = self.norm1(x + self.dropout(self.out_proj(attn.transpose(1, 2).reshape(b, t, d))))
        hidden = F.relu(self.linear1(x)) if self.training else torch.relu_(self.linear1(x))
        out: torch.Tensor = self.norm2(x + self.dropout(self.linear2(self.dropout(hidden))))
        return out


def post_norm_layer_forward(layer: nn.TransformerEncoderLayer, x: torch.Tensor,
                            key_bias: torch.Tensor) -> torch.Tensor:
    """Inference forward of a post-norm ReLU ``nn.TransformerEncoderLayer`` with an additive key bias.

    The same arithmetic as the layer in eval mode (no dropout), with fused scaled-dot-product
    attention; the feed-forward Linears are called as modules, so dynamic int8 quantisation of
    them applies.

    Args:
        layer: The layer (``batch_first``, ``norm_first=False``, ReLU).
        x: (B, T, d_model).
        key_bias: (B, T) added to every query's logit of each key (``log`` multiplicity; −inf
            for padding).

    Returns:
        (B, T, d_model).
    """
    attn = layer.self_attn
    b, t, d = x.shape
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(b, t, 3, attn.num_heads, d // attn.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias[:, None, None, :].to(q.dtype))
    x = layer.norm1(x + attn.out_proj(out.transpose(1, 2).reshape(b, t, d)))
    result: torch.Tensor = layer.norm2(x + layer.linear2(torch.relu_(layer.linear1(x))))
    return result


#: The pooling modules over time, one per family (:attr:`btfm_infer.families.Family.pooling`).
Pooling = TemporalAwarePooling | CustomTemporalAwarePooling | AttentionPooling


def _pooling(kind: str, d_model: int) -> Pooling:
    if kind == "gru":
        return TemporalAwarePooling(d_model)
    if kind == "custom-gru":
        return CustomTemporalAwarePooling(d_model)
    return AttentionPooling(d_model)


class TransformerEncoder(nn.Module):
    """One modality's backbone (TESSERA's ``TransformerEncoder``).

    Band embedding (Linear → ReLU → Linear) plus the day-of-year encoding, a stack of post-norm
    transformer layers (``nn.TransformerEncoderLayer``, ReLU, dropout 0.1 in training, no mask;
    or :class:`QKNormEncoderLayer` in a ``ModuleList``), then the family's pooling over time.
    """

    def __init__(self, bands: int, d_model: int, nhead: int, num_layers: int, dim_feedforward: int,
                 dropout: float = 0.1, *, pooling: str = "gru", qk_norm: bool = False) -> None:
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Sequential(nn.Linear(bands, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.temporal_encoder = TemporalPositionalEncoder(d_model)
        self.transformer_encoder: nn.ModuleList | nn.TransformerEncoder
        if qk_norm:
            self.transformer_encoder = nn.ModuleList(
                QKNormEncoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers))
        else:
            layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=dropout,
                                               activation="relu", batch_first=True, norm_first=False)
            # No padding mask is ever used, so nested tensors would bring nothing (and warn).
            self.transformer_encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.attn_pool = _pooling(pooling, d_model)

    def encode_steps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, bands + 1) standardised bands + raw day of year → (B, T, d_model) transformer outputs."""
        h: torch.Tensor = self.embedding(x[..., :-1]) + self.temporal_encoder(x[..., -1])
        if isinstance(self.transformer_encoder, nn.ModuleList):
            for layer in self.transformer_encoder:
                h = layer(h)
            return h
        encoded: torch.Tensor = self.transformer_encoder(h)
        return encoded

    def forward_distinct(self, x: torch.Tensor, multiplicity: torch.Tensor, expand: torch.Tensor) -> torch.Tensor:
        """Embed sequences given by their distinct steps (inference only; :mod:`btfm_infer.unique_tokens`).

        Equal, to float rounding, to :meth:`forward` of the full sequences ``x[i, expand[i]]``.

        Args:
            x: (B, U, bands + 1) distinct steps (standardised bands, raw day of year), padded.
            multiplicity: (B, U) integer occurrences of each step in the full sequence; 0 = padding.
            expand: (B, L) int64 position in ``x`` of each step of the full sequence.

        Returns:
            (B, d_model) pooled representation.
        """
        log_multiplicity = torch.log(multiplicity.float())  # log 0 = -inf masks the padding
        h: torch.Tensor = self.embedding(x[..., :-1]) + self.temporal_encoder(x[..., -1])
        if isinstance(self.transformer_encoder, nn.ModuleList):
            for layer in self.transformer_encoder:
                h = layer(h, log_multiplicity)
        else:
            for layer in self.transformer_encoder.layers:
                h = post_norm_layer_forward(cast(nn.TransformerEncoderLayer, layer), h, log_multiplicity)
        return self.attn_pool.pool_distinct(h, log_multiplicity, expand)

    def forward_unrepeated(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` of sequences without repeated steps (inference only).

        PyTorch's fused fast path of ``nn.TransformerEncoder`` where it applies; layers whose
        Linears were replaced by int8 ones (:func:`quantise_dynamic_int8`) run
        :func:`post_norm_layer_forward` with a zero bias instead.
        """
        layers = self.transformer_encoder
        if isinstance(layers, nn.TransformerEncoder) and type(layers.layers[0].linear1) is not nn.Linear:
            b, t = x.shape[:2]
            ones = torch.ones((b, t), dtype=torch.int32, device=x.device)
            return self.forward_distinct(x, ones, torch.arange(t, device=x.device).expand(b, t))
        pooled: torch.Tensor = self(x)
        return pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed one modality's sequences.

        Args:
            x: (B, T, bands + 1) float32: standardised bands, then the raw day of year.

        Returns:
            (B, d_model) pooled representation.
        """
        pooled: torch.Tensor = self.attn_pool(self.encode_steps(x))
        return pooled


def _dim_reducer(kind: str, d_in: int, d_out: int) -> nn.Sequential:
    if kind == "linear":
        return nn.Sequential(nn.Linear(d_in, d_out))
    layers: list[nn.Module] = [nn.Linear(d_in, 2 * d_in), nn.LayerNorm(2 * d_in), nn.ReLU(), nn.Dropout(0.2),
                               nn.Linear(2 * d_in, d_out)]
    if kind == "mlp-norm":
        layers.append(nn.LayerNorm(d_out, elementwise_affine=False))
    return nn.Sequential(*layers)


class BTFM(nn.Module):
    """Two backbones (S2, S1) whose outputs are concatenated and reduced by ``dim_reducer``.

    The family (``config.family``) decides the pooling, the transformer layer, the
    ``dim_reducer`` and, through :attr:`stats` and :attr:`family`, how inputs are built
    (:func:`btfm_infer.embed.embed_pixels`). The state-dict keys are those of the family's own
    checkpoints (DESIGN §9).

    Attributes:
        stats: The normalisation statistics inputs are standardised with; None for a v1.1
            model whose data source (mpc or aws) is not known yet.
    """

    def __init__(self, config: ModelConfig = OFFICIAL, stats: NormStats | None = None) -> None:
        super().__init__()
        c = config
        self.config = config
        spec = FAMILIES[c.family]
        self.stats = stats if stats is not None else (STATS[spec.stats] if spec.stats else None)
        self.s2_backbone = TransformerEncoder(c.s2_bands, c.d_model, c.nhead, c.num_layers, c.dim_feedforward,
                                              pooling=spec.pooling, qk_norm=c.qk_norm)
        self.s1_backbone = TransformerEncoder(c.s1_bands, c.d_model, c.nhead, c.num_layers, c.dim_feedforward,
                                              pooling=spec.pooling, qk_norm=c.qk_norm)
        self.dim_reducer = _dim_reducer(spec.reducer, 2 * c.d_model, c.reducer_dim)

    @property
    def family(self) -> Family:
        """The model's family (:data:`btfm_infer.families.FAMILIES`)."""
        return FAMILIES[self.config.family]

    @property
    def embedding_dim(self) -> int:
        """Length of the embeddings :meth:`forward` returns."""
        return self.config.embedding_dim

    def require_stats(self) -> NormStats:
        """:attr:`stats`, which inputs need to be standardised.

        Raises:
            InputDataError: a v1.1 model whose data source (mpc or aws) is not known yet.
        """
        if self.stats is None:
            raise InputDataError(f"this {self.family.title} model has no normalisation statistics yet: load it with "
                                 "load_model(path, stats='mpc' or 'aws') (--stats on the command line)")
        return self.stats

    def fuse(self, s2_repr: torch.Tensor, s1_repr: torch.Tensor) -> torch.Tensor:
        """(B, d_model) S2 and S1 backbone outputs → (B, embedding_dim) embeddings."""
        out: torch.Tensor = self.dim_reducer(torch.cat([s2_repr, s1_repr], dim=-1))
        return out[..., :self.config.embedding_dim] if self.config.reducer_dim > self.config.embedding_dim else out

    def forward(self, s2_x: torch.Tensor, s1_x: torch.Tensor) -> torch.Tensor:
        """Embed pixels.

        Args:
            s2_x: (B, T, s2_bands + 1) standardised S2 bands + raw day of year.
            s1_x: (B, T', s1_bands + 1) standardised S1 bands + raw day of year.

        Returns:
            (B, embedding_dim) embeddings.
        """
        return self.fuse(self.s2_backbone(s2_x), self.s1_backbone(s1_x))


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
        projected: torch.Tensor = self.net(x)
        return projected


def quantise_dynamic_int8(model: BTFM) -> BTFM:
    """A copy of ``model`` whose transformer Linears run PyTorch's dynamic int8 kernels (CPU only).

    Weights are quantised per tensor to int8 once; activations are quantised per batch at run
    time. Only the Linears inside the transformer stacks that are called as modules are
    converted (the feed-forward blocks, most of the FLOPs; v2's q/k/v/out projections); the
    band embeddings, poolings and ``dim_reducer`` stay fp32. PyTorch marks ``torch.ao.quantization``
    as deprecated; the pinned torch still ships it, and its warnings are silenced here.
    """
    names = {name for name, module in model.named_modules()
             if type(module) is nn.Linear and ".transformer_encoder." in name}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, message=".*quantize_per_tensor.*")
        quantised: BTFM = torch.ao.quantization.quantize_dynamic(model, names, dtype=torch.qint8)  # a copy
        return quantised


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (works on the ``meta`` device)."""
    return sum(p.numel() for p in module.parameters())
