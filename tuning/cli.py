"""CLI commands `sweep` and `report`; `register(app)` adds them to the main typer app.

    revela sweep --config jobs/sweeps/tiny-cpu.yaml                 # run, or continue after an interruption
    revela sweep --config jobs/sweeps/tiny-cpu.yaml budget.chunks=512 --resume   # changed config: go on with it
    revela report runs/sweeps/tiny-cpu                              # table, summary.md and plots

Exit status 2 for bad input (config errors name the file and key, a changed sweep under a taken name), 1 when
some trials failed (the others' results are kept and reported).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from revela.clierrors import PARTLY_FAILED, fail


def sweep_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="sweep YAML (see revela.tuning.config)")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.path=value overrides of the sweep config, "
                                                             "e.g. budget.chunks=4096")] = None,
    resume: Annotated[bool, typer.Option(help="go on with a changed config under the same sweep name")] = False,
    overwrite: Annotated[bool, typer.Option(help="delete the named sweep and start over")] = False,
) -> None:
    """Run a scaling sweep: one Ray Tune trial (one Ray Train fit) per cell of the grid; re-run to continue it."""
    from revela.configbase import ConfigError
    from revela.data.grouping import GroupingError
    from revela.data.ingest import IngestError
    from revela.evaluation.beir import DatasetError
    from revela.tuning.sweep import SweepConflictError, SweepResourceError, run_sweep

    if resume and overwrite:
        fail("--resume and --overwrite exclude each other")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        outcome = run_sweep(config, overrides or [], mode="resume" if resume else "overwrite" if overwrite else "auto")
    except (ConfigError, DatasetError, SweepConflictError, SweepResourceError, IngestError, GroupingError) as e:
        fail(str(e))
    typer.echo(json.dumps(outcome, indent=2, default=str))
    if outcome["errors"] or outcome["missing"]:
        fail(f"{len(outcome['missing'])} trial(s) without results: {', '.join(outcome['missing'])}; re-run the "
              f"same command to continue them", code=PARTLY_FAILED)
    typer.echo(f"next: revela report {outcome['sweep_dir']}")


def report_cmd(
    sweep_dir: Annotated[Path, typer.Argument(help="the sweep folder (<storage_path>/<name>)")],
    out: Annotated[Optional[Path], typer.Option(help="output folder (default <sweep>/report)")] = None,
) -> None:
    """Tables (CSV, Parquet), a markdown summary and PNG plots of a sweep's finished trials."""
    from revela.tuning.folder import SweepFolderError
    from revela.tuning.report import ReportError, write_report

    try:
        written = write_report(sweep_dir, out)
    except (ReportError, SweepFolderError) as e:
        fail(str(e))
    for key in ("csv", "parquet", "summary"):
        typer.echo(f"{key}: {written[key]}")
    for what, path in written["plots"].items():
        typer.echo(f"plot: {path}  ({what})")
    if written["missing"]:
        typer.echo(f"trials without results (left out): {', '.join(written['missing'])}")
    for name, codes in written["flags"].items():
        typer.echo(f"flagged: {name} ({', '.join(codes)}); see summary.md, Flags")


def register(app: typer.Typer) -> None:
    """Add `sweep` and `report` to `app`."""
    app.command("sweep")(sweep_cmd)
    app.command("report")(report_cmd)
