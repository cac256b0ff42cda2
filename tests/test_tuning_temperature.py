"""Sweeps over tau and the controls (revela.tuning): axes, trial names, the shipped study, Sim health in the record
and the report."""

import json
import math
from pathlib import Path

import pytest
import yaml

from revela.configbase import ConfigError
from revela.tuning.config import base_run_dict, load_sweep
from revela.tuning.grid import apply_budget, expand

ROOT = Path(__file__).resolve().parents[1]


def plan(tmp_path: Path, axes: dict, name: str = "tau"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "datasets": ["stdlib-code"], "budget": {"steps": 4},
                                    "axes": {"group_size": [8], **axes}}))
    sweep, base_dir = load_sweep(path)
    return apply_budget(expand(sweep, base_run_dict(sweep, base_dir), tmp_path / name), sweep, {})


def test_axes_vary_tau_auto_target_entropy_and_sim_with_stable_names(tmp_path):
    trials = plan(tmp_path, {"temperature": [1.0e-4, "auto"], "target_entropy": [0.5, 0.7],
                             "sim": ["softmax", "uniform"]})
    names = [t.name for t in trials]
    assert names[:4] == ["b8-all-minilm-l6-v2-smollm2-135m-tau0.0001-h0.5-softmax-s42",
                         "b8-all-minilm-l6-v2-smollm2-135m-tau0.0001-h0.5-uniform-s42",
                         "b8-all-minilm-l6-v2-smollm2-135m-tau0.0001-h0.7-softmax-s42",
                         "b8-all-minilm-l6-v2-smollm2-135m-tau0.0001-h0.7-uniform-s42"]
    assert "b8-all-minilm-l6-v2-smollm2-135m-tauauto-h0.7-uniform-s42" in names and len(set(names)) == 8
    auto = next(t for t in trials if t.name.endswith("tauauto-h0.5-uniform-s42"))
    assert auto.run["model"]["objective"] == {**auto.run["model"]["objective"], "temperature": "auto",
                                              "target_entropy": 0.5, "sim": "uniform"}
    assert auto.params | {"temperature": "auto", "target_entropy": 0.5, "sim": "uniform"} == auto.params
    # the same plan twice gives the same names (they name the Train runs, which resume by name)
    assert [t.name for t in plan(tmp_path, {"temperature": [1.0e-4, "auto"], "target_entropy": [0.5, 0.7],
                                            "sim": ["softmax", "uniform"]}, "again")] == names


def test_variants_are_hand_picked_points_with_their_own_data(tmp_path):
    trials = plan(tmp_path, {"variants": [
        {"label": "paper-tau", "run": {"model": {"objective": {"temperature": 1.0e-4}}}},
        {"label": "auto"},
        {"label": "random-groups", "run": {"data": {"grouping": "random"}}}]})
    assert [t.params["variant"] for t in trials] == ["paper-tau", "auto", "random-groups"]
    assert trials[0].name == "b8-all-minilm-l6-v2-smollm2-135m-paper-tau-s42"
    assert [t.run["model"]["objective"]["temperature"] for t in trials] == [1e-4, "auto", "auto"]
    assert trials[2].params["grouping"] == "random" and trials[2].data_key != trials[0].data_key == trials[1].data_key


@pytest.mark.parametrize("axes, message", [
    ({"temperature": [0.0]}, "axes.temperature"),
    ({"temperature": ["hot"]}, "axes.temperature"),
    ({"target_entropy": [1.0]}, "axes.target_entropy"),
    ({"sim": ["flat"]}, "axes.sim"),
    ({"temperature": ["auto", "auto"]}, "lists a value twice"),
    ({"variants": [{"label": "a"}, {"label": "a"}]}, "share a label"),
    ({"variants": [{"label": "a", "run": {"model": {"objective": {"temperature": -1}}}}]},
     r"model\.objective\.temperature"),
])
def test_bad_axes_are_errors_naming_the_field(tmp_path, axes, message):
    with pytest.raises(ConfigError, match=message):
        plan(tmp_path, axes)


def test_shipped_tau_controls_study(tmp_path):
    sweep, base_dir = load_sweep(ROOT / "jobs" / "sweeps" / "tau-controls.yaml")
    trials = apply_budget(expand(sweep, base_run_dict(sweep, base_dir), tmp_path), sweep, {})
    points = {(t.run["model"]["objective"]["temperature"], t.run["model"]["objective"]["sim"], t.run["data"]["grouping"])
              for t in trials}
    assert points == {(1e-4, "softmax", "adjacent"), ("auto", "softmax", "adjacent"), ("auto", "uniform", "adjacent"),
                      ("auto", "softmax", "random")}
    assert all(t.run["ray"]["use_gpu"] and t.run["model"]["retriever"]["name"] == "smollm2-135m" for t in trials)
    assert len({t.params["steps"] for t in trials}) == 1  # one budget for every point


def test_trial_record_and_report_carry_sim_health(tmp_path):
    """The run's report (as the driver writes it) carries the verdict; `summarize` takes it into the trial's record
    under `sim_health`, and the sweep report's trial table marks it."""
    from revela.config import RunConfig
    from revela.train import metrics_history
    from revela.train.report import write_report as write_run_report
    from revela.tuning.report import write_report
    from revela.tuning.trial import summarize, trial_hash
    from tiny import save_tiny_models

    models = save_tiny_models(tmp_path / "models")
    runs, order, trials = tmp_path / "sw" / "runs", [], {}
    for name, tau, fraction in (("paper", 1e-4, 0.01), ("auto", "auto", 0.7)):
        run = {"name": name, "model": {"retriever": {"name": str(models / "retriever")},
                                       "lm": {"name": str(models / "lm")}, "objective": {"temperature": tau}},
               "train": {"max_steps": 2}, "ray": {"storage_path": str(runs)}, "eval": {"datasets": ["d1"]}}
        cfg = RunConfig.model_validate(json.loads(json.dumps(RunConfig.model_validate(run).model_dump())))  # as in sweep.json
        run_dir = runs / name
        run_dir.mkdir(parents=True)
        calibrated = 0.0321 if tau == "auto" else tau
        (run_dir / "temperature.json").write_text(json.dumps({"temperature": calibrated}))
        with open(run_dir / "metrics.jsonl", "w") as f:
            for step in (1, 2):
                f.write(json.dumps({"step": step, "loss": 3.0, "groups": 1, "tokens": 40, "temperature": calibrated,
                                    "sim_entropy": fraction * math.log(7), "sim_entropy_fraction": fraction}) + "\n")
        with open(run_dir / "dev_scores.jsonl", "w") as f:
            f.write(json.dumps({"checkpoint_step": 2, "checkpoint": str(run_dir / "c"), "dev_ndcg_at_10": 0.3,
                                "d1/ndcg_at_10": 0.3}) + "\n")
        backbone = tmp_path / f"{name}-backbone.json"
        backbone.write_text(json.dumps({"model": "r", "metrics": {"dev_ndcg_at_10": 0.2, "d1/ndcg_at_10": 0.2}}))
        params = {"group_size": 8, "retriever": "r", "lm": "l", "seed": 0, "lr": 1e-4, "grouping": "adjacent",
                  "temperature": tau, "target_entropy": 0.7, "sim": "softmax", "variant": name}
        report = write_run_report(run_dir, cfg, checkpoint=None, history=metrics_history(run_dir), heldout_before=None,
                                  heldout_after=None, data_summary={}, wall_s=1.0, temperature=calibrated)
        record = summarize(cfg, params, run_dir, report, backbone, 1.0, None)
        assert record["trial_hash"] == trial_hash(cfg)
        (run_dir / "revela_trial.json").write_text(json.dumps(record))
        trials[name], order = {"params": params, "run": cfg.model_dump()}, order + [name]
    paper = json.loads((runs / "paper" / "revela_trial.json").read_text())["sim_health"]
    assert paper["status"] == "one-hot" and paper["temperature"] == 1e-4
    assert paper["mean_entropy_fraction"] == pytest.approx(0.01) and "temperature: auto" in paper["message"]
    auto = json.loads((runs / "auto" / "revela_trial.json").read_text())["sim_health"]
    assert auto["status"] == "ok" and auto["temperature"] == 0.0321
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps({"order": order, "trials": trials, "sweep": {
        "name": "tau", "budget": {"steps": 2, "chunks": None, "tokens": None}, "datasets": ["d1"]}}))
    written = write_report(tmp_path / "sw")  # a number and "auto" in one tau column: the parquet still writes
    summary = Path(written["summary"]).read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in summary.splitlines() if line.startswith("| paper")
            or line.startswith("| auto")}
    assert "sim-one-hot" in rows["paper"] and "sim-" not in rows["auto"]  # the verdict is a trial flag
