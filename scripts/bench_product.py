"""Product-path benchmark: what ``infer_all_tiles`` costs a user, against the seed's and the reference's algorithms.

One run, one random-weight checkpoint per model, the same threads, the same two tile folders
(written with the project's :class:`~btfm_core.tiles.TileWriter`):

* **typical**: 60 S2 dates (30 % cloudy), 40 ascending + 30 descending S1 dates;
* **cloudy**: 60 S2 dates (~25 valid per pixel), 30 ascending S1 dates, no descending pass (T' = 0).

v1.0 (official dims): *seed* = the seed's per-pixel ``rng.choice`` loop + fp32 eager forward with
the fused MHA fast path off, batch 256, in this process (checkpoint load and tile read included,
interpreter start not); *ours* = ``python -m btfm_infer.infer_all_tiles … --precision P`` as a
subprocess, timed end to end (process start and model load included: what the user pays), for
every ``--precision`` the CLI lists. Agreement: mean per-pixel cosine seed vs ours, next to ours
``--seed 0`` vs ``--seed 1`` (the spread of the random draw itself).

v2 (Medium class) and v1.1 (released dims): *ref* = the reference's pair-bucketed algorithm
(``bench_families``) in this process vs *ours*; max |ours − ref| over the ROI pixels.

Each row: embedded px/s (ROI pixels / wall seconds), the ratio to the seed (v1.0) or ref,
useful GFLOP/s (:func:`bench_common.useful_flops`: the tokens a model must see, no padding or
duplicates) and that as % of this machine's measured fp32 and bf16 matmul peaks. Ends with a
markdown table for the README and the bench's own wall time. Not a test: figures depend on the machine.

Usage: python scripts/bench_product.py [--threads N] [--quick] [--only v1.0|v2|v1.1]
           [--size-official PX] [--size-small PX]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from bench_common import (
    CPU_PEAK_SHAPES,
    MODELS,
    SCENARIOS,
    Scenario,
    cpu_name,
    matmul_peak,
    mean_cosine,
    pair_bucketed,
    seed_embed,
    synthetic_series,
    timed,
    useful_flops,
)

from btfm_core.grid import Grid
from btfm_core.run import RunLayout
from btfm_core.tiles import TileId, TileWriter, read_tile
from btfm_infer.checkpoint import load_model, save_checkpoint
from btfm_infer.infer_all_tiles import build_parser
from btfm_infer.model import BTFM, ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
#: Precisions benchmarked when the CLI lists them, in this order.
PRECISIONS = ("fp32", "bf16", "auto", "int8")
#: Pixels per forward pass of the reference's pair-bucketed algorithm (as in bench_families).
REF_BATCH = 1024
#: ``--quick``: the one tile and the precisions each family runs, to stay under a minute.
QUICK_PLAN: dict[str, tuple[str, tuple[str, ...]]] = {"v1.0": ("typical", ("fp32", "bf16")),
                                                      "v2": ("cloudy", ("fp32",)), "v1.1": ("cloudy", ("fp32",))}
WORKER_LINE = re.compile(r"tile \S+: (\d+) px in ([\d.]+) s \(([\d.]+) px/s\)")


@dataclass
class Row:
    """One timed path on one tile."""

    model: str
    tile: str
    path: str
    pixels: int
    seconds: float
    flops: float
    baseline_s: float | None = None  # the seed's / reference's seconds on the same tile
    worker_pxs: float | None = None  # px/s the worker logged for the tile alone (no start, no load)
    note: str = ""

    @property
    def pxs(self) -> float:
        """Embedded pixels per wall second."""
        return self.pixels / self.seconds


@dataclass
class Bench:
    """What every part of the run shares."""

    threads: int
    quick: bool
    sizes: dict[str, int]
    workdir: Path
    peaks: dict[str, float]
    precisions: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def scenarios(self, family: str) -> list[Scenario]:
        """The tiles ``family`` runs on: both, or the one of :data:`QUICK_PLAN`."""
        return [SCENARIOS[QUICK_PLAN[family][0]]] if self.quick else list(SCENARIOS.values())

    def precisions_for(self, family: str) -> list[str]:
        """The ``--precision`` values ``family`` runs with."""
        return [p for p in self.precisions if not self.quick or p in QUICK_PLAN[family][1]]

    def add(self, row: Row) -> Row:
        """Record ``row`` and print it (the % of peak come in the summary, once the peak is re-measured)."""
        self.rows.append(row)
        print(format_row(row), flush=True)
        return row


def cli_precisions() -> list[str]:
    """The ``--precision`` choices of ``infer_all_tiles --help`` that this bench knows, in :data:`PRECISIONS` order."""
    text = build_parser().format_help()
    match = re.search(r"--precision \{([^}]*)\}", text)
    listed = set(match.group(1).split(",")) if match else {"fp32"}
    return [p for p in PRECISIONS if p in listed]


def write_tile(tiles_dir: Path, series: dict[str, np.ndarray], side: int) -> Path:
    """Write ``series`` (side² pixels, row-major) as the tile folder ``0_0_<side>_<side>`` of ``tiles_dir``."""
    tile = TileId(0, 0, side, side)
    grid = Grid("EPSG:32631", Affine(10, 0, 500000, 0, -10, 5600000), side, side)

    def image(name: str) -> np.ndarray:  # (N, T, ...) -> (T, H, W, ...)
        values = np.moveaxis(series[name], 0, 1)
        return values.reshape(values.shape[0], side, side, *values.shape[2:])

    with TileWriter(tiles_dir, tile, grid, np.ones((side, side), np.uint8), {"note": "bench_product"}) as writer:
        writer.write_array("bands.npy", image("s2_bands"))
        writer.write_array("masks.npy", image("s2_masks"))
        writer.write_array("doys.npy", series["s2_doys"])
        for direction, key in (("ascending", "s1_asc"), ("descending", "s1_desc")):
            writer.write_array(f"sar_{direction}.npy", image(key))
            writer.write_array(f"sar_{direction}_doy.npy", series[f"{key}_doys"])
    return tiles_dir / tile.name


def read_pixels(folder: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The ROI pixels of a tile folder as (N, T, …) series (row-major, as ``infer_tile`` takes them), and the ROI."""
    arrays = read_tile(folder, mmap=True)
    rows, cols = np.nonzero(arrays.roi)

    def pixels(values: np.ndarray) -> np.ndarray:
        return np.moveaxis(np.asarray(values)[:, rows, cols], 0, 1)

    series = {"s2_bands": pixels(arrays.bands), "s2_masks": pixels(arrays.masks), "s2_doys": np.asarray(arrays.doys),
              "s1_asc": pixels(arrays.sar_ascending), "s1_asc_doys": np.asarray(arrays.sar_ascending_doy),
              "s1_desc": pixels(arrays.sar_descending), "s1_desc_doys": np.asarray(arrays.sar_descending_doy)}
    return series, arrays.roi != 0


def save_random_checkpoint(cfg: ModelConfig, path: Path) -> Path:
    """A random-weight checkpoint of ``cfg`` in its family's own file layout (what ``load_model`` recognises)."""
    torch.manual_seed(0)
    model = BTFM(cfg).eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cfg.family == "v1.0":
        return save_checkpoint(model, path, model_card="random weights (bench_product)")
    if cfg.family == "v2":
        args = {"repr_dim": cfg.embedding_dim, "latent_dim": cfg.d_model // 4, "num_layers": cfg.num_layers,
                "nhead": cfg.nhead, "dim_feedforward": cfg.dim_feedforward, "enable_qk_norm": cfg.qk_norm,
                "matryoshka_dims": ",".join(map(str, cfg.matryoshka_dims or (16, 32, 64, 128)))}
        torch.save({"args": args, "model": state}, path)
        return path
    config = {"latent_dim": cfg.d_model // 4, "representation_dim": cfg.reducer_dim,
              "save_embedding_dim": cfg.embedding_dim, "s2_num_heads": cfg.nhead, "s2_num_layers": cfg.num_layers,
              "s2_dim_feedforward": cfg.dim_feedforward, "data_source": "mpc"}
    torch.save({"model_state_dict": state, "config": config}, path)
    return path


def run_ours(bench: Bench, folder: Path, checkpoint: Path, precision: str,
             seed: int = 0) -> tuple[float, np.ndarray, float | None]:
    """Run the user's command on the tiles folder holding ``folder``, in a fresh output folder.

    Returns:
        (wall seconds of the whole command, (N, D) ROI embeddings, px/s the worker logged for the tile alone).
    """
    run = Path(tempfile.mkdtemp(prefix=f"ours-{precision}-s{seed}-", dir=bench.workdir))
    out_dir, log_dir = RunLayout(run).representation_dir, RunLayout(run).logs_dir
    command = [sys.executable, "-m", "btfm_infer.infer_all_tiles", "--tiles-dir", str(folder.parent),
               "--output-dir", str(out_dir), "--checkpoint", str(checkpoint), "--cores", str(bench.threads),
               "--precision", precision, "--seed", str(seed), "--max-gpu", "0", "--log-dir", str(log_dir), "-q"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    _, roi = read_pixels(folder)
    embeddings = np.load(out_dir / f"{folder.name}.npy")[roi]
    logged = [WORKER_LINE.search(line) for p in log_dir.glob("infer_*.log") for line in p.read_text().splitlines()]
    found = [float(m.group(3)) for m in logged if m]
    return seconds, embeddings, (found[0] if found else None)


def format_row(row: Row, peaks: dict[str, float] | None = None) -> str:
    """One printed line: px/s, ratio and useful GFLOP/s; with ``peaks`` also % of the fp32 and bf16 peaks."""
    ratio = f"{row.baseline_s / row.seconds:6.2f}x" if row.baseline_s else "   1.00x"
    gflops = row.flops / row.seconds / 1e9
    share = (f" = {100 * gflops * 1e9 / peaks['fp32']:5.1f} % fp32 / {100 * gflops * 1e9 / peaks['bf16']:5.2f} % "
             "bf16 peak" if peaks else "")
    worker = f"  [worker alone {row.worker_pxs:.0f} px/s]" if row.worker_pxs else ""
    return f"  {row.path:<30} {row.pxs:8.1f} px/s {ratio}  {gflops:7.1f} useful GFLOP/s{share}{worker}  {row.note}"


def tile_for(bench: Bench, family: str, scenario: Scenario, cfg: ModelConfig) -> tuple[Path, float, int]:
    """Write the scenario's tile for ``family``; return (folder, its useful FLOPs, its ROI pixels)."""
    side = bench.sizes[family]
    series = synthetic_series(side * side, scenario, seed=1 + list(SCENARIOS).index(scenario.name))
    folder = write_tile(bench.workdir / f"{family}-{scenario.name}", series, side)
    flops = useful_flops(cfg, series)
    print(f" tile {scenario.name}: {side} x {side} px, {scenario.describe()}; "
          f"{flops / side ** 2 / 1e9:.3f} useful GFLOP/px", flush=True)
    return folder, flops, side * side


def bench_v10(bench: Bench, cfg: ModelConfig, title: str, checkpoint: Path) -> None:
    """Seed vs ours (every precision) on both tiles, plus the seed-0 vs seed-1 spread of ours."""
    for scenario in bench.scenarios("v1.0"):
        folder, flops, n = tile_for(bench, "v1.0", scenario, cfg)
        with timed(CPU) as seconds:
            model = load_model(checkpoint)
            seed_out = seed_embed(model, read_pixels(folder)[0], batch=256)
        seed_s = seconds[0]
        bench.add(Row(title, scenario.name, "seed (rng.choice, fp32 eager)", n, seed_s, flops))
        outputs: dict[str, np.ndarray] = {}
        for precision in bench.precisions_for("v1.0"):
            wall, outputs[precision], worker = run_ours(bench, folder, checkpoint, precision)
            note = f"cosine to seed {mean_cosine(seed_out, outputs[precision]):.4f}"
            if precision != "fp32":
                note += f", to ours fp32 {mean_cosine(outputs['fp32'], outputs[precision]):.5f}"
            bench.add(Row(title, scenario.name, f"ours infer_all_tiles {precision}", n, wall, flops, seed_s, worker,
                          note))
        _, again, _ = run_ours(bench, folder, checkpoint, "fp32", seed=1)
        line = (f"v1.0 {scenario.name} tile: cosine seed vs ours {mean_cosine(seed_out, outputs['fp32']):.4f}, "
                f"ours seed0 vs seed1 {mean_cosine(outputs['fp32'], again):.4f} (the spread of the random draw)")
        print(f"  {line}")
        bench.notes.append(line)


def bench_bucketed(bench: Bench, cfg: ModelConfig, title: str, checkpoint: Path) -> None:
    """Reference pair-bucketed vs ours (every precision) on both tiles, with max |ours − ref|."""
    for scenario in bench.scenarios(cfg.family):
        folder, flops, n = tile_for(bench, cfg.family, scenario, cfg)
        with timed(CPU) as seconds:
            model = load_model(checkpoint)
            reference, groups = pair_bucketed(model, read_pixels(folder)[0], REF_BATCH)
        ref_s = seconds[0]
        bench.add(Row(title, scenario.name, "ref (pair-bucketed)", n, ref_s, flops, note=f"{groups} bucket pairs"))
        for precision in bench.precisions_for(cfg.family):
            wall, ours, worker = run_ours(bench, folder, checkpoint, precision)
            bench.add(Row(title, scenario.name, f"ours infer_all_tiles {precision}", n, wall, flops, ref_s, worker,
                          f"max abs(ours - ref) {np.abs(ours - reference).max():.1e}"))


def fixed_cost(bench: Bench, family: str, checkpoint: Path) -> None:
    """Wall time of ``infer_all_tiles`` on a one-pixel tile: process starts, imports, checkpoint loads."""
    series = synthetic_series(1, SCENARIOS["typical"], seed=9)
    folder = write_tile(bench.workdir / f"{family}-one-pixel", series, 1)
    wall, _, _ = run_ours(bench, folder, checkpoint, "fp32")
    size = checkpoint.stat().st_size / 1e6
    line = f"{family}: fixed cost of one infer_all_tiles call (1-px tile, {size:.0f} MB checkpoint): {wall:.1f} s"
    print(f"  {line}")
    bench.notes.append(line)


def summary_table(bench: Bench) -> str:
    """The rows as a markdown table for the README, headed by the CPU, threads and measured peaks."""
    peaks = bench.peaks
    lines = [f"#### `make bench` on {cpu_name()}, {bench.threads} threads, torch {torch.__version__}",
             "",
             f"Measured matmul peak (best of start and end): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
             f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s. "
             "Ours = `infer_all_tiles` end to end (process start and model load included); seed/ref in-process. "
             "Steady = the px/s the worker logged for the tile alone (what a long run of large tiles gets).",
             "",
             "| model | tile | path | px | px/s | × seed/ref | useful GFLOP/s | % fp32 peak | % bf16 peak "
             "| steady px/s | steady × | steady % fp32 peak | agreement |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in bench.rows:
        gflops = row.flops / row.seconds / 1e9
        ratio = f"{row.baseline_s / row.seconds:.2f}" if row.baseline_s else "1"
        steady = row.worker_pxs or row.pxs
        baseline_pxs = row.pixels / row.baseline_s if row.baseline_s else row.pxs
        steady_gflops = steady * row.flops / row.pixels / 1e9
        lines.append(f"| {row.model} | {row.tile} | {row.path} | {row.pixels} | {row.pxs:.1f} | {ratio} | "
                     f"{gflops:.1f} | {100 * gflops * 1e9 / peaks['fp32']:.1f} | "
                     f"{100 * gflops * 1e9 / peaks['bf16']:.2f} | {steady:.1f} | {steady / baseline_pxs:.2f} | "
                     f"{100 * steady_gflops * 1e9 / peaks['fp32']:.1f} | {row.note.replace('|', '∣')} |")
    lines += [""] + [f"- {note}" for note in bench.notes]
    return "\n".join(lines)


def measure_peaks(when: str, previous: dict[str, float] | None = None) -> dict[str, float]:
    """This machine's fp32 and bf16 ``torch.mm`` peaks in FLOP/s on the current threads (printed with the load).

    With ``previous``, the best of both measurements is returned (other processes only ever slow
    a measurement down, so the larger figure is the closer one to the machine's peak).
    """
    peaks = {"fp32": matmul_peak(torch.float32, CPU, CPU_PEAK_SHAPES),
             "bf16": matmul_peak(torch.bfloat16, CPU, CPU_PEAK_SHAPES)}
    shapes = ", ".join("x".join(map(str, s)) for s in CPU_PEAK_SHAPES)
    print(f"matmul peak {when} ({shapes} M x K x N, best): fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s; {load_line(previous is None)}", flush=True)
    if previous is not None:
        peaks = {k: max(v, previous[k]) for k, v in peaks.items()}
    return peaks


def load_line(idle_expected: bool) -> str:
    """The 1-minute load average against the cores: other work on the machine skews every figure.

    With ``idle_expected`` (before the bench's own work), a load above half the cores is flagged.
    """
    try:
        load = os.getloadavg()[0]
    except OSError:
        return "load average unknown"
    cores = os.cpu_count() or 1
    busy = " (BUSY: other processes compete for the cores; figures will be low and noisy)" if (
        idle_expected and load > 0.5 * cores) else ""
    return f"load average {load:.2f} on {cores} cores{busy}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the seed/ref and --cores of infer_all_tiles")
    parser.add_argument("--quick", action="store_true", help="4 x 4 px tiles, demo-sized models (the test)")
    parser.add_argument("--only", choices=list(MODELS), default=None, help="one family only")
    parser.add_argument("--size-official", type=int, default=24,
                        help="tile side (px) for v1.0 official dims and v1.1 released dims")
    parser.add_argument("--size-small", type=int, default=32, help="tile side (px) for the v2 Medium-class model")
    args = parser.parse_args(argv)
    if min(args.threads, args.size_official, args.size_small) < 1:
        parser.error("--threads and the sizes must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print every row, the agreement lines, the markdown summary and the wall time."""
    started = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; {args.threads} threads", flush=True)
    side_official, side_small = (4, 4) if args.quick else (args.size_official, args.size_small)
    with tempfile.TemporaryDirectory(prefix="bench_product-") as workdir:
        bench = Bench(args.threads, args.quick, {"v1.0": side_official, "v1.1": side_official, "v2": side_small},
                      Path(workdir), measure_peaks("at start"), cli_precisions())
        print(f"infer_all_tiles --precision choices benchmarked: {', '.join(bench.precisions)}")
        for family, ((full, title), demo) in MODELS.items():
            if args.only not in (None, family):
                continue
            cfg, title = (demo, f"{family} demo dims") if args.quick else (full, title)
            print(f"== {title}: d_model {cfg.d_model}, {cfg.num_layers} layers, {cfg.nhead} heads, "
                  f"FFN {cfg.dim_feedforward}", flush=True)
            checkpoint = save_random_checkpoint(cfg, Path(workdir) / f"{family}.pt")
            if family == "v1.0":
                bench_v10(bench, cfg, title, checkpoint)
            else:
                bench_bucketed(bench, cfg, title, checkpoint)
            if not args.quick:
                fixed_cost(bench, family, checkpoint)
        bench.peaks = measure_peaks("at end", bench.peaks)
        print("\nevery row against the best measured peaks:")
        for row in bench.rows:
            print(f"{row.model:>18} {row.tile:<8}{format_row(row, bench.peaks)}")
        print()
        print(summary_table(bench))
    print(f"\nbench_product total wall time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
