"""Distinct-step inference equals full-sequence inference (exact FLOP savings, issue 10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from btfm_infer.bucketing import bucket_lengths, embed_bucketed, s1_series, sequence_batch
from btfm_infer.embed import embed_pixels
from btfm_infer.families import STATS, Family
from btfm_infer.model import BTFM, ModelConfig
from btfm_infer.unique_tokens import DistinctSteps, encode_distinct, useful_tokens

CPU = torch.device("cpu")


class FullSequences(torch.nn.Module):
    """A BTFM seen as an engine that runs the 40 drawn steps as they are (like ONNX Runtime)."""

    def __init__(self, model: BTFM) -> None:
        super().__init__()
        self.model, self.config, self.stats = model, model.config, model.stats

    @property
    def family(self) -> Family:
        return self.model.family

    def forward(self, s2_x: torch.Tensor, s1_x: torch.Tensor) -> torch.Tensor:
        return self.model(s2_x, s1_x)


def small(family: str, **kw: object) -> BTFM:
    torch.manual_seed(0)
    stats = STATS["v1.1-mpc"] if family == "v1.1" else None
    return BTFM(ModelConfig(d_model=32, nhead=4, num_layers=2, dim_feedforward=64, family=family, **kw),
                stats).eval()


def cloudy_pixels(n: int, t: int = 30, seed: int = 0) -> list[np.ndarray]:
    """Pixels with 0..t valid S2 steps (many below 40, so draws repeat) and one S1 direction."""
    rng = np.random.default_rng(seed)
    valid_share = rng.random((n, 1))
    return [rng.integers(1, 6000, (n, t, 10)).astype(np.uint16),
            (rng.random((n, t)) < valid_share).astype(np.uint8),
            np.sort(rng.choice(np.arange(1, 366), t, replace=False)).astype(np.int32),
            (rng.integers(3000, 9000, (n, 20, 2)) * (rng.random((n, 20, 1)) > 0.2)).astype(np.int16),
            np.arange(1, 21, dtype=np.int32), np.zeros((n, 0, 2), np.int16), np.zeros(0, np.int32)]


def test_distinct_steps_round_trip() -> None:
    steps = np.array([[0, 0, 1, 3, 3, 3], [5, 4, 5, 4, 5, 4], [2, 2, 2, 2, 2, 2]])
    d = DistinctSteps(steps)
    assert d.counts.tolist() == [3, 2, 1]
    assert d.index.tolist() == [[0, 1, 3], [4, 5, 4], [2, 2, 2]]
    assert d.multiplicity.tolist() == [[2, 1, 3], [3, 3, 0], [6, 0, 0]]
    assert (np.take_along_axis(d.index, d.expand, axis=1) == steps).all()
    assert useful_tokens(steps) == 6
    with pytest.raises(ValueError):
        DistinctSteps(np.zeros((2, 0), np.int64))


@pytest.mark.parametrize(("family", "qk_norm"), [("v1.0", False), ("v1.0-qat", False), ("v1.1", False),
                                                 ("v2", True), ("v2", False)])
def test_backbone_on_distinct_steps_equals_full_sequences(family: str, qk_norm: bool) -> None:
    model = small(family, qk_norm=qk_norm)
    rng = np.random.default_rng(1)
    n, t = 40, 25
    values = rng.normal(size=(n, t, 10)).astype(np.float32)
    doys = np.broadcast_to(np.sort(rng.choice(365, t, replace=False)).astype(np.float32), (n, t))
    steps = np.sort(rng.integers(0, rng.integers(1, t, size=(n, 1)), size=(n, 40)), axis=1)
    rows = np.arange(n)[:, None]
    full = np.concatenate([values[rows, steps], doys[rows, steps][..., None]], axis=-1)
    with torch.inference_mode():
        expected = model.s2_backbone(torch.from_numpy(full)).numpy()
        got = encode_distinct(model.s2_backbone, values, doys, steps, tokens_per_batch=97, device=CPU,
                              dtype=torch.float32)
    assert np.abs(got - expected).max() <= 1e-5
    assert useful_tokens(steps) < steps.size  # the case has repeats to save


@pytest.mark.parametrize(("family", "dates"), [("v1.0", 30), ("v1.0-qat", 30), ("v1.0", 70)])
def test_sampled_families_equal_the_full_40_steps(family: str, dates: int) -> None:
    """30 dates: every draw repeats steps; 70: many pixels draw 40 distinct steps (the plain forward)."""
    model = small(family)
    pixels = cloudy_pixels(300, t=dates)
    got = embed_pixels(model, *pixels, seed=3, repeat=2, batch_size=64, sample_block=128)
    expected = embed_pixels(FullSequences(model), *pixels, seed=3, repeat=2, batch_size=64, sample_block=128)
    assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(got).sum() > 0


def full_bucketed(model: BTFM, pixels: list[np.ndarray]) -> np.ndarray:
    """The bucketed families by full resampled sequences (:func:`sequence_batch`), one pixel at a time."""
    bands, masks, doys, asc, asc_doys, desc, desc_doys = pixels
    n = bands.shape[0]
    stats, rule = model.stats, model.family.input_rule
    s1_values, s1_doys, s1_valid = s1_series(stats, asc, np.broadcast_to(asc_doys, (n, asc.shape[1])), desc,
                                             np.broadcast_to(desc_doys, (n, desc.shape[1])))
    s2_valid, s2_doys = masks != 0, np.broadcast_to(doys, masks.shape)
    out = np.zeros((n, model.embedding_dim), np.float32)
    for i in range(n):
        if not (s2_valid[i].any() or s1_valid[i].any()):
            continue
        l2 = bucket_lengths(s2_valid[i:i + 1].sum(1), rule)[0]
        l1 = bucket_lengths(s1_valid[i:i + 1].sum(1), rule)[0]
        x2 = sequence_batch(stats.standardise_s2(bands[i:i + 1]), s2_doys[i:i + 1], s2_valid[i:i + 1], rule, l2)
        x1 = sequence_batch(s1_values[i:i + 1], s1_doys[i:i + 1], s1_valid[i:i + 1], rule, l1)
        with torch.inference_mode():
            out[i] = model(torch.from_numpy(x2), torch.from_numpy(x1)).numpy()
    return out


@pytest.mark.parametrize(("family", "qk_norm"), [("v1.1", False), ("v2", True)])
def test_bucketed_families_equal_the_full_resampled_sequences(family: str, qk_norm: bool) -> None:
    model = small(family, qk_norm=qk_norm)
    pixels = cloudy_pixels(120, t=70, seed=2)
    pixels[1][:5] = 0  # five pixels without S2: three with nothing at all, two with S1 only
    pixels[3][:3] = 0
    expected = full_bucketed(model, pixels)
    got = embed_pixels(model, *pixels, batch_size=16)
    assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(got[:3]).max() == 0 and (np.abs(got[3:5]).sum(axis=1) > 0).all()


def test_bucketed_progress_reports_every_pixel() -> None:
    model = small("v2", qk_norm=True)
    pixels = cloudy_pixels(50)
    done: list[int] = []
    with torch.inference_mode():
        embed_bucketed(model, *[np.broadcast_to(p, (50, p.shape[0])) if p.ndim == 1 else p for p in pixels],
                       batch_size=8, device=CPU, dtype=torch.float32, progress=done.append)
    assert sum(done) == 50


def test_prefetched_blocks_keep_order_and_content() -> None:
    from btfm_infer.tile_inference import _prefetched

    blocks = [(i, np.arange(i), np.arange(i), (np.full(3, i),)) for i in range(5)]
    for enabled in (False, True):
        got = list(_prefetched(iter(blocks), enabled))
        assert [b[0] for b in got] == list(range(5))
        assert all((g[3][0] == i).all() for i, g in enumerate(got))


def test_several_sampling_blocks_in_one_batch_give_the_same_draws() -> None:
    """A GPU batch may hold many sampling blocks; the draw is still made per block."""
    model = small("v1.0")
    pixels = cloudy_pixels(500, t=50)
    pixels[0][7:9] = 0  # pixels skipped as all-zero S2
    done: list[int] = []
    grouped = embed_pixels(model, *pixels, seed=5, batch_size=4096, sample_block=64, progress=done.append)
    one_by_one = embed_pixels(model, *pixels, seed=5, batch_size=64, sample_block=64)
    assert np.abs(grouped - one_by_one).max() <= 1e-5 and sum(done) == 500
    assert np.abs(grouped[7:9]).max() == 0
