"""`revela prepare`: corpora -> chunks -> groups -> Parquet shards + manifest, with a progress bar and summary.

Re-running with the same sources (same content) and settings is a no-op: the manifest's input hash is
compared first, before anything is read or chunked.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer  # module level: typer resolves the command's string annotations in this module's globals

from revela.clierrors import fail
from revela.data.chunking import Chunker, ChunkRules, TokenCounter
from revela.data.config import DataConfig, Grouping, KindChoice
from revela.data.grouping import GroupingError, make_groups
from revela.data.holdout import held_out_by, read_holdouts
from revela.data.ingest import (READER_VERSION, SkipCounter, fingerprint_source, iter_documents, resolve_sources,
                                unique_sources)
from revela.data.shards import input_hash, is_up_to_date, read_manifest, write_shards

# Settings that change the output; they (with the source hashes) make up the manifest's input hash.
_OUTPUT_SETTINGS = ("group_size", "grouping", "seed", "kind", "max_words", "max_tokens", "min_words",
                    "short_group", "docs_per_window", "bm25_reuse", "on_bad_record", "rows_per_shard")


def load_tokenizer(name_or_path: str):
    """A HF tokenizer from a local path, an offline asset name (revela.assets) or a hub id."""
    from transformers import AutoTokenizer

    from revela.assets import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(name_or_path))


def prepare(
    sources: list[str | Path],
    out: str | Path,
    group_size: int = 16,
    grouping: Grouping = "adjacent",
    *,
    seed: int = 42,
    kind: KindChoice = "auto",
    max_words: int = 120,
    max_tokens: int = 160,
    min_words: int = 4,
    tokenizer: str | Any | None = None,
    short_group: Literal["drop", "pad"] = "drop",
    docs_per_window: int = 2,
    bm25_reuse: bool = False,
    on_bad_record: Literal["error", "skip"] = "error",
    rows_per_shard: int = 1024,
    exclude_eval: list[str | Path] = (),
    force: bool = False,
    progress: bool = True,
    quiet: bool = False,
) -> dict:
    """Prepare `sources` into shards under `out`; returns the summary (also printed unless `quiet`).

    `tokenizer`: a name/path (loaded with `load_tokenizer`) or a tokenizer object; it makes the
    `max_tokens` cap exact (else a words-based estimate, see revela.data.chunking). Raises IngestError,
    GroupingError or ShardError with a message naming the file (and line) at fault.
    """
    cfg = DataConfig(sources=[str(s) for s in sources], group_size=group_size, grouping=grouping, seed=seed,
                     kind=kind, max_words=max_words, max_tokens=max_tokens, min_words=min_words,
                     tokenizer=tokenizer if isinstance(tokenizer, str) else None, short_group=short_group,
                     docs_per_window=docs_per_window, bm25_reuse=bm25_reuse, on_bad_record=on_bad_record,
                     rows_per_shard=rows_per_shard, exclude_eval=[str(e) for e in exclude_eval])
    return prepare_config(cfg, out, tokenizer=tokenizer, force=force, progress=progress, quiet=quiet)


def prepare_config(cfg: DataConfig, out: str | Path, *, tokenizer: str | Any | None = None, force: bool = False,
                   progress: bool = True, quiet: bool = False) -> dict:
    """`prepare` driven by a `DataConfig` (its `sources`, grouping and chunking settings)."""
    from tqdm import tqdm

    started = time.perf_counter()
    out = Path(out)
    sources, repeated = unique_sources(cfg.sources)
    srcs = resolve_sources(sources, exclude=[out])  # a second run must not read its own shards back
    tokenizer = tokenizer if tokenizer is not None else cfg.tokenizer
    tok_obj = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    counter = TokenCounter(tok_obj, name=tokenizer if isinstance(tokenizer, str) else None)

    fingerprints = [fingerprint_source(s) for s in srcs]
    settings = {k: getattr(cfg, k) for k in _OUTPUT_SETTINGS} | {"tokenizer": counter.name, "reader": READER_VERSION}
    holdouts = read_holdouts(cfg.exclude_eval)
    if holdouts:  # only when given, so folders prepared without it keep their input hash
        settings["exclude_eval"] = sorted(h.digest for h in holdouts)
    digest = input_hash(settings, fingerprints)
    if not force and is_up_to_date(out, digest):
        summary = summary_from_manifest(read_manifest(out), out, up_to_date=True)
        summary["elapsed_s"] = round(time.perf_counter() - started, 3)
        summary["repeated_sources"] = repeated
        if not quiet:
            print_summary(summary)
        return summary

    skips = SkipCounter()
    chunker = Chunker(ChunkRules(cfg.max_words, cfg.max_tokens, cfg.min_words), counter, skips)
    chunks = []
    documents = 0
    kind_from: dict[str, int] = {}
    bar = tqdm(desc="read+chunk", unit="doc", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with bar:
        for src in srcs:
            for doc in iter_documents(src, skips, cfg.kind, cfg.on_bad_record):
                if held_out_by(holdouts, doc):
                    skips.add("eval_holdout", doc.where or doc.id)
                    continue
                documents += 1
                kind_from[f"{doc.kind_from}:{doc.kind}"] = kind_from.get(f"{doc.kind_from}:{doc.kind}", 0) + 1
                chunks.extend(chunker.split(doc))
                bar.update(1)
                if documents % 200 == 0:
                    bar.set_postfix(chunks=len(chunks), skipped=skips.total(), refresh=False)
    if not chunks:
        raise GroupingError(f"no chunks to group in {', '.join(cfg.sources)}{_what_was_skipped(documents, skips)}")
    try:
        groups, report = make_groups(chunks, cfg.group_size, cfg.grouping, cfg.seed, short_group=cfg.short_group,
                                     docs_per_window=cfg.docs_per_window, bm25_reuse=cfg.bm25_reuse)
    except GroupingError as e:
        raise GroupingError(f"{e}{_what_was_skipped(documents, skips)}") from None
    lengths = counter.count_many([c.text for c in chunks]) if chunks else [0]
    manifest = {
        "input_hash": digest,
        "settings": settings,
        "tokenizer": counter.name,
        "sources": fingerprints,
        "counts": {
            "documents": documents,
            "documents_by_kind_from": dict(sorted(kind_from.items())),
            "chunks": len(chunks),
            "chunks_by_kind": _count(c.kind for c in chunks),
            "groups": len(groups),
            "groups_by_kind": _count(g.kind for g in groups),
            "groups_by_source": _count(g.source for g in groups),
            "dropped_chunks": report.dropped_chunks,
            "padded_chunks": report.padded_chunks,
            "reused_chunks": report.reused_chunks,
            "chunk_tokens_max": max(lengths),
            "chunk_tokens_mean": round(sum(lengths) / len(lengths), 2),
        },
        "skips": skips.as_dict(),
        "exclude_eval": [h.report() for h in holdouts],
        "chunking_notes": dict(sorted(chunker.notes.items())),
        "grouping": report.as_dict(),
        "revela_version": _version(),
    }
    with tqdm(total=1, desc="write shards", disable=not progress, file=sys.stderr) as wbar:
        manifest = write_shards(groups, out, manifest, rows_per_shard=cfg.rows_per_shard)
        wbar.update(1)
    summary = summary_from_manifest(manifest, out, up_to_date=False)
    summary["elapsed_s"] = round(time.perf_counter() - started, 3)
    summary["repeated_sources"] = repeated
    if not quiet:
        print_summary(summary)
    return summary


def _what_was_skipped(documents: int, skips: SkipCounter) -> str:
    """'; read N documents, skipped M (binary=…, non_utf8=…)' for errors about too little text."""
    if not skips.total():
        return f"; read {documents} documents, skipped nothing"
    reasons = ", ".join(f"{reason}={n}" for reason, n in sorted(skips.counts.items()))
    return f"; read {documents} documents, skipped {skips.total()} ({reasons})"


def records_without_kind(counts: dict) -> int:
    """Documents from records with neither a `kind` nor a `language` field, read as prose under --kind auto."""
    return sum(n for key, n in (counts.get("documents_by_kind_from") or {}).items() if key.startswith("default:"))


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items()))


def _version() -> str:
    from revela import __version__

    return __version__


def summary_from_manifest(manifest: dict, out: Path, up_to_date: bool) -> dict:
    counts = manifest["counts"]
    return {
        "out": str(out),
        "up_to_date": up_to_date,
        "input_hash": manifest["input_hash"],
        "documents": counts["documents"],
        "chunks": counts["chunks"],
        "groups": counts["groups"],
        "group_size": manifest["settings"]["group_size"],
        "grouping": manifest["settings"]["grouping"],
        "seed": manifest["settings"]["seed"],
        "tokenizer": manifest["tokenizer"],
        "groups_by_kind": counts["groups_by_kind"],
        "dropped_chunks": counts["dropped_chunks"],
        "padded_chunks": counts["padded_chunks"],
        "skipped": manifest["skips"]["counts"],
        "shards": len(manifest["shards"]),
        "records_without_kind": records_without_kind(counts),
        "exclude_eval": manifest.get("exclude_eval", []),
    }


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    title = "prepare: up to date, nothing to do" if summary["up_to_date"] else "prepare: done"
    table = Table(title=f"{title} ({summary['out']})", show_header=False)
    rows = [
        ("documents read", summary["documents"]),
        ("chunks", summary["chunks"]),
        (f"groups (B={summary['group_size']}, {summary['grouping']}, seed {summary['seed']})", summary["groups"]),
        ("groups by kind", ", ".join(f"{k}={v}" for k, v in summary["groups_by_kind"].items()) or "-"),
        ("chunks dropped (short final group)", summary["dropped_chunks"]),
        ("chunks padded (reused to fill a group)", summary["padded_chunks"]),
        ("token counts", summary["tokenizer"]),
        ("shards", summary["shards"]),
    ]
    rows += [(f"skipped: {reason}", n) for reason, n in summary["skipped"].items()] or [("skipped", 0)]
    for k, v in rows:
        table.add_row(k, str(v))
    console = Console(stderr=False)
    console.print(table)
    if summary.get("repeated_sources"):
        console.print(f"note: {len(summary['repeated_sources'])} source(s) given more than once, read once: "
                      f"{', '.join(summary['repeated_sources'])}", soft_wrap=True)
    if summary.get("records_without_kind"):
        console.print(f"note: {summary['records_without_kind']} records have no `kind` or `language` field and "
                      "were read as prose; pass --kind code if they are code", soft_wrap=True)
    for held in summary.get("exclude_eval", []):
        console.print(f"exclude-eval {held['path']}: {held['found']} of its {held['held_out_documents']} held-out "
                      "documents found and skipped" + (f"; {held['not_found']} are not in these sources"
                                                       if held["not_found"] else ""), soft_wrap=True)


def _flag(field: str) -> str:
    """`revela prepare`'s option for a DataConfig field (`on_bad_record` -> `--on-bad-record`)."""
    field = field.split(".")[0] or "?"
    return "--source" if field == "sources" else f"--{field.replace('_', '-')}"


def register(app) -> None:
    """Add the `prepare` command to a typer app."""

    @app.command("prepare")
    def prepare_command(
        source: Annotated[list[Path], typer.Option("--source", help="Corpus path (repeatable): JSONL, Parquet, "
                                                   "text/code tree, or a saved HF dataset.")],
        out: Annotated[Path, typer.Option("--out", help="Output directory for shards + manifest.json.")],
        group_size: Annotated[int, typer.Option("--group-size", help="Chunks per group (B, at least 3: at B=2 "
                                                "the retriever has nothing to rank).")] = 16,
        grouping: Annotated[str, typer.Option("--grouping", help="adjacent | bm25 | random")] = "adjacent",
        seed: Annotated[int, typer.Option("--seed")] = 42,
        kind: Annotated[str, typer.Option("--kind", help="prose | code | auto (files by extension, records "
                                               "by their kind/language field, else prose)")] = "auto",
        tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer name or path for an "
                                                         "exact token cap (default: words-based estimate).")] = None,
        max_words: Annotated[int, typer.Option("--max-words")] = 120,
        max_tokens: Annotated[int, typer.Option("--max-tokens")] = 160,
        short_group: Annotated[str, typer.Option("--short-group", help="drop | pad")] = "drop",
        on_bad_record: Annotated[str, typer.Option("--on-bad-record", help="error | skip")] = "error",
        exclude_eval: Annotated[Optional[list[Path]], typer.Option(
            "--exclude-eval", help="An eval set built with `revela build-evals --from-corpus ... --holdout F` "
            "(repeatable): skip the documents it holds out.")] = None,
        force: Annotated[bool, typer.Option("--force", help="Rebuild even if the manifest is up to date.")] = False,
        no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
    ) -> None:
        """Chunk and group corpora into Parquet shards for training."""
        from pydantic import ValidationError

        from revela.configbase import field_problems
        from revela.data.grouping import GroupingError
        from revela.data.ingest import BadRecordError, IngestError
        from revela.data.shards import ShardError

        try:
            prepare(source, out, group_size, grouping, seed=seed, kind=kind, tokenizer=tokenizer,
                    max_words=max_words, max_tokens=max_tokens, short_group=short_group,
                    on_bad_record=on_bad_record, exclude_eval=exclude_eval or [], force=force,
                    progress=not no_progress)
        except ValidationError as e:  # name the flag the user typed, not the DataConfig field behind it
            fail("; ".join(f"{_flag(field)}: {message}" for field, message in field_problems(e)))
        except BadRecordError as e:
            fail(f"{e.where}: {e.problem} (pass --on-bad-record skip to skip and count such records)")
        except (IngestError, GroupingError, ShardError, ValueError) as e:
            fail(str(e))
