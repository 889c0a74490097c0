"""What the machine can do fast: CPU model and flags, native bf16, and the precision ``auto`` picks.

bf16 is only fast where the hardware computes it natively: CUDA GPUs, and CPUs with AVX512-BF16
or AMX. Elsewhere (e.g. AVX2 + FMA only) PyTorch emulates it and a bf16 forward runs several
times slower than fp32, so ``--precision auto`` (the default) picks fp32 there.
"""

from __future__ import annotations

import functools
import logging
import platform

import torch

log = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "cpu_description", "cpu_flags", "cpu_model", "native_bf16", "resolve_precision"]

#: ``--precision`` choices: auto (bf16 where native, else fp32), fp32, bf16 autocast, int8
#: dynamic quantisation of the transformer Linears (CPU only).
PRECISIONS = ("auto", "fp32", "bf16", "int8")
#: CPU flags (``/proc/cpuinfo``) that give native bf16 matrix products.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: Flags worth naming next to a speed figure.
SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    name, flags = "", frozenset[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")):
                    flags = frozenset(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return name or platform.processor() or platform.machine() or "unknown CPU", flags


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    return _cpuinfo()[1]


def cpu_model() -> str:
    """CPU model and the flags that matter for inference, e.g. ``Intel(R) Xeon(R) (avx2, fma, amx_bf16)``."""
    name, flags = _cpuinfo()
    shown = [f for f in SHOWN_FLAGS if f in flags]
    return f"{name} ({', '.join(shown) or 'flags unknown'})"


def cpu_description() -> str:
    """:func:`cpu_model` and the torch threads of this process."""
    return f"{cpu_model()}, {torch.get_num_threads()} torch threads"


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bf16 matrix products natively (CUDA; CPU with AVX512-BF16 or AMX)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)
    return False


def resolve_precision(requested: str, device: str | torch.device, *, warn: bool = True) -> str:
    """The precision a worker on ``device`` runs for ``--precision requested``.

    ``auto`` gives bf16 where it is native and fp32 elsewhere. ``bf16`` on a CPU without native
    bf16 is kept (the user asked for it) with a warning that it will be slower than fp32.

    Raises:
        ValueError: an unknown precision, or int8 on a GPU.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    dev = torch.device(device)
    if requested == "auto":
        return "bf16" if native_bf16(dev) else "fp32"
    if requested == "int8" and dev.type != "cpu":
        raise ValueError("--precision int8 runs on the CPU only (PyTorch's dynamic int8 kernels); use bf16 or auto "
                         "on GPUs")
    if requested == "bf16" and dev.type == "cpu" and not native_bf16(dev) and warn:
        log.warning("--precision bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX: %s): it is emulated and "
                    "runs several times slower than fp32; use --precision auto or fp32", cpu_description())
    return requested
