"""Checkpoint loading (official layout, prefixes, projector), errors and round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from btfm_core.errors import CheckpointError
from btfm_infer.checkpoint import load_model, read_checkpoint_metadata, save_checkpoint
from btfm_infer.model import BTFM, ModelConfig, Projector

TINY = ModelConfig(d_model=16, nhead=8, num_layers=3, dim_feedforward=24, embedding_dim=8)


def _inputs():
    g = torch.Generator().manual_seed(0)
    s2 = torch.randn(2, 5, 11, generator=g)
    s1 = torch.randn(2, 4, 3, generator=g)
    return s2, s1


@pytest.mark.parametrize("container", ["model_state_dict", "model_state"])
def test_official_layout_with_prefixes_and_projector(tmp_path, container):
    torch.manual_seed(0)
    model = BTFM(TINY).eval()
    state = {f"_orig_mod.module.{k}": v for k, v in model.state_dict().items()}
    state |= {f"module.projector.{k}": v for k, v in Projector(8, 12).state_dict().items()}
    path = tmp_path / "official.pt"
    torch.save({container: state, "epoch": 3}, path)
    loaded = load_model(path)
    assert loaded.config == TINY  # nhead 8 guessed from d_model % 8 == 0
    assert not loaded.training
    assert not any(k.startswith("projector") for k in loaded.state_dict())
    s2, s1 = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(s2, s1), model(s2, s1))


def test_bare_state_dict(tmp_path):
    model = BTFM(TINY)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    assert load_model(tmp_path / "bare.pt").config == TINY


def test_round_trip(tmp_path):
    cfg = ModelConfig(d_model=12, nhead=3, num_layers=1, dim_feedforward=20, embedding_dim=8)
    model = BTFM(cfg).eval()
    path = save_checkpoint(model, tmp_path / "sub" / "m.pt", config=cfg, model_card="card",
                           extra={"seed": 1})
    loaded = load_model(path)
    assert loaded.config == cfg
    s2, s1 = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(s2, s1), model(s2, s1))
    meta = read_checkpoint_metadata(path)
    assert meta["model_card"] == "card" and meta["seed"] == 1 and meta["s2_bands"][0] == "B04"
    assert np.isclose(meta["normalisation"]["s1_mean"][0], 5484.0407)


def test_demo_checkpoint_loads():
    import json
    from pathlib import Path

    path = Path(__file__).parents[2] / "checkpoints" / "btfm_demo.pt"
    assert path.stat().st_size < 5e6
    meta = read_checkpoint_metadata(path)
    assert "Barlow Twins" in meta["model_card"] and "Not the official" in meta["model_card"]
    report = json.loads(meta["training_report"])
    assert report["data"]["probe_test"] > 0 and set(report["probe"]) == {
        "trained", "untrained_same_architecture", "raw_bands_logistic_regression"}
    assert load_model(path).config.d_model == 64


def test_missing(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


def test_truncated(tmp_path):
    path = save_checkpoint(BTFM(TINY), tmp_path / "m.pt", config=TINY)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "r.pt"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(CheckpointError):
        load_model(path)


def test_unrelated_keys(tmp_path):
    torch.save({"model_state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "u.pt")
    with pytest.raises(CheckpointError, match="not a BTFM checkpoint"):
        load_model(tmp_path / "u.pt")


def test_wrong_shapes_and_missing_keys(tmp_path):
    state = BTFM(TINY).state_dict()
    bad = dict(state)
    bad["s1_backbone.transformer_encoder.layers.0.linear1.weight"] = torch.zeros(5, 16)
    torch.save({"model_state_dict": bad}, tmp_path / "s.pt")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "s.pt")
    missing = {k: v for k, v in state.items() if not k.startswith("dim_reducer")}
    torch.save({"model_state_dict": missing}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "m.pt")


def test_cuda_unavailable_warns(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    path = save_checkpoint(BTFM(TINY), tmp_path / "m.pt", config=TINY)
    with pytest.warns(RuntimeWarning, match="CUDA"):
        model = load_model(path, device="cuda")
    assert next(model.parameters()).device.type == "cpu"
