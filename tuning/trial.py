"""One sweep cell as a Ray Tune trial: a plain function that runs one Ray Train fit (the Train V2 pattern).

`run_trial` reads its cell from the sweep plan (`<sweep>/sweep.json`), trains it with `revela.train.run` under a
stable run name (so a restarted trial resumes from the run's last checkpoint), and writes the trial's record,
`<sweep>/runs/<trial>/revela_trial.json`, from the report `run` returns and the run folder's logs (read once
each): best and final dev scores, the untrained backbone's score on the same dev sets (encoded like the
checkpoints, and under its own protocol), per-query nDCG@10 of the best and final checkpoints, chunks and tokens
seen, time, GPU-hours and a FLOPs estimate. A trial whose run already finished with the same config is not trained
again: its record is reported as it is. Only `revela.train`'s public names are used.

While training, every Train report reaches Tune with the latest dev score scored so far (the evaluation tasks
append to the run's dev_scores.jsonl), so a scheduler can rank trials on the dev metric.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ray.tune.integration.ray_train import TuneReportCallback

from revela.train import (DEV_SCORES_FILE, METRICS_FILE, config_hash, dev_history, latest_per_step, read_jsonl,
                          read_report, read_run_record, read_status, scored_per_step, write_json)
from revela.tuning.folder import SWEEP_FILE, TRIAL_FILE, localize, portable, read_trial_record


def latest_score(run_dir: Path, metric: str) -> float:
    scored = [r for r in dev_history(run_dir) if metric in r]
    return float(scored[-1][metric]) if scored else math.nan


class DevScoreReport(TuneReportCallback):
    """Tune's report callback, with the latest dev score (NaN before the first one) in every report."""

    def __init__(self, run_dir: str, metric: str):
        super().__init__()
        self.run_dir, self.metric = run_dir, metric

    def after_report(self, run_context, metrics, checkpoint):
        metrics = [{**metrics[0], self.metric: latest_score(Path(self.run_dir), self.metric)}, *metrics[1:]]
        super().after_report(run_context, metrics, checkpoint)


def interval_steps(row: dict) -> int:
    """The optimizer steps a metrics.jsonl row stands for (rows from before the field existed: one)."""
    return int(row.get("interval_steps", 1))


def trial_hash(cfg) -> str:
    return f"{config_hash(cfg)}-{cfg.train.max_steps}"


def trained_to_the_end(run_dir: Path, cfg) -> bool:
    """The Train run under this name took all its steps with this config (its report may still be missing)."""
    record, status = read_run_record(run_dir), read_status(run_dir)
    return (record is not None and record["config_hash"] == config_hash(cfg)
            and status.get("status") == "finished" and status.get("step") == cfg.train.max_steps)


def finished_report(run_dir: Path, cfg) -> dict | None:
    """The run's report when it trained to the end and reported (nothing left to do but summarize), else None."""
    if not trained_to_the_end(run_dir, cfg):
        return None
    report = read_report(run_dir)
    return report if report is not None and report.get("steps") == cfg.train.max_steps else None


def summarize(cfg, params: dict, run_dir: Path, report: dict, backbone_file: Path, wall_s: float,
              tune_dir: str | None, digest: str | None = None) -> dict:
    """The trial's record (what the report is built from): steps, final loss and Sim health from the run's
    `report` (what `revela.train.run` returned or wrote), totals from its metrics.jsonl and dev scores from its
    dev_scores.jsonl, each read once. `digest`: the trial's hash as the plan stores it (portable paths; default:
    hashed from `cfg`)."""
    from revela.tuning.compute import flops_per_group, model_shape
    from revela.tuning.prepare import read_baseline

    run = cfg.model_dump()
    metric = cfg.eval.select_best_by
    world = max(1, cfg.ray.num_workers)
    every_step = read_jsonl(run_dir / METRICS_FILE)  # steps trained twice after a restart count twice here
    history = latest_per_step(every_step)  # the steps that made the final weights
    # a row is logged every train.log_every steps: its "groups" are one step's, its step_time_s the mean over the
    # interval_steps since the previous row (a checkpoint step is always logged, so a restart starts an interval)
    groups = sum(r["groups"] * interval_steps(r) for r in history) * world
    scorings = read_jsonl(run_dir / DEV_SCORES_FILE)
    dev = scored_per_step(scorings)
    scored = [r for r in dev if metric in r and r[metric] == r[metric]]
    best = max(scored, key=lambda r: r[metric]) if scored else None
    final = scored[-1] if scored else None
    shapes = {"retriever": model_shape(cfg.model.retriever.name), "lm": model_shape(cfg.model.lm.name)}
    per_group = flops_per_group(run, shapes["retriever"], shapes["lm"])
    train_gpus = world * cfg.ray.gpus_per_worker if cfg.ray.use_gpu else 0
    step_s = sum(r.get("step_time_s", 0.0) * interval_steps(r) for r in every_step)
    eval_s = sum(r.get("dev_eval_seconds", 0.0) for r in scorings)

    def point(row):
        if row is None:
            return None
        return {"step": row["step"], "checkpoint": row["checkpoint"],
                "metrics": {k: v for k, v in row.items() if k.startswith("dev_") or "/" in k},
                "per_query": row.get("per_query")}  # {dataset: {query id: nDCG@10}}, for paired tests

    return {
        "trial": cfg.name, "params": params, "run_dir": str(run_dir), "tune_trial_dir": tune_dir,
        "trial_hash": digest or trial_hash(cfg), "select_best_by": metric, "datasets": list(cfg.eval.datasets),
        "steps": report["steps"], "max_steps": cfg.train.max_steps,
        "group_size": cfg.data.group_size, "groups_seen": groups, "chunks_seen": groups * cfg.data.group_size,
        "tokens_seen": sum(r["tokens"] for r in history) * world,
        "retriever_params": shapes["retriever"].params, "lm_params": shapes["lm"].params,
        "flops": per_group["total"] * groups, "flops_by_part": {k: v * groups for k, v in per_group.items()},
        "wall_s": wall_s, "train_step_s": step_s, "dev_eval_s": eval_s,
        "gpu_hours": (train_gpus * step_s + cfg.eval.num_gpus * eval_s) / 3600.0,
        "best": point(best), "final": point(final),
        "backbone": read_baseline(backbone_file),  # same-protocol control; its own protocol under "native"
        "dev_history": [{"step": r["step"], metric: r.get(metric)} for r in dev],
        "final_loss": (report.get("final") or {}).get("loss"),
        "sim_health": report.get("sim_health"),
        "finished_at": time.time(),
    }


def tune_metrics(record: dict) -> dict:
    """The flat numbers a Tune result holds for this trial (keys: `tune_metrics_keys`); the sweep's outcome takes
    them from the trial's last Tune result rather than reading every record again."""
    metric = record["select_best_by"]
    out = {"trial": record["trial"], "trial_hash": record["trial_hash"], "step": record["steps"],
           "chunks_seen": record["chunks_seen"], "tokens_seen": record["tokens_seen"], "flops": record["flops"],
           "gpu_hours": record["gpu_hours"], "wall_s": record["wall_s"]}
    for stage in ("best", "final"):
        out[f"{stage}_{metric}"] = record[stage]["metrics"].get(metric, math.nan) if record[stage] else math.nan
    out[f"backbone_{metric}"] = record["backbone"]["metrics"].get(metric, math.nan)
    out[metric] = out[f"best_{metric}"]
    return out


def tune_metrics_keys(run: dict) -> list[str]:
    """The keys of `tune_metrics` for a trial with this run config (a Tune result holds Tune's own keys too)."""
    metric = run["eval"]["select_best_by"]
    return ["trial", "trial_hash", "step", "chunks_seen", "tokens_seen", "flops", "gpu_hours", "wall_s",
            f"best_{metric}", f"final_{metric}", f"backbone_{metric}", metric]


def run_trial(config: dict) -> None:
    """The Tune trainable: config = {"sweep_dir": ..., "trial": name}."""
    from ray import tune

    from revela.config import RunConfig
    from revela.train import check_marker, run

    started = time.time()
    check_marker(config.get("storage"), "sweep trial")  # the sweep folder must be on storage every node mounts
    sweep_dir = Path(config["sweep_dir"])
    plan = json.loads((sweep_dir / SWEEP_FILE).read_text())
    stored = plan["trials"][config["trial"]]
    digest = trial_hash(RunConfig.model_validate(stored["run"]))  # on the portable paths: the same after a move
    spec = localize(stored, sweep_dir)
    cfg = RunConfig.model_validate(spec["run"])
    run_dir = Path(cfg.ray.storage_path) / cfg.name
    record = read_trial_record(sweep_dir, stored["run"])
    if record is None or record["trial_hash"] != digest:
        report = finished_report(run_dir, cfg)
        if report is None:
            # trained to the end but stopped before its report: "resume" takes no step and writes the report
            mode = "resume" if trained_to_the_end(run_dir, cfg) else plan["run_mode"]
            report = run(cfg, mode=mode, callbacks=(DevScoreReport(str(run_dir), cfg.eval.select_best_by),))
        try:
            tune_dir = tune.get_context().get_trial_dir()
        except Exception:  # noqa: BLE001 - the record is still complete without it
            tune_dir = None
        record = summarize(cfg, spec["params"], run_dir, report, Path(spec["backbone_file"]),
                           time.time() - started, tune_dir, digest)
        write_json(run_dir / TRIAL_FILE, portable(record, sweep_dir), default=float)
    tune.report(tune_metrics(record))
