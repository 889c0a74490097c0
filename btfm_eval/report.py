"""report.md, results.json, PNG plots and the one-line summary of an evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from btfm_core.fileio import atomic_path

LABELS = {"embeddings": "BTFM embeddings", "untrained": "untrained BTFM (same architecture, random init)",
          "raw": "raw S2/S1 bands + seasonal statistics"}
METRIC_NAMES = {"oa": "OA", "macro_f1": "macro-F1", "r2": "R²", "rmse": "RMSE", "mae": "MAE"}


def _pm(entry: dict[str, float], single: bool = False) -> str:
    """``mean ± std``; the mean alone for a single hold-out split; ``n/a`` when undefined."""
    mean, std = entry["mean"], entry["std"]
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f}" if single else f"{mean:.3f} ± {std:.3f}"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def best(result: dict[str, Any], split: str, features: list[str]) -> tuple[str, str, dict[str, Any]] | None:
    """(feature, model, summary) with the best primary metric among ``features`` on ``split``."""
    metric = result["primary_metric"]
    cands = [(f, m, s) for f in features for m, s in result["cv"].get(split, {}).get(f, {}).items()
             if math.isfinite(s[metric]["mean"])]
    return max(cands, key=lambda c: c[2][metric]["mean"]) if cands else None


def summary_line(result: dict[str, Any], report_path: Path) -> str:
    """``classification: embeddings+logreg macro-F1 0.46±0.03 vs raw+rf 0.55±0.02 (5-fold spatial) -> report.md``."""
    split = result["splits"][0]
    metric = result["primary_metric"]
    name = METRIC_NAMES[metric]
    parts = []
    ours = best(result, split, ["embeddings"])
    others = best(result, split, [f for f in result["feature_sets"] if f != "embeddings"])
    for cand in (ours, others):
        if cand:
            f, m, s = cand
            parts.append(f"{f}+{m} {name} {s[metric]['mean']:.2f}±{s[metric]['std']:.2f}")
    how = "bottom-third hold-out" if split == "bottom-third" else f"{result['folds']}-fold {split}"
    return f"{result['task']}: {' vs '.join(parts)} ({how}, n={result['n_samples']}) -> {report_path}"


def plot_confusion(matrix: list[list[int]], classes: list[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix (true x predicted) with counts."""
    plt = _pyplot()
    cm = np.asarray(matrix, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sweep(result: dict[str, Any], path: Path) -> Path:
    """Primary metric vs training fraction, one line per feature set x model (log x axis)."""
    plt = _pyplot()
    metric = result["primary_metric"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"embeddings": "-", "untrained": ":", "raw": "--"}
    for feat, per_model in result["sweep"].items():
        for model, points in per_model.items():
            xs = [float(k) for k in points]
            ys = [points[k]["mean"] for k in points]
            es = [points[k]["std"] for k in points]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, linestyle=styles.get(feat, "-."),
                        label=f"{feat} + {model}")
    ax.set_xscale("log")
    ax.set_xlabel("training fraction of each fold's training set")
    ax.set_ylabel(METRIC_NAMES[metric])
    ax.set_title(f"{METRIC_NAMES[metric]} vs training data ({result['splits'][0]} split)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_scatter(y: list[float], pred: list[float], title: str, path: Path) -> Path:
    """Out-of-fold predictions against the truth, with the 1:1 line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, pred, s=6, alpha=0.5)
    lo, hi = float(min(min(y), min(pred))), float(max(max(y), max(pred)))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
    ax.set_xlabel("observed")
    ax.set_ylabel("predicted (out of fold)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out: Path, title: str, command: str = "") -> Path:
    """Write results.json, the plots and report.md into ``out``; return the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    task = result["task"]
    split0 = result["splits"][0]
    figures: list[tuple[str, str]] = []
    for feat in result["feature_sets"]:
        cand = best(result, split0, [feat])
        if cand is None:
            continue
        f, m, s = cand
        if task == "classification":
            name = f"confusion_{f}_{m}.png"
            plot_confusion(s["confusion"], result["classes"], f"{f} + {m}, {split0} (summed over folds)", out / name)
        else:
            name = f"scatter_{f}_{m}.png"
            p = result["predictions"][f][m]
            plot_scatter(p["y"], p["pred"], f"{f} + {m}, {split0}: R² {s['r2']['mean']:.2f}", out / name)
        figures.append((name, f"{f} + {m} (best model of this feature set)"))
    if result["sweep"]:
        plot_sweep(result, out / "sweep.png")
        figures.append(("sweep.png", "training-fraction sweep"))
    report = out / "report.md"
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=float))
    with atomic_path(report) as tmp:
        tmp.write_text(render_markdown(result, title, figures, command))
    return report


def render_markdown(result: dict[str, Any], title: str, figures: list[tuple[str, str]], command: str) -> str:
    """The report as markdown."""
    task, metric = result["task"], result["primary_metric"]
    keys = ["oa", "macro_f1"] if task == "classification" else ["r2", "rmse", "mae"]
    lines = [f"# {title}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [f"- task: **{task}**, {result['n_samples']} samples in {result['n_groups']} groups "
              f"(never split) and {result['n_blocks']} spatial blocks",
              f"- splits: {', '.join(result['splits'])}; {result['folds']} folds; seed {result['seed']}; "
              f"metrics are mean ± std over folds; **bold**: the best row by {METRIC_NAMES[metric]}"]
    lines += ["- feature sets: " + "; ".join(f"`{k}` ({v} features): {LABELS.get(k, k)}"
                                                for k, v in result["feature_sets"].items())]
    if task == "classification":
        lines.append("- classes (samples): " + ", ".join(f"{c} ({n})" for c, n in result["class_counts"].items()))
    lines += [f"- {note}" for note in result["notes"]]
    for split, per_feat in result["cv"].items():
        lines += ["", f"## {split} split", "", "| features | model | " + " | ".join(METRIC_NAMES[k] for k in keys)
                  + " |", "|---|---|" + "---|" * len(keys)]
        top = best(result, split, list(per_feat))
        for feat, per_model in per_feat.items():
            for model, s in per_model.items():
                cells = [_pm(s[k], single=s["n_folds"] == 1) for k in keys]
                if top and (feat, model) == top[:2]:
                    cells = [f"**{c}**" for c in cells]
                lines.append(f"| {feat} | {model} | " + " | ".join(cells) + " |")
    if task == "classification":
        split0 = result["splits"][0]
        lines += ["", f"## Per-class F1 ({split0} split, best model per feature set)", ""]
        picks = [b for f in result["feature_sets"] if (b := best(result, split0, [f]))]
        lines += ["| class | " + " | ".join(f"{f}+{m}" for f, m, _ in picks) + " |",
                  "|---|" + "---|" * len(picks)]
        for c in result["classes"]:
            lines.append(f"| {c} | " + " | ".join(_pm(s["per_class_f1"][c]) for _, _, s in picks) + " |")
    if result["sweep"]:
        fracs = result["fractions"]
        lines += ["", f"## Training-fraction sweep ({METRIC_NAMES[metric]}, {result['splits'][0]} split)", "",
                  "Each fold's training set is subsampled at random" + (" (one sample per class first)" if task ==
                                                                        "classification" else "")
                  + "; test sets are unchanged.",
                  "", "| features | model | " + " | ".join(f"{f:g}" for f in fracs) + " |",
                  "|---|---|" + "---|" * len(fracs)]
        for feat, per_model in result["sweep"].items():
            for model, points in per_model.items():
                lines.append(f"| {feat} | {model} | " + " | ".join(
                    f"{_pm(points[str(f)])} (n≈{points[str(f)]['n_train']:.0f})" for f in fracs) + " |")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{caption}]({name})" for name, caption in figures]
    return "\n".join(lines) + "\n"
