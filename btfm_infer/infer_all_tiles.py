"""Fan tiles out to CPU and GPU worker processes and embed them all.

``infer_all_tiles.sh`` is a thin wrapper around :func:`main`. Tiles already embedded are
skipped; each worker writes through temporary names, so an interrupted run resumes cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from btfm_core.cli import (
    HelpFormatter,
    add_checkpoint_option,
    add_seed_option,
    add_standard_options,
    add_tiles_dir_option,
    entry_point,
    prog_name,
)
from btfm_core.errors import BTFMError
from btfm_core.fileio import check_free_space, ensure_writable_dir, remove_stale_temporaries
from btfm_core.locking import folder_lock
from btfm_core.logs import setup_logging
from btfm_core.run import (
    INFERENCE_RECORD_FILE,
    REPRESENTATION_DIRNAME,
    TILES_DIRNAME,
    RunLayout,
    RunMetadata,
    finished_run_metadata,
)
from btfm_core.tiles import TileId, check_single_run, list_tiles
from btfm_infer.checkpoint import V11_SOURCES, load_model
from btfm_infer.families import FAMILY_NAMES
from btfm_infer.hardware import PRECISIONS, cpu_description, resolve_precision
from btfm_infer.model import BTFM
from btfm_infer.onnx_engine import ENGINES
from btfm_infer.progress import (
    PROGRESS_LOG_INTERVAL_S,
    PixelProgress,
    ProgressFile,
    failure_file_path,
    progress_file_path,
    read_failure_file,
    read_progress_file,
    read_progress_tile,
)
from btfm_infer.tile_checks import scan_tiles
from btfm_infer.tile_inference import (
    InferenceOptions,
    check_or_write_record,
    inference_record,
    output_dim,
    representation_path,
)
from btfm_infer.worker import WorkerJob, prepare_model, run_tiles

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CHECKPOINT", "MATRYOSHKA_CHOICES", "InferSettings", "WorkerPlan", "build_parser", "describe_model",
           "describe_worker_exit", "embed_pending", "load_checked_model", "main", "parse_split", "plan_workers",
           "run_in_process", "run_workers", "settings_from_args", "worker_job", "worker_precisions"]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ``--dim`` values (the v2 students' Matryoshka dimensions).
MATRYOSHKA_CHOICES = (16, 32, 64, 128)
DEFAULT_CHECKPOINT = REPO_ROOT / "checkpoints" / "btfm_demo.pt"
#: Seconds between two looks at the workers (exit status, progress files).
POLL_INTERVAL_S = 0.5


@dataclass(frozen=True)
class WorkerPlan:
    """The tiles one worker process embeds, and how."""

    name: str
    device: str
    threads: int
    batch_size: int
    tiles: tuple[TileId, ...]
    precision: str = "fp32"


@dataclass(frozen=True)
class InferSettings:
    """The inference step's settings, decided once from the command line (:func:`settings_from_args`).

    Handed down, never changed in place; the workers get their share as a
    :class:`~btfm_infer.worker.WorkerJob` (JSON) or, on Dask, as :class:`InferenceOptions`.

    Attributes:
        tiles_dir, output_dir, log_dir: the run's tile folder, where ``<tile>.npy`` and the logs go.
        checkpoint: the model checkpoint.
        options: seed, repeat, CPU batch size, precision, engine, family, statistics and
            dimensions as the flags give them (``precision`` as asked: ``auto`` is resolved per
            device type by :func:`worker_precisions`; ``stats`` is filled in by
            :func:`load_checked_model` for v1.1 checkpoints that do not record it).
        split: the CPU:GPU share of tiles.
        max_cpu, max_gpu: worker processes (``max_gpu`` defaults to the GPUs found).
        asked_for_gpu: whether ``--max-gpu`` was given.
        cores: CPU threads shared by the CPU workers.
        cpu_batch_size, gpu_batch_size: pixels per forward pass.
        scheduler, dask_local: a Dask scheduler address, or local Dask workers (0: none).
    """

    tiles_dir: Path
    output_dir: Path
    log_dir: Path
    checkpoint: Path
    options: InferenceOptions = field(default_factory=lambda: InferenceOptions(precision="auto"))
    split: tuple[int, int] = (1, 1)
    max_cpu: int = 1
    max_gpu: int = 0
    asked_for_gpu: bool = False
    cores: int = 1
    gpu_batch_size: int = 8192
    scheduler: str | None = None
    dask_local: int = 0

    @property
    def on_dask(self) -> bool:
        return bool(self.scheduler or self.dask_local)

    def inference_options(self, precision: str, batch_size: int | None = None) -> InferenceOptions:
        """The options the workers run with, at the ``precision`` decided for their device."""
        return replace(self.options, precision=precision, batch_size=batch_size or self.options.batch_size)


def settings_from_args(args: argparse.Namespace) -> InferSettings:
    """Check the flags and resolve the paths and defaults (the only place that reads ``args``).

    Raises:
        BTFMError: a flag out of range or two that do not go together, naming them.
    """
    tiles_dir = args.tiles_dir.expanduser().resolve()
    run = RunLayout(tiles_dir.parent)
    split = parse_split(args.cpu_gpu_split)
    asked_for_gpu = args.max_gpu is not None
    max_gpu = torch.cuda.device_count() if args.max_gpu is None else args.max_gpu
    if min(args.max_cpu, max_gpu) < 0:
        raise BTFMError("--max-cpu and --max-gpu must be >= 0")
    if args.max_cpu + max_gpu == 0:
        raise BTFMError("no worker to run: --max-cpu is 0 and " +
                        ("--max-gpu is 0" if asked_for_gpu else "no CUDA GPU was found; raise --max-cpu"))
    if min(args.cores, args.cpu_batch_size, args.gpu_batch_size, args.repeat) < 1:
        raise BTFMError("--cores, --cpu-batch-size, --gpu-batch-size and --repeat must be >= 1")
    if args.seed < 0:
        raise BTFMError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.engine == "onnxruntime" and args.precision in ("bf16", "int8"):
        raise BTFMError(f"--precision {args.precision} applies to the torch engine; use --engine torch with it, or "
                        "fp32 with --engine onnxruntime")
    return InferSettings(
        tiles_dir=tiles_dir, output_dir=(args.output_dir or run.representation_dir).expanduser().resolve(),
        log_dir=(args.log_dir or run.logs_dir).expanduser().resolve(), checkpoint=args.checkpoint,
        options=InferenceOptions(args.seed, args.repeat, args.cpu_batch_size, args.precision, args.engine,
                                 args.model_family, args.stats, args.dim),
        split=split, max_cpu=args.max_cpu, max_gpu=max_gpu, asked_for_gpu=asked_for_gpu, cores=args.cores,
        gpu_batch_size=args.gpu_batch_size, scheduler=args.scheduler, dask_local=args.dask_local)


def parse_split(text: str) -> tuple[int, int]:
    """Parse a ``CPU:GPU`` tile ratio such as ``1:1`` or ``3:1``."""
    try:
        cpu, gpu = (int(part) for part in text.split(":"))
    except ValueError as exc:
        raise BTFMError(f"--cpu-gpu-split '{text}' is not CPU:GPU, e.g. 1:1 or 3:1") from exc
    if cpu < 0 or gpu < 0 or cpu + gpu == 0:
        raise BTFMError(f"--cpu-gpu-split '{text}' needs non-negative parts, not both 0")
    return cpu, gpu


def plan_workers(tiles: Sequence[TileId], split: tuple[int, int], max_cpu: int, n_gpu: int, cores: int,
                 cpu_batch_size: int, gpu_batch_size: int) -> list[WorkerPlan]:
    """Split tiles between CPU and GPU workers by the ratio, interleaved, then round-robin.

    With no GPU (``n_gpu == 0``) every tile goes to CPU workers; with ``max_cpu == 0`` every
    tile goes to the GPUs. CPU workers share ``cores`` threads evenly.
    """
    cpu_weight, gpu_weight = split
    if n_gpu == 0:
        cpu_weight, gpu_weight = 1, 0
    elif max_cpu == 0:
        cpu_weight, gpu_weight = 0, 1
    fraction = gpu_weight / (cpu_weight + gpu_weight)
    gpu_tiles = [t for i, t in enumerate(tiles) if int((i + 1) * fraction) > int(i * fraction)]
    gpu_set = set(gpu_tiles)
    cpu_tiles = [t for t in tiles if t not in gpu_set]
    plans: list[WorkerPlan] = []
    n_cpu = min(max_cpu, len(cpu_tiles))
    threads = max(1, cores // max(1, n_cpu))
    for k in range(n_cpu):
        plans.append(WorkerPlan(f"cpu_{k}", "cpu", threads, cpu_batch_size, tuple(cpu_tiles[k::n_cpu])))
    n_gpu_workers = min(n_gpu, len(gpu_tiles))
    for k in range(n_gpu_workers):
        plans.append(WorkerPlan(f"gpu_{k}", f"cuda:{k}", 1, gpu_batch_size,
                                tuple(gpu_tiles[k::n_gpu_workers])))
    return plans


def build_parser() -> argparse.ArgumentParser:
    """Command line of the inference step."""
    parser = argparse.ArgumentParser(
        prog=prog_name("btfm_infer.infer_all_tiles"),
        description="Embed every tile folder with a TESSERA model of any family (v1.0, v1.0 QAT, v1.1, v2 "
                    "students; recognised from the checkpoint), fanning tiles out to CPU and GPU worker processes. "
                    "Writes representation_retiled/<tile>.npy (H, W, D) float32 (D = 128, or --dim).",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  infer_all_tiles.sh --tiles-dir my_data/retiled_d_pixel \\\n"
               "      --output-dir my_data/representation_retiled --checkpoint checkpoints/btfm_demo.pt\n"
               "  infer_all_tiles.sh --tiles-dir T --output-dir O --checkpoint student_medium.pt --dim 64\n"
               "  infer_all_tiles.sh --tiles-dir T --output-dir O --checkpoint v1_1.pt --stats mpc\n"
               "  infer_all_tiles.sh --tiles-dir T --output-dir O --checkpoint best_model.pt \\\n"
               "      --cpu-gpu-split 1:4 --max-cpu 2 --max-gpu 1 --cores 16 --gpu-batch-size 4096\n",
    )
    add_tiles_dir_option(parser, f"the run's tile folder ({TILES_DIRNAME})", required=True)
    parser.add_argument("--output-dir", type=Path, default=None,
                        help=f"where <tile>.npy go (default: {REPRESENTATION_DIRNAME} beside --tiles-dir)")
    add_checkpoint_option(parser, "model checkpoint of any TESSERA family (v1.0, v1.0 QAT, v1.1, v2 student); the "
                                  "family is recognised from the file", DEFAULT_CHECKPOINT)
    parser.add_argument("--model-family", choices=["auto", *FAMILY_NAMES], default="auto",
                        help="the family the checkpoint must be (auto: recognise it from the file)")
    parser.add_argument("--stats", choices=V11_SOURCES, default=None,
                        help="v1.1 only, for a checkpoint that does not record its data_source: the statistics of "
                             "the data it was trained on (mpc: Planetary Computer, aws: Earth Search); default: "
                             "from the run's Sentinel-2 source. A value that contradicts the checkpoint is refused")
    parser.add_argument("--dim", type=int, choices=MATRYOSHKA_CHOICES, default=None,
                        help="Matryoshka families (v2) only: write the first DIM embedding dimensions (default: all)")
    parser.add_argument("--cpu-gpu-split", default="1:1", help="share of tiles for CPU:GPU workers")
    parser.add_argument("--max-cpu", type=int, default=1, help="CPU worker processes")
    parser.add_argument("--max-gpu", type=int, default=None,
                        help="GPU worker processes (one per GPU; default: one per GPU found, none without a "
                             "warning on a machine without GPU)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                        help="CPU threads shared by the CPU workers")
    parser.add_argument("--cpu-batch-size", type=int, default=1024, help="pixels per CPU forward pass")
    parser.add_argument("--gpu-batch-size", type=int, default=8192, help="pixels per GPU forward pass")
    add_seed_option(parser, "seed of the observation sampling (v1.0 families; v1.1 and v2 use every observation)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="average this many sampling draws (v1.0 families only)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 autocast where the hardware computes bf16 natively (CUDA GPUs, CPUs with "
                             "AVX512-BF16 or AMX), else fp32; bf16 on a CPU without native bf16 is emulated and "
                             "several times slower (a warning says so); int8: dynamic int8 quantisation of the "
                             "transformer Linears, CPU only. bf16 and int8 embeddings agree with fp32 to a cosine of "
                             "about 0.999 (make bench measures speed and agreement on this machine)")
    parser.add_argument("--engine", choices=ENGINES, default="torch",
                        help="forward engine of the CPU workers: onnxruntime exports the model once per "
                             "process; same outputs to float rounding; faster or slower than torch depending on "
                             "the CPU (scripts/bench_engines.py measures it); fp32 only; GPU workers always use "
                             "torch")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", default=None,
                         help="send tile jobs to a running Dask scheduler (tcp://HOST:PORT) instead of local "
                              "worker processes; workers need the same paths (shared file system)")
    cluster.add_argument("--dask-local", type=int, default=0, metavar="N",
                         help="run the tiles on a local Dask cluster of N worker processes")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="per-process logs (default: logs/ beside --tiles-dir)")
    add_standard_options(parser)
    return parser


def worker_job(plan: WorkerPlan, settings: InferSettings) -> WorkerJob:
    """The job of the worker process that runs ``plan``."""
    return WorkerJob(settings.tiles_dir, settings.output_dir, settings.checkpoint, tuple(t.name for t in plan.tiles),
                     settings.inference_options(plan.precision, plan.batch_size), plan.device, plan.threads,
                     log_file=settings.log_dir / f"infer_{plan.name}.log",
                     progress_file=progress_file_path(settings.log_dir, plan.name),
                     failure_file=failure_file_path(settings.log_dir, plan.name), parent_pid=os.getpid())


def _worker_command(plan: WorkerPlan, settings: InferSettings) -> list[str]:
    return [sys.executable, "-m", "btfm_infer.worker", "-q", "--job", worker_job(plan, settings).to_json()]


def _stop_workers(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM every running worker (it stops as on Ctrl-C), wait up to 30 s each, then kill."""
    for proc in procs.values():
        proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _read_progress(files: dict[str, Path]) -> tuple[dict[str, int], int]:
    """Pixels done per worker and tiles done in all, from the workers' progress files."""
    readings = {name: read_progress_file(path) for name, path in files.items()}
    return {name: px for name, (px, _) in readings.items()}, sum(tiles for _, tiles in readings.values())


def describe_worker_exit(name: str, returncode: int, log_dir: Path) -> str:
    """One line on why worker ``name`` ended with ``returncode``: its recorded failure, or the signal and tile."""
    log_path = log_dir / f"infer_{name}.log"
    failure = read_failure_file(failure_file_path(log_dir, name))
    if failure is not None:
        on = f" on tile {failure['tile']}" if failure["tile"] else ""
        return f"worker {name} failed{on}: {failure['message']} (log: {log_path})"
    tile = read_progress_tile(progress_file_path(log_dir, name))
    during = f" while embedding tile {tile}" if tile else ""
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode).name
        except ValueError:
            sig = f"signal {-returncode}"
        hint = " (out of memory? see dmesg)" if -returncode == signal.SIGKILL else ""
        return (f"worker {name} was killed by {sig}{during}{hint}; finished tiles are kept, rerun to embed the "
                f"rest (log: {log_path})")
    return f"worker {name} exited with status {returncode}{during}; see {log_path}"


class _StopRequest:
    """SIGTERM handler while workers run: records the signal; the poll loop then stops the workers.

    It raises nothing, so a worker is never started without being recorded (and stopped).
    """

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.signal = signum


@contextlib.contextmanager
def _catch_sigterm() -> Iterator[_StopRequest]:
    """Within: SIGTERM sets the yielded request instead of killing the driver (main thread only)."""
    request = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.signal(signal.SIGTERM, request)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)


def _watch_workers(procs: dict[str, subprocess.Popen[bytes]], files: dict[str, Path], reporter: PixelProgress,
                   log_dir: Path, stop: _StopRequest) -> list[str]:
    """Poll until every worker has exited, one has failed or a stop is requested; the failures, one line each.

    A worker's failure is described when it is seen, while its progress and failure files exist.
    """
    failures: list[str] = []
    while procs and not failures and stop.signal is None:
        time.sleep(POLL_INTERVAL_S)
        for name, proc in list(procs.items()):
            if proc.poll() is not None:
                del procs[name]
                if proc.returncode != 0:
                    failures.append(describe_worker_exit(name, proc.returncode, log_dir))
        reporter.update(*_read_progress(files))
    return failures


def _remove_worker_files(log_dir: Path, names: Sequence[str]) -> None:
    for name in names:
        progress_file_path(log_dir, name).unlink(missing_ok=True)
        failure_file_path(log_dir, name).unlink(missing_ok=True)


def run_workers(plans: Sequence[WorkerPlan], settings: InferSettings, total_pixels: int | None = None, *,
                log_interval_s: float | None = None) -> None:
    """Start the workers, show progress, stop them all cleanly on Ctrl-C, SIGTERM or a failure.

    Progress is in pixels (``total_pixels``: the ROI pixels of the plans' tiles; None: tiles
    only), read from each worker's ``<settings.log_dir>/progress_<worker>.json``: a bar on a terminal,
    else a log line every ``log_interval_s`` seconds (default :data:`PROGRESS_LOG_INTERVAL_S`).
    A failed worker is reported in one line: its own error (from ``failure_<worker>.json``), or
    the signal that killed it and the tile it was on. Each worker runs in a session of its own, so
    Ctrl-C reaches the driver only, which stops them all by SIGTERM (in their process group, a
    Ctrl-C during a worker's torch import printed a KeyboardInterrupt traceback); the price is
    that Ctrl-Z pauses the driver, not the workers. SIGTERM of the driver stops them here; its
    death by any signal (SIGKILL, a terminal hang-up) ends them by ``PR_SET_PDEATHSIG`` or their
    parent-pid check (:mod:`btfm_infer.worker`).

    Raises:
        BTFMError: a worker failed (the first failure's line; any other is logged).
        SystemExit: 143 after SIGTERM, once the workers are stopped.
    """
    log_dir = settings.log_dir
    files = {p.name: progress_file_path(log_dir, p.name) for p in plans}
    _remove_worker_files(log_dir, list(files))  # a previous run's counts and failures
    interval = PROGRESS_LOG_INTERVAL_S if log_interval_s is None else log_interval_s
    reporter = PixelProgress(total_pixels, sum(len(p.tiles) for p in plans), log_interval_s=interval, logger=log)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    failures: list[str] = []
    with _catch_sigterm() as stop:
        try:
            for plan in plans:
                if stop.signal is None:
                    procs[plan.name] = subprocess.Popen(_worker_command(plan, settings),
                                                        stdout=subprocess.DEVNULL, start_new_session=True)
            failures = _watch_workers(procs, files, reporter, log_dir, stop)
        except KeyboardInterrupt:
            log.warning("interrupted: stopping %d worker(s); finished tiles are kept", len(procs))
            raise
        finally:
            running = sum(proc.poll() is None for proc in procs.values())
            _stop_workers(procs)
            reporter.update(*_read_progress(files))
            reporter.close()
            _remove_worker_files(log_dir, list(files))
    if stop.signal is not None:
        log.error("terminated by %s: stopped %d worker(s); finished tiles are kept, rerun to embed the rest",
                  signal.Signals(stop.signal).name, running)
        raise SystemExit(128 + stop.signal)
    for line in failures[1:]:
        log.error("%s", line)
    if failures:
        raise BTFMError(failures[0])


class _ReportedProgress(ProgressFile):
    """A :class:`ProgressFile` whose writes update the driver's :class:`PixelProgress` directly."""

    def __init__(self, reporter: PixelProgress, worker: str) -> None:
        super().__init__(None)
        self.reporter, self.worker = reporter, worker

    def write(self) -> None:
        """Report the counts (throttled by :meth:`ProgressFile.add`)."""
        super().write()
        self.reporter.update({self.worker: self.pixels_done}, self.tiles_done)


def run_in_process(plan: WorkerPlan, model: BTFM, settings: InferSettings, total_pixels: int | None = None) -> None:
    """Run the one CPU worker in this process with the model the driver loaded already.

    Saves a second interpreter start, torch import and checkpoint read (several seconds per call);
    the worker's log lines go to ``infer_all_tiles.log``.
    """
    torch.set_num_threads(plan.threads)
    options = settings.inference_options(plan.precision, plan.batch_size)
    runnable = prepare_model(model, options, plan.threads)
    reporter = PixelProgress(total_pixels, len(plan.tiles), logger=log)
    try:
        run_tiles(runnable, settings.tiles_dir, settings.output_dir, plan.tiles, options,
                  _ReportedProgress(reporter, plan.name))
    finally:
        reporter.close()


def load_checked_model(settings: InferSettings, run_metadata: RunMetadata | None) -> tuple[BTFM, InferSettings]:
    """Load ``--checkpoint`` as the driver's check of everything the workers will need.

    Recognises the family (logged), decides v1.1 statistics (the checkpoint's own, ``--stats``,
    or the run's Sentinel-2 source, which then travels to the workers in the returned settings)
    and checks ``--dim`` and the engine against the family.

    Returns:
        The model, and ``settings`` with ``stats`` decided.

    Raises:
        CheckpointError: see :func:`btfm_infer.checkpoint.load_model` and :func:`resolve_stats`.
        BTFMError: ``--dim`` for a family without Matryoshka dimensions, or one it does not list.
    """
    model = load_model(settings.checkpoint, "cpu", family=settings.options.family, stats=settings.options.stats,
                       run_s2_source=str(run_metadata.get("source", "")) or None if run_metadata else None)
    family, config, name = model.family, model.config, settings.checkpoint.name
    if family.stats is None:  # the statistics decided here travel to the workers
        settings = replace(settings, options=replace(settings.options,
                                                     stats=model.require_stats().name.removeprefix("v1.1-")))
    dim = settings.options.dim
    if dim is not None:
        if not family.matryoshka:
            raise BTFMError(f"--dim applies to Matryoshka families (v2 students); {name} is "
                            f"{family.title}, whose {config.embedding_dim} dimensions only work together: "
                            "drop --dim")
        if dim not in config.matryoshka_dims:
            raise BTFMError(f"--dim {dim} is not one of this checkpoint's Matryoshka dimensions "
                            f"{list(config.matryoshka_dims)}")
    if settings.options.engine == "onnxruntime" and family.name != "v1.0":
        raise BTFMError(f"--engine onnxruntime runs v1.0 checkpoints only; {name} is "
                        f"{family.title}: use --engine torch")
    return model, settings


def worker_precisions(requested: str, *, gpus: bool) -> dict[str, str]:
    """The precision CPU (and, with ``gpus``, GPU) workers run for ``--precision requested``.

    Decided once by the driver, so a bf16-on-emulating-CPU warning comes before any work and
    every worker of one device type runs the same precision.

    Raises:
        BTFMError: int8 with GPU workers.
    """
    precisions = {"cpu": resolve_precision(requested, "cpu")}
    if gpus:
        if requested == "int8":
            raise BTFMError("--precision int8 runs on the CPU only; use --max-gpu 0 with it, or --precision auto/bf16 "
                            "for the GPU workers")
        precisions["cuda"] = resolve_precision(requested, "cuda")
    return precisions


def describe_model(model: BTFM, settings: InferSettings) -> str:
    """One log line: family, dimensions, statistics and input rule of the run's model."""
    family, options = model.family, settings.options
    rule = (f"{family.input_rule}, seed {options.seed}, repeat {options.repeat}" if family.randomised
            else f"{family.input_rule} (every valid observation; --seed/--repeat do not apply)")
    written = f" (first {options.dim} written)" if options.dim else ""
    return (f"model: {family.title}, {model.embedding_dim}-d embedding{written}, "
            f"{model.require_stats().name} statistics, input rule {rule}")


def embed_pending(settings: InferSettings, model: BTFM, tiles: Sequence[TileId], precisions: dict[str, str],
                  n_gpu: int) -> None:
    """Check the record, plan the workers and embed every tile not done yet (the folder lock held).

    Args:
        precisions: the precision of the CPU (and GPU) workers, :func:`worker_precisions`.
        n_gpu: GPUs to use.
    """
    output_dir = settings.output_dir
    remove_stale_temporaries(output_dir)
    record_precision = (precisions["cpu"] if len(set(precisions.values())) == 1
                        else ", ".join(f"{k} {v}" for k, v in precisions.items()))
    # tiles already there must come from the same checkpoint, family, statistics and sampling settings
    wrote_record = check_or_write_record(output_dir, inference_record(
        settings.checkpoint, model, settings.inference_options(record_precision)))
    try:
        _plan_and_run(settings, model, tiles, precisions, n_gpu)
    except BaseException:
        if wrote_record and not any(output_dir.glob("*.npy")):  # a failed first run leaves no record
            (output_dir / INFERENCE_RECORD_FILE).unlink(missing_ok=True)
        raise


def _plan_and_run(settings: InferSettings, model: BTFM, tiles: Sequence[TileId], precisions: dict[str, str],
                  n_gpu: int) -> None:
    """Plan the workers for the pending tiles and run them."""
    pending = [t for t in tiles if not representation_path(settings.output_dir, t).exists()]
    # validate the tile contract before any work, and count the pixels to embed
    roi_pixels = scan_tiles(settings.tiles_dir, pending)  # also warns about tiles without any valid S2 observation
    options = settings.inference_options(precisions["cpu"])
    check_free_space(settings.output_dir,
                     sum(t.shape[0] * t.shape[1] for t in pending) * output_dim(model, options) * 4,
                     f"the embeddings of {len(pending)} tile(s)")
    if settings.split[1] > 0 and settings.max_gpu > 0 and n_gpu == 0 and settings.asked_for_gpu:
        log.warning("no CUDA GPU found: the GPU share of tiles runs on the CPU workers")
    plans = [replace(p, precision=precisions[torch.device(p.device).type])
             for p in plan_workers(pending, settings.split, settings.max_cpu if n_gpu else max(1, settings.max_cpu),
                                   min(n_gpu, settings.max_gpu), settings.cores, settings.options.batch_size,
                                   settings.gpu_batch_size)]
    workers = (f"Dask ({settings.scheduler or f'{settings.dask_local} local workers'})" if settings.on_dask else
               ", ".join(f"{p.name} ({len(p.tiles)} tiles, {p.threads} threads)" for p in plans) or "no worker")
    log.info("%d tile(s), %d already done, %d to embed with %s", len(tiles), len(tiles) - len(pending),
             len(pending), workers)
    started = time.perf_counter()
    total_pixels = sum(roi_pixels.values())
    if pending and settings.on_dask:
        from btfm_infer.dask_backend import run_on_dask

        run_on_dask(pending, settings.tiles_dir, settings.output_dir, settings.checkpoint.resolve(), options,
                    scheduler=settings.scheduler, local_workers=settings.dask_local,
                    threads_per_worker=max(1, settings.cores // max(1, settings.dask_local or 1)),
                    total_pixels=total_pixels)
    elif len(plans) == 1 and plans[0].device == "cpu":
        run_in_process(plans[0], model, settings, total_pixels)
    elif plans:
        run_workers(plans, settings, total_pixels)
    seconds = time.perf_counter() - started
    log.info("embedded %d tile(s), %d px in %.1f s (%.0f px/s); outputs in %s", len(pending), total_pixels,
             seconds, total_pixels / max(seconds, 1e-9), settings.output_dir)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Embed all pending tiles; exit 0 on success, 2 on bad input or a failed worker."""
    args = build_parser().parse_args(argv)
    setup_logging(None, args.verbosity)
    settings = settings_from_args(args)
    tiles = list_tiles(settings.tiles_dir)
    check_single_run(settings.tiles_dir, tiles)  # tiles of two preprocessing runs never make one map
    # fail before creating anything on a missing or foreign checkpoint, undecided statistics or a bad --dim
    model, settings = load_checked_model(settings, finished_run_metadata(settings.tiles_dir))
    ensure_writable_dir(settings.output_dir, "output folder (--output-dir)")
    ensure_writable_dir(settings.log_dir, "log folder (--log-dir)")
    setup_logging(settings.log_dir / "infer_all_tiles.log", args.verbosity)
    log.info("%s", describe_model(model, settings))
    n_gpu = torch.cuda.device_count() if settings.max_gpu > 0 else 0
    asked = settings.options.precision
    precisions = worker_precisions("fp32" if settings.options.engine == "onnxruntime" and asked == "auto" else asked,
                                   gpus=n_gpu > 0 and settings.split[1] > 0 and not settings.on_dask)
    log.info("precision: %s (--precision %s; CPU: %s)", ", ".join(f"{k} {v}" for k, v in precisions.items()),
             asked, cpu_description())
    with folder_lock(settings.output_dir, "inference"):  # one run per output folder at a time
        embed_pending(settings, model, tiles, precisions, n_gpu)
    print(settings.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
