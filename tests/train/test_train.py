"""Barlow Twins training pieces: loss, schedule, data loaders, resume, probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from btfm_infer.model import BTFM, ModelConfig
from btfm_train.barlow import TrainConfig, barlow_twins_loss, learning_rate, make_views, train
from btfm_train.data import (
    PixelSeries,
    concat,
    group_split,
    load_worldcereal_long,
    load_worldcereal_wide,
    worldcereal_s1_to_code,
)
from btfm_train.probe import linear_probe, raw_band_series
from tests.conftest import SHARED_DATA

TINY = ModelConfig(d_model=16, nhead=2, num_layers=1, dim_feedforward=32)
TABLES = SHARED_DATA / "pretrain_and_dev_eval"


def synthetic(n: int = 64, t: int = 12, seed: int = 0) -> PixelSeries:
    rng = np.random.default_rng(seed)
    labels = np.array(["a", "b"])[rng.integers(0, 2, n)]
    bands = rng.integers(300, 3000, (n, t, 10)).astype(np.uint16)
    bands[labels == "b", :, 3] += 2000  # class b is greener
    return PixelSeries(
        s2_bands=bands, s2_masks=(rng.random((n, t)) > 0.2).astype(np.uint8),
        s2_doys=np.tile(np.arange(1, t + 1, dtype=np.uint16) * 30, (n, 1)),
        s1=rng.integers(4000, 9000, (n, t, 2)).astype(np.int16),
        s1_doys=np.tile(np.arange(t, dtype=np.int32) * 30 + 5, (n, 1)),
        labels=labels, groups=np.array([f"p{i}" for i in range(n)]))


def test_loss_is_zero_for_perfectly_correlated_decorrelated_views() -> None:
    z = torch.linalg.qr(torch.randn(512, 8))[0] * np.sqrt(512)  # orthogonal columns, unit variance
    assert float(barlow_twins_loss(z, z, 5e-3)) < 0.05
    noisy = barlow_twins_loss(z, torch.randn(512, 8), 5e-3)
    assert float(noisy) > 5.0


def test_learning_rate_warms_up_then_decays() -> None:
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0)
    assert learning_rate(0, cfg) == pytest.approx(0.1)
    assert learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(99, cfg) < 0.05


def test_two_views_are_different_draws_of_one_pixel() -> None:
    data = synthetic()
    s2a, s1a, s2b, _ = make_views(data, np.arange(8), np.random.default_rng(0))
    assert s2a.shape == (8, 40, 11) and s1a.shape == (8, 40, 3)
    assert not torch.equal(s2a, s2b)
    assert set(np.unique(s2a[..., -1].numpy())) <= set(data.s2_doys[0].tolist())


def test_training_lowers_loss_and_resumes_identically(tmp_path: Path) -> None:
    data = synthetic(n=128)
    cfg = TrainConfig(steps=6, batch_size=32, warmup_steps=2, projector_dim=32, checkpoint_every=3)
    torch.manual_seed(0)
    full = BTFM(TINY)
    history = train(full, data, cfg, state_path=tmp_path / "full.pt")
    assert len(history) == 6 and np.isfinite([h["loss"] for h in history]).all()

    torch.manual_seed(0)
    part = BTFM(TINY)
    train(part, data, TrainConfig(**{**cfg.__dict__, "steps": 3}), state_path=tmp_path / "part.pt")
    torch.manual_seed(0)
    resumed = BTFM(TINY)
    train(resumed, data, cfg, state_path=tmp_path / "part.pt")
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_probe_separates_an_easy_signal() -> None:
    data = synthetic(n=200)
    x = raw_band_series(data)
    test = group_split(data.groups, 0.3)
    result = linear_probe(x[~test], data.labels[~test], x[test], data.labels[test])
    assert result.accuracy > 0.9 and result.n_classes == 2


def test_group_split_is_stable() -> None:
    groups = np.array([f"g{i}" for i in range(1000)])
    split = group_split(groups, 0.3)
    assert 0.25 < split.mean() < 0.35 and np.array_equal(split, group_split(groups, 0.3))


def test_concat_pads_time_with_invalid_steps() -> None:
    merged = concat([synthetic(4, 12), synthetic(3, 8)])
    assert merged.s2_bands.shape == (7, 12, 10) and merged.s2_masks[4:, 8:].sum() == 0


def test_worldcereal_backscatter_conversion() -> None:
    dn = np.array([0, 65535, 10 ** ((-10 + 83) / 20)])
    assert worldcereal_s1_to_code(dn).tolist() == [0, 0, 6000]  # -10 dB -> 400 * -10 + 10000


@pytest.mark.skipif(not TABLES.is_dir(), reason="WorldCereal tables (../shared/data) not available")
def test_real_tables_load_in_tile_encodings() -> None:
    long = load_worldcereal_long(TABLES / "private_extractions_dummy_BEL_LPIS-Flanders_data_0.parquet")
    wide = load_worldcereal_wide(TABLES / "test_public_extractions.parquet")
    for series in (long, wide):
        assert series.s2_bands.dtype == np.uint16 and series.s2_bands.shape[1:] == (12, 10)
        assert series.s1.dtype == np.int16 and (np.diff(series.s2_doys.astype(int), axis=1) >= 0).all()
        assert 0.8 < series.s2_masks.mean() <= 1.0
    assert len(long) == 100 and len(wide) == 500
