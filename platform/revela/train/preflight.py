"""What a run needs beyond a valid config, checked before anything is deleted or Ray starts.

Every model name resolves to a loadable folder, the training data exists, every dev set is there. A problem is a
one-line `ConfigError` naming the config key, instead of a traceback from a Ray worker after the data was
prepared (or, with `--overwrite`, after the old run was deleted).
"""

from __future__ import annotations

from pathlib import Path

from revela.config import RunConfig
from revela.configbase import ConfigError

BEIR_FILES = ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")
"""What an evaluation task opens in a dev set (revela.evaluation.beir, split `test`)."""


def check_model(name: str, key: str) -> str:
    """The local folder `name` resolves to (offline assets are built); ConfigError naming `key` if it does not."""
    from revela.modelfiles import ModelLoadError, resolve_model_path

    try:
        return resolve_model_path(name)
    except ModelLoadError as e:
        raise ConfigError(f"{key}={name!r}: {e}") from None


def check_dev_set(name: str, key: str) -> Path:
    """A dev set's folder (suite sets are built on first use), with the files scoring reads."""
    from revela.evaluation.beir import DatasetError
    from revela.evaluation.suite import resolve_dataset

    try:
        path = resolve_dataset(name)
    except DatasetError as e:
        raise ConfigError(f"{key}: {e}") from None
    missing = [f for f in BEIR_FILES if not (path / f).is_file()]
    if missing:
        raise ConfigError(f"{key}: {path} has no {', '.join(missing)} (a BEIR directory has corpus.jsonl, "
                          "queries.jsonl and qrels/test.tsv)")
    return path


def check_data(cfg: RunConfig) -> None:
    from revela.assets import resolve_model
    from revela.data.ingest import IngestError, resolve_sources
    from revela.data.shards import read_manifest

    data = cfg.data
    holdouts = check_exclusions(data.exclude_eval)
    if data.shards:
        manifest = read_manifest(data.shards)
        if manifest is None:
            raise ConfigError(f"data.shards={data.shards!r}: no manifest.json there; run `revela prepare` first")
        have = set(manifest.get("settings", {}).get("exclude_eval", []))
        missing = [h.path for h in holdouts if h.digest not in have]
        if missing:  # prepared shards are not re-read: they must already leave the held-out documents out
            raise ConfigError(f"data.shards={data.shards!r} was prepared without excluding {', '.join(missing)}; "
                              f"run `revela prepare ... --exclude-eval {missing[0]}` into it, or give data.sources "
                              "instead")
        return
    if data.sources:
        try:
            resolve_sources(data.sources)
        except IngestError as e:
            raise ConfigError(f"data.sources: {e}") from None
    if data.tokenizer:
        try:
            resolve_model(data.tokenizer)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"data.tokenizer={data.tokenizer!r}: {e}") from None


def check_exclusions(exclude_eval: list[str]) -> list:
    """The held-out documents of each `data.exclude_eval` set (revela.data.holdout.HeldOut); ConfigError for a
    folder that holds none."""
    if not exclude_eval:
        return []
    from revela.data.holdout import read_holdouts

    try:
        return read_holdouts(exclude_eval)
    except ValueError as e:
        raise ConfigError(f"data.{e}") from None


def check_run_inputs(cfg: RunConfig) -> None:
    """Raise ConfigError (one line, naming the key) for the first thing `cfg` names that is not there."""
    check_model(cfg.model.retriever.name, "model.retriever.name")
    check_model(cfg.model.lm.name, "model.lm.name")
    check_data(cfg)
    for name in cfg.eval.datasets:
        check_dev_set(name, "eval.datasets")
