"""What `evaluate` checks before it encodes or writes anything: the FAISS index string and the output path (numeric
settings are EvalSettings' fields); and, last, that the report holds only finite numbers (strict JSON has no NaN or
Infinity)."""

from __future__ import annotations

import math
from pathlib import Path

FALLBACK_DIM = 768
"""Dimension used to parse an index string when the model's is unknown (divisible by the usual PQ/SQ sizes)."""


def _faiss_reason(err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return first.rsplit(": ", 1)[-1].strip()


def check_index(index: str, params: str | None, dim: int | None) -> None:
    """Build an empty index from the factory string (and set its search parameters) to catch typos up front."""
    import faiss

    try:
        probe = faiss.index_factory(dim or FALLBACK_DIM, index, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"index {index!r} is not a FAISS index factory string usable at dimension "
                         f"{dim or FALLBACK_DIM}: {_faiss_reason(e)} (e.g. Flat, HNSW32, IVF1024,Flat)") from None
    if params:
        try:
            faiss.ParameterSpace().set_index_parameters(probe, params)
        except RuntimeError as e:
            raise ValueError(f"index parameters {params!r} do not apply to index {index!r}: "
                             f"{_faiss_reason(e)}") from None


def check_output(output: str | Path | None) -> None:
    """The report path must be a file path whose folder can be created; an existing folder is refused."""
    if output is None:
        return
    out = Path(output)
    if out.is_dir():
        raise ValueError(f"output {out} is an existing folder; give the report's file path, e.g. {out / 'report.json'}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"output {out}: {parent} is a file, not a folder")
            break
    runs = out.with_name(out.stem + ".runs")
    if runs.exists() and not runs.is_dir():
        raise ValueError(f"output {out}: its run-file folder {runs} exists and is a file")


def non_finite_keys(value, path: str = "") -> list[str]:
    """Dotted paths of every NaN or infinite float inside nested dicts/lists."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path or "<root>"]
    if isinstance(value, dict):
        return [k for key, v in value.items() for k in non_finite_keys(v, f"{path}.{key}" if path else str(key))]
    if isinstance(value, (list, tuple)):
        return [k for n, v in enumerate(value) for k in non_finite_keys(v, f"{path}[{n}]")]
    return []


def check_finite(report: dict) -> None:
    bad = non_finite_keys(report)
    if bad:
        raise ValueError(f"the report holds non-finite values at {', '.join(bad[:5])}; nothing written")
