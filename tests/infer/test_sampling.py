"""The time-step sampling rule and input assembly."""

from __future__ import annotations

import numpy as np
import pytest

from btfm_infer.sampling import (
    S1_MEAN,
    S1_STD,
    S2_MEAN,
    S2_STD,
    SEQ_LEN,
    build_s1_input,
    build_s2_input,
    sample_indices,
    sample_indices_reference,
)


def _valid():
    v = np.zeros((5, 12), dtype=bool)
    v[0] = True                 # 12 valid >= k
    v[1, [2, 5, 7]] = True      # 3 valid < k: with replacement
    v[2] = False                # none valid -> all steps, 12 >= k
    v[3, ::2] = True            # 6 valid >= k
    v[4, [0, 1, 3, 4, 11]] = True  # exactly k valid: all of them
    return v


def test_constants():
    assert SEQ_LEN == 40
    assert S2_MEAN.dtype == S2_STD.dtype == S1_MEAN.dtype == S1_STD.dtype == np.float32
    assert S2_MEAN.shape == S2_STD.shape == (10,) and S1_MEAN.shape == S1_STD.shape == (2,)
    assert S2_MEAN[0] == np.float32(1711.0938) and S2_STD[-1] == np.float32(1398.4779)
    assert S1_MEAN[1] == np.float32(3003.7812) and S1_STD[0] == np.float32(1871.2334)


def test_rule():
    v, k = _valid(), 5
    for seed in range(20):
        idx = sample_indices(v, k, np.random.default_rng(seed))
        assert idx.shape == (5, k) and idx.dtype == np.int64
        assert (np.diff(idx, axis=1) >= 0).all()                  # sorted (time order)
        for row in (0, 1, 3, 4):
            assert v[row, idx[row]].all()                         # invalid never drawn
        for row in (0, 2, 3, 4):
            assert len(set(idx[row])) == k                        # no duplicates when count >= k
        assert set(idx[1]) <= {2, 5, 7}
        assert ((idx[2] >= 0) & (idx[2] < 12)).all()
        assert idx[4].tolist() == [0, 1, 3, 4, 11]


def test_with_replacement_and_all_invalid_cover_candidates():
    v = _valid()
    idx = np.concatenate([sample_indices(v, 5, np.random.default_rng(s)) for s in range(50)], axis=1)
    assert set(idx[1]) == {2, 5, 7}
    assert set(idx[2]) == set(range(12))
    assert all(len(set(sample_indices(v, 5, np.random.default_rng(s))[1])) <= 3 for s in range(5))


def test_k_larger_than_t():
    v = np.array([[True, False, True], [False, False, False]])
    idx = sample_indices(v, 40, np.random.default_rng(0))
    assert idx.shape == (2, 40)
    assert set(idx[0]) == {0, 2} and set(idx[1]) == {0, 1, 2}


def test_errors():
    with pytest.raises(ValueError, match="zero time steps"):
        sample_indices(np.zeros((3, 0), bool), 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="k must be"):
        sample_indices(np.ones((3, 4), bool), 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="N, T"):
        sample_indices(np.ones(4, bool), 2, np.random.default_rng(0))


def test_reproducible_and_seed_dependent():
    v = np.random.default_rng(3).random((200, 30)) > 0.4
    a = sample_indices(v, 10, np.random.default_rng(7))
    b = sample_indices(v, 10, np.random.default_rng(7))
    c = sample_indices(v, 10, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def _frequencies(fn, v, k, draws, seed):
    rng = np.random.default_rng(seed)
    f = np.zeros(v.shape)
    rows = np.arange(v.shape[0])[:, None]
    for _ in range(draws):
        np.add.at(f, (rows, fn(v, k, rng)), 1)
    return f


def _chi_square_ok(counts, expected):
    """Pearson chi-square over the cells with expected > 0, against a generous bound."""
    stat = ((counts - expected) ** 2 / expected).sum()
    dof = len(counts) - 1
    return stat < dof + 6 * np.sqrt(2 * dof)  # ~ mean + 6 sd of the chi-square distribution


def test_every_candidate_equally_likely():
    v, k, draws = _valid(), 5, 4000
    f = _frequencies(sample_indices, v, k, draws, 0)
    for row in range(v.shape[0]):
        cand = np.flatnonzero(v[row]) if v[row].any() else np.arange(v.shape[1])
        assert f[row, np.setdiff1d(np.arange(v.shape[1]), cand)].sum() == 0
        expected = np.full(cand.size, k * draws / cand.size)
        assert _chi_square_ok(f[row, cand], expected), (row, f[row, cand])


def test_frequencies_match_reference():
    v, k, draws = _valid(), 5, 3000
    fv = _frequencies(sample_indices, v, k, draws, 0) / draws
    fr = _frequencies(sample_indices_reference, v, k, draws, 1) / draws
    assert np.abs(fv - fr).max() < 0.08
    assert np.allclose(fv[0], 5 / 12, atol=0.05)


def test_with_replacement_draw_count_distribution():
    # 3 candidates, k = 5 with replacement: the count of one candidate is Binomial(5, 1/3).
    v = np.zeros((1, 6), bool)
    v[0, [1, 2, 4]] = True
    rng, draws = np.random.default_rng(5), 3000
    counts = np.array([(sample_indices(v, 5, rng)[0] == 1).sum() for _ in range(draws)])
    ref_rng = np.random.default_rng(6)
    ref = np.array([(sample_indices_reference(v, 5, ref_rng)[0] == 1).sum() for _ in range(draws)])
    assert abs(counts.mean() - 5 / 3) < 0.1 and abs(counts.var() - 10 / 9) < 0.15
    assert abs(counts.mean() - ref.mean()) < 0.12


def test_build_s2_input():
    rng = np.random.default_rng(0)
    n, t = 3, 8
    bands = rng.integers(0, 10000, (n, t, 10)).astype(np.uint16)
    masks = np.ones((n, t), np.uint8)
    masks[1, :5] = 0
    doys = np.arange(10, 10 + t, dtype=np.uint16)
    x = build_s2_input(bands, masks, doys, np.random.default_rng(0))
    assert x.shape == (n, 40, 11) and x.dtype == np.float32
    d = x[..., -1].astype(int) - 10
    assert (np.diff(d, axis=1) >= 0).all() and (d[1] >= 5).all()
    want = (bands[np.arange(n)[:, None], d].astype(np.float32) - S2_MEAN) / (S2_STD + 1e-9)
    assert np.allclose(x[..., :10], want, atol=1e-6)
    per_pixel = build_s2_input(bands, masks, np.broadcast_to(doys, (n, t)).copy(), np.random.default_rng(0))
    assert np.array_equal(per_pixel, x)


def test_build_s1_input_directions():
    rng = np.random.default_rng(0)
    n = 3
    asc = rng.integers(1, 9000, (n, 2, 2)).astype(np.int16)
    desc = rng.integers(1, 9000, (n, 3, 2)).astype(np.int16)
    desc[0] = 0  # pixel 0: descending all no-data -> only ascending steps drawn
    both = build_s1_input(asc, np.array([5, 6]), desc, np.array([7, 8, 9]), np.random.default_rng(0))
    assert both.shape == (n, 40, 3) and both.dtype == np.float32
    assert set(np.unique(both[0, :, 2])) == {5.0, 6.0}
    assert set(np.unique(both[1, :, 2])) == {5.0, 6.0, 7.0, 8.0, 9.0}
    raw = np.concatenate([asc, desc], axis=1)
    step = {5: 0, 6: 1, 7: 2, 8: 3, 9: 4}
    i = np.vectorize(step.get)(both[..., 2].astype(int))
    want = (raw[np.arange(n)[:, None], i].astype(np.float32) - S1_MEAN) / (S1_STD + 1e-9)
    assert np.allclose(both[..., :2], want, atol=1e-6)

    empty, no_days = np.zeros((n, 0, 2), np.int16), np.zeros(0, np.int32)
    only_desc = build_s1_input(empty, no_days, desc, np.array([7, 8, 9]), np.random.default_rng(0))
    assert set(np.unique(only_desc[1:, :, 2])) <= {7.0, 8.0, 9.0}
    only_asc = build_s1_input(asc, np.tile(np.array([5, 6], np.int32), (n, 1)), empty, np.zeros((n, 0)),
                              np.random.default_rng(0))
    assert set(np.unique(only_asc[..., 2])) == {5.0, 6.0}


def test_build_s1_input_no_s1_at_all():
    n = 4
    empty = np.zeros((n, 0, 2), np.int16)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    e = build_s1_input(empty, np.zeros(0), empty, np.zeros(0), rng)
    assert rng.bit_generator.state == state  # nothing drawn
    assert e.shape == (n, 40, 3) and e.dtype == np.float32 and (e[..., 2] == 0).all()
    assert np.allclose(e[..., :2], -S1_MEAN / S1_STD)
    # the same as a pixel whose S1 steps are all "no data" (raw 0) apart from the day column
    zeros = np.zeros((n, 3, 2), np.int16)
    z = build_s1_input(zeros, np.array([1, 2, 3]), empty, np.zeros(0), np.random.default_rng(0))
    assert np.array_equal(z[..., :2], e[..., :2])
