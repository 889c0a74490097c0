"""The benchmarks' useful-FLOP counter on hand-computed cases, and both benchmark scripts end to end (tiny sizes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from btfm_infer.model import ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import bench_common as bc  # noqa: E402

#: d = 4, f = 8, one layer, 4-d embedding: small enough to count by hand.
TINY_V2 = ModelConfig(d_model=4, nhead=2, num_layers=1, dim_feedforward=8, embedding_dim=4, family="v2")
TINY_V10 = ModelConfig(d_model=4, nhead=2, num_layers=1, dim_feedforward=8, embedding_dim=4)


def test_flop_counter_matches_a_hand_computed_v2_pixel() -> None:
    # S2: U = 3 distinct tokens in an 8-step bucket. embedding 2·3·(10·4 + 4²) = 336; layer
    # 2·3·(4·4² + 2·4·8) = 768 plus attention 2·2·3·3·4 = 144; attention pooling 8 steps · 2·2·4 = 128.
    s2 = 336 + 768 + 144 + 128
    # S1: one step (no observation): embedding 2·(2·4 + 16) = 48, layer 2·128 + 2·2·1·1·4 = 272, pooling skipped.
    s1 = 48 + 272
    reducer = 2 * (8 * 16) + 2 * (16 * 4)  # Linear(2d → 4d) + Linear(4d → 4)
    got = bc.pixel_flops(TINY_V2, np.array([3]), np.array([8]), np.array([1]), np.array([1]))
    assert got.tolist() == [s2 + s1 + reducer] == [2080]


def test_flop_counter_counts_the_gru_over_every_step() -> None:
    # v1.0, 40 steps of which 40 distinct: embedding 2·40·56, layer 2·40·128 + 2·2·40·40·4,
    # GRU + query + weighted sum 40 · (2·6·16 + 2·2·4).
    expected = 2 * 40 * 56 + 2 * 40 * 128 + 4 * 40 * 40 * 4 + 40 * (12 * 16 + 16)
    assert bc.backbone_flops(TINY_V10, 10, np.array([40]), np.array([40])).tolist() == [expected]
    # fewer distinct tokens: the transformer is cheaper, the GRU still sees all 40 steps
    fewer = bc.backbone_flops(TINY_V10, 10, np.array([5]), np.array([40]))[0]
    assert fewer == 2 * 5 * 56 + 2 * 5 * 128 + 4 * 5 * 5 * 4 + 40 * (12 * 16 + 16)


def test_bucketed_tokens_count_neither_padding_nor_duplicates() -> None:
    counts = np.array([0, 1, 9, 40, 300])
    unique, length = bc.bucketed_tokens(counts, "v2")
    assert unique.tolist() == [1, 1, 9, 40, 256] and length.tolist() == [1, 8, 16, 40, 256]
    assert bc.bucketed_tokens(counts, "v1.1")[1].tolist() == [8, 8, 16, 40, 256]
    padded = bc.backbone_flops(TINY_V2, 10, np.array([16]), np.array([16]))
    useful = bc.backbone_flops(TINY_V2, 10, np.array([9]), np.array([16]))
    assert useful < padded


def test_v10_unique_tokens_follow_the_sampling_rule() -> None:
    rng = np.random.default_rng(0)
    unique = bc.v10_unique_tokens(np.array([60, 40, 10, 1, 0]), 60, rng)
    assert unique[0] == unique[1] == 40 and 1 <= unique[2] <= 10 and unique[3] == 1
    assert unique[4] == 40  # no valid step: 40 drawn without replacement from all 60
    assert bc.v10_unique_tokens(np.array([0]), 0, rng).tolist() == [1]  # no S1 at all: 40 identical no-data steps
    many = bc.v10_unique_tokens(np.full(2000, 10), 60, rng)
    assert abs(many.mean() - 10 * (1 - 0.9 ** 40)) < 0.05  # distinct count of 40 draws with replacement from 10


def test_useful_flops_of_a_series() -> None:
    series = {"s2_bands": np.ones((2, 12, 10), np.uint16), "s2_masks": np.zeros((2, 12), np.uint8),
              "s2_doys": np.arange(1, 13), "s1_asc": np.zeros((2, 0, 2), np.int16), "s1_asc_doys": np.zeros(0),
              "s1_desc": np.zeros((2, 0, 2), np.int16), "s1_desc_doys": np.zeros(0)}
    series["s2_masks"][0, :9] = 1  # pixel 0: 9 valid S2 steps (bucket 16); pixel 1: none, and no S1 at all
    # pixel 0: S2 U = 9 in a 16-step bucket, S1 one empty step; pixel 1 has no observation: not embedded, 0 FLOPs
    expected = bc.pixel_flops(TINY_V2, np.array([9]), np.array([16]), np.array([1]), np.array([1]))[0]
    assert bc.useful_flops(TINY_V2, series) == pytest.approx(expected)


def _run(command: list[str]) -> str:
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_bench_product_quick_prints_the_table() -> None:
    out = _run([sys.executable, "scripts/bench_product.py", "--quick"])
    assert "matmul peak" in out and "GFLOP/s" in out
    assert "| model | tile | path |" in out and "`make bench` on" in out
    for path in ("seed (rng.choice, fp32 eager)", "ours infer_all_tiles fp32", "ref (pair-bucketed)"):
        assert path in out
    assert "cosine seed vs ours" in out and "ours seed0 vs seed1" in out
    assert "max abs(ours - ref)" in out and "bench_product total wall time" in out


def test_bench_gpu_on_the_cpu_prints_px_per_second_and_mfu() -> None:
    out = _run(["bash", "scripts/bench_gpu.sh", "--device", "cpu", "--quick"])
    assert "peak for MFU" in out and "measured" in out
    lines = [line for line in out.splitlines() if "px/s" in line and "MFU" in line]
    assert any("seed" in line for line in lines) and any("ref" in line for line in lines)
    assert sum("ours embed_pixels" in line for line in lines) == 4


def test_bench_preprocessing_tiny_prints_the_table_and_the_agreement(tmp_path: Path) -> None:
    out = _run([sys.executable, "scripts/bench_preprocessing.py", "--scale", "tiny", "--data", str(tmp_path),
                "--runs", "local,odc"])
    assert "| run | ROI px | tiles | wall s |" in out
    assert "| ours, 1 process | 200² | 4 |" in out and "(peer) | 200² |" in out
    assert "bytes read, ours / odc-stac" in out and "pixel agreement" in out
    # same-zone reads, the masks and S1 are identical in both readers; cross-zone reads equal the plain bilinear
    for quantity in ("S2 10 m bands, from 31N granules", "S2 20 m bands, from 31N granules",
                     "S2 valid mask, pixels from 31N granules or none",
                     "S2 valid mask, from 32N granules, ours vs nearest SCL",
                     "S2 10 m bands, from 32N granules, ours vs plain bilinear",
                     "S2 20 m bands, from 32N granules, ours vs plain bilinear", "S1 dB codes, VV and VH"):
        line = next(line for line in out.splitlines() if line.strip().startswith(quantity + ":"))
        assert " compared, 0 differ " in line and not line.strip().startswith(f"{quantity}: 0 px"), line
    assert (tmp_path / "tiny" / "manifest.json").is_file()  # the dataset is cached for the next run
