"""Checks on numeric command-line options, run by typer while it parses them (exit status 2, one short line).

Click's own range message is long enough to wrap inside typer's error panel on an 80-column terminal; these name
the rule and the value given in one line.
"""

from __future__ import annotations

from typing import Callable

import typer


def at_least(minimum: int) -> Callable[[int | None], int | None]:
    """A typer callback refusing values below `minimum` (None, an option left out, passes)."""

    def check(value: int | None) -> int | None:
        if value is not None and value < minimum:
            raise typer.BadParameter(f"must be at least {minimum}, got {value}")
        return value

    return check
