"""embed_pixels: shapes, zero pixels, reproducibility, batching, repeats, S1 gaps, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from btfm_core.errors import InputDataError
from btfm_infer.embed import embed_pixels
from btfm_infer.model import BTFM, ModelConfig
from btfm_infer.sampling import build_s1_input, build_s2_input


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BTFM(ModelConfig(d_model=16, nhead=2, num_layers=1, dim_feedforward=32)).eval()


def _data(n=30, t=12, ta=5, td=4, seed=0):
    rng = np.random.default_rng(seed)
    bands = rng.integers(1, 10000, (n, t, 10)).astype(np.uint16)
    bands[3:4] = 0
    masks = (rng.random((n, t)) > 0.3).astype(np.uint8)
    asc = rng.integers(0, 9000, (n, ta, 2)).astype(np.int16)
    desc = rng.integers(0, 9000, (n, td, 2)).astype(np.int16)
    return (bands, masks, np.sort(rng.choice(np.arange(1, 366), t, replace=False)).astype(np.uint16),
            asc, np.arange(1, ta + 1, dtype=np.int32) * 20, desc, np.arange(1, td + 1, dtype=np.int32) * 30)


def _manual(model, d, seed, r, block=0, key=()):
    """The documented draw for one block, run through the model directly."""
    bands, masks, doys, asc, ad, desc, dd = d
    active = np.flatnonzero(bands.reshape(len(bands), -1).any(axis=1))
    rng = np.random.default_rng([seed, r, block, len(key), *key])
    x2 = build_s2_input(bands[active], masks[active], doys, rng)
    x1 = build_s1_input(asc[active], ad, desc[active], dd, rng)
    out = np.zeros((len(bands), 128), np.float32)
    with torch.no_grad():
        out[active] = model(torch.from_numpy(x2), torch.from_numpy(x1)).numpy()
    return out


def test_shape_zero_and_reproducible(model):
    d = _data()
    a = embed_pixels(model, *d, seed=1)
    assert a.shape == (30, 128) and a.dtype == np.float32
    assert not a[3].any() and (np.abs(a[np.arange(30) != 3]).sum(axis=1) > 0).all()
    assert a.tobytes() == embed_pixels(model, *d, seed=1).tobytes()
    assert not np.allclose(a, embed_pixels(model, *d, seed=2))
    assert not np.allclose(a, embed_pixels(model, *d, seed=1, seed_key=(5,)))
    # the key's length is part of the seed: (5,) and (5, 0) are different draws
    assert not np.allclose(embed_pixels(model, *d, seed_key=(5,)), embed_pixels(model, *d, seed_key=(5, 0)))


def test_matches_documented_draw(model):
    d = _data()
    assert np.allclose(embed_pixels(model, *d, seed=4, seed_key=(7, 9)), _manual(model, d, 4, 0, key=(7, 9)),
                       atol=1e-6)


def test_batch_size_independent(model):
    d = _data()
    a = embed_pixels(model, *d, batch_size=1024, sample_block=8)
    b = embed_pixels(model, *d, batch_size=3, sample_block=8)
    c = embed_pixels(model, *d, batch_size=1, sample_block=8)
    assert np.allclose(a, b, rtol=1e-6, atol=1e-6) and np.allclose(a, c, rtol=1e-6, atol=1e-6)
    assert not np.allclose(a, embed_pixels(model, *d, sample_block=9))  # blocks are part of the contract


def test_repeat_averages_draws(model):
    d = _data()
    r1 = embed_pixels(model, *d, repeat=1)
    r3 = embed_pixels(model, *d, repeat=3)
    assert r3.shape == r1.shape and not np.allclose(r1, r3)
    assert not r3[3].any()
    want = np.mean([_manual(model, d, 0, r) for r in range(3)], axis=0)
    assert np.allclose(r3, want, atol=1e-6)
    assert np.allclose(r1, _manual(model, d, 0, 0), atol=1e-6)


def test_s1_directions_empty(model):
    bands, masks, doys, asc, ad, desc, dd = _data()
    n = len(bands)
    empty, ed = np.zeros((n, 0, 2), np.int16), np.zeros(0, np.int32)
    only_asc = embed_pixels(model, bands, masks, doys, asc, ad, empty, ed)
    only_desc = embed_pixels(model, bands, masks, doys, empty, ed, desc, dd)
    both_empty = embed_pixels(model, bands, masks, doys, empty, ed, empty, np.zeros((n, 0)))
    for out in (only_asc, only_desc, both_empty):
        assert np.isfinite(out).all() and out[0].any() and not out[3].any()
    assert not np.allclose(only_asc, both_empty)


def test_per_pixel_doys_and_memmap(model, tmp_path):
    bands, masks, doys, asc, ad, desc, dd = _data()
    mm = np.lib.format.open_memmap(tmp_path / "b.npy", mode="w+", dtype=np.uint16, shape=bands.shape)
    mm[:] = bands
    mm.flush()
    ro = np.load(tmp_path / "b.npy", mmap_mode="r")
    a = embed_pixels(model, bands, masks, doys, asc, ad, desc, dd, sample_block=7)
    b = embed_pixels(model, ro, masks, np.broadcast_to(doys, masks.shape).copy(), asc, ad, desc, dd,
                     sample_block=7)
    assert np.array_equal(a, b)


def test_no_time_steps_and_no_pixels(model):
    bands, masks, doys, asc, ad, desc, dd = _data(t=0)
    assert not embed_pixels(model, bands, masks, doys, asc, ad, desc, dd).any()
    bands, masks, doys, asc, ad, desc, dd = _data(n=0)
    assert embed_pixels(model, bands, masks, doys, asc, ad, desc, dd).shape == (0, 128)


def test_model_mode_restored_and_device(model):
    d = _data()
    model.train()
    try:
        a = embed_pixels(model, *d)
        assert model.training
    finally:
        model.eval()
    assert np.array_equal(a, embed_pixels(model, *d, device="cpu"))
    with pytest.raises(ValueError, match="model is on cpu"):
        embed_pixels(model, *d, device="cuda")


@pytest.mark.parametrize("case", ["ndim", "dtype", "n", "t", "doy_range", "doy_shape", "nan", "inf", "bands",
                                  "mask_dtype", "repeat", "batch", "seed", "key"])
def test_validation(model, case):
    d = list(_data())
    kw = {}
    if case == "ndim":
        d[0] = d[0][0]
    elif case == "dtype":
        d[0] = d[0].astype(str)
    elif case == "n":
        d[3] = d[3][:5]
    elif case == "t":
        d[1] = d[1][:, :3]
    elif case == "doy_range":
        d[2] = d[2].astype(np.int32) + 400
    elif case == "doy_shape":
        d[4] = d[4][:2]
    elif case in ("nan", "inf"):
        f = d[0].astype(np.float32)
        f[20, 0, 0] = np.nan if case == "nan" else np.inf
        d[0] = f
    elif case == "bands":
        d[3] = d[3][..., :1]
    elif case == "mask_dtype":
        d[1] = d[1].astype(complex)
    elif case == "repeat":
        kw["repeat"] = 0
    elif case == "batch":
        kw["batch_size"] = 0
    elif case == "seed":
        kw["seed"] = -1
    elif case == "key":
        kw["seed_key"] = (1, -2)
    with pytest.raises(InputDataError):
        embed_pixels(model, *d, **kw)
