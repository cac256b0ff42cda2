"""`revela report SWEEP_DIR`: the sweep's results as a table, a markdown summary and plots.

Writes into `<sweep>/report/` (or `out`):

- `results.csv`, `results.parquet`: one row per trial x dataset x metric, with the trial's coordinates, its best
  (at the checkpoint `eval.select_best_by` picked; for nDCG@10 with its 95% interval over queries), final and
  untrained-backbone scores (`backbone_same_protocol`: encoded exactly like the checkpoints, the control for the
  effect of training; `backbone_native`: under the backbone's own protocol), its `flags` (revela.tuning.flags),
  chunks, tokens, FLOPs, GPU-hours, and its run directory. Dataset `mean` is the average over the dev sets (what
  checkpoints are ranked by).
- `summary.md`: whether nDCG@10 rises with B and with model size, each step decided by a paired bootstrap over
  queries (and seeds) at 95% (revela.evaluation.significance): "rises"/"falls" only when the interval of the
  difference excludes 0, otherwise "no significant difference (Δ, 95% CI)"; flagged cells are never compared. A
  table per cell (mean ± sample std over seeds, 95% interval, best − untrained against the same-protocol control,
  naming the trials it averages) and a table per trial (flags, run directory).
- PNGs (see revela.tuning.plots).

Everything is read from the trials' records (`runs/<trial>/revela_trial.json`) and run files; trials without a
record (unfinished or failed) are listed in the summary, not silently dropped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from revela.config import RunConfig
from revela.evaluation.significance import Difference, NotComparable, mean_interval, paired_difference
from revela.tuning.flags import CELL_KEYS, Flag, flags_by_trial
from revela.tuning.folder import load_plan, read_trial_record
from revela.tuning.trial import SWEEP_FILE, trial_hash

METRICS = ("ndcg_at_10", "recall_at_100", "mrr_at_10", "map_at_100")
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


def cell_id(params: dict) -> str:
    """One string per cell of the grid (its coordinates without the seed)."""
    return json.dumps({k: params.get(k) for k in CELL_KEYS}, sort_keys=True, default=str)


def best_runs(records: list[dict]) -> list[dict] | None:
    """Per-query nDCG@10 of the best checkpoint of each record ({dataset: {query id: value}}), None if any lacks it."""
    runs = [(rec.get("best") or {}).get("per_query") for rec in records]
    return runs if runs and all(runs) else None


def backbone_scores(record: dict) -> dict:
    """The record's untrained scores: {"metrics", "per_query", "protocol"} encoded like the checkpoints, the
    backbone's own under "native". Records written before both were scored hold one score, under the backbone's
    own protocol: it is "native", and the same-protocol control is missing."""
    b = record["backbone"]
    if "native" in b:
        return b
    return {**b, "metrics": {}, "per_query": None, "protocol": None,
            "native": {"metrics": b.get("metrics", {}), "per_query": None, "protocol": None}}


def backbone_run(record: dict) -> dict | None:
    return backbone_scores(record).get("per_query") or None


def _interval(runs: list[dict] | None, dataset: str | None = None) -> tuple[float, float]:
    if not runs:
        return math.nan, math.nan
    try:
        picked = runs if dataset in (None, "mean") else [{dataset: r[dataset]} for r in runs]
        est = mean_interval(picked)
    except (KeyError, NotComparable):
        return math.nan, math.nan
    return est.low, est.high


def results_table(plan: dict, records: list[dict], flags: dict[str, list[Flag]] | None = None) -> pd.DataFrame:
    budget = plan["sweep"]["budget"]
    kind = next(k for k in ("steps", "chunks", "tokens") if budget.get(k) is not None)
    flags = flags or {}
    rows = []
    for rec in records:
        best = _split(rec["best"]["metrics"]) if rec["best"] else {}
        final = _split(rec["final"]["metrics"]) if rec["final"] else {}
        untrained = backbone_scores(rec)
        same, native = _split(untrained["metrics"]), _split(untrained["native"]["metrics"])
        runs = best_runs([rec])
        # tau may be a number or "auto" in one sweep: kept as text, so the column has one type (parquet)
        base = {"trial": rec["trial"], **{k: rec["params"].get(k) for k in CELL_KEYS}, "seed": rec["params"]["seed"],
                "temperature": _text(rec["params"].get("temperature")),
                "sim_health": (rec.get("sim_health") or {}).get("status", "unknown"),
                "cell": cell_id(rec["params"]), "retriever_params": rec["retriever_params"],
                "lm_params": rec["lm_params"], "budget_kind": kind, "budget_value": budget[kind],
                "steps": rec["steps"], "chunks_seen": rec["chunks_seen"], "tokens_seen": rec["tokens_seen"],
                "flops": rec["flops"], "gpu_hours": rec["gpu_hours"], "wall_s": rec["wall_s"],
                "best_step": rec["best"]["step"] if rec["best"] else None,
                "final_step": rec["final"]["step"] if rec["final"] else None,
                "flags": ",".join(f.code for f in flags.get(rec["trial"], []))}
        for key in sorted(set(best) | set(final) | set(same) | set(native), key=lambda k: (k[0] != "mean", k)):
            low, high = _interval(runs, key[0]) if key[1] == MAIN else (math.nan, math.nan)
            rows.append({**base, "dataset": key[0], "metric": key[1], "best": best.get(key, math.nan),
                         "best_ci_low": low, "best_ci_high": high, "final": final.get(key, math.nan),
                         "backbone_same_protocol": same.get(key, math.nan),
                         "backbone_native": native.get(key, math.nan),
                         "run_dir": rec["run_dir"], "tune_trial_dir": rec.get("tune_trial_dir")})
    return pd.DataFrame(rows)


def _text(value) -> str | None:
    return None if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def cell_table(results: pd.DataFrame, records: list[dict] | None = None, flags: dict[str, list[Flag]] | None = None,
               dataset: str = "mean", metric: str = MAIN) -> pd.DataFrame:
    """Mean and sample std over seeds of one metric, per cell of the grid; with `records` (nDCG@10), the 95%
    interval of the cell's mean and best − untrained (same protocol) with its paired interval; with `flags`, the
    union of its trials' flags and whether one of them blocks trend claims."""
    view = results[(results["dataset"] == dataset) & (results["metric"] == metric)]
    keys = [*CELL_KEYS, "retriever_params", "lm_params", "cell"]
    grouped = view.groupby(keys, dropna=False)
    cells = grouped.agg(best=("best", "mean"), best_std=("best", "std"), final=("final", "mean"),
                        final_std=("final", "std"), backbone=("backbone_same_protocol", "mean"),
                        backbone_native=("backbone_native", "mean"), seeds=("seed", "count"),
                        chunks_seen=("chunks_seen", "mean"), tokens_seen=("tokens_seen", "mean"),
                        flops=("flops", "mean"), gpu_hours=("gpu_hours", "sum"),
                        trials=("trial", lambda t: ", ".join(sorted(t)))).reset_index()
    by_cell = {}
    for rec in records or []:
        by_cell.setdefault(cell_id(rec["params"]), []).append(rec)
    extra = []
    for _, c in cells.iterrows():
        recs = by_cell.get(c["cell"], [])
        cell_flags = [f for rec in recs for f in (flags or {}).get(rec["trial"], [])]
        row = {"flags": ",".join(sorted({f.code for f in cell_flags})),
               "blocked": any(f.blocking for f in cell_flags), "best_ci_low": math.nan, "best_ci_high": math.nan,
               "backbone_ci_low": math.nan, "backbone_ci_high": math.nan, "vs_backbone": None}
        if metric == MAIN and recs:
            runs = best_runs(recs)
            row["best_ci_low"], row["best_ci_high"] = _interval(runs, dataset)
            base = backbone_run(recs[0])
            row["backbone_ci_low"], row["backbone_ci_high"] = _interval([base] if base else None, dataset)
            if runs and base and dataset == "mean":
                try:
                    row["vs_backbone"] = paired_difference(runs, [base])
                except NotComparable:
                    pass
        extra.append(row)
    cells = pd.concat([cells, pd.DataFrame(extra, index=cells.index)], axis=1)
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
    for key in CELL_KEYS[3:]:  # group size is the x axis, retriever and lm are named above
        if cells[key].nunique() > 1:
            label += f" {key}={row[key]}"
    return label


def compare_step(a, b, runs: dict[str, list[dict] | None]) -> tuple[str, Difference | None]:
    """Whether cell `b` scores higher than cell `a` (rows of the cell table): ("rise"|"fall"|"none"|reason, Δ)."""
    blocked = [c for c in (a, b) if c["blocked"]]
    if blocked:
        return "flagged", None
    ra, rb = runs.get(a["cell"]), runs.get(b["cell"])
    if not ra or not rb:
        return "untested", None
    try:
        diff = paired_difference(rb, ra)
    except NotComparable:
        return "incomparable", None
    return diff.verdict, diff


def trend_lines(cells: pd.DataFrame, along: str, by: list[str], runs: dict[str, list[dict] | None] | None = None
                ) -> list[str]:
    """One sentence per line of the grid: the values along `along` and, step by step, whether the paired test over
    queries (and seeds) finds a rise, a fall or no significant difference at 95%. Flagged cells are not compared;
    cells without per-query scores are not tested."""
    runs = runs or {}
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
        marks = [" ⚑" if blocked else "" for blocked in group["blocked"]]
        steps = " → ".join(f"{x}: {v:.4f}{m}" for x, v, m in zip(xs, values, marks))
        rows = [r for _, r in group.iterrows()]
        verdicts, parts = [], []
        for x0, x1, a, b in zip(xs, xs[1:], rows, rows[1:]):
            verdict, diff = compare_step(a, b, runs)
            verdicts.append(verdict)
            step = f"{x0} → {x1}"
            if verdict in ("rise", "fall"):
                parts.append(f"{step}: {'rises' if verdict == 'rise' else 'falls'} {diff.describe()}")
            elif verdict == "none":
                parts.append(f"{step}: no significant difference (Δ {diff.delta:+.4f}, {diff.interval()})")
            elif verdict == "flagged":
                which = " and ".join(f"{x} ({c['flags'].replace(',', ', ')})" for x, c in ((x0, a), (x1, b))
                                     if c["blocked"])
                parts.append(f"{step}: not compared, flagged ⚑ {which}")
            elif verdict == "untested":
                parts.append(f"{step}: not tested (no per-query scores recorded)")
            else:
                parts.append(f"{step}: not tested (scored on different queries)")
        if all(v == "rise" for v in verdicts):
            out.append(f"- {label}: {steps} — rises at every step (each significant at 95%)")
        elif all(v == "fall" for v in verdicts):
            out.append(f"- {label}: {steps} — falls at every step (each significant at 95%)")
        elif len(parts) == 1:
            out.append(f"- {label}: {steps} — {parts[0]}")
            continue
        else:
            out.append(f"- {label}: {steps}, step by step:")
        out += [f"  - {p}" for p in parts]
    return out


def _protocol_line(protocol: dict | None) -> str:
    if not protocol:
        return "not recorded"
    return (f"prefixes {protocol.get('query_prefix', '')!r} / {protocol.get('passage_prefix', '')!r}, "
            f"{protocol.get('pooling')} pooling, queries at {protocol.get('max_length')} tokens, passages at "
            f"{protocol.get('passage_max_length') or protocol.get('max_length')}")


def _ci(low: float, high: float) -> str:
    return f"{low:.4f}–{high:.4f}" if low == low and high == high else "–"


def summary_markdown(plan: dict, records: list[dict], missing: list[str], results: pd.DataFrame,
                     cells: pd.DataFrame, plots: dict[str, str], flags: dict[str, list[Flag]] | None = None) -> str:
    sweep = plan["sweep"]
    flags = flags or {}
    budget = next(f"{k} = {v}" for k, v in sweep["budget"].items() if v is not None)
    metric = records[0]["select_best_by"] if records else "dev_ndcg_at_10"
    runs = {c: best_runs([r for r in records if cell_id(r["params"]) == c]) for c in cells["cell"]}
    lines = [f"# Sweep `{sweep['name']}`", "",
             f"- trials finished: {len(records)} of {len(plan['order'])}"
             + (f"; without results (unfinished or failed): {', '.join(missing)}" if missing else ""),
             f"- budget held equal across cells: {budget}",
             f"- dev sets: {', '.join(sweep['datasets'])}; checkpoints ranked by `{metric}`; nDCG@10 below is the "
             "mean over the dev sets at the best checkpoint unless stated",
             "- a rise or a fall is claimed only when a paired bootstrap over queries (and over seeds when there are "
             "several) puts the 95% interval of the difference above or below 0 (revela.evaluation.significance); "
             "cells flagged ⚑ (trained too little, or no Sim signal) are never compared",
             f"- numbers: `results.csv` / `results.parquet` (one row per trial × dataset × metric); every trial's "
             "files are in the run directory the trial table names"]
    protocols = {}
    for rec in records:
        b = backbone_scores(rec)
        protocols.setdefault(b.get("model"), (b.get("protocol"), b["native"].get("protocol")))
    for model, (same, native) in protocols.items():
        lines.append(f"- untrained `{model}`: encoded like the checkpoints ({_protocol_line(same)}) and under its "
                     f"own protocol ({_protocol_line(native)}); best − untrained is against the first")
    lines.append("")
    lines += ["## Does nDCG@10 rise with the group size B?", ""]
    lines += trend_lines(cells, "group_size", [k for k in CELL_KEYS if k != "group_size"], runs) or [
        "- only one B per line: nothing to compare"]
    lines += ["", "## Does it rise with the retriever's size?", ""]
    lines += trend_lines(cells, "retriever_params", [k for k in CELL_KEYS if k != "retriever"], runs) or [
        "- only one retriever size per B: nothing to compare"]
    lines += ["", "## Cells (mean ± sample std over seeds; 95% interval over queries and seeds)", "",
              "| B | retriever (params) | LM | seeds | best nDCG@10 | 95% CI | final nDCG@10 | untrained (same "
              "protocol) | untrained (own protocol) | best − untrained (95% CI) | flags | chunks | LM tokens | FLOPs "
              "| GPU-h | trials |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, c in cells.iterrows():
        diff = c["vs_backbone"]
        if isinstance(diff, Difference):
            gain = diff.describe() + {"rise": " ↑", "fall": " ↓", "none": " (n.s.)"}[diff.verdict]
        elif c["backbone"] == c["backbone"]:
            gain = f"{c['best'] - c['backbone']:+.4f} (not tested)"
        else:
            gain = "–"
        lines.append(f"| {c['group_size']} | {c['retriever']} ({human_count(c['retriever_params'])}) | {c['lm']} | "
                     f"{c['seeds']} | {_pm(c['best'], c['best_std'])}{' ⚑' if c['blocked'] else ''} | "
                     f"{_ci(c['best_ci_low'], c['best_ci_high'])} | {_pm(c['final'], c['final_std'])} | "
                     f"{_pm(c['backbone'], math.nan)} | {_pm(c['backbone_native'], math.nan)} | {gain} | "
                     f"{c['flags'] or '–'} | {c['chunks_seen']:.0f} | {c['tokens_seen']:.0f} | {c['flops']:.3g} | "
                     f"{c['gpu_hours']:.3f} | {c['trials']} |")
    lines += ["", "## Trials", "",
              "| trial | best nDCG@10 (step) | 95% CI | final nDCG@10 (step) | untrained (same protocol) | "
              "untrained (own protocol) | steps | flags | chunks | LM tokens | FLOPs | wall s | run directory |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    main = results[(results["dataset"] == "mean") & (results["metric"] == MAIN)]
    for _, r in main.iterrows():
        lines.append(f"| {r['trial']} | {r['best']:.4f} ({r['best_step']}) | {_ci(r['best_ci_low'], r['best_ci_high'])}"
                     f" | {r['final']:.4f} ({r['final_step']}) | {_pm(r['backbone_same_protocol'], math.nan)} | "
                     f"{_pm(r['backbone_native'], math.nan)} | {r['steps']} | {r['flags'] or '–'} | "
                     f"{r['chunks_seen']} | {r['tokens_seen']} | {r['flops']:.3g} | {r['wall_s']:.0f} | "
                     f"`{r['run_dir']}` |")
    flagged = [(name, fs) for name, fs in flags.items() if fs]
    if flagged:
        lines += ["", "## Flags", ""]
        for name, fs in flagged:
            for f in fs:
                lines.append(f"- ⚑ `{name}` {f.code}: {f.message}" + ("" if f.blocking else " (not blocking)"))
    lines += ["", "## Plots", ""] + [f"- `{Path(p).name}`: {what}" for what, p in plots.items()]
    lines += ["", "Intervals: percentile bootstrap (4000 resamples) of per-query nDCG@10 of the best checkpoint, "
              "queries resampled within each dev set and paired across the two systems compared, seeds resampled "
              "when a cell has several. The best checkpoint is chosen on the same dev queries, so its score (and "
              "best − untrained) leans optimistic; `final` is not selected. "
              "FLOPs: model-FLOPs estimate over the padded positions of the steps behind the final weights "
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
    flags = flags_by_trial(plan, records)
    results = results_table(plan, records, flags)
    cells = cell_table(results, records, flags)
    results.to_csv(out / "results.csv", index=False)
    results.to_parquet(out / "results.parquet", index=False)
    plots = plot_all(cells, results, records, out)
    summary = out / "summary.md"
    summary.write_text(summary_markdown(plan, records, missing, results, cells,
                                        {what: str(p) for what, (p, _) in plots.items()}, flags))
    return {"out": str(out), "csv": str(out / "results.csv"), "parquet": str(out / "results.parquet"),
            "summary": str(summary), "plots": {what: str(p) for what, (p, _) in plots.items()},
            "series": {what: series for what, (_, series) in plots.items()},
            "flags": {name: [f.code for f in fs] for name, fs in flags.items() if fs},
            "trials": len(records), "missing": missing, "rows": len(results)}
