"""The time-step sampling rule and input assembly."""

from __future__ import annotations

import numpy as np

from btfm_infer.sampling import (
    S1_MEAN,
    S1_STD,
    S2_MEAN,
    S2_STD,
    build_s1_input,
    build_s2_input,
    sample_indices,
    sample_indices_reference,
)


def _valid():
    v = np.zeros((4, 12), dtype=bool)
    v[0] = True                 # 12 valid >= k
    v[1, [2, 5, 7]] = True      # 3 valid < k
    v[2] = False                # none valid -> all steps
    v[3, ::2] = True            # 6 valid >= k
    return v


def test_rule():
    v, k = _valid(), 5
    idx = sample_indices(v, k, np.random.default_rng(1))
    assert idx.shape == (4, k) and idx.dtype == np.int64
    assert (np.diff(idx, axis=1) >= 0).all()
    for row in (0, 1, 3):
        assert v[row, idx[row]].all()
    for row in (0, 3):
        assert len(set(idx[row])) == k
    assert set(idx[1]) <= {2, 5, 7}
    assert ((idx[2] >= 0) & (idx[2] < 12)).all()


def test_with_replacement_and_all_invalid_cover_candidates():
    v = _valid()
    idx = np.concatenate([sample_indices(v, 5, np.random.default_rng(s)) for s in range(50)], axis=1)
    assert set(idx[1]) == {2, 5, 7}
    assert set(idx[2]) == set(range(12))
    assert any(len(set(sample_indices(v, 5, np.random.default_rng(s))[1])) < 5 for s in range(5))


def test_reproducible():
    v = _valid()
    a = sample_indices(v, 5, np.random.default_rng(7))
    b = sample_indices(v, 5, np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_frequencies_match_reference():
    v = _valid()
    k, draws = 5, 3000
    rng_v, rng_r = np.random.default_rng(0), np.random.default_rng(1)
    fv = np.zeros(v.shape)
    fr = np.zeros(v.shape)
    rows = np.arange(4)[:, None]
    for _ in range(draws):
        np.add.at(fv, (rows, sample_indices(v, k, rng_v)), 1)
        np.add.at(fr, (rows, sample_indices_reference(v, k, rng_r)), 1)
    fv, fr = fv / draws, fr / draws
    assert np.abs(fv - fr).max() < 0.08
    assert np.allclose(fv[0], 5 / 12, atol=0.05)


def test_build_inputs():
    rng = np.random.default_rng(0)
    n, t = 3, 8
    bands = rng.integers(0, 10000, (n, t, 10)).astype(np.uint16)
    masks = np.ones((n, t), np.uint8)
    doys = np.arange(10, 10 + t, dtype=np.uint16)
    x = build_s2_input(bands, masks, doys, np.random.default_rng(0))
    assert x.shape == (n, 40, 11) and x.dtype == np.float32
    d = x[..., -1].astype(int) - 10
    want = (bands[np.arange(n)[:, None], d] - S2_MEAN) / (S2_STD + 1e-9)
    assert np.allclose(x[..., :10], want, atol=1e-5)
    asc = rng.integers(1, 9000, (n, 2, 2)).astype(np.int16)
    desc = np.zeros((n, 3, 2), np.int16)
    s1 = build_s1_input(asc, np.array([5, 6]), desc, np.array([7, 8, 9]), np.random.default_rng(0))
    assert s1.shape == (n, 40, 3) and set(np.unique(s1[..., -1])) <= {5.0, 6.0}
    empty = np.zeros((n, 0, 2), np.int16)
    e = build_s1_input(empty, np.zeros(0), empty, np.zeros(0), np.random.default_rng(0))
    assert e.shape == (n, 40, 3) and (e[..., 2] == 0).all()
    assert np.allclose(e[0, 0, :2], -S1_MEAN / S1_STD)
