"""Documents an evaluation set holds out of training, and how `revela prepare --exclude-eval DIR` skips them.

`revela build-evals --from-corpus SRC --holdout F` writes, in the set's `revela_dataset.json`, the documents
whose passages its queries are judged on (`holdout.documents`: each a `revela.data.ingest` document id and the
sha256 of its text). `prepare` reads the same sources through the same reader, so a document is skipped when
its id or its text's sha256 is listed: the id matches when the same source paths are given, the hash also
when a source is named differently (or its text is repeated elsewhere, which is then held out too).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from revela.data.ingest import Document

HOLDOUT_KEY = "holdout"
MANIFEST = "revela_dataset.json"
"""The evaluation set's manifest (revela.evaluation.beir.MANIFEST)."""


def document_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def holdout_record(fraction: float, seed: int, documents: list[Document]) -> dict:
    """The manifest's `holdout` section for the held-out `documents`."""
    listed = [{"id": d.id, "sha256": document_sha256(d.text)} for d in documents]
    digest = hashlib.sha256(json.dumps(listed, sort_keys=True).encode()).hexdigest()
    return {"fraction": fraction, "seed": seed, "digest": digest, "documents": listed}


@dataclass
class HeldOut:
    """One evaluation set's held-out documents, and which of them a prepare run has met."""

    path: str
    digest: str
    ids: dict[str, int]
    hashes: dict[str, list[int]]
    total: int
    found: set[int] = field(default_factory=set)

    def match(self, doc: Document, sha256: str) -> bool:
        hits = [self.ids[doc.id]] if doc.id in self.ids else []
        hits += self.hashes.get(sha256, [])
        self.found.update(hits)
        return bool(hits)

    def report(self) -> dict:
        return {"path": self.path, "digest": self.digest, "held_out_documents": self.total,
                "found": len(self.found), "not_found": self.total - len(self.found)}


def read_holdout(eval_dir: str | Path) -> HeldOut:
    """The held-out documents of an evaluation set; ValueError naming the folder when it has none."""
    path = Path(eval_dir).expanduser()
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"exclude_eval {path}: no {MANIFEST}; give a folder written by "
                         "`revela build-evals --from-corpus ... --holdout F --out DIR`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"exclude_eval {manifest_path}: cannot read: {e}") from None
    section = manifest.get(HOLDOUT_KEY)
    if not isinstance(section, dict) or not isinstance(section.get("documents"), list):
        raise ValueError(f"exclude_eval {path}: {MANIFEST} names no held-out documents; it was not built by "
                         "`revela build-evals --from-corpus`")
    if not section["documents"]:
        raise ValueError(f"exclude_eval {path}: built without --holdout, so its queries are judged on documents "
                         "training also reads; rebuild it with --holdout FRACTION (e.g. 0.2)")
    ids: dict[str, int] = {}
    hashes: dict[str, list[int]] = {}
    for i, entry in enumerate(section["documents"]):
        ids[entry["id"]] = i
        hashes.setdefault(entry["sha256"], []).append(i)
    return HeldOut(str(path.resolve()), section["digest"], ids, hashes, len(section["documents"]))


def read_holdouts(eval_dirs: list[str]) -> list[HeldOut]:
    return [read_holdout(d) for d in eval_dirs]


def held_out_by(holdouts: list[HeldOut], doc: Document) -> bool:
    """Whether any of the sets holds `doc` out (every set is checked, so each counts what it found)."""
    if not holdouts:
        return False
    sha = document_sha256(doc.text)
    return any([h.match(doc, sha) for h in holdouts])
