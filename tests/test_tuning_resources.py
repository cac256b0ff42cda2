"""What a sweep trial asks Ray for equals what it runs: Train workers, the data stream's actors, the evaluation task
and the trial's own function, counted from the shipped paper sweep's real numbers."""

import inspect
from pathlib import Path

import pytest

from revela.config import RunConfig
from revela.data.stream import STREAM_ACTOR_CPUS, build_stream
from revela.train.resources import EVAL_TASKS_IN_FLIGHT
from revela.tuning.config import base_run_dict, load_sweep
from revela.tuning.grid import apply_budget, expand
from revela.tuning.sweep import TRIAL_DRIVER_CPU, max_concurrent, trial_parts, trial_resources

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper_trials(tmp_path_factory):
    sweep, base_dir = load_sweep(ROOT / "jobs" / "sweeps" / "paper-batch-size.yaml")
    return apply_budget(expand(sweep, base_run_dict(sweep, base_dir), tmp_path_factory.mktemp("sw")), sweep, {})


def test_paper_sweep_trial_counts_every_part(paper_trials):
    assert len(paper_trials) == 8
    for trial in paper_trials:
        cfg = RunConfig.model_validate(trial.run)
        # the settings the numbers below come from: the sweep's ray/eval, stream_actors from gpu-offline.yaml
        assert (cfg.ray.num_workers, cfg.ray.cpus_per_worker, cfg.ray.gpus_per_worker, cfg.ray.use_gpu) == (1, 4, 0.75, True)
        assert (cfg.data.stream_actors, cfg.eval.num_cpus, cfg.eval.num_gpus) == (4, 1, 0.25)
        assert trial_parts(trial.run) == {
            "train_workers": {"CPU": 4.0, "GPU": 0.75},
            "stream_actors": {"CPU": 4 * 0.5, "GPU": 0.0},
            "evaluation": {"CPU": 1.0, "GPU": 0.25},
            "trial_driver": {"CPU": 0.01, "GPU": 0.0},
        }
        asked = trial_resources(trial.run)
        assert asked["CPU"] == pytest.approx(4 + 2.0 + 1 + 0.01)  # 7.01; counting one stream actor gave 5.51
        assert asked["GPU"] == pytest.approx(1.0)


def test_concurrency_leaves_the_stream_actors_their_cpus(paper_trials):
    # two trials need 14.02 CPUs: on 12 only one fits (counting one stream actor, 2 x 5.51 = 11.02 "fit" and
    # the second trial's stream would wait for CPUs that never come free)
    assert max_concurrent(paper_trials, {"CPU": 12.0, "GPU": 2.0}, None) == 1
    assert max_concurrent(paper_trials, {"CPU": 14.02, "GPU": 2.0}, None) == 2


def test_the_counted_constants_are_the_ones_used():
    """The stream is built with its default CPUs per actor (revela.train.data passes none), and Ray Train scores
    one checkpoint at a time per run."""
    assert inspect.signature(build_stream).parameters["num_cpus"].default == STREAM_ACTOR_CPUS == 0.5
    from ray.train.v2._internal.execution.checkpoint import validation_manager  # the pin this count relies on

    assert validation_manager.MAX_IN_FLIGHT_VALIDATIONS == EVAL_TASKS_IN_FLIGHT == 1
    assert TRIAL_DRIVER_CPU == 0.01


def test_a_run_without_dev_sets_starts_no_evaluation_task(paper_trials):
    run = {**paper_trials[0].run, "eval": {**paper_trials[0].run["eval"], "datasets": []}}
    assert trial_parts(run)["evaluation"] == {"CPU": 0.0, "GPU": 0.0}
