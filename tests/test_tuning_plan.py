"""Sweep planning without Ray: config validation, grid expansion, budgets, resources, FLOPs, derived models, and
the report's aggregation over seeds."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from revela.cli import app
from revela.configbase import ConfigError
from revela.tuning.budget import steps_for
from revela.tuning.compute import ModelShape, flops_per_group
from revela.tuning.config import Budget, base_run_dict, load_sweep
from revela.tuning.grid import apply_budget, expand
from revela.tuning.sweep import SweepResourceError, max_concurrent

ROOT = Path(__file__).resolve().parents[1]


def write_sweep(tmp_path: Path, **changes) -> Path:
    sweep = {"name": "plan", "datasets": ["stdlib-code"], "budget": {"chunks": 64},
             "run": {"ray": {"num_workers": 2, "cpus_per_worker": 1}, "train": {"grad_accum": 2}},
             "axes": {"group_size": [3, 4, 8], "seeds": [0, 1],
                      "retriever": [{"label": "minilm", "name": "all-minilm-l6-v2",
                                     "run": {"model": {"objective": {"temperature": 0.05}}}},
                                    {"label": "smol", "name": "smollm2-135m",
                                     "run": {"model": {"retriever": {"pooling": "eos"}}}}]}}
    for key, value in changes.items():
        node = sweep
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def plan(path: Path, sweep_dir: Path, overrides=()):
    sweep, base_dir = load_sweep(path, list(overrides))
    return sweep, apply_budget(expand(sweep, base_run_dict(sweep, base_dir), sweep_dir), sweep, {})


def test_grid_names_equal_chunk_budgets_and_data_shared_per_group_size(tmp_path):
    sweep, trials = plan(write_sweep(tmp_path), tmp_path / "sw")
    assert len(trials) == 3 * 2 * 2
    by_name = {t.name: t for t in trials}
    assert "b4-smol-smollm2-135m-s1" in by_name
    for t in trials:
        B = t.params["group_size"]
        per_step = B * 2 * 2  # B x workers x grad_accum
        assert t.run["train"]["max_steps"] == round(64 / per_step)  # every cell sees the same 64 chunks
        assert t.run["train"]["checkpoint_every"] == max(1, t.run["train"]["max_steps"] // 2)
        assert t.run["data"]["shards"] == str(tmp_path / "sw" / "data" / t.data_key)
        assert t.run["eval"]["datasets"] == ["stdlib-code"]
        assert t.run["ray"]["storage_path"] == str(tmp_path / "sw" / "runs")
        assert t.run["train"]["seed"] == t.params["seed"]
    # groups of each B are prepared once, shared by both retrievers and both seeds (same LM tokenizer)
    assert len({t.data_key for t in trials}) == 3
    assert {t.data_key.split("-")[0] for t in trials} == {"b3", "b4", "b8"}
    minilm, smol = by_name["b3-minilm-smollm2-135m-s0"].run, by_name["b3-smol-smollm2-135m-s0"].run
    assert minilm["model"]["objective"]["temperature"] == 0.05  # what goes with the model travels with it
    assert smol["model"]["retriever"]["pooling"] == "eos" and smol["model"]["retriever"]["name"] == "smollm2-135m"
    # a tau axis overrides the model's own tau, and shows in the names
    _, with_tau = plan(write_sweep(tmp_path, **{"axes.temperature": [0.1, 0.01]}), tmp_path / "sw2")
    assert {t.run["model"]["objective"]["temperature"] for t in with_tau} == {0.1, 0.01}
    assert any(t.name == "b8-minilm-smollm2-135m-tau0.01-s0" for t in with_tau)


def test_budgets_in_steps_and_tokens(tmp_path):
    _, trials = plan(write_sweep(tmp_path), tmp_path / "sw", ["budget.chunks=null", "budget.steps=7"])
    assert {t.run["train"]["max_steps"] for t in trials} == {7}  # equal steps: larger B sees more chunks
    run = trials[0].run
    # tokens: chunks per step x the LM's tokens per chunk
    assert steps_for(Budget(tokens=6400), run, tokens_per_chunk=20.0) == round(6400 / (3 * 2 * 2 * 20))  # B=3 x 2 workers x 2 accum
    with pytest.raises(ConfigError, match="less than one optimizer step"):
        plan(write_sweep(tmp_path), tmp_path / "sw", ["budget.chunks=10"])  # B=8 x 4 groups = 32 per step


def test_chunks_per_forward_sizes_groups_per_forward_for_each_group_size_and_the_budget_follows(tmp_path):
    """GPU memory tracks chunks per forward: a fixed G sized for B=4 would overflow at B=32."""
    _, fixed = plan(write_sweep(tmp_path, **{"axes.group_size": [4, 8, 16, 32], "budget": {"chunks": 4096}}),
                    tmp_path / "sw")
    assert {t.run["train"]["groups_per_forward"] for t in fixed} == {1}  # unset: the base config's G
    path = write_sweep(tmp_path, **{"axes.group_size": [4, 8, 16, 32], "chunks_per_forward": 64,
                                    "budget": {"chunks": 4096}})
    _, trials = plan(path, tmp_path / "sw2")
    for t in trials:
        B, G = t.params["group_size"], t.run["train"]["groups_per_forward"]
        assert (B, G) in {(4, 16), (8, 8), (16, 4), (32, 2)}
        assert t.run["train"]["max_steps"] == 4096 // (64 * 2 * 2)  # 64 chunks x 2 workers x 2 accum per step
    _, steps = plan(path, tmp_path / "sw3", ["budget.chunks=null", "budget.steps=5"])
    assert {t.run["train"]["max_steps"] for t in steps} == {5}


@pytest.mark.parametrize("change, message", [
    ({"axes.group_size": [1, 4]}, r"axes\.group_size"),
    ({"budget": {"steps": 3, "chunks": 9}}, "exactly one of steps, chunks or tokens"),
    ({"scheduler": {"kind": "asha"}}, "would stop cells of the scaling grid"),
    ({"axes.retriever": [{"label": "x", "name": "a", "derive": {"base": "a", "layers": 1}}]}, "exactly one of"),
    ({"axes.retriever": [{"label": "../x", "name": "a"}]}, "not a safe name"),
    ({"name": "a/b"}, "not a safe name"),
    ({"budgett": {"steps": 3}}, "budgett: unknown key"),
    ({"axes.seeds": [1, 1]}, "lists a value twice"),
])
def test_bad_sweep_configs_are_errors_naming_the_field(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(write_sweep(tmp_path, **change))


def test_asha_only_for_inner_searches_and_only_on_dev_metrics(tmp_path):
    inner = {"axes.group_size": [4], "axes.retriever": [{"label": "m", "name": "all-minilm-l6-v2"}],
             "axes.lr": [1e-4, 3e-4], "scheduler": {"kind": "asha", "grace_period": 2}}
    sweep, trials = plan(write_sweep(tmp_path, **inner), tmp_path / "sw")
    assert sorted({t.name.split("-")[-2] for t in trials}) == ["lr0.0001", "lr0.0003"]
    from revela.tuning.sweep import build_scheduler

    scheduler = build_scheduler(sweep, trials)
    assert type(scheduler).__name__ == "AsyncHyperBandScheduler" and scheduler._time_attr == "step"
    sweep, base_dir = load_sweep(write_sweep(tmp_path, **inner, run={"eval": {"select_best_by": "loss"}}))
    with pytest.raises(ConfigError, match="never on the LM loss"):
        base_run_dict(sweep, base_dir)


def test_concurrency_follows_the_cluster(tmp_path):
    _, trials = plan(write_sweep(tmp_path), tmp_path / "sw")  # 2 workers x 1 CPU + stream + eval + driver
    assert max_concurrent(trials, {"CPU": 8.0}, None) == 2
    assert max_concurrent(trials, {"CPU": 8.0}, 5) == 5  # asked explicitly
    with pytest.raises(SweepResourceError, match="never start"):
        max_concurrent(trials, {"CPU": 2.0}, None)
    sweep, base_dir = load_sweep(ROOT / "jobs" / "sweeps" / "paper-batch-size.yaml")
    gpu_trials = apply_budget(expand(sweep, base_run_dict(sweep, base_dir), tmp_path / "gpu"), sweep, {})
    assert max_concurrent(gpu_trials, {"CPU": 16.0, "GPU": 1.0}, None) == 1  # 0.75 worker + 0.25 evaluation
    assert max_concurrent(gpu_trials, {"CPU": 64.0, "GPU": 8.0}, None) == 8


def test_flops_estimate_counts_processed_positions():
    shape = ModelShape(params=1000, non_embedding=600, hidden=8, layers=2, vocab=50)
    run = {"model": {"retriever": {"max_length": 4, "finetune": "full"}, "lm": {"max_length": 6, "finetune": "lora"}},
           "data": {"group_size": 4}}
    parts = flops_per_group(run, shape, shape)
    assert parts["inbatch_attention"] == 3 * 4 * 3 * 4 * 6**2 * 8 * 2  # 3 x B(B-1) x 4 L^2 d x layers
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    frozen = flops_per_group({**run, "model": {**run["model"], "retriever": {"max_length": 4, "finetune": "frozen"}}},
                             shape, shape)
    assert frozen["retriever"] < parts["retriever"] and frozen["lm"] == parts["lm"]
    # equal chunks: twice the B, half the groups; the linear parts cost the same, in-batch attention more
    double = flops_per_group({**run, "data": {"group_size": 8}}, shape, shape)
    assert double["lm"] == pytest.approx(2 * parts["lm"]) and double["retriever"] == pytest.approx(2 * parts["retriever"])
    assert double["inbatch_attention"] / 2 > parts["inbatch_attention"] * 2


def test_derived_model_keeps_the_first_layers(tmp_path):
    import torch
    from transformers import AutoModel

    from revela.tuning.models import derive_truncated
    from tiny import tiny_encoder, tokenizer

    source = tiny_encoder()
    source.save_pretrained(tmp_path / "src")
    tokenizer().save_pretrained(tmp_path / "src")
    out = derive_truncated(str(tmp_path / "src"), 1, tmp_path / "cut")
    cut = AutoModel.from_pretrained(out)
    assert cut.config.num_hidden_layers == 1
    assert torch.equal(cut.encoder.layer[0].attention.self.query.weight, source.encoder.layer[0].attention.self.query.weight)
    assert derive_truncated(str(tmp_path / "src"), 1, tmp_path / "cut") == out  # built once
    with pytest.raises(ValueError, match="cannot keep 3"):
        derive_truncated(str(tmp_path / "src"), 3, tmp_path / "cut3")


def per_query_scores(mean: float, queries: int = 200, spread: float = 0.2, seed: int = 0,
                     noise: float = 0.0, noise_seed: int = 0) -> dict[str, float]:
    """Per-query nDCG@10 in [0, 1] with exactly this mean: a per-query difficulty shared by every system built with
    the same `seed` (so differences are paired), plus `noise` of this system's own (`noise_seed`)."""
    import numpy as np

    base = np.random.default_rng(seed).uniform(-spread, spread, queries)
    own = np.random.default_rng(1000 + noise_seed).normal(0, noise, queries) if noise else np.zeros(queries)
    centred = base + own - (base + own).mean()
    shrink = min(1.0, mean / max(-centred.min(), 1e-9), (1 - mean) / max(centred.max(), 1e-9))  # stay in [0, 1]
    values = mean + shrink * centred
    return {f"q{n}": float(v) for n, v in enumerate(values)}


def write_trial(runs: Path, name: str, params: dict, best: float, backbone: float, losses: list[float],
                per_query: dict | None = None, backbone_per_query: dict | None = None, native: float = 0.2,
                lrs: list[float] | None = None, warmup: int = 1, sim_health: dict | None = None) -> dict:
    """A finished trial's record and metrics file, as `run_trial` leaves them; returns its plan entry.
    Per-query scores default to ones with the given means (one dev set, d1, 200 queries)."""
    from revela.config import RunConfig
    from revela.tuning.trial import trial_hash

    run = {"name": name, "ray": {"storage_path": str(runs)},
           "train": {"max_steps": len(losses), "warmup_steps": warmup, "lr": 1e-3}}
    run_dir = runs / name
    run_dir.mkdir(parents=True)
    lrs = lrs or [1e-3] * len(losses)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step, (loss, lr) in enumerate(zip(losses, lrs), 1):
            f.write(json.dumps({"step": step, "loss": loss, "groups": 1, "tokens": 40, "lr": lr}) + "\n")

    def flat(value: float) -> dict:
        return {"dev_ndcg_at_10": value, "dev_recall_at_100": 1.0, "dev_mrr_at_10": value, "dev_map_at_100": value,
                "d1/ndcg_at_10": value, "d1/recall_at_100": 1.0, "d1/mrr_at_10": value, "d1/map_at_100": value}

    per_query = per_query if per_query is not None else {"d1": per_query_scores(best)}
    point = {"step": len(losses), "checkpoint": str(run_dir / "checkpoint_x"), "metrics": flat(best),
             "per_query": per_query}
    protocol = {"pooling": "mean", "query_prefix": "", "passage_prefix": "", "max_length": 32,
                "passage_max_length": 256, "normalize": True}
    record = {"trial": name, "params": params, "run_dir": str(run_dir), "tune_trial_dir": None,
              "trial_hash": trial_hash(RunConfig.model_validate(run)),
              "select_best_by": "dev_ndcg_at_10", "datasets": ["d1"], "steps": len(losses),
              "max_steps": len(losses), "group_size": params["group_size"], "groups_seen": len(losses),
              "chunks_seen": len(losses) * params["group_size"], "tokens_seen": 40 * len(losses),
              "retriever_params": 1000, "lm_params": 5000, "flops": 1e9 * params["group_size"],
              "flops_by_part": {}, "wall_s": 10.0, "train_step_s": 5.0, "dev_eval_s": 1.0, "gpu_hours": 0.0,
              "best": point, "final": point, "dev_history": [{"step": len(losses), "dev_ndcg_at_10": best}],
              "backbone": {"model": "m", "file": "f", "metrics": flat(backbone), "protocol": protocol,
                           "per_query": backbone_per_query or {"d1": per_query_scores(backbone)},
                           "native": {"metrics": flat(native), "per_query": None,
                                      "protocol": {**protocol, "max_length": 256}}}}
    if sim_health is not None:
        record["sim_health"] = sim_health
    (run_dir / "revela_trial.json").write_text(json.dumps(record))
    return {"params": params, "run": run}


def write_plan(sweep_dir: Path, order: list[str], plan_trials: dict, name: str = "seeds") -> None:
    (sweep_dir / "sweep.json").write_text(json.dumps({"order": order, "trials": plan_trials, "sweep": {
        "name": name, "budget": {"steps": 2, "chunks": None, "tokens": None}, "datasets": ["d1"]}}))


def test_report_averages_seeds_with_error_bars_and_states_the_trend(tmp_path):
    from revela.tuning.report import write_report

    sweep_dir, runs = tmp_path / "sw", tmp_path / "sw" / "runs"
    scores = {(4, 0): 0.30, (4, 1): 0.34, (8, 0): 0.40, (8, 1): 0.42, (16, 0): 0.38, (16, 1): 0.36}
    plan_trials, order = {}, []
    for (B, seed), best in scores.items():
        name = f"b{B}-m-lm-s{seed}"
        params = {"group_size": B, "retriever": "m", "lm": "lm", "seed": seed, "lr": 1e-4, "grouping": "adjacent",
                  "temperature": 0.05}
        plan_trials[name] = write_trial(runs, name, params, best, 0.25, [3.0, 2.5])
        order.append(name)
    order.append("b32-m-lm-s0")  # never finished: listed, not dropped silently
    plan_trials["b32-m-lm-s0"] = {"params": {}, "run": {"name": "b32-m-lm-s0", "ray": {"storage_path": str(runs)}}}
    write_plan(sweep_dir, order, plan_trials)
    written = write_report(sweep_dir)
    assert written["trials"] == 6 and written["missing"] == ["b32-m-lm-s0"] and written["rows"] == 6 * 2 * 4
    line = written["series"]["nDCG@10 vs group size B, one line per retriever"]
    (label, series), = line.items()
    assert series["x"] == [4, 8, 16] and series["y"] == pytest.approx([0.32, 0.41, 0.37])
    assert series["backbone"] == pytest.approx(0.25)  # the same-protocol control
    summary = Path(written["summary"]).read_text()
    # every step is a large, consistent difference on 200 paired queries: significant both ways
    assert "B=4 → B=8: rises +0.0900 (95% CI" in summary and "B=8 → B=16: falls -0.0400 (95% CI" in summary
    assert "0.3200 ± 0.0283" in summary  # sample std over the two seeds
    assert "b32-m-lm-s0" in summary and "trials finished: 6 of 7" in summary
    assert written["flags"] == {}


def test_cli_errors_exit_2(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["sweep", "--config", str(tmp_path / "missing.yaml")])
    assert out.exit_code == 2 and "not found" in out.output
    out = runner.invoke(app, ["sweep", "--config", str(write_sweep(tmp_path, **{"axes.group_size": [1]}))])
    assert out.exit_code == 2 and "axes.group_size" in out.output
    out = runner.invoke(app, ["report", str(tmp_path)])
    assert out.exit_code == 2 and "not a sweep folder" in out.output


def test_jobs_entry_point_is_the_sweep_command():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "jobs/sweep.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "--overwrite" in out.stdout and "budget.chunks" in out.stdout
