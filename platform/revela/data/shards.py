"""Groups -> Parquet shards + manifest.json; the manifest's input hash makes `prepare` idempotent.

Layout of a prepared directory:
    part-00000.parquet ...  one row per group (SHARD_SCHEMA), groups in their final (shuffled) order
    manifest.json           counts, settings, source content hashes, skip counts, shard hashes

`input_hash` covers the settings and the content hash of every source, so the same inputs and settings give
the same hash; `is_up_to_date` also checks every listed shard is present and intact. Shards and the manifest
are written to a staging directory and moved in, manifest last, so an interrupted run is never mistaken for a
finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from revela.data.grouping import Group

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SHARD_PREFIX = "part-"
ROW_GROUP_ROWS = 64
"""Groups per Parquet row group: the unit the stream reads and tokenizes in one call."""

SHARD_SCHEMA = pa.schema(
    [
        ("group_id", pa.string()),
        ("group_index", pa.int64()),
        ("source", pa.string()),
        ("kind", pa.string()),
        ("texts", pa.list_(pa.string())),
        ("doc_ids", pa.list_(pa.string())),
        ("chunk_ids", pa.list_(pa.string())),
    ]
)


class ShardError(ValueError):
    """The output directory cannot be used (e.g. non-empty and not written by prepare)."""


def input_hash(settings: dict, source_fingerprints: Sequence[dict]) -> str:
    """Hash of what determines the output: settings plus every source's content hash (not its location)."""
    payload = {
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "sources": [{"label": f["label"], "sha256": f["sha256"]} for f in source_fingerprints],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_manifest(out_dir: str | Path) -> dict | None:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_up_to_date(out_dir: str | Path, expected_hash: str) -> bool:
    manifest = read_manifest(out_dir)
    if manifest is None or manifest.get("input_hash") != expected_hash:
        return False
    for shard in manifest.get("shards", []):
        path = Path(out_dir) / shard["file"]
        if not path.is_file() or file_sha256(path) != shard["sha256"]:
            return False
    return True


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ShardError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ShardError(f"{out}: directory is not empty and holds no {MANIFEST}; refusing to write shards into it")


def _table(groups: Sequence[Group], start: int) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "group_id": [g.group_id for g in groups],
            "group_index": list(range(start, start + len(groups))),
            "source": [g.source for g in groups],
            "kind": [g.kind for g in groups],
            "texts": [[c.text for c in g.chunks] for g in groups],
            "doc_ids": [[c.doc_id for c in g.chunks] for g in groups],
            "chunk_ids": [[c.id for c in g.chunks] for g in groups],
        },
        schema=SHARD_SCHEMA,
    )


def write_shards(groups: Sequence[Group], out_dir: str | Path, manifest: dict, rows_per_shard: int = 1024) -> dict:
    """Write the groups and `manifest` (extended with the shard list) to `out_dir`, replacing an earlier
    prepare output there. Returns the manifest as written."""
    out = Path(out_dir)
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        shards = []
        for k, start in enumerate(range(0, len(groups), rows_per_shard)):
            name = f"{SHARD_PREFIX}{k:05d}.parquet"
            table = _table(groups[start : start + rows_per_shard], start)
            pq.write_table(table, staging / name, compression="zstd", row_group_size=ROW_GROUP_ROWS)
            shards.append({"file": name, "rows": table.num_rows, "sha256": file_sha256(staging / name)})
        manifest = {**manifest, "format_version": FORMAT_VERSION, "shards": shards}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

        (out / MANIFEST).unlink(missing_ok=True)
        for old in out.glob(f"{SHARD_PREFIX}*.parquet"):
            old.unlink()
        for shard in shards:
            os.replace(staging / shard["file"], out / shard["file"])
        os.replace(staging / MANIFEST, out / MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def shard_paths(out_dir: str | Path) -> list[str]:
    """The shard files listed in the manifest, in order (raises if the directory was not prepared)."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise ShardError(f"{out_dir}: no readable {MANIFEST}; run `revela prepare` first")
    return [str(Path(out_dir) / s["file"]) for s in manifest["shards"]]


def read_groups(out_dir: str | Path) -> pa.Table:
    """All groups of a prepared directory as one Arrow table (for inspection and tests)."""
    return pa.concat_tables([pq.read_table(p) for p in shard_paths(out_dir)])
