"""``--precision``: auto from the hardware, the warning for emulated bf16, int8 on the CPU (issue 10)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from btfm_infer import hardware, infer_all_tiles
from btfm_infer.checkpoint import load_model
from btfm_infer.embed import embed_pixels
from btfm_infer.model import quantise_dynamic_int8
from btfm_infer.tile_inference import InferenceOptions
from btfm_infer.worker import load_worker_model
from tests.infer.test_unique_tokens import cloudy_pixels

DEMO_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "btfm_demo.pt"


@pytest.fixture
def cpu_with(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU has exactly the given flags."""
    def pretend(*flags: str) -> None:
        monkeypatch.setattr(hardware, "_cpuinfo", lambda: ("Test CPU", frozenset(flags)))
    return pretend


@pytest.mark.parametrize(("flags", "auto"), [(("avx2", "fma"), "fp32"), (("avx2", "avx512_bf16"), "bf16"),
                                             (("avx2", "amx_bf16"), "bf16"), ((), "fp32")])
def test_auto_picks_bf16_only_where_native(cpu_with, flags: tuple[str, ...], auto: str) -> None:
    cpu_with(*flags)
    assert hardware.resolve_precision("auto", "cpu") == auto
    assert hardware.resolve_precision("fp32", "cpu") == "fp32"
    assert "Test CPU" in hardware.cpu_description()


def test_bf16_on_an_emulating_cpu_warns(cpu_with, caplog: pytest.LogCaptureFixture) -> None:
    cpu_with("avx2", "fma")
    with caplog.at_level(logging.WARNING):
        assert hardware.resolve_precision("bf16", "cpu") == "bf16"
    assert "slower than fp32" in caplog.text
    caplog.clear()
    cpu_with("amx_bf16")
    hardware.resolve_precision("bf16", "cpu")
    assert not caplog.records


def test_int8_is_cpu_only() -> None:
    with pytest.raises(ValueError, match="CPU only"):
        hardware.resolve_precision("int8", "cuda")
    with pytest.raises(ValueError, match="precision must be"):
        hardware.resolve_precision("fp16", "cpu")
    with pytest.raises(Exception, match="CPU only"):
        infer_all_tiles.worker_precisions("int8", gpus=True)


def test_driver_warns_before_any_work_and_records_the_precision(cpu_with, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    from tests.infer.test_families import GOLDEN  # the golden tiles are small real tile folders
    cpu_with("avx2", "fma")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert infer_all_tiles.main(["--tiles-dir", str(GOLDEN / "tiles"), "--output-dir", str(out),
                                     "--checkpoint", str(GOLDEN / "v1_0" / "v1_0.pt"), "--precision", "bf16",
                                     "--log-dir", str(tmp_path / "logs")]) == 0
    messages = [r.getMessage() for r in caplog.records]
    warned = next(i for i, m in enumerate(messages) if "slower than fp32" in m)
    started = next(i for i, m in enumerate(messages) if "to embed with" in m)
    assert warned < started
    assert '"precision": "bf16"' in (out / "inference.json").read_text()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    keep = np.abs(a).sum(axis=1) > 0
    a, b = a[keep], b[keep]
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_int8_quantises_the_transformer_linears_and_agrees_with_fp32() -> None:
    model = load_model(DEMO_CHECKPOINT, "cpu")
    quantised = quantise_dynamic_int8(model)
    layer = quantised.s2_backbone.transformer_encoder.layers[0]
    assert isinstance(layer.linear1, torch.ao.nn.quantized.dynamic.Linear)
    assert type(quantised.dim_reducer[0]) is torch.nn.Linear  # fp32 outside the transformer
    assert type(model.s2_backbone.transformer_encoder.layers[0].linear1) is torch.nn.Linear  # a copy
    pixels = cloudy_pixels(200, t=70)  # pixels with and without repeated steps
    fp32 = embed_pixels(model, *pixels, seed=1)
    int8 = embed_pixels(quantised, *pixels, seed=1)
    assert cosine(fp32, int8).mean() >= 0.999
    via_worker = load_worker_model(DEMO_CHECKPOINT, "cpu", InferenceOptions(precision="int8"))
    np.testing.assert_array_equal(embed_pixels(via_worker, *pixels, seed=1), int8)


def tiles_cosine(model: torch.nn.Module, tiles_dir: Path, out: Path, precision: str) -> tuple[float, float]:
    """Mean and min per-pixel cosine of fp32 and ``precision`` embeddings over every tile of ``tiles_dir``."""
    from btfm_infer.tile_inference import infer_tile

    quantised = quantise_dynamic_int8(model) if precision == "int8" else model
    cosines = []
    for tile in sorted(p for p in tiles_dir.iterdir() if p.is_dir()):
        infer_tile(model, tile, out / f"fp32_{tile.name}.npy", InferenceOptions(precision="fp32"))
        infer_tile(quantised, tile, out / f"{precision}_{tile.name}.npy", InferenceOptions(precision=precision))
        a, b = (np.load(out / f"{p}_{tile.name}.npy").reshape(-1, model.embedding_dim) for p in ("fp32", precision))
        cosines.append(cosine(a, b))
    all_cosines = np.concatenate(cosines)
    return float(all_cosines.mean()), float(all_cosines.min())


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_int8_and_bf16_agree_with_fp32_on_the_golden_tiles(tmp_path: Path, precision: str) -> None:
    """Issue 10: mean cosine to fp32 >= 0.999 on the golden tiles, for every reference checkpoint."""
    from tests.infer.test_families import BUCKETED, GOLDEN, SAMPLED, checkpoint

    for folder in sorted({**BUCKETED, **SAMPLED}):
        model = load_model(checkpoint(folder), "cpu")
        mean, low = tiles_cosine(model, GOLDEN / "tiles", tmp_path, precision)
        assert mean >= 0.999, (folder, mean, low)
