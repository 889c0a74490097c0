"""ONNX Runtime as the CPU engine of the model forward (``--engine onnxruntime``).

The model is exported once per process to ONNX (opset 18, dynamic batch) and run by ONNX
Runtime's CPU provider; sampling, batching and tile I/O stay the same, so outputs equal the
PyTorch engine's to float rounding (cosine 1.000000 in ``scripts/bench_engines.py``). Whether it
pays off depends on the CPU: on the 2-core development machine (AMD EPYC, AVX-512 bf16) it does
not (0.6x PyTorch fp32 for the demo model, 1.0x for the official dims; bf16 autocast in PyTorch
is the fast path there), so it is opt-in; ``make bench`` measures it on yours. GPUs keep the
PyTorch engine.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from btfm_core.errors import BTFMError
from btfm_infer.families import Family, NormStats
from btfm_infer.model import BTFM

__all__ = ["ENGINES", "EngineModel", "OnnxRuntimeBTFM", "with_engine"]

log = logging.getLogger(__name__)

ENGINES = ("torch", "onnxruntime")
OPSET = 18


def _export(model: BTFM, path: Path) -> None:
    """Write ``model``'s forward as an ONNX graph with a dynamic batch axis."""
    cfg = model.config
    s2 = torch.zeros(2, 40, cfg.s2_bands + 1)
    s1 = torch.zeros(2, 40, cfg.s1_bands + 1)
    with warnings.catch_warnings():  # the TorchScript exporter warns about the GRU's batch_first
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (s2, s1), str(path), input_names=["s2", "s1"], output_names=["embedding"],
                          opset_version=OPSET, dynamo=False,
                          dynamic_axes={"s2": {0: "batch", 1: "steps"}, "s1": {0: "batch", 1: "steps"},
                                        "embedding": {0: "batch"}})


class OnnxRuntimeBTFM(torch.nn.Module):
    """A BTFM whose forward runs in ONNX Runtime; drop-in for :func:`~btfm_infer.embed.embed_pixels`.

    The wrapped PyTorch model stays a submodule (its config, parameters' device and dtype are what
    ``embed_pixels`` inspects); only :meth:`forward` changes.
    """

    def __init__(self, model: BTFM, threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BTFMError("--engine onnxruntime needs the onnxruntime and onnx packages: "
                            "pip install -r requirements.txt") from exc
        if next(model.parameters()).device.type != "cpu":
            raise BTFMError("--engine onnxruntime runs on the CPU; use --engine torch for GPU workers")
        if model.family.name != "v1.0":
            raise BTFMError(f"--engine onnxruntime runs v1.0 checkpoints only; this one is {model.family.title}: "
                            "use --engine torch")
        self.model = model
        self.config = model.config
        self.stats = model.stats
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        with tempfile.TemporaryDirectory(prefix="btfm-onnx-") as tmp:
            path = Path(tmp) / "btfm.onnx"
            _export(model, path)
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        log.info("ONNX Runtime %s engine ready (%d threads)", ort.__version__, options.intra_op_num_threads)

    @property
    def family(self) -> Family:
        """The wrapped model's family."""
        return self.model.family

    @property
    def embedding_dim(self) -> int:
        """The wrapped model's embedding length."""
        return self.model.embedding_dim

    def require_stats(self) -> NormStats:
        """The wrapped model's :meth:`BTFM.require_stats`."""
        return self.model.require_stats()

    def forward(self, s2_x: torch.Tensor, s1_x: torch.Tensor) -> torch.Tensor:
        """Embed pixels (same contract as :meth:`BTFM.forward`)."""
        feeds = {"s2": np.ascontiguousarray(s2_x.detach().float().cpu().numpy()),
                 "s1": np.ascontiguousarray(s1_x.detach().float().cpu().numpy())}
        return torch.from_numpy(self.session.run(None, feeds)[0])


#: A model as an engine runs it: the PyTorch model itself, or wrapped for ONNX Runtime.
EngineModel = BTFM | OnnxRuntimeBTFM


def with_engine(model: BTFM, engine: str, threads: int | None = None) -> EngineModel:
    """``model`` itself for ``torch``, wrapped in :class:`OnnxRuntimeBTFM` for ``onnxruntime``."""
    if engine not in ENGINES:
        raise BTFMError(f"unknown engine '{engine}'; choose one of {', '.join(ENGINES)}")
    return OnnxRuntimeBTFM(model, threads) if engine == "onnxruntime" else model
