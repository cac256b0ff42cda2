"""The sweep report's PNGs. Each function draws one figure and returns what it drew (its series), so a test
can check a plot shows what its title claims.

Error bars are 95% bootstrap intervals over queries (and seeds) from per-query nDCG@10
(revela.evaluation.significance); a cell without per-query scores falls back to the sample std over seeds.

- `ndcg_vs_group_size.png`: best dev nDCG@10 vs B (log x), one line per retriever (model size), the untrained
  backbone encoded like the checkpoints dashed in the same colour, its 95% interval a band; flagged cells (trained
  too little, no Sim signal) drawn as hollow markers;
- `ndcg_vs_model_size.png`: best dev nDCG@10 vs retriever parameters (log x), one line per B;
- `ndcg_vs_compute.png`: best dev nDCG@10 vs estimated training FLOPs (log x), one point per trial;
- `training_curves.png`: training loss per step, and dev nDCG@10 per chunks seen, one line per trial, every
  point marked (a one-step run is a single point).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from revela.tuning.flags import CELL_KEYS
from revela.tuning.report import _line_label, backbone_scores, human_count


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, path: Path, xlabel: str, title: str, ylabel: str = "best dev nDCG@10 (mean over dev sets)",
            log_base: float = 10, ticks: list | None = None) -> None:
    """Log-scale x axis (with `ticks` labelled as they are), labels, legend; save the figure as `path`, close it."""
    ax.set_xscale("log", base=log_base)
    if ticks is not None:
        ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def _errors(values: pd.Series) -> list[float] | None:
    errs = [float(v) if v == v else 0.0 for v in values]
    return errs if any(errs) else None


def _intervals(frame: pd.DataFrame, y: str = "best") -> list[list[float]] | None:
    """Asymmetric error bars [[below...], [above...]] from the 95% interval columns; the std where there is none."""
    if "best_ci_low" not in frame:
        std = _errors(frame[f"{y}_std"]) if f"{y}_std" in frame else None
        return [std, std] if std else None
    below, above = [], []
    for _, r in frame.iterrows():
        if r["best_ci_low"] == r["best_ci_low"]:
            below.append(max(0.0, float(r[y] - r["best_ci_low"])))
            above.append(max(0.0, float(r["best_ci_high"] - r[y])))
        else:
            std = float(r.get(f"{y}_std", math.nan))
            below.append(std if std == std else 0.0)
            above.append(std if std == std else 0.0)
    return [below, above] if any(below) or any(above) else None


def plot_vs_group_size(cells: pd.DataFrame, path: Path) -> dict:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = {}
    for n, (_, line) in enumerate(cells.groupby([k for k in CELL_KEYS if k != "group_size"], dropna=False)):
        line = line.sort_values("group_size")
        label = f"{_line_label(line.iloc[0], cells)} ({human_count(line.iloc[0]['retriever_params'])})"
        color = f"C{n % 10}"
        errors = _intervals(line)
        ax.errorbar(line["group_size"], line["best"], yerr=errors, marker="o", capsize=3, color=color, label=label)
        blocked = line[line["blocked"]] if "blocked" in line else line.iloc[0:0]
        if len(blocked):
            ax.scatter(blocked["group_size"], blocked["best"], s=90, facecolors="white", edgecolors=color, zorder=3,
                       label=f"{line.iloc[0]['retriever']}: flagged (trained too little / no Sim signal)")
        backbone = float(line["backbone"].mean())
        ax.axhline(backbone, color=color, linestyle="--", linewidth=1,
                   label=f"{line.iloc[0]['retriever']} untrained (encoded like the checkpoints)")
        band = None
        if "backbone_ci_low" in line and line["backbone_ci_low"].notna().any():
            band = [float(line["backbone_ci_low"].mean()), float(line["backbone_ci_high"].mean())]
            ax.axhspan(band[0], band[1], color=color, alpha=0.08, linewidth=0)
        series[label] = {"x": [int(b) for b in line["group_size"]], "y": [float(v) for v in line["best"]],
                         "yerr": errors, "backbone": backbone, "backbone_band": band,
                         "flagged": [int(b) for b in blocked["group_size"]]}
    _finish(fig, ax, path, "group size B (chunks per group, log scale)",
            "Retrieval quality vs group size (bars: 95% CI)", log_base=2, ticks=sorted(cells["group_size"].unique()))
    return series


def plot_vs_model_size(cells: pd.DataFrame, path: Path) -> dict:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = {}
    for _, line in cells.groupby([k for k in CELL_KEYS if k != "retriever"], dropna=False):
        line = line.sort_values("retriever_params")
        label = f"B={line.iloc[0]['group_size']}" + (f" / {line.iloc[0]['lm']}" if cells["lm"].nunique() > 1 else "")
        ax.errorbar(line["retriever_params"], line["best"], yerr=_intervals(line), marker="o", capsize=3,
                    label=label)
        for _, point in line.iterrows():
            ax.annotate(point["retriever"], (point["retriever_params"], point["best"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
        series[label] = {"x": [int(p) for p in line["retriever_params"]], "y": [float(v) for v in line["best"]],
                         "yerr": _intervals(line), "models": list(line["retriever"])}
    _finish(fig, ax, path, "retriever parameters (log scale)", "Retrieval quality vs retriever size (bars: 95% CI)")
    return series


def plot_vs_compute(results: pd.DataFrame, path: Path) -> dict:
    plt = _pyplot()
    view = results[(results["dataset"] == "mean") & (results["metric"] == "ndcg_at_10")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {r: m for r, m in zip(sorted(view["retriever"].unique()), "osD^vP*X")}
    colors = {b: f"C{n % 10}" for n, b in enumerate(sorted(view["group_size"].unique()))}
    series = {}
    for (b, r), group in view.groupby(["group_size", "retriever"]):
        label = f"B={b}, {r}"
        errors = _intervals(group) if "best_ci_low" in group else None
        ax.errorbar(group["flops"], group["best"], yerr=errors, fmt=markers[r], color=colors[b], capsize=3,
                    label=label)
        series[label] = {"x": [float(f) for f in group["flops"]], "y": [float(v) for v in group["best"]],
                         "yerr": errors}
    _finish(fig, ax, path, "estimated training FLOPs (log scale)",
            "Retrieval quality vs training compute (bars: 95% CI)")
    return series


def plot_training_curves(records: list[dict], path: Path) -> dict:
    from revela.train import metrics_history

    plt = _pyplot()
    fig, (ax_loss, ax_dev) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = {}
    for n, rec in enumerate(records):
        color = f"C{n % 10}"
        history = metrics_history(Path(rec["run_dir"]))
        steps = [h["step"] for h in history]
        (loss_line,) = ax_loss.plot(steps, [h["loss"] for h in history], color=color, marker="o", markersize=4,
                                    label=rec["trial"])
        per_step = rec["chunks_seen"] / max(rec["steps"], 1)
        metric = rec["select_best_by"]
        dev = [(d["step"] * per_step, d[metric]) for d in rec["dev_history"] if d.get(metric) == d.get(metric)]
        ax_dev.plot([c for c, _ in dev], [v for _, v in dev], marker="o", color=color, label=rec["trial"])
        untrained = backbone_scores(rec)["metrics"].get(metric)
        if untrained is not None:
            ax_dev.axhline(untrained, color=color, linestyle=":", linewidth=0.8)
        series[rec["trial"]] = {"steps": steps, "loss": [h["loss"] for h in history],
                                "loss_marker": loss_line.get_marker(), "dev_chunks": [c for c, _ in dev],
                                "dev": [v for _, v in dev]}
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("pass-3 NTP loss (not comparable across B)")
    ax_loss.set_title("Training loss")
    ax_dev.set_xlabel("chunks seen")
    ax_dev.set_ylabel("dev nDCG@10 (dotted: untrained control)")
    ax_dev.set_title("Dev score during training")
    ax_dev.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return series


def plot_all(cells: pd.DataFrame, results: pd.DataFrame, records: list[dict], out: Path) -> dict:
    """{what it shows: (path, series)} for every plot."""
    plots = {}
    for what, name, draw, data in (
            ("nDCG@10 vs group size B, one line per retriever", "ndcg_vs_group_size.png", plot_vs_group_size, cells),
            ("nDCG@10 vs retriever size, one line per B", "ndcg_vs_model_size.png", plot_vs_model_size, cells),
            ("nDCG@10 vs training FLOPs", "ndcg_vs_compute.png", plot_vs_compute, results),
            ("training loss and dev nDCG@10 curves", "training_curves.png", plot_training_curves, records)):
        path = out / name
        plots[what] = (path, draw(data, path))
    return plots
