"""BTFM layout vs the official checkpoint, and forward vs an independent re-implementation."""

from __future__ import annotations

import math

import torch

from btfm_infer.model import BTFM, OFFICIAL, ModelConfig, Projector


def official_keys(n_layers: int = 8) -> set[str]:
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
    assert sd["s2_backbone.embedding.0.weight"].shape == (512, 10)
    assert sd["s1_backbone.embedding.0.weight"].shape == (512, 2)
    assert sd["s2_backbone.transformer_encoder.layers.7.self_attn.in_proj_weight"].shape == (1536, 512)
    assert sd["s1_backbone.transformer_encoder.layers.0.linear1.weight"].shape == (4096, 512)
    assert sd["s2_backbone.attn_pool.temporal_context.weight_ih_l0"].shape == (1536, 512)
    assert sd["dim_reducer.0.weight"].shape == (128, 1024)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 87.8e6) / 87.8e6 < 0.01


def test_projector_keys():
    keys = set(Projector(8, 16).state_dict())
    linear = {f"net.{i}.weight" for i in (0, 3, 6, 9, 12, 15)}
    assert linear <= keys and "net.1.running_mean" in keys and "net.16.weight" not in keys


def test_config_round_trip():
    c = ModelConfig(16, 2, 1, 32)
    assert ModelConfig.from_dict(c.to_dict()) == c


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
        nn_ = torch.tanh(gi[:, 2 * d:] + r * gh[:, 2 * d:])
        h = (1 - z) * nn_ + z * h
        outs.append(h)
    return torch.stack(outs, 1)


def _backbone(x, sd, p, cfg):
    d = cfg.d_model
    h = _lin(torch.relu(_lin(x[..., :-1], sd, p + ".embedding.0")), sd, p + ".embedding.2")
    pos = x[..., -1:]
    pe = torch.zeros_like(h)
    for i in range(0, d, 2):
        f = math.exp(i * -(math.log(10000.0) / d))
        pe[..., i] = torch.sin(pos[..., 0] * f)
        pe[..., i + 1] = torch.cos(pos[..., 0] * f)
    h = h + pe
    for layer in range(cfg.num_layers):
        q = f"{p}.transformer_encoder.layers.{layer}"
        h = _ln(h + _mha(h, sd, q + ".self_attn", cfg.nhead), sd, q + ".norm1")
        ff = _lin(torch.relu(_lin(h, sd, q + ".linear1")), sd, q + ".linear2")
        h = _ln(h + ff, sd, q + ".norm2")
    ctx = _gru(h, sd, p + ".attn_pool.temporal_context")
    w = torch.softmax(_lin(ctx, sd, p + ".attn_pool.query"), dim=1)
    return (w * h).sum(1)


def test_forward_matches_reference():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, nhead=2, num_layers=2, dim_feedforward=32, embedding_dim=8)
    model = BTFM(cfg).eval()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    s2 = torch.randn(3, 6, 11)
    s2[..., -1] = torch.randint(1, 367, (3, 6)).float()
    s1 = torch.randn(3, 5, 3)
    s1[..., -1] = torch.randint(1, 367, (3, 5)).float()
    with torch.no_grad():
        got = model(s2, s1)
        ref = _lin(torch.cat([_backbone(s2, sd, "s2_backbone", cfg),
                              _backbone(s1, sd, "s1_backbone", cfg)], -1), sd, "dim_reducer.0")
    assert got.shape == (3, 8)
    assert (got - ref).abs().max().item() <= 1e-5
