"""`revela.evaluation.settings`: one validated model for an evaluation's settings; a bad field is one line naming it
(the CLI names its flag), and `revela evaluate` builds the same settings its flags always meant."""

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from revela.config import EvalConfig, RunConfig
from revela.configbase import ConfigError, validate
from revela.evaluation.cli import register
from revela.evaluation.settings import EvalSettings, ScoringSettings, SettingsError


@pytest.mark.parametrize("bad, field", [
    ({"k": 0}, "k"),
    ({"batch_size": True}, "batch_size"),  # a bool is not a count
    ({"max_queries": "8"}, "max_queries"),
    ({"max_length": 1}, "max_length"),
    ({"passage_max_length": 1}, "passage_max_length"),
    ({"num_actors": 0}, "num_actors"),
    ({"shard_size": -3}, "shard_size"),
    ({"encoder": "gpu"}, "encoder"),
    ({"datasets": []}, "datasets"),
    ({"bogus": 1}, "bogus"),
])
def test_a_bad_field_is_one_line_naming_it(bad, field):
    with pytest.raises(SettingsError) as err:
        EvalSettings.of(**{"datasets": ["stdlib-code"], "bm25": True, **bad})
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"evaluation settings: {field}: ")
    assert [f for f, _ in err.value.problems] == [field]


def test_output_folder_and_nothing_to_score_are_refused(tmp_path):
    with pytest.raises(SettingsError, match=r"^evaluation settings: output: output .* is an existing folder"):
        EvalSettings.of(datasets=["d"], bm25=True, output=tmp_path)
    with pytest.raises(ValueError, match="nothing to evaluate: give a model, or bm25=True"):
        EvalSettings.of(datasets=["d"])


def test_paths_are_accepted_as_dataset_names(tmp_path):
    settings = EvalSettings.of(datasets=[tmp_path / "a", "stdlib-code"], bm25=True, output=str(tmp_path / "r.json"))
    assert settings.datasets == [str(tmp_path / "a"), "stdlib-code"] and settings.output == tmp_path / "r.json"


def test_training_eval_section_shares_the_scoring_fields():
    """revela.config.EvalConfig is ScoringSettings plus the training-only fields: its defaults did not change and a
    bad value still names the YAML key."""
    assert issubclass(EvalConfig, ScoringSettings)
    ev = RunConfig().eval
    assert (ev.datasets, ev.max_queries, ev.batch_size, ev.max_length, ev.passage_max_length) == ([], 200, 32, None,
                                                                                                    None)
    with pytest.raises(ConfigError, match=r"eval\.batch_size: Input should be greater than or equal to 1"):
        validate(RunConfig, {"eval": {"batch_size": 0}}, "run.yaml")


def test_report_states_the_same_settings_as_before():
    from revela.evaluation.run import new_report

    settings = EvalSettings.of(model="m", datasets=["d"], max_queries=5, batch_size=8, index="HNSW32",
                               index_params="efSearch=64", encoder="local")
    assert new_report(settings)["settings"] == {
        "split": "test", "k": 100, "index": "HNSW32", "index_params": "efSearch=64", "batch_size": 8,
        "max_length": None, "passage_max_length": None, "encoder": "local", "ignore_identical_ids": True,
        "max_queries": 5}


@pytest.fixture
def captured(monkeypatch):
    """The CLI's call to evaluate, captured instead of run."""
    import revela.evaluation.run as run

    calls = []
    monkeypatch.setattr(run, "evaluate", lambda settings, **kw: calls.append((settings, kw)) or {})
    app = typer.Typer()
    register(app)
    return app, calls


def test_cli_builds_the_settings_its_flags_always_meant(captured, tmp_path):
    app, calls = captured
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["evaluate", "--dataset", "stdlib-code", "--dataset", "pyfaq", "--output", str(out),
                                   "--bm25"])
    assert res.exit_code == 0, res.output
    # the keyword arguments the CLI gave evaluate before settings were one model, with its defaults
    before = dict(model=None, datasets=["stdlib-code", "pyfaq"], output=out, bm25=True, baseline_model=None,
                  split="test", batch_size=64, max_length=None, passage_max_length=None, k=100, index="Flat",
                  index_params=None, encoder="auto", num_actors=None, max_queries=None, eval_dir=None)
    assert calls[-1] == (EvalSettings.of(**before), {"progress": True})
    res = CliRunner().invoke(app, [
        "evaluate", "--model", "all-minilm-l6-v2", "--no-backbone", "--dataset", "d", "--output", str(out),
        "--split", "dev", "--batch-size", "4", "--max-length", "32", "--passage-max-length", "128", "--k", "10",
        "--index", "HNSW32", "--index-params", "efSearch=64", "--encoder", "local", "--max-queries", "7",
        "--eval-dir", str(tmp_path / "ev"), "--no-progress"])
    assert res.exit_code == 0, res.output
    given = dict(before, model="all-minilm-l6-v2", datasets=["d"], bm25=False, split="dev", batch_size=4,
                 max_length=32, passage_max_length=128, k=10, index="HNSW32", index_params="efSearch=64",
                 encoder="local", max_queries=7, eval_dir=tmp_path / "ev")
    assert calls[-1] == (EvalSettings.of(**given), {"progress": False})


def test_cli_names_the_flag_of_a_bad_setting(captured, tmp_path):
    app, calls = captured
    res = CliRunner().invoke(app, ["evaluate", "--dataset", "d", "--output", str(tmp_path), "--bm25",
                                   "--encoder", "gpu"])
    assert res.exit_code == 2 and not calls
    line = res.output.strip()
    assert "\n" not in line and line.startswith("error: --output: ") and "; --encoder: " in line
    res = CliRunner().invoke(app, ["evaluate", "--dataset", "d", "--output", str(tmp_path / "r.json")])
    assert res.exit_code == 2 and res.output.strip() == (
        "error: nothing to evaluate: give a model, or bm25=True for a BM25-only report")
