"""Sweep results you can trust, and nothing lost on the way (issue 16), without running a sweep: the planning and
claim functions are called directly on tiny model folders, and trial records are written by the real `run_trial`
over runs faked as finished (it then summarizes them without training).

- every cell of an equal-chunks grid trains: warmup is a fraction of each cell's own steps (never lr 0 throughout);
- `--overwrite` / `--resume` validate everything (models, derive specs, dev sets) before deleting anything;
- a copied sweep folder reports its own files, not the original folder's.
"""

import json
import shutil
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from revela.cli import app
from revela.configbase import ConfigError
from tiny import write_json_dev_set

STDLIB_JSON = Path(sysconfig.get_paths()["stdlib"]) / "json"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny import save_tiny_models

    return save_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    return write_json_dev_set(tmp_path_factory.mktemp("dev") / "dev")


def write_sweep(root: Path, models: Path, dev: Path, base_train: dict | None = None, **changes) -> Path:
    base = {"model": {"retriever": {"name": str(models / "retriever"), "pooling": "mean", "max_length": 32},
                      "lm": {"name": str(models / "lm"), "finetune": "full", "max_length": 32},
                      "objective": {"temperature": 0.05}},
            "data": {"sources": [str(STDLIB_JSON)], "max_words": 24, "max_tokens": 32},
            "train": {"warmup_steps": 2, "heldout_groups": 0, **(base_train or {})},
            "ray": {"num_workers": 1, "cpus_per_worker": 1}}
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"name": "safe", "base": "base.yaml", "datasets": [str(dev)], "budget": {"chunks": 8},
             "storage_path": str(root / "sweeps"), "axes": {"group_size": [4, 8]}, **changes}
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def planned(path: Path, overrides=()):
    from revela.tuning.config import base_run_dict, load_sweep
    from revela.tuning.grid import apply_budget, expand

    sweep, base_dir = load_sweep(path, list(overrides))
    base = base_run_dict(sweep, base_dir)
    return sweep, base, apply_budget(expand(sweep, base, sweep_folder(sweep)), sweep, {})


def sweep_folder(sweep) -> Path:
    return Path(sweep.storage_path).absolute() / sweep.name


def lr_factors(run: dict) -> list[float]:
    """The learning-rate factor of each optimizer step of a trial, from the Trainer that trains it."""
    import torch

    from revela.config import TrainConfig
    from revela.train.loop import Trainer
    from tiny import tiny_revela

    trainer = Trainer(tiny_revela(), TrainConfig.model_validate(run["train"]), torch.device("cpu"))
    factors = []
    for _ in range(run["train"]["max_steps"]):
        factors.append(trainer.scheduler.get_last_lr()[-1] / run["train"]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    return factors


# ------------------------------------------------------------------ item 2: no cell that never trained


def test_every_cell_of_an_equal_chunks_grid_reaches_its_learning_rate(tmp_path, models, dev):
    # 8 chunks: B=4 takes 2 steps, B=8 one. A fixed warmup of 2 steps ran B=8 at lr 0 (and B=4 never reached lr).
    _, _, trials = planned(write_sweep(tmp_path, models, dev))
    by_b = {t.params["group_size"]: t for t in trials}
    assert {b: t.run["train"]["max_steps"] for b, t in by_b.items()} == {4: 2, 8: 1}
    for t in trials:
        factors = lr_factors(t.run)
        assert max(factors) == pytest.approx(1.0), (t.name, t.run["train"]["warmup_steps"], factors)
        assert t.params["warmup_steps"] == t.run["train"]["warmup_steps"] < t.run["train"]["max_steps"]
    # larger budgets: each cell warms up over the same share (10 % by default) of its own steps
    _, _, trials = planned(write_sweep(tmp_path, models, dev), ["budget.chunks=800"])
    assert {t.run["train"]["max_steps"]: t.run["train"]["warmup_steps"] for t in trials} == {200: 20, 100: 10}


def test_a_fixed_warmup_is_kept_only_where_every_cell_outlasts_it(tmp_path, models, dev):
    with pytest.raises(ConfigError, match=r"trial b4-retriever-lm-s42: 2 optimizer step\(s\) but "
                                          r"train\.warmup_steps=2, so its learning rate never reaches train\.lr"):
        planned(write_sweep(tmp_path, models, dev, warmup_fraction=None))
    _, _, trials = planned(write_sweep(tmp_path, models, dev, warmup_fraction=None), ["budget.chunks=64"])
    assert {t.run["train"]["warmup_steps"] for t in trials} == {2}  # as the base says, in every cell
    with pytest.raises(ConfigError, match=r"run\.train\.warmup_steps and warmup_fraction=0\.1 both set"):
        planned(write_sweep(tmp_path, models, dev, run={"train": {"warmup_steps": 3}}))


# ------------------------------------------------------------------ item 4: validate everything, delete last


def existing_sweep(path: Path) -> tuple[Path, dict]:
    """A sweep folder as a finished run of `path` leaves it (plan, a trial's checkpoint, the Tune experiment);
    returns it and a snapshot of its files."""
    from revela.tuning.sweep import sweep_hash

    sweep, base, _ = planned(path)
    sweep_dir = sweep_folder(sweep)
    (sweep_dir / "runs" / "b4-retriever-lm-s42" / "checkpoint_1").mkdir(parents=True)
    (sweep_dir / "runs" / "b4-retriever-lm-s42" / "checkpoint_1" / "trainable.safetensors").write_bytes(b"w" * 4096)
    (sweep_dir / "tune").mkdir()
    (sweep_dir / "tune" / "experiment_state.json").write_text("{}")
    (sweep_dir / "sweep.json").write_text(json.dumps({"config_hash": sweep_hash(sweep, base),
                                                      "folder": str(sweep_dir)}))
    return sweep_dir, files(sweep_dir)


def files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("mode, overrides, message", [
    ("overwrite", ["datasets=[/no/such/dev-set]"], "/no/such/dev-set: not a dataset directory"),
    ("resume", ["budget.chunks=16", "axes.retriever=[{label: r, name: all-minilm-l6-v3}]"],
     "axes.retriever[r].name='all-minilm-l6-v3': unknown model 'all-minilm-l6-v3'"),
    ("overwrite", ["axes.retriever=[{label: cut, derive: {base: all-minilm-l6-v2, layers: 9}}]"],
     "axes.retriever[cut].derive.layers=9: all-minilm-l6-v2 has 6 layers, cannot keep 9"),
    ("resume", ["axes.lm=[{label: big, name: /no/such/lm}]"], "axes.lm[big].name='/no/such/lm'"),
])
def test_a_failing_overwrite_or_resume_deletes_nothing(tmp_path, models, dev, mode, overrides, message):
    import ray

    path = write_sweep(tmp_path, models, dev)
    sweep_dir, before = existing_sweep(path)
    flag = f"--{mode}"
    out = CliRunner().invoke(app, ["sweep", "--config", str(path), *overrides, flag])
    assert out.exit_code == 2, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], out.output  # one line, naming the key
    assert files(sweep_dir) == before  # the old sweep, its checkpoint and its Tune experiment are all there
    assert not ray.is_initialized()  # refused before Ray started

    from revela.tuning.config import load_sweep
    from revela.tuning.sweep import claim_sweep_dir

    sweep, _ = load_sweep(path)  # the claim itself still deletes what the mode asks for, once called
    assert not (claim_sweep_dir(sweep, "another-config", "overwrite") / "tune").exists()


# ------------------------------------------------------------------ confusing (d): a copied sweep folder


def fake_finished_runs(trials, sweep_dir: Path, score: float) -> None:
    """Each trial's run folder as a finished Train run leaves it, so `run_trial` only summarizes it."""
    from revela.config import RunConfig
    from revela.train import RUN_FILE, config_hash

    for i, t in enumerate(trials):
        cfg = RunConfig.model_validate(t.run)
        run_dir = sweep_dir / "runs" / t.name
        run_dir.mkdir(parents=True, exist_ok=True)
        steps = cfg.train.max_steps
        (run_dir / RUN_FILE).write_text(json.dumps({"config_hash": config_hash(cfg)}))
        (run_dir / "revela_status.json").write_text(json.dumps({"status": "finished", "step": steps}))
        (run_dir / "report.json").write_text(json.dumps({"steps": steps}))
        (run_dir / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "loss": 3.0, "groups": 1, "tokens": 64}) + "\n" for s in range(1, steps + 1)))
        dev = {"dev_ndcg_at_10": score + i / 100, "dev/ndcg_at_10": score + i / 100}
        (run_dir / "dev_scores.jsonl").write_text(json.dumps(
            {"checkpoint_step": steps, "checkpoint": str(run_dir / "checkpoint_1"), **dev}) + "\n")


def test_a_copied_sweep_folder_reports_its_own_data(tmp_path, models, dev):
    from revela.tuning.prepare import baseline_path
    from revela.tuning.report import write_report
    from revela.tuning.sweep import sweep_hash, write_plan
    from revela.tuning.trial import run_trial

    (tmp_path / "a").mkdir()
    path = write_sweep(tmp_path / "a", models, dev)
    sweep, base, trials = planned(path)
    sweep_dir = sweep_folder(sweep)
    sweep_dir.mkdir(parents=True)
    backbones = {t.name: baseline_path(sweep_dir, t) for t in trials}
    for file in backbones.values():
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps({"model": "minilm", "metrics": {"dev_ndcg_at_10": 0.1, "dev/ndcg_at_10": 0.1}}))
    write_plan(sweep_dir, sweep_hash(sweep, base), sweep, base, trials, backbones, {}, "auto")
    fake_finished_runs(trials, sweep_dir, score=0.5)
    for t in trials:
        run_trial({"sweep_dir": str(sweep_dir), "trial": t.name})  # writes the trial's record, trains nothing
    assert "${sweep}/runs" in (sweep_dir / "sweep.json").read_text()  # no absolute path into the folder

    copy = tmp_path / "elsewhere" / sweep.name
    shutil.copytree(sweep_dir, copy)
    shutil.rmtree(sweep_dir)  # the original is gone: the copy must not need it
    written = write_report(copy)
    assert written["trials"] == 2 and not written["missing"]
    rows = pd.read_csv(written["csv"])
    assert set(rows["run_dir"]) == {str(copy / "runs" / t.name) for t in trials}
    assert sorted(rows[(rows["dataset"] == "mean") & (rows["metric"] == "ndcg_at_10")]["best"]) == [0.5, 0.51]

    # re-running the sweep in the copy continues it only when asked: Tune's own state names the old folder
    from revela.tuning.folder import load_plan
    from revela.tuning.sweep import check_sweep_dir

    moved = sweep.model_copy(update={"storage_path": str(copy.parent)})
    with pytest.raises(RuntimeError, match="was run in .* \\(the folder was moved or copied\\); pass --resume"):
        check_sweep_dir(moved, sweep_hash(moved, base), "auto")
    assert check_sweep_dir(moved, sweep_hash(moved, base), "resume") == "tune"

    # a plan written with absolute paths (before this rule), copied: refused in one line, not the original's data
    legacy = json.loads((copy / "sweep.json").read_text().replace("${sweep}", str(sweep_dir)))
    del legacy["folder"]
    (copy / "sweep.json").write_text(json.dumps(legacy))
    with pytest.raises(RuntimeError, match=f"was run in {sweep_dir} \\(the folder was moved or copied\\)"):
        check_sweep_dir(moved, sweep_hash(moved, base), "auto")
    out = CliRunner().invoke(app, ["report", str(copy)])
    assert out.exit_code == 2
    assert [line for line in out.output.splitlines() if line.strip()] == [out.output.strip()]
    assert "outside this folder" in out.output and str(sweep_dir) in out.output
    with pytest.raises(ValueError, match="outside this folder"):
        load_plan(copy)
