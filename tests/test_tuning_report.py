"""`revela report` claims only what the data shows (issue 16, items 2 and 3): a rise or a fall needs a paired test
over queries; cells that trained too little, or whose Sim gave no signal, are flagged and never compared; a
one-step training curve is visible. Uses the sweep-report fixtures of test_tuning_plan (no Ray, no models)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from revela.tuning.report import write_report
from test_tuning_plan import per_query_scores, write_plan, write_trial

PARAMS = {"retriever": "m", "lm": "lm", "seed": 0, "lr": 1e-4, "grouping": "adjacent", "temperature": 0.05}


def sweep(tmp_path: Path, cells: dict[int, dict]) -> dict:
    """One trial per B; `cells` maps B to write_trial's keyword arguments."""
    sweep_dir, runs = tmp_path / "sw", tmp_path / "sw" / "runs"
    plan_trials, order = {}, []
    for B, kwargs in cells.items():
        name = f"b{B}-m-lm-s0"
        kwargs = {"backbone": 0.25, "losses": [3.0, 2.5], **kwargs}
        plan_trials[name] = write_trial(runs, name, {**PARAMS, "group_size": B}, **kwargs)
        order.append(name)
    write_plan(sweep_dir, order, plan_trials)
    return write_report(sweep_dir)


def noisy(mean: float, noise_seed: int) -> dict:
    """200 queries with realistic per-query noise around a shared difficulty, exactly `mean` on average."""
    return {"d1": per_query_scores(mean, spread=0.3, noise=0.15, noise_seed=noise_seed)}


def test_a_small_difference_on_200_queries_and_one_seed_is_no_trend(tmp_path):
    """Issue 16: 'rises at every step' for 0.4966 -> 0.5039 on 200 queries and one seed."""
    written = sweep(tmp_path, {4: {"best": 0.4966, "per_query": noisy(0.4966, 1)},
                               8: {"best": 0.5039, "per_query": noisy(0.5039, 2)}})
    summary = Path(written["summary"]).read_text()
    assert "rises at every step" not in summary
    line = next(line for line in summary.splitlines() if line.startswith("- m: B=4"))
    assert "B=4 → B=8: no significant difference (Δ +0.0073, 95% CI -0." in line, line
    table = pd.read_csv(written["csv"])
    row = table[(table["dataset"] == "mean") & (table["metric"] == "ndcg_at_10")].iloc[0]
    assert row["best_ci_low"] < row["best"] < row["best_ci_high"]  # the interval is in the table too
    bars = written["series"]["nDCG@10 vs group size B, one line per retriever"]
    (series,) = bars.values()
    assert series["yerr"] is not None and all(e > 0.01 for e in series["yerr"][0])  # drawn as error bars
    assert series["backbone_band"][0] < 0.25 < series["backbone_band"][1]


def test_a_cell_that_never_trained_is_flagged_and_not_compared(tmp_path):
    """Issue 16: B=8 got one step, warmup made it lr 0, and the summary said 'B=4 -> B=8 does not rise'."""
    written = sweep(tmp_path, {
        4: {"best": 0.50, "losses": [3.0, 2.6], "warmup": 1},
        8: {"best": 0.40, "losses": [3.0], "lrs": [0.0], "warmup": 4},  # far lower: would read as a fall
        16: {"best": 0.52, "losses": [3.0, 2.5], "warmup": 1,
             "sim_health": {"status": "one-hot", "mean_entropy_fraction": 0.01, "temperature": 1e-4,
                            "message": "Sim is one-hot: tau too small for this retriever"}},
        32: {"best": 0.53, "losses": [3.0, 2.5], "warmup": 1,
             "sim_health": {"status": "unknown", "mean_entropy_fraction": None, "temperature": 0.05,
                            "message": "no Sim statistics logged"}}})
    assert written["flags"] == {"b8-m-lm-s0": ["under-warmup", "lr~0"], "b16-m-lm-s0": ["sim-one-hot"],
                                "b32-m-lm-s0": ["sim-unknown"]}
    summary = Path(written["summary"]).read_text()
    line = next(line for line in summary.splitlines() if line.startswith("- m: B=4"))
    assert "B=8: 0.4000 ⚑" in line and "B=16: 0.5200 ⚑" in line and "B=32: 0.5300 ⚑" not in line
    steps = [s for s in summary.splitlines() if s.startswith("  - B=")]
    assert "  - B=4 → B=8: not compared, flagged ⚑ B=8 (lr~0, under-warmup)" in steps, summary
    assert "  - B=8 → B=16: not compared, flagged ⚑ B=8 (lr~0, under-warmup) and B=16 (sim-one-hot)" in steps
    assert not any("falls" in s or "rises" in s for s in steps)
    assert "⚑ `b8-m-lm-s0` under-warmup: 1 optimizer steps < warmup_steps 4" in summary
    assert "sim-unknown: no Sim statistics logged (not blocking)" in summary
    table = pd.read_csv(written["csv"]).set_index("trial")
    assert table.loc["b8-m-lm-s0", "flags"].iloc[0] == "under-warmup,lr~0"
    assert table.loc["b4-m-lm-s0", "flags"].isna().all()  # no sim_health in the record: no flag


def test_a_one_step_training_curve_has_markers(tmp_path):
    written = sweep(tmp_path, {4: {"best": 0.5, "losses": [3.0, 2.6]}, 8: {"best": 0.5, "losses": [3.0]}})
    curves = written["series"]["training loss and dev nDCG@10 curves"]
    assert curves["b8-m-lm-s0"]["steps"] == [1] and curves["b8-m-lm-s0"]["loss_marker"] not in (None, "", "None")


def test_far_fewer_steps_than_the_grid_neighbours_is_flagged():
    from revela.tuning.flags import neighbour_steps, trial_flags

    def rec(name, B, steps, retriever="m"):
        return {"trial": name, "steps": steps, "params": {**PARAMS, "group_size": B, "retriever": retriever}}

    records = [rec("b4", 4, 40), rec("b8", 8, 20), rec("b16", 16, 2), rec("b32", 32, 10), rec("x4", 4, 1, "other")]
    near = neighbour_steps(records)
    assert sorted(near["b16"]) == [10, 20] and near["x4"] == [40]  # one axis apart by one value
    run = {"train": {"warmup_steps": 0, "lr": 1e-3}}
    assert [f.code for f in trial_flags(records[2], run, near["b16"], None)] == ["few-steps"]
    assert trial_flags(records[1], run, near["b8"], None) == []  # half the steps of B=4: the equal-chunks design


def test_cells_that_differ_on_a_later_axis_are_not_grid_neighbours():
    """sim, target_entropy and variant make cells as much as B does: B=4 with uniform Sim is no neighbour of B=8
    with softmax Sim (two axes apart), so its steps do not count against it."""
    from revela.tuning.flags import neighbour_steps

    def rec(name, B, steps, **params):
        return {"trial": name, "steps": steps, "params": {**PARAMS, "group_size": B, **params}}

    for axis, a, b in (("sim", "softmax", "uniform"), ("target_entropy", 0.7, 0.5), ("variant", "x", "y")):
        records = [rec("a4", 4, 40, **{axis: a}), rec("b8", 8, 2, **{axis: b}), rec("a8", 8, 20, **{axis: a})]
        near = neighbour_steps(records)
        assert near["b8"] == [20] and sorted(near["a8"]) == [2, 40], axis  # only one axis apart counts
        assert near["a4"] == [20], axis


def test_records_from_before_the_same_protocol_control(tmp_path):
    """A record written before both untrained scores existed holds one, under the backbone's own protocol: it is
    reported as such, and best − untrained is not claimed."""
    written = sweep(tmp_path, {4: {"best": 0.5}, 8: {"best": 0.6}})
    path = tmp_path / "sw" / "runs" / "b4-m-lm-s0" / "revela_trial.json"
    record = json.loads(path.read_text())
    record["backbone"] = {"model": "m", "file": "f", "metrics": {"dev_ndcg_at_10": 0.3, "d1/ndcg_at_10": 0.3}}
    for point in ("best", "final"):
        record[point].pop("per_query")
    path.write_text(json.dumps(record))
    written = write_report(tmp_path / "sw")
    table = pd.read_csv(written["csv"])
    old = table[(table["trial"] == "b4-m-lm-s0") & (table["dataset"] == "mean") & (table["metric"] == "ndcg_at_10")]
    assert np.isnan(old["backbone_same_protocol"].iloc[0]) and old["backbone_native"].iloc[0] == 0.3
    summary = Path(written["summary"]).read_text()
    assert "B=4 → B=8: not tested (no per-query scores recorded)" in summary
