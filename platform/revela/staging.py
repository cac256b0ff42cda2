"""Folders that appear whole or not at all: written beside their destination, then put in place by renames."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_directory(destination: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder next to `destination`; when the block ends without error it replaces
    `destination` (an older folder there is removed only once the new one is in place). On error nothing changes."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if destination.exists():
            old = destination.parent / f".{destination.name}.old-{uuid.uuid4().hex[:8]}"
            destination.rename(old)
            staging.rename(destination)
            shutil.rmtree(old)
        else:
            staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
