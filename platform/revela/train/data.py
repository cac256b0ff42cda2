"""What a run trains on: prepared shards (built on the fly from `data.sources` when needed), a few held-out
groups kept out of training, and the Ray Data stream of the rest."""

from __future__ import annotations

import functools
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

from revela.config import RunConfig
from revela.data.prepare import prepare_config, summary_from_manifest
from revela.data.shards import read_groups, read_manifest
from revela.data.stream import build_stream, ensure_data_headroom

DEFAULT_PACKAGES = ("rich",)
"""Embedded default corpus: the source code of pure-Python packages installed with the platform (real code,
outside the stdlib that the offline evaluation suite is built from)."""


def default_sources() -> list[str]:
    return [spec.submodule_search_locations[0] for spec in map(importlib.util.find_spec, DEFAULT_PACKAGES)]


def dominant_kind(manifest: dict) -> str:
    by_kind = manifest["counts"].get("groups_by_kind") or {"prose": 1}
    return max(by_kind, key=by_kind.get)


@dataclass
class TrainingData:
    train: object
    """ray.data.Dataset of tokenized groups."""
    kind: str
    shards: str
    summary: dict
    heldout: list[dict] = field(default_factory=list)

    def score_heldout(self, cfg: RunConfig, checkpoint: str | None, temperature: float | None = None) -> dict | None:
        """Pass-2/pass-3 loss and top-1 same-document hit-rate on the held-out groups (in this process, on CPU).
        `temperature`: tau of Sim when the config's is `auto` (a checkpoint brings its own)."""
        if not self.heldout:
            return None
        from revela.batch import GroupTokenizer
        from revela.model import RevelaModel
        from revela.train.checkpoint import load_checkpoint
        from revela.train.heldout import heldout_metrics

        model = RevelaModel.from_config(cfg.model)
        if model.temperature is None:
            model.temperature = temperature
        if checkpoint:
            load_checkpoint(checkpoint, model)
        obj = cfg.model.objective

        @functools.cache
        def tokenizer_for(kind: str) -> GroupTokenizer:  # the same views as training: per group kind
            first_half = (kind != "code") if obj.first_half is None else obj.first_half
            return GroupTokenizer(model.retriever.tokenizer, model.lm_tokenizer, model.retriever.protocol,
                                  cfg.model.lm.max_length, first_half, obj.first_half_ratio)

        return heldout_metrics(model, tokenizer_for, self.heldout)


def prepared_shards(cfg: RunConfig, run_dir: Path) -> tuple[str, dict]:
    if cfg.data.shards:
        manifest = read_manifest(cfg.data.shards)
        if manifest is None:
            raise FileNotFoundError(f"data.shards={cfg.data.shards!r} has no manifest.json; run `revela prepare`")
        return cfg.data.shards, summary_from_manifest(manifest, Path(cfg.data.shards), up_to_date=True)
    data_cfg = cfg.data if cfg.data.sources else cfg.data.model_copy(update={"sources": default_sources()})
    if data_cfg.tokenizer is None:  # cap chunk length with the LM's own tokenizer
        data_cfg = data_cfg.model_copy(update={"tokenizer": cfg.model.lm.name})
    out = run_dir / "data"
    # bars only on a terminal: in `ray job logs` (a file) every redraw would be a line
    return str(out), prepare_config(data_cfg, out, progress=sys.stderr.isatty())


def heldout_and_training_data(cfg: RunConfig, run_dir: Path) -> TrainingData:
    from revela.model import retriever_protocol_for

    shards, summary = prepared_shards(cfg, run_dir)
    manifest = read_manifest(shards)
    table = read_groups(shards)
    n_held = cfg.train.heldout_groups
    if n_held >= table.num_rows:
        raise ValueError(f"train.heldout_groups={n_held} leaves no training groups ({table.num_rows} in {shards})")
    # groups are shuffled when prepared, so the last rows are a random sample of the corpus
    held_table = table.slice(table.num_rows - n_held) if n_held else table.slice(0, 0)
    heldout = held_table.select(["texts", "doc_ids", "kind"]).to_pylist()
    held_index = set(held_table.column("group_index").to_pylist()) if n_held else set()

    ensure_data_headroom(cfg.ray.num_workers, cfg.ray.cpus_per_worker, concurrency=cfg.data.stream_actors)
    tokenizer_kwargs = {"retriever_name": cfg.model.retriever.name, "lm_name": cfg.model.lm.name,
                        "protocol": retriever_protocol_for(cfg.model), "lm_max_length": cfg.model.lm.max_length,
                        "first_half_ratio": cfg.model.objective.first_half_ratio}
    stream = build_stream(shards, tokenizer_kwargs, first_half=cfg.model.objective.first_half, exclude=held_index,
                          concurrency=cfg.data.stream_actors)
    summary = {**summary, "heldout_groups": n_held, "training_groups": table.num_rows - n_held}
    return TrainingData(stream, dominant_kind(manifest), shards, summary, heldout)

