"""embed_pixels: shapes, zero pixels, reproducibility, batching, repeats, S1 gaps, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from btfm_core.errors import InputDataError
from btfm_infer.embed import embed_pixels
from btfm_infer.model import BTFM, ModelConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BTFM(ModelConfig(d_model=16, nhead=2, num_layers=1, dim_feedforward=32)).eval()


def _data(n=30, t=12, ta=5, td=4, seed=0):
    rng = np.random.default_rng(seed)
    bands = rng.integers(1, 10000, (n, t, 10)).astype(np.uint16)
    bands[3] = 0
    masks = (rng.random((n, t)) > 0.3).astype(np.uint8)
    asc = rng.integers(0, 9000, (n, ta, 2)).astype(np.int16)
    desc = rng.integers(0, 9000, (n, td, 2)).astype(np.int16)
    return (bands, masks, np.sort(rng.choice(np.arange(1, 366), t, replace=False)).astype(np.uint16),
            asc, np.arange(1, ta + 1, dtype=np.int32) * 20, desc, np.arange(1, td + 1, dtype=np.int32) * 30)


def test_shape_zero_and_reproducible(model):
    d = _data()
    a = embed_pixels(model, *d, seed=1)
    assert a.shape == (30, 128) and a.dtype == np.float32
    assert not a[3].any() and a[0].any()
    assert a.tobytes() == embed_pixels(model, *d, seed=1).tobytes()
    assert not np.allclose(a, embed_pixels(model, *d, seed=2))
    assert not np.allclose(a, embed_pixels(model, *d, seed=1, seed_key=(5,)))


def test_batch_size_independent(model):
    d = _data()
    a = embed_pixels(model, *d, batch_size=1024, sample_block=8)
    b = embed_pixels(model, *d, batch_size=3, sample_block=8)
    assert np.allclose(a, b, atol=1e-5)


def test_repeat(model):
    d = _data()
    r1 = embed_pixels(model, *d, repeat=1)
    r3 = embed_pixels(model, *d, repeat=3)
    assert r3.shape == r1.shape and not np.allclose(r1, r3)
    assert not r3[3].any()


def test_s1_directions_empty(model):
    bands, masks, doys, asc, ad, _desc, _dd = _data()
    empty, ed = np.zeros((30, 0, 2), np.int16), np.zeros(0, np.int32)
    one = embed_pixels(model, bands, masks, doys, asc, ad, empty, ed)
    both = embed_pixels(model, bands, masks, doys, empty, ed, empty, ed)
    assert np.isfinite(one).all() and np.isfinite(both).all() and both[0].any()


def test_per_pixel_doys_and_memmap(model, tmp_path):
    bands, masks, doys, asc, ad, desc, dd = _data()
    mm = np.lib.format.open_memmap(tmp_path / "b.npy", mode="w+", dtype=np.uint16, shape=bands.shape)
    mm[:] = bands
    a = embed_pixels(model, bands, masks, doys, asc, ad, desc, dd)
    b = embed_pixels(model, mm, masks, np.broadcast_to(doys, masks.shape).copy(), asc, ad, desc, dd)
    assert np.array_equal(a, b)


def test_no_time_steps(model):
    bands, masks, doys, asc, ad, desc, dd = _data(t=0)
    assert not embed_pixels(model, bands, masks, doys, asc, ad, desc, dd).any()


@pytest.mark.parametrize("case", ["ndim", "dtype", "n", "t", "doy_range", "nan", "bands"])
def test_validation(model, case):
    d = list(_data())
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
    elif case == "nan":
        f = d[0].astype(np.float32)
        f[0, 0, 0] = np.nan
        d[0] = f
    elif case == "bands":
        d[3] = d[3][..., :1]
    with pytest.raises(InputDataError):
        embed_pixels(model, *d)
