"""How every `revela` command refuses bad input: one line `error: <why>` on stderr, no traceback, exit status 2
(1 where the input was fine but part of the work failed, e.g. some sweep trials)."""

from __future__ import annotations

from typing import NoReturn

import typer

BAD_INPUT = 2
PARTLY_FAILED = 1


def fail(message: str, code: int = BAD_INPUT) -> NoReturn:
    """Print `error: message` to stderr (red on a terminal) and end the command with `code`."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)
