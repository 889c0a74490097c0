"""Inference engines on CPU: eager fp32/bf16, ``torch.compile`` and ONNX Runtime (fp32, int8), same inputs.

Answers "do compile or ONNX Runtime pay off here?" for the model forward only (sampling is
the same for all): pixels/s, speed-up over eager fp32, and the mean cosine of each engine's
embeddings against eager fp32 on identical inputs. Engines whose packages are missing
(``onnxruntime``, ``onnx``) are reported as skipped. Not a test: figures depend on the machine.

Usage: python scripts/bench_engines.py [--dims official|demo] [--pixels N] [--batch-size N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from btfm_infer.model import BTFM, DEMO, OFFICIAL
from btfm_infer.sampling import build_s1_input, build_s2_input

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import SCENARIOS, synthetic_series  # the typical tile of make bench

Engine = Callable[[np.ndarray, np.ndarray], np.ndarray]


def timed(engine: Engine, s2: np.ndarray, s1: np.ndarray, batch: int, repeats: int = 2) -> tuple[float, np.ndarray]:
    """Best-of-``repeats`` seconds for all pixels (after one warm-up batch), and the output."""
    engine(s2[:batch], s1[:batch])
    best, out = float("inf"), np.empty(0)
    for _ in range(repeats):
        started = time.perf_counter()
        out = np.concatenate([engine(s2[i:i + batch], s1[i:i + batch]) for i in range(0, len(s2), batch)])
        best = min(best, time.perf_counter() - started)
    return best, out


def eager(model: BTFM, bf16: bool = False) -> Engine:
    def run(s2: np.ndarray, s1: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(torch.from_numpy(s2), torch.from_numpy(s1)).float().numpy()
    return run


def compiled(model: BTFM) -> Engine:
    fast = torch.compile(model, dynamic=True)

    def run(s2: np.ndarray, s1: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return fast(torch.from_numpy(s2), torch.from_numpy(s1)).numpy()
    return run


def onnx_engine(model: BTFM, s2: np.ndarray, s1: np.ndarray, folder: Path, int8: bool) -> Engine:
    import onnxruntime as ort

    path = folder / "btfm.onnx"
    if not path.exists():
        torch.onnx.export(model, (torch.from_numpy(s2[:8]), torch.from_numpy(s1[:8])), str(path),
                          input_names=["s2", "s1"], output_names=["embedding"], opset_version=18,
                          dynamic_axes={"s2": {0: "batch"}, "s1": {0: "batch"}, "embedding": {0: "batch"}},
                          dynamo=False)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantised = folder / "btfm_int8.onnx"
        quantize_dynamic(str(path), str(quantised), weight_type=QuantType.QInt8)
        path = quantised
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda a, b: session.run(None, {"s2": a, "s1": b})[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


def main(argv: Sequence[str] | None = None) -> int:
    """Run every engine on the same sampled inputs and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", choices=["official", "demo"], default="official")
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    cfg = OFFICIAL if args.dims == "official" else DEMO
    torch.manual_seed(0)
    model = BTFM(cfg).eval()
    tile = synthetic_series(args.pixels, SCENARIOS["typical"])
    rng = np.random.default_rng(0)
    s2 = build_s2_input(tile["s2_bands"], tile["s2_masks"], tile["s2_doys"], rng)
    s1 = build_s1_input(tile["s1_asc"], tile["s1_asc_doys"], tile["s1_desc"], tile["s1_desc_doys"], rng)
    s2, s1 = (np.ascontiguousarray(x.numpy() if isinstance(x, torch.Tensor) else x, np.float32) for x in (s2, s1))
    print(f"{args.dims} dims, {args.pixels} px, batch {args.batch_size}, {torch.get_num_threads()} threads")
    base_s, base = timed(eager(model), s2, s1, args.batch_size)
    print(f"  {'eager fp32':18s} {args.pixels / base_s:8.1f} px/s   1.00x   cosine 1.000000")
    with tempfile.TemporaryDirectory() as tmp:
        engines: list[tuple[str, Callable[[], Engine]]] = [
            ("eager bf16", lambda: eager(model, bf16=True)),
            ("torch.compile fp32", lambda: compiled(model)),
            ("onnxruntime fp32", lambda: onnx_engine(model, s2, s1, Path(tmp), int8=False)),
            ("onnxruntime int8", lambda: onnx_engine(model, s2, s1, Path(tmp), int8=True)),
        ]
        for name, make in engines:
            try:
                seconds, out = timed(make(), s2, s1, args.batch_size)
            except Exception as exc:  # report and go on: a missing package or an unsupported op
                print(f"  {name:18s} skipped: {exc.__class__.__name__}: {str(exc).splitlines()[0][:100]}")
                continue
            print(f"  {name:18s} {args.pixels / seconds:8.1f} px/s  {base_s / seconds:5.2f}x   "
                  f"cosine {cosine(out, base):.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
