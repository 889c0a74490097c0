"""The published TESSERA model families: what tells them apart and what each needs (DESIGN §9).

One :class:`Family` per family names its pooling, its ``dim_reducer``, its input rule, its
default number of attention heads, its normalisation statistics and its int8 rule. Everything
that differs between families is looked up here, so the model, the loader, the input rules and
the exporters never test family names themselves.

All statistics are in tile units (DESIGN §3: S2 reflectance × 10000, band order B04 B02 B03 B08
B8A B05 B06 B07 B11 B12; S1 as the int16 dB encoding, VV then VH) and are applied as
``(x - mean) / (std + 1e-9)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from btfm_infer.sampling import EPS, S1_MEAN, S1_STD, S2_MEAN, S2_STD

__all__ = ["FAMILIES", "FAMILY_NAMES", "STATS", "Family", "NormStats", "stats_for_source"]


@dataclass(frozen=True)
class NormStats:
    """Normalisation statistics of one family (and, for v1.1, one data source).

    Attributes:
        name: ``v1.0``, ``v1.1-mpc``, ``v1.1-aws`` or ``v2``.
        s2_mean: (10,) float32 S2 band means.
        s2_std: (10,) float32 S2 band standard deviations.
        s1_asc_mean: (2,) float32 VV, VH means of ascending passes.
        s1_asc_std: (2,) float32.
        s1_desc_mean: (2,) float32 VV, VH means of descending passes (v1.0: the ascending ones).
        s1_desc_std: (2,) float32.
    """

    name: str
    s2_mean: npt.NDArray[np.float32]
    s2_std: npt.NDArray[np.float32]
    s1_asc_mean: npt.NDArray[np.float32]
    s1_asc_std: npt.NDArray[np.float32]
    s1_desc_mean: npt.NDArray[np.float32]
    s1_desc_std: npt.NDArray[np.float32]

    def standardise_s2(self, values: np.ndarray) -> npt.NDArray[np.float32]:
        """(..., 10) raw S2 values → float32 standardised."""
        return (np.asarray(values, dtype=np.float32) - self.s2_mean) / (self.s2_std + np.float32(EPS))

    def standardise_s1(self, values: np.ndarray, direction: str) -> npt.NDArray[np.float32]:
        """(..., 2) raw S1 values of one orbit ``direction`` (ascending/descending) → float32 standardised."""
        mean, std = ((self.s1_asc_mean, self.s1_asc_std) if direction == "ascending"
                     else (self.s1_desc_mean, self.s1_desc_std))
        return (np.asarray(values, dtype=np.float32) - mean) / (std + np.float32(EPS))


def _stats(name: str, s2: tuple[list[float], list[float]], asc: tuple[list[float], list[float]],
           desc: tuple[list[float], list[float]]) -> NormStats:
    arrays = [np.asarray(v, dtype=np.float32) for v in (*s2, *asc, *desc)]
    for array in arrays:
        array.setflags(write=False)
    return NormStats(name, *arrays)


#: Every statistics set, by name.
STATS: dict[str, NormStats] = {
    "v1.0": _stats("v1.0", (list(S2_MEAN), list(S2_STD)), (list(S1_MEAN), list(S1_STD)),
                   (list(S1_MEAN), list(S1_STD))),
    "v1.1-mpc": _stats(
        "v1.1-mpc",
        ([2683.4553, 2223.3630, 2432.0950, 3633.1970, 3602.1755, 3006.4324, 3400.2710, 3515.6392, 2456.9163,
          1983.8783],
         [2739.5217, 2846.2993, 2690.8250, 2290.0439, 2088.8970, 2673.1106, 2381.4521, 2229.5225, 1601.0942,
          1495.3545]),
        ([5588.3291, 3025.6270], [1713.4646, 1693.0471]),
        ([5552.9683, 2955.0520], [1685.5857, 1677.6414])),
    "v1.1-aws": _stats(
        "v1.1-aws",
        ([2793.6589, 2356.7776, 2551.0496, 3741.9229, 3713.7844, 3120.1997, 3516.3342, 3637.0342, 2501.0283,
          2038.1504],
         [2810.0093, 2933.8835, 2755.6360, 2344.5027, 2145.7986, 2743.9019, 2438.8601, 2286.5977, 1680.7367,
          1585.5529]),
        ([5697.0859, 2838.6687], [1671.3737, 1789.4116]),
        ([5759.1367, 2873.2854], [1583.2858, 1747.8390])),
    "v2": _stats(
        "v2",
        ([1633.0042, 1341.1090, 1539.5536, 3054.8269, 3117.4658, 2004.1648, 2694.7275, 2945.1504, 2266.6079,
          1657.3094],
         [1999.4603, 2014.7549, 1929.2201, 1754.2493, 1649.9807, 1936.8988, 1748.6041, 1708.6991, 1207.5250,
          1108.6046]),
        ([5909.3921, 3405.0322], [1507.1750, 1531.2615]),
        ([5816.1382, 3277.7576], [1554.6475, 1546.4733])),
}

#: Sentinel-2 source of a preprocessing run → the v1.1 statistics trained on its data.
_SOURCE_STATS = {"planetary": "mpc", "earthsearch": "aws"}


def stats_for_source(s2_source: object) -> str | None:
    """``mpc`` or ``aws`` for a run's recorded Sentinel-2 source name, else None."""
    return _SOURCE_STATS.get(str(s2_source)) if s2_source else None


@dataclass(frozen=True)
class Family:
    """What distinguishes one TESSERA model family.

    Attributes:
        name: ``v1.0``, ``v1.0-qat``, ``v1.1`` or ``v2``.
        title: Human-readable name.
        pooling: ``gru`` (nn.GRU context), ``custom-gru`` (hand-written GRU + LayerNorm) or
            ``attention`` (softmax of a Linear over time).
        reducer: ``linear`` (Linear(2d, 128)), ``mlp`` (Linear → LayerNorm → ReLU → Dropout →
            Linear, first 128 outputs kept) or ``mlp-norm`` (``mlp`` plus a parameter-free
            LayerNorm).
        input_rule: ``sampled-40`` (40 random draws, DESIGN §4) or ``bucketed-v1.1`` /
            ``bucketed-v2`` (all valid observations, resampled to a bucket length).
        default_nhead: Heads when the file does not say (v2 files always say).
        stats: Name of the statistics set in :data:`STATS`; None where it depends on the data
            source (v1.1: ``v1.1-mpc`` or ``v1.1-aws``).
        int8_rule: How :func:`btfm_infer.export_common.quantise_int8` quantises this family's embeddings.
        matryoshka: Whether the first 16/32/64 dimensions are usable alone (``--dim``).
        randomised: Whether the input rule draws at random (``--seed``/``--repeat`` apply).
    """

    name: str
    title: str
    pooling: str
    reducer: str
    input_rule: str
    default_nhead: int
    stats: str | None
    int8_rule: str
    matryoshka: bool = False

    @property
    def randomised(self) -> bool:
        """Whether ``--seed`` and ``--repeat`` change this family's embeddings."""
        return self.input_rule == "sampled-40"

    @property
    def bucketed(self) -> bool:
        """Whether this family uses every valid observation, resampled to a bucket length."""
        return self.input_rule.startswith("bucketed")


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("v1.0", "TESSERA v1.0 (BTFM, the seed)", "gru", "linear", "sampled-40", 8, "v1.0", "v1.0"),
    Family("v1.0-qat", "TESSERA v1.0 QAT", "custom-gru", "linear", "sampled-40", 4, "v1.0", "v1.0"),
    Family("v1.1", "TESSERA v1.1", "custom-gru", "mlp", "bucketed-v1.1", 4, None, "v1.1"),
    Family("v2", "TESSERA v2 pixel student", "attention", "mlp-norm", "bucketed-v2", 4, "v2", "v2",
           matryoshka=True),
)}

#: Names accepted by ``--model-family`` besides ``auto``.
FAMILY_NAMES = tuple(FAMILIES)
