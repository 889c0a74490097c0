"""Checkpoint loading (official layout, prefixes, projector), errors, metadata and round trip."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from btfm_core.errors import CheckpointError
from btfm_infer.checkpoint import load_model, read_checkpoint_metadata, save_checkpoint
from btfm_infer.model import BTFM, DEMO, ModelConfig, Projector

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ModelConfig(d_model=16, nhead=8, num_layers=3, dim_feedforward=24, embedding_dim=8)


def _inputs():
    g = torch.Generator().manual_seed(0)
    s2 = torch.randn(2, 5, 11, generator=g)
    s1 = torch.randn(2, 4, 3, generator=g)
    s2[..., -1] = s2[..., -1].abs() * 100
    s1[..., -1] = s1[..., -1].abs() * 100
    return s2, s1


def _same_outputs(a: BTFM, b: BTFM) -> bool:
    s2, s1 = _inputs()
    with torch.no_grad():
        return torch.equal(a.eval()(s2, s1), b.eval()(s2, s1))


@pytest.mark.parametrize("container", ["model_state_dict", "model_state"])
def test_official_layout_with_prefixes_and_projector(tmp_path, container):
    torch.manual_seed(0)
    model = BTFM(TINY).eval()
    state = {f"_orig_mod.module.{k}": v for k, v in model.state_dict().items()}
    state |= {f"_orig_mod.projector.{k}": v for k, v in Projector(8, 12).state_dict().items()}
    assert "_orig_mod.projector.net.0.weight" in state and "_orig_mod.projector.net.1.running_var" in state
    path = tmp_path / "official.pt"
    torch.save({container: state, "epoch": 3, "optimizer_state_dict": {"lr": 0.1}}, path)
    loaded = load_model(path)
    assert loaded.config == TINY  # dims from shapes; nhead 8 because d_model % 8 == 0
    assert not loaded.training
    assert not hasattr(loaded, "projector")
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert _same_outputs(loaded, model)
    assert read_checkpoint_metadata(path) == {}


def test_bare_state_dict_with_module_prefix(tmp_path):
    model = BTFM(TINY)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "bare.pt")
    assert _same_outputs(load_model(tmp_path / "bare.pt"), model)


def test_nhead_guess_and_override(tmp_path):
    cfg = ModelConfig(d_model=12, nhead=3, num_layers=1, dim_feedforward=20, embedding_dim=8)
    model = BTFM(cfg)
    torch.save({"model_state_dict": model.state_dict()}, tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt").config.nhead == 4  # largest of 8, 4, 2, 1 dividing 12
    forced = load_model(tmp_path / "m.pt", nhead=3)
    assert forced.config == cfg and _same_outputs(forced, model)
    with pytest.raises(CheckpointError, match="does not divide"):
        load_model(tmp_path / "m.pt", nhead=5)


def test_round_trip(tmp_path):
    cfg = ModelConfig(d_model=12, nhead=3, num_layers=1, dim_feedforward=20, embedding_dim=8)
    model = BTFM(cfg).eval()
    path = save_checkpoint(model, tmp_path / "sub" / "m.pt", config=cfg, model_card="card",
                           extra_metadata={"seed": 1, "notes": {"a": [1, 2.5, None]}}, extra={"trained": False})
    assert path == tmp_path / "sub" / "m.pt" and not list(path.parent.glob(".tmp-*"))
    loaded = load_model(path)
    assert loaded.config == cfg  # nhead 3 from our metadata
    assert _same_outputs(loaded, model)
    meta = read_checkpoint_metadata(path)
    assert meta["format"] == "btfm-checkpoint" and meta["version"] == 1
    assert meta["config"] == cfg.to_dict() and meta["seq_len"] == 40
    assert meta["model_card"] == "card" and meta["seed"] == 1 and meta["trained"] is False
    assert meta["notes"] == {"a": [1, 2.5, None]}
    assert meta["s2_bands"][0] == "B04" and meta["s1_bands"] == ["VV", "VH"]
    assert np.isclose(meta["normalisation"]["s1_mean"][0], 5484.0407)
    assert np.isclose(meta["normalisation"]["s2_std"][9], 1398.4779)
    # a plain weights-only load reads it too
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model_state_dict", "btfm"}


def test_save_is_deterministic(tmp_path):
    torch.manual_seed(0)
    model = BTFM(TINY)
    a = save_checkpoint(model, tmp_path / "a.pt").read_bytes()
    b = save_checkpoint(model, tmp_path / "other" / "b.pt").read_bytes()
    assert a == b


def test_save_rejects_unsafe_or_reserved_metadata(tmp_path):
    model = BTFM(TINY)
    with pytest.raises(TypeError, match="only str"):
        save_checkpoint(model, tmp_path / "m.pt", extra_metadata={"when": np.float64(1.0).dtype})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(model, tmp_path / "m.pt", extra_metadata={"config": {}})
    with pytest.raises(ValueError, match="differs"):
        save_checkpoint(model, tmp_path / "m.pt", config=DEMO)
    assert not (tmp_path / "m.pt").exists()


def test_metadata_disagreeing_with_shapes_warns(tmp_path):
    model = BTFM(TINY)
    torch.save({"model_state_dict": model.state_dict(),
                "btfm": {"config": {**TINY.to_dict(), "num_layers": 5}}}, tmp_path / "m.pt")
    with pytest.warns(RuntimeWarning, match="disagrees"):
        assert load_model(tmp_path / "m.pt").config == TINY


def test_shipped_demo_checkpoint_loads():
    path = REPO_ROOT / "checkpoints" / "btfm_demo.pt"
    assert path.stat().st_size < 5e6
    meta = read_checkpoint_metadata(path)
    assert "Barlow Twins" in meta["model_card"] and "Not the official" in meta["model_card"]
    report = json.loads(meta["training_report"])
    assert report["data"]["probe_test"] > 0 and set(report["probe"]) == {
        "trained", "untrained_same_architecture", "raw_bands_logistic_regression"}
    model = load_model(path)
    assert model.config == DEMO and not model.training


# ---- errors ----
def test_missing(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_model(tmp_path / "nope.pt")
    assert "nope.pt" in str(info.value) and "--checkpoint" in str(info.value)
    with pytest.raises(CheckpointError, match="not a file"):
        load_model(tmp_path)


def test_truncated(tmp_path):
    path = save_checkpoint(BTFM(TINY), tmp_path / "m.pt", config=TINY)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_model(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("payload", [b"", b"not a checkpoint at all\n", None])
def test_random_bytes(tmp_path, payload):
    path = tmp_path / "r.pt"
    path.write_bytes(np.random.default_rng(0).bytes(1000) if payload is None else payload)
    with pytest.raises(CheckpointError, match=r"r\.pt"):
        load_model(path)


def test_unsafe_pickle_is_refused_with_advice(tmp_path):
    path = tmp_path / "u.pt"
    torch.save({"model_state_dict": BTFM(TINY).state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match="weights_only=True") as info:
        load_model(path)
    assert "re-save" in str(info.value) and "argparse.Namespace" in str(info.value)
    assert "\x1b" not in str(info.value)


@pytest.mark.parametrize("obj", [{"model_state_dict": {"fc.weight": torch.zeros(2, 2)}},
                                 {"epoch": 3}, torch.zeros(3), [1, 2]])
def test_unrelated_content(tmp_path, obj):
    torch.save(obj, tmp_path / "u.pt")
    with pytest.raises(CheckpointError, match="not a BTFM checkpoint: expected keys like s2_backbone"):
        load_model(tmp_path / "u.pt")


def test_wrong_shapes_and_missing_keys(tmp_path):
    state = BTFM(TINY).state_dict()
    bad = dict(state)
    bad["s1_backbone.transformer_encoder.layers.0.linear1.weight"] = torch.zeros(5, 16)
    torch.save({"model_state_dict": bad}, tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match=r"wrong shape: s1_backbone\.transformer_encoder\.layers\.0\.linear1"):
        load_model(tmp_path / "s.pt")
    missing = {k: v for k, v in state.items() if not k.startswith("dim_reducer")}
    torch.save({"model_state_dict": missing}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="dim_reducer"):
        load_model(tmp_path / "m.pt")
    no_gru = {k: v for k, v in state.items() if "temporal_context" not in k}
    torch.save({"model_state_dict": no_gru}, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match=r"8 missing: .*temporal_context.* and 5 more"):
        load_model(tmp_path / "g.pt")
    shallow_s1 = {k: v for k, v in state.items() if "s1_backbone.transformer_encoder.layers.2." not in k}
    torch.save({"model_state_dict": shallow_s1}, tmp_path / "l.pt")
    with pytest.raises(CheckpointError, match="3 S2 but 2 S1"):
        load_model(tmp_path / "l.pt")
    gap = {k: v for k, v in state.items() if ".transformer_encoder.layers.1." not in k}
    torch.save({"model_state_dict": gap}, tmp_path / "gap.pt")
    with pytest.raises(CheckpointError, match=r"layers \[0, 2\]"):
        load_model(tmp_path / "gap.pt")


def test_cuda_unavailable_warns(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    path = save_checkpoint(BTFM(TINY), tmp_path / "m.pt", config=TINY)
    with pytest.warns(RuntimeWarning, match="CUDA"):
        model = load_model(path, device="cuda")
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        load_model(path, device="gpu0")
