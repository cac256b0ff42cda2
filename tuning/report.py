"""`revela report SWEEP_DIR`: the sweep's results as a table, a markdown summary and plots.

Writes into `<sweep>/report/` (or `out`):

- `results.csv`, `results.parquet`: one row per trial x dataset x metric, with the trial's coordinates, its best
  (at the checkpoint `eval.select_best_by` picked), final and untrained-backbone scores, chunks, tokens, FLOPs,
  GPU-hours, and its run directory. Dataset `mean` is the average over the dev sets (what checkpoints are ranked by).
- `summary.md`: whether nDCG@10 rises with B and with model size, a table per cell (mean ± sample std over seeds,
  naming the trials it averages) and a table per trial (naming its run directory).
- PNGs (see revela.tuning.plots).

Everything is read from the trials' records (`runs/<trial>/revela_trial.json`) and run files; trials without a
record (unfinished or failed) are listed in the summary, not silently dropped.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from revela.config import RunConfig
from revela.tuning.folder import load_plan, read_trial_record
from revela.tuning.trial import SWEEP_FILE, trial_hash

METRICS = ("ndcg_at_10", "recall_at_100", "mrr_at_10", "map_at_100")
CELL_KEYS = ["group_size", "retriever", "lm", "grouping", "temperature", "lr", "target_entropy", "sim", "variant"]
MAIN = "ndcg_at_10"


class ReportError(ValueError):
    """Not a sweep folder, or one with no finished trial."""


def load_sweep_dir(sweep_dir: str | Path) -> tuple[dict, list[dict], list[str]]:
    """(plan, records of finished trials in grid order, names of trials without a current record)."""
    sweep_dir = Path(sweep_dir)
    plan_path = sweep_dir / SWEEP_FILE
    if not plan_path.is_file():
        raise ReportError(f"{sweep_dir}: no {SWEEP_FILE}; not a sweep folder (run `revela sweep` first)")
    plan = load_plan(sweep_dir)  # paths inside the folder are stored relative to it: a copied folder reads its own
    records, missing = [], []
    for name in plan["order"]:
        run = plan["trials"][name]["run"]
        record = read_trial_record(sweep_dir, run)
        if record is None or record["trial_hash"] != trial_hash(RunConfig.model_validate(run)):  # stale or absent
            missing.append(name)
        else:
            records.append(record)
    return plan, records, missing


def _split(flat: dict, prefix: str = "dev") -> dict[tuple[str, str], float]:
    """{(dataset, metric): value} from flat evaluation metrics; dataset "mean" is the average over dev sets."""
    out = {}
    for key, value in flat.items():
        if "/" in key:
            dataset, metric = key.rsplit("/", 1)
        elif key.startswith(f"{prefix}_"):
            dataset, metric = "mean", key[len(prefix) + 1:]
        else:
            continue
        if metric in METRICS:
            out[(dataset, metric)] = float(value)
    return out


def results_table(plan: dict, records: list[dict]) -> pd.DataFrame:
    budget = plan["sweep"]["budget"]
    kind = next(k for k in ("steps", "chunks", "tokens") if budget.get(k) is not None)
    rows = []
    for rec in records:
        best = _split(rec["best"]["metrics"]) if rec["best"] else {}
        final = _split(rec["final"]["metrics"]) if rec["final"] else {}
        backbone = _split(rec["backbone"]["metrics"])
        # tau may be a number or "auto" in one sweep: kept as text, so the column has one type (parquet)
        base = {"trial": rec["trial"], **{k: rec["params"].get(k) for k in CELL_KEYS}, "seed": rec["params"]["seed"],
                "temperature": _text(rec["params"].get("temperature")),
                "sim_health": (rec.get("sim_health") or {}).get("status", "unknown"),
                "retriever_params": rec["retriever_params"], "lm_params": rec["lm_params"],
                "budget_kind": kind, "budget_value": budget[kind], "steps": rec["steps"],
                "chunks_seen": rec["chunks_seen"], "tokens_seen": rec["tokens_seen"], "flops": rec["flops"],
                "gpu_hours": rec["gpu_hours"], "wall_s": rec["wall_s"],
                "best_step": rec["best"]["step"] if rec["best"] else None,
                "final_step": rec["final"]["step"] if rec["final"] else None}
        for key in sorted(set(best) | set(final) | set(backbone), key=lambda k: (k[0] != "mean", k)):
            rows.append({**base, "dataset": key[0], "metric": key[1], "best": best.get(key, math.nan),
                         "final": final.get(key, math.nan), "backbone": backbone.get(key, math.nan),
                         "run_dir": rec["run_dir"], "tune_trial_dir": rec.get("tune_trial_dir")})
    return pd.DataFrame(rows)


def _text(value) -> str | None:
    return None if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def cell_table(results: pd.DataFrame, dataset: str = "mean", metric: str = MAIN) -> pd.DataFrame:
    """Mean and sample std over seeds of one metric, per cell of the grid."""
    view = results[(results["dataset"] == dataset) & (results["metric"] == metric)]
    keys = CELL_KEYS + ["retriever_params", "lm_params"]
    grouped = view.groupby(keys, dropna=False)
    cells = grouped.agg(best=("best", "mean"), best_std=("best", "std"), final=("final", "mean"),
                        final_std=("final", "std"), backbone=("backbone", "mean"), seeds=("seed", "count"),
                        chunks_seen=("chunks_seen", "mean"), tokens_seen=("tokens_seen", "mean"),
                        flops=("flops", "mean"), gpu_hours=("gpu_hours", "sum"),
                        trials=("trial", lambda t: ", ".join(sorted(t)))).reset_index()
    return cells.sort_values(["retriever_params", "lm_params", "group_size"]).reset_index(drop=True)


def human_count(n: float) -> str:
    """22713216 -> '22.7M' (parameter counts in tables and legends)."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


def _pm(mean: float, std: float) -> str:
    if mean != mean:
        return "–"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std == std else "")


def _line_label(row, cells: pd.DataFrame) -> str:
    label = f"{row['retriever']}"
    if cells["lm"].nunique() > 1:
        label += f" / {row['lm']}"
    for key in ("grouping", "temperature", "lr", "target_entropy", "sim", "variant"):
        if cells[key].nunique() > 1:
            label += f" {key}={row[key]}"
    return label


def trend_lines(cells: pd.DataFrame, along: str, by: list[str]) -> list[str]:
    """One sentence per line of the grid: the values along `along` and whether they rise at every step."""
    out = []
    for _, group in cells.groupby(by, dropna=False):
        group = group.sort_values(along)
        if len(group) < 2:
            continue
        first = group.iloc[0]
        if along == "group_size":
            label = _line_label(first, cells)
            xs = [f"B={b}" for b in group["group_size"]]
        else:  # along the retriever's size, for one B (and LM, grouping, ...)
            label = f"B={first['group_size']}" + (f" / {first['lm']}" if cells["lm"].nunique() > 1 else "")
            xs = [f"{r} ({human_count(p)})" for r, p in zip(group["retriever"], group["retriever_params"])]
        values = list(group["best"])
        steps = " → ".join(f"{x}: {v:.4f}" for x, v in zip(xs, values))
        falls = [f"{a} → {b}" for a, b, va, vb in zip(xs, xs[1:], values, values[1:]) if vb <= va]
        verdict = "rises at every step" if not falls else f"does not rise at {', '.join(falls)}"
        out.append(f"- {label}: {steps} — {verdict}")
    return out


def summary_markdown(plan: dict, records: list[dict], missing: list[str], results: pd.DataFrame,
                     cells: pd.DataFrame, plots: dict[str, str]) -> str:
    sweep = plan["sweep"]
    budget = next(f"{k} = {v}" for k, v in sweep["budget"].items() if v is not None)
    metric = records[0]["select_best_by"] if records else "dev_ndcg_at_10"
    lines = [f"# Sweep `{sweep['name']}`", "",
             f"- trials finished: {len(records)} of {len(plan['order'])}"
             + (f"; without results (unfinished or failed): {', '.join(missing)}" if missing else ""),
             f"- budget held equal across cells: {budget}",
             f"- dev sets: {', '.join(sweep['datasets'])}; checkpoints ranked by `{metric}`; nDCG@10 below is the "
             "mean over the dev sets at the best checkpoint unless stated",
             f"- numbers: `results.csv` / `results.parquet` (one row per trial × dataset × metric); every trial's "
             "files are in the run directory the trial table names", ""]
    lines += ["## Does nDCG@10 rise with the group size B?", ""]
    lines += trend_lines(cells, "group_size", [k for k in CELL_KEYS if k != "group_size"]) or [
        "- only one B per line: nothing to compare"]
    lines += ["", "## Does it rise with the retriever's size?", ""]
    lines += trend_lines(cells, "retriever_params", [k for k in CELL_KEYS if k != "retriever"]) or [
        "- only one retriever size per B: nothing to compare"]
    lines += ["", "## Cells (mean ± sample std over seeds)", "",
              "| B | retriever (params) | LM | seeds | best nDCG@10 | final nDCG@10 | untrained | best − untrained "
              "| chunks | LM tokens | FLOPs | GPU-h | trials |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, c in cells.iterrows():
        lines.append(f"| {c['group_size']} | {c['retriever']} ({human_count(c['retriever_params'])}) | {c['lm']} | "
                     f"{c['seeds']} | {_pm(c['best'], c['best_std'])} | {_pm(c['final'], c['final_std'])} | "
                     f"{c['backbone']:.4f} | {c['best'] - c['backbone']:+.4f} | {c['chunks_seen']:.0f} | "
                     f"{c['tokens_seen']:.0f} | {c['flops']:.3g} | {c['gpu_hours']:.3f} | {c['trials']} |")
    lines += ["", "## Trials", "",
              "| trial | best nDCG@10 (step) | final nDCG@10 (step) | untrained | chunks | LM tokens | FLOPs | "
              "wall s | Sim health | run directory |", "|---|---|---|---|---|---|---|---|---|---|"]
    main = results[(results["dataset"] == "mean") & (results["metric"] == MAIN)]
    for _, r in main.iterrows():
        lines.append(f"| {r['trial']} | {r['best']:.4f} ({r['best_step']}) | {r['final']:.4f} ({r['final_step']}) | "
                     f"{r['backbone']:.4f} | {r['chunks_seen']} | {r['tokens_seen']} | {r['flops']:.3g} | "
                     f"{r['wall_s']:.0f} | {r['sim_health']} | `{r['run_dir']}` |")
    lines += ["", "## Plots", ""] + [f"- `{Path(p).name}`: {what}" for what, p in plots.items()]
    lines += ["", "FLOPs: model-FLOPs estimate over the padded positions of the steps behind the final weights "
              "(revela.tuning.compute). "
              "GPU-h: device time busy training and scoring (steps retrained after a restart count).", ""]
    return "\n".join(lines)


def write_report(sweep_dir: str | Path, out: str | Path | None = None) -> dict:
    """Write the table, the summary and the plots; returns their paths and the counts."""
    from revela.tuning.plots import plot_all

    sweep_dir = Path(sweep_dir)
    plan, records, missing = load_sweep_dir(sweep_dir)
    if not records:
        raise ReportError(f"{sweep_dir}: no trial has finished yet ({len(missing)} without results)")
    out = Path(out) if out else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    results = results_table(plan, records)
    cells = cell_table(results)
    results.to_csv(out / "results.csv", index=False)
    results.to_parquet(out / "results.parquet", index=False)
    plots = plot_all(cells, results, records, out)
    summary = out / "summary.md"
    summary.write_text(summary_markdown(plan, records, missing, results, cells,
                                        {what: str(p) for what, (p, _) in plots.items()}))
    return {"out": str(out), "csv": str(out / "results.csv"), "parquet": str(out / "results.parquet"),
            "summary": str(summary), "plots": {what: str(p) for what, (p, _) in plots.items()},
            "series": {what: series for what, (_, series) in plots.items()},
            "trials": len(records), "missing": missing, "rows": len(results)}
