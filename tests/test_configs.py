"""Every shipped config loads; typos and wrong types are errors that name the key."""

import math
from pathlib import Path

import pytest

from revela.config import RunConfig
from revela.configbase import ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "jobs" / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert {p.stem for p in CONFIGS} >= {"smoke-cpu", "paper", "gpu-offline"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_validates(path):
    cfg = load_config(RunConfig, path)
    assert cfg.name
    assert cfg.data.group_size >= 3


def test_paper_config_is_the_papers_recipe():
    cfg = load_config(RunConfig, next(p for p in CONFIGS if p.stem == "paper"))
    for part in (cfg.model.retriever, cfg.model.lm):
        assert (part.finetune, part.lora.r, part.lora.alpha, part.lora.target_modules) == ("lora", 256, 64, "all-linear")
    assert cfg.model.objective.temperature == "auto"  # the paper's 1e-4 is one-hot on SmolLM2 (docs/temperature.md)
    assert (cfg.data.group_size, cfg.model.lm.max_length, cfg.train.lr, cfg.train.warmup_steps) == (16, 160, 1e-4, 100)
    assert cfg.train.precision == "bf16"


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_stpes: 3\n")
    with pytest.raises(ConfigError, match=r"train\.max_stpes: unknown key"):
        load_config(RunConfig, bad)


def test_wrong_type_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  objective:\n    temperature: warm\n")
    with pytest.raises(ConfigError, match=r"model\.objective\.temperature"):
        load_config(RunConfig, bad)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(RunConfig, tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(RunConfig, broken)


def test_overrides_and_partial_sections_keep_other_defaults(tmp_path):
    cfg = load_config(RunConfig, None, ["model.lm.finetune=full", "train.max_steps=7"])
    defaults = RunConfig()
    assert cfg.model.lm.finetune == "full" and cfg.train.max_steps == 7
    assert cfg.model.lm.max_length == defaults.model.lm.max_length  # the rest of the section is untouched
    assert cfg.model.objective.temperature == defaults.model.objective.temperature
    with pytest.raises(ConfigError, match="must look like"):
        load_config(RunConfig, None, ["train.max_steps"])


@pytest.mark.parametrize("b", [1, 2])
def test_group_sizes_below_three_are_refused_naming_the_field(b):
    # at B=2 each chunk's Sim is a softmax over one other chunk: always 1, so the retriever gets no gradient
    with pytest.raises(ConfigError, match=rf"data\.group_size: must be at least 3: .*B=2.* \(got {b}\)"):
        load_config(RunConfig, None, [f"data.group_size={b}"])
    assert load_config(RunConfig, None, ["data.group_size=3"]).data.group_size == 3


SWEEPS = sorted((Path(__file__).resolve().parents[1] / "jobs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_shipped_sweep_config_expands(path, tmp_path):
    from revela.tuning.config import base_run_dict, load_sweep
    from revela.tuning.grid import apply_budget, expand

    sweep, base_dir = load_sweep(path)
    trials = apply_budget(expand(sweep, base_run_dict(sweep, base_dir), tmp_path), sweep, {})
    axes = sweep.axes
    assert len(trials) == math.prod(max(1, len(getattr(axes, a))) for a in type(axes).model_fields)
    assert {p.stem for p in SWEEPS} >= {"tiny-cpu", "paper-batch-size", "tau-controls"}


@pytest.mark.parametrize("path", CONFIGS + SWEEPS, ids=lambda p: p.stem)
def test_shipped_configs_calibrate_tau(path, tmp_path):
    """Every shipped config that trains a retriever uses temperature: auto; a fixed tau only where a sweep studies it
    on purpose (tau-controls' paper-tau point). A fixed tau suits one backbone's cosines: the paper's 1e-4 makes Sim
    one-hot on both offline retrievers (bench/TAU_NOTES.md)."""
    from revela.tuning.config import base_run_dict, load_sweep
    from revela.tuning.grid import apply_budget, expand

    if path in CONFIGS:
        runs = [load_config(RunConfig, path).model_dump()]
    else:
        sweep, base_dir = load_sweep(path)
        runs = [t.run for t in apply_budget(expand(sweep, base_run_dict(sweep, base_dir), tmp_path), sweep, {})
                if t.params.get("variant") != "paper-tau"]
    for run in runs:
        assert run["model"]["objective"]["temperature"] == "auto", (path.name, run["name"])


def test_gpu_configs_train_the_lora_retriever_at_the_lm_rate():
    """The CPU defaults' retriever_lr (2e-5, for a fully fine-tuned MiniLM) must not leak into LoRA GPU recipes."""
    for name in ("gpu-offline.yaml", "paper.yaml"):
        cfg = load_config(RunConfig, Path(__file__).resolve().parents[1] / "jobs" / "configs" / name)
        assert cfg.model.retriever.finetune == "lora" and cfg.train.retriever_lr is None, name


# Peak GPU memory tracks chunks per forward (groups_per_forward x group_size). Measured on an H200 with
# bench/bench_step.py (issue 17; SmolLM2-135M retriever and LM, LoRA r=256, L=160, bf16): 64 chunks 53.1 GiB (B=16 G=4)
# and 54.1 GiB (B=64 G=1); 128 chunks 102-107 GiB. An 80 GB card holds 64 chunks with room to spare, not 128.
CHUNKS_PER_FORWARD_80GB = 64


def test_shipped_gpu_configs_fit_80gb_cards_by_the_measured_chunks_per_forward(tmp_path):
    from revela.tuning.config import base_run_dict, load_sweep
    from revela.tuning.grid import expand

    root = Path(__file__).resolve().parents[1] / "jobs"
    for name in ("gpu-offline.yaml", "paper.yaml"):
        cfg = load_config(RunConfig, root / "configs" / name)
        assert cfg.train.groups_per_forward * cfg.data.group_size <= CHUNKS_PER_FORWARD_80GB, name
    sweep, base_dir = load_sweep(root / "sweeps" / "paper-batch-size.yaml")
    for trial in expand(sweep, base_run_dict(sweep, base_dir), tmp_path):
        chunks = trial.run["train"]["groups_per_forward"] * trial.run["data"]["group_size"]
        assert chunks <= CHUNKS_PER_FORWARD_80GB, trial.name
