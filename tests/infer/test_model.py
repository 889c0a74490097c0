"""BTFM layout vs the official checkpoint, and forward vs an independent re-implementation."""

from __future__ import annotations

import math

import pytest
import torch

from btfm_infer.model import (
    BTFM,
    DEMO,
    OFFICIAL,
    ModelConfig,
    Projector,
    count_parameters,
    sinusoidal_encoding,
)


def official_keys(n_layers: int = 8) -> set[str]:
    """The state-dict keys listed in DESIGN §4, built from the documented pattern."""
    keys = {"dim_reducer.0.weight", "dim_reducer.0.bias"}
    for bb in ("s2_backbone", "s1_backbone"):
        for i in (0, 2):
            keys |= {f"{bb}.embedding.{i}.weight", f"{bb}.embedding.{i}.bias"}
        for layer in range(n_layers):
            p = f"{bb}.transformer_encoder.layers.{layer}."
            keys |= {p + "self_attn.in_proj_weight", p + "self_attn.in_proj_bias"}
            for m in ("self_attn.out_proj", "linear1", "linear2", "norm1", "norm2"):
                keys |= {f"{p}{m}.weight", f"{p}{m}.bias"}
        keys |= {f"{bb}.attn_pool.query.weight", f"{bb}.attn_pool.query.bias"}
        keys |= {f"{bb}.attn_pool.temporal_context.{n}_l0" for n in
                 ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    return keys


def test_official_layout_on_meta_device():
    with torch.device("meta"):
        model = BTFM(OFFICIAL)
    sd = model.state_dict()
    assert set(sd) == official_keys()
    shapes = {
        "s2_backbone.embedding.0.weight": (512, 10),
        "s1_backbone.embedding.0.weight": (512, 2),
        "s2_backbone.embedding.2.weight": (512, 512),
        "s2_backbone.transformer_encoder.layers.7.self_attn.in_proj_weight": (1536, 512),
        "s2_backbone.transformer_encoder.layers.7.self_attn.in_proj_bias": (1536,),
        "s1_backbone.transformer_encoder.layers.0.self_attn.out_proj.weight": (512, 512),
        "s1_backbone.transformer_encoder.layers.0.linear1.weight": (4096, 512),
        "s1_backbone.transformer_encoder.layers.0.linear2.weight": (512, 4096),
        "s1_backbone.transformer_encoder.layers.3.norm2.weight": (512,),
        "s2_backbone.attn_pool.query.weight": (1, 512),
        "s2_backbone.attn_pool.temporal_context.weight_ih_l0": (1536, 512),
        "s2_backbone.attn_pool.temporal_context.weight_hh_l0": (1536, 512),
        "s2_backbone.attn_pool.temporal_context.bias_hh_l0": (1536,),
        "dim_reducer.0.weight": (128, 1024),
        "dim_reducer.0.bias": (128,),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    n = count_parameters(model)
    assert abs(n - 87.8e6) / 87.8e6 < 0.005, n
    assert not any(k.startswith("projector") for k in sd)
    assert len(list(model.buffers())) == 0  # the day-of-year encoding adds no state


def test_official_transformer_settings():
    with torch.device("meta"):
        model = BTFM(OFFICIAL)
    layer = model.s2_backbone.transformer_encoder.layers[0]
    assert layer.norm_first is False and layer.self_attn.batch_first
    assert layer.self_attn.num_heads == 8 and layer.dropout.p == 0.1
    assert layer.activation_relu_or_gelu == 1  # ReLU
    assert model.s1_backbone.attn_pool.temporal_context.hidden_size == 512


def test_demo_size_is_small():
    n = count_parameters(BTFM(DEMO))
    assert n * 4 < 5e6  # float32 checkpoint < 5 MB


def test_projector_keys():
    keys = set(Projector(8, 16).state_dict())
    linear = {f"net.{i}.weight" for i in (0, 3, 6, 9, 12, 15)}
    norms = {f"net.{i}.running_mean" for i in (1, 4, 7, 10, 13)}
    assert linear <= keys and norms <= keys and "net.16.weight" not in keys and "net.2.weight" not in keys


def test_config_round_trip_and_validation():
    c = ModelConfig(16, 2, 1, 32)
    assert ModelConfig.from_dict({**c.to_dict(), "unknown": 3}) == c
    with pytest.raises(ValueError, match="nhead"):
        ModelConfig(d_model=10, nhead=4, num_layers=1, dim_feedforward=8)
    with pytest.raises(ValueError, match="positive"):
        ModelConfig(d_model=16, nhead=2, num_layers=0, dim_feedforward=8)
    with pytest.raises(ValueError, match="lacks"):
        ModelConfig.from_dict({"d_model": 16})


def test_sinusoidal_encoding_formula():
    doy = torch.tensor([[1.0, 200.0, 366.0]])
    pe = sinusoidal_encoding(doy, 8)
    assert pe.shape == (1, 3, 8)
    for j, day in enumerate((1.0, 200.0, 366.0)):
        for i in range(4):
            f = 10000 ** (-2 * i / 8)
            assert pe[0, j, 2 * i].item() == pytest.approx(math.sin(day * f), abs=1e-5)
            assert pe[0, j, 2 * i + 1].item() == pytest.approx(math.cos(day * f), abs=1e-5)


# ---- independent re-implementation of the documented equations ----
def _lin(x, sd, p):
    return x @ sd[p + ".weight"].T + sd[p + ".bias"]


def _ln(x, sd, p, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * sd[p + ".weight"] + sd[p + ".bias"]


def _mha(x, sd, p, nhead):
    d = x.shape[-1]
    qkv = x @ sd[p + ".in_proj_weight"].T + sd[p + ".in_proj_bias"]
    q, k, v = qkv.split(d, dim=-1)
    hd = d // nhead
    out = torch.zeros_like(x)
    for h in range(nhead):
        s = slice(h * hd, (h + 1) * hd)
        a = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(hd), dim=-1)
        out[..., s] = a @ v[..., s]
    return _lin(out, sd, p + ".out_proj")


def _gru(x, sd, p):
    wih, whh, bih, bhh = (sd[f"{p}.{n}_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    b, t, d = x.shape
    h = torch.zeros(b, d)
    outs = []
    for i in range(t):
        gi = x[:, i] @ wih.T + bih
        gh = h @ whh.T + bhh
        r = torch.sigmoid(gi[:, :d] + gh[:, :d])
        z = torch.sigmoid(gi[:, d:2 * d] + gh[:, d:2 * d])
        n = torch.tanh(gi[:, 2 * d:] + r * gh[:, 2 * d:])
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs, 1)


def _backbone(x, sd, p, cfg):
    d = cfg.d_model
    h = _lin(torch.relu(_lin(x[..., :-1], sd, p + ".embedding.0")), sd, p + ".embedding.2")
    pos = x[..., -1]
    pe = torch.zeros_like(h)
    for i in range(0, d, 2):
        f = math.exp(i * -(math.log(10000.0) / d))
        pe[..., i] = torch.sin(pos * f)
        pe[..., i + 1] = torch.cos(pos * f)
    h = h + pe
    for layer in range(cfg.num_layers):  # post-norm
        q = f"{p}.transformer_encoder.layers.{layer}"
        h = _ln(h + _mha(h, sd, q + ".self_attn", cfg.nhead), sd, q + ".norm1")
        ff = _lin(torch.relu(_lin(h, sd, q + ".linear1")), sd, q + ".linear2")
        h = _ln(h + ff, sd, q + ".norm2")
    ctx = _gru(h, sd, p + ".attn_pool.temporal_context")
    w = torch.softmax(_lin(ctx, sd, p + ".attn_pool.query"), dim=1)
    return (w * h).sum(1)  # weighted sum of the transformer outputs, weights from the GRU


def _reference(s2, s1, sd, cfg):
    return _lin(torch.cat([_backbone(s2, sd, "s2_backbone", cfg), _backbone(s1, sd, "s1_backbone", cfg)], -1),
                sd, "dim_reducer.0")


def _inputs(b=3, t2=6, t1=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s2 = torch.randn(b, t2, 11, generator=g)
    s2[..., -1] = torch.randint(1, 367, (b, t2), generator=g).float()
    s1 = torch.randn(b, t1, 3, generator=g)
    s1[..., -1] = torch.randint(1, 367, (b, t1), generator=g).float()
    return s2, s1


@pytest.mark.parametrize("grad", [False, True], ids=["inference-fast-path", "autograd-path"])
def test_forward_matches_reference(grad):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, nhead=2, num_layers=2, dim_feedforward=32, embedding_dim=8)
    model = BTFM(cfg).eval()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    s2, s1 = _inputs()
    with torch.set_grad_enabled(grad):
        got = model(s2, s1).detach()
    with torch.no_grad():
        ref = _reference(s2, s1, sd, cfg)
    assert got.shape == (3, 8)
    assert (got - ref).abs().max().item() <= 1e-5


def test_training_mode_uses_dropout_eval_does_not():
    torch.manual_seed(0)
    model = BTFM(ModelConfig(d_model=16, nhead=4, num_layers=1, dim_feedforward=32, embedding_dim=8))
    s2, s1 = _inputs()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(s2, s1), model(s2, s1))
        model.train()
        assert not torch.equal(model(s2, s1), model(s2, s1))
