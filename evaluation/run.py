"""Score a model on BEIR-layout datasets: the report JSON, TREC run files and a printed table.

    from revela.evaluation.run import EvalSettings, evaluate
    report = evaluate(EvalSettings.of(model="all-minilm-l6-v2", datasets=["stdlib-code", "/data/beir/scifact"],
                                      output="out/minilm.json", bm25=True))

`model` is anything `Retriever.load` accepts: an offline asset alias ("all-minilm-l6-v2", "smollm2-135m"), a
local model folder, a training checkpoint directory (`revela_checkpoint.json` + `retriever/`), an exported
folder, or (online only) a hub id. It is encoded with the protocol that travels with it. `model=None` with
`bm25=True` gives a BM25-only report. The settings (revela.evaluation.settings.EvalSettings) are validated when
built: a bad field is one line naming it. A dataset is a BEIR directory or a suite name ("stdlib-code", "pyfaq",
built into `eval_dir` on first use).

Report (`SCHEMA`)::

    {"schema": "revela.evaluation/v1", "created": ISO time, "wall_time_s": float,
     "model": {"name", "path", "checkpoint_step" (int or null),
               "protocol": {pooling, prefixes, max_length (queries), passage_max_length, ...} as evaluated},
     "settings": {"split", "k", "index", "index_params", "batch_size", "max_length" (queries; null: as trained),
                  "passage_max_length" (as asked; null: the model's declared length, see revela.evalprotocol;
                  the lengths used are in each protocol), "encoder", "ignore_identical_ids", "max_queries"},
     "versions": {"python", "revela-platform", "torch", "transformers", "ray", "faiss", "bm25s",
                  "pytrec-eval-terrier", "numpy"},
     "datasets": {NAME: {"ndcg_at_10", "recall_at_100", "mrr_at_10", "map_at_100", "main_score" (= ndcg_at_10),
                         "ndcg_at_10_ci95": [lo, hi], "num_queries", "num_docs", "content_hash", "path", "split",
                         "domain", "skipped": {issue: count}, "run_file": path or null,
                         "ndcg_at_10_per_query": {query id: nDCG@10}, "timing_s": {"encode", "search", "metrics"},
                         "baselines": {"bm25": {metrics..., "run_file"}, "bm25_ident_split": {...},
                                       "backbone_same_protocol": {"model": name, "protocol", metrics..., "run_file"},
                                       "backbone_native": {...}},
                         each baseline with "model_minus_this": {"delta", "low", "high", "level", "p_value",
                                                                 "verdict", ...} (paired bootstrap over queries)}},
     "average": {"datasets": [NAME, ...], "ndcg_at_10", "recall_at_100", "mrr_at_10", "map_at_100", "main_score"}}

`backbone_same_protocol` is the untrained backbone encoded exactly like the model (its prefixes, pooling and
lengths): model minus it is the effect of training. `backbone_native` is the backbone under its own protocol
(what a user gets without training). Both come with `baseline_model`, see `evaluate`.

When `model` is None the dataset entries hold BM25 (identifier-split BM25 on code datasets) at the top level,
and `model` is null. Run files go to `<output without .json>.runs/<dataset>[.<baseline>].trec`
(`qid Q0 docid rank score tag`).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform as _platform
import re
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from revela.evaluation.beir import BeirDataset, load_beir
from revela.evaluation.checks import check_finite, check_index
from revela.evaluation.encode import encode_local
from revela.evaluation.metrics import MAIN_SCORE, aggregate, bootstrap_ci, per_query
from revela.evaluation.search import search, to_run
from revela.evaluation.settings import EvalSettings
from revela.evaluation.significance import NotComparable, paired_difference
from revela.evalprotocol import EVAL_PASSAGE_MAX_LENGTH, evaluation_protocol, resolve_evaluation_protocol
from revela.modelfiles import ModelLoadError, checkpoint_step, load_checked_retriever, resolve_model_path

log = logging.getLogger(__name__)

SCHEMA = "revela.evaluation/v1"
METRIC_KEYS = ("ndcg_at_10", "recall_at_100", "mrr_at_10", "map_at_100", "main_score")
PER_QUERY = "ndcg_at_10_per_query"
"""Key of each system's per-query nDCG@10 ({query id: value}) in a dataset entry: what paired tests compare."""
SAME_PROTOCOL, NATIVE = "backbone_same_protocol", "backbone_native"
REPORTED_SETTINGS = ("split", "k", "index", "index_params", "batch_size", "max_length", "passage_max_length", "encoder",
                     "ignore_identical_ids", "max_queries")
"""The EvalSettings fields the report states (its "settings" section); "encoder" becomes the one used."""
__all__ = ["EVAL_PASSAGE_MAX_LENGTH", "EvalSettings", "ModelLoadError", "checkpoint_step", "evaluate",
           "evaluation_protocol", "load_retriever", "resolve_model_path"]


# --------------------------------------------------------------------------------------------------- models


def load_retriever(model: str, max_length: int | None = None, dtype: str | None = None,
                   passage_max_length: int | None = None, protocol=None):
    """A checked `Retriever.load` (revela.modelfiles) with the evaluation protocol and lengths set
    (revela.evalprotocol), on the GPU when there is one. `protocol` replaces the model's own."""
    import torch

    path = resolve_model_path(model)
    resolved = resolve_evaluation_protocol(path, protocol, max_length, passage_max_length)
    retriever = load_checked_retriever(model, dtype, protocol=resolved)
    if torch.cuda.is_available():
        retriever.to("cuda")
    return retriever


def embedding_dim(model: str) -> int | None:
    """The retriever's embedding size from its config files (no weights loaded); None when it cannot tell."""
    from transformers import AutoConfig

    from revela.assets import resolve_model
    from revela.modelfiles import model_folder

    path = resolve_model_path(model)  # a broken model folder is an error here, before anything is encoded
    if not Path(path).is_dir():
        return None
    inner = model_folder(Path(path))
    try:
        adapter = inner / "adapter_config.json"
        if adapter.is_file() and not (inner / "config.json").is_file():
            inner = Path(resolve_model(json.loads(adapter.read_text())["base_model_name_or_path"]))
        size = getattr(AutoConfig.from_pretrained(inner), "hidden_size", None)
    except (OSError, ValueError, KeyError):
        return None
    return size if isinstance(size, int) else None


# ------------------------------------------------------------------------------------------------- datasets


def load_datasets(datasets, split: str = "test", eval_dir: str | Path | None = None,
                  max_queries: int | None = None) -> list[BeirDataset]:
    """BeirDatasets from directories, suite names or ready BeirDataset objects; names must be unique."""
    from revela.evaluation.suite import resolve_dataset

    out, given = [], {}
    for d in datasets:
        folder = Path(d.path if isinstance(d, BeirDataset) else resolve_dataset(d, eval_dir))
        label = d.name if isinstance(d, BeirDataset) else str(d)
        if folder.resolve() in given:
            raise ValueError(f"dataset {folder.resolve()} is given twice ({given[folder.resolve()]!r} and "
                             f"{label!r}); give each dataset once")
        given[folder.resolve()] = label
        ds = d if isinstance(d, BeirDataset) else load_beir(folder, split=split)
        out.append(ds.subset(max_queries))
    names = [d.name for d in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two datasets share the name(s) {dupes} (the directory name); rename one directory")
    return out


# ---------------------------------------------------------------------------------------------------- dense


def _encode_all(model: str, datasets: list[BeirDataset], encoder: str, batch_size: int, max_length: int | None,
                passage_max_length: int | None, progress: bool, num_actors: int | None, dtype: str | None,
                protocol=None):
    """(protocol dict, [(query emb, doc emb)] per dataset, encode seconds per dataset); `protocol` replaces the
    model's own."""
    if encoder == "auto":  # Ray only when this process already runs it: in-process encoding never imports Ray
        ray = sys.modules.get("ray")
        encoder = "ray" if ray is not None and ray.is_initialized() else "local"
    if encoder == "local":
        retriever = load_retriever(model, max_length, dtype, passage_max_length, protocol)
        embs, secs = [], []
        for ds in datasets:
            t = time.perf_counter()
            d = encode_local(retriever, ds.doc_texts(), "passage", batch_size, progress, f"{ds.name} docs")
            q = encode_local(retriever, ds.query_texts(), "query", batch_size, progress, f"{ds.name} queries")
            embs.append((q, d))
            secs.append(time.perf_counter() - t)
        return retriever.protocol.model_dump(), embs, secs, "local"
    if encoder != "ray":
        raise ValueError(f"encoder must be auto, local or ray, got {encoder!r}")
    from revela.evaluation.encode import encode_ray

    path = resolve_model_path(model)
    # the protocol the model travels with, read here so the report states it and the lengths can be set
    protocol = resolve_evaluation_protocol(path, protocol, max_length, passage_max_length)
    t = time.perf_counter()
    out = encode_ray(path, {"passage": [text for ds in datasets for text in ds.doc_texts()],
                            "query": [text for ds in datasets for text in ds.query_texts()]},
                     protocol=protocol.model_dump(), batch_size=batch_size, num_actors=num_actors, dtype=dtype,
                     progress=progress)
    total = time.perf_counter() - t
    embs, d0, q0 = [], 0, 0
    n_all = sum(len(ds.corpus) + len(ds.queries) for ds in datasets)
    secs = []
    for ds in datasets:
        nd, nq = len(ds.corpus), len(ds.queries)
        embs.append((out["query"][q0: q0 + nq], out["passage"][d0: d0 + nd]))
        secs.append(total * (nd + nq) / max(n_all, 1))  # one pass for all sets: time shared by size
        d0, q0 = d0 + nd, q0 + nq
    return protocol.model_dump(), embs, secs, "ray"


def _score(ds: BeirDataset, run: dict, ignore_identical_ids: bool) -> dict:
    values = per_query(ds.qrels, run, ignore_identical_ids)
    scores = aggregate(values)
    scores["main_score"] = scores[MAIN_SCORE]
    scores["ndcg_at_10_ci95"] = list(bootstrap_ci(list(values[MAIN_SCORE].values())))
    scores[PER_QUERY] = {q: round(float(v), 6) for q, v in values[MAIN_SCORE].items()}
    return scores


def _model_minus(entry: dict, base: dict) -> dict | None:
    """The model's nDCG@10 minus a baseline's, paired over queries (revela.evaluation.significance)."""
    try:
        diff = paired_difference([{"d": entry[PER_QUERY]}], [{"d": base[PER_QUERY]}])
    except (KeyError, NotComparable):
        return None
    return diff.as_dict()


def _tag(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80] or "run"


def write_trec(path: Path, run: dict[str, dict[str, float]], tag: str) -> None:
    """A TREC run file: `qid Q0 docid rank score tag`, ranked like trec_eval ranks (score desc, doc id desc)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
            for rank, (did, score) in enumerate(ranked, start=1):
                f.write(f"{qid} Q0 {did} {rank} {score:.9g} {tag}\n")  # .9g round-trips float32


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": _platform.python_version()}
    for dist in ("revela-platform", "torch", "transformers", "ray", "faiss-cpu", "bm25s", "pytrec-eval-terrier",
                 "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import faiss

        out["faiss"] = faiss.__version__
    except ImportError:
        out["faiss"] = None
    out.pop("faiss-cpu", None)
    return out


class RunFiles:
    """TREC run files collected while scoring, written together with the report at the end (None: not kept)."""

    def __init__(self, output: Path | None):
        self.folder = output.with_name(output.stem + ".runs") if output else None
        self.pending: list[tuple[Path, dict, str]] = []

    def add(self, name: str, run: dict, tag: str) -> str | None:
        if self.folder is None:
            return None
        self.pending.append((self.folder / name, run, tag))
        return str(self.folder / name)

    def write(self) -> None:
        for path, run, tag in self.pending:
            write_trec(path, run, tag)


class Scoring:
    """The systems of one evaluation scored on its datasets, into one entry per dataset (`entries`)."""

    def __init__(self, settings: EvalSettings, sets: list[BeirDataset], progress: bool):
        self.settings, self.sets, self.progress = settings, sets, progress
        self.runs = RunFiles(settings.output)
        self.entries = {ds.name: dataset_entry(ds) for ds in sets}

    def dense(self, name: str, protocol: dict | None = None):
        """(protocol as encoded, [(run, metrics)] per dataset, encoder used) of model `name`."""
        s = self.settings
        protocol, embs, secs, used = _encode_all(name, self.sets, s.encoder, s.batch_size, s.max_length,
                                                 s.passage_max_length, self.progress, s.num_actors, s.dtype, protocol)
        results = []
        for ds, (q, d), enc_s in zip(self.sets, embs, secs):
            t = time.perf_counter()
            scores, idx = search(q, d, k=s.k, index=s.index, params=s.index_params, shard_size=s.shard_size)
            run = to_run(ds.query_ids, ds.doc_ids, scores, idx)
            search_s = time.perf_counter() - t
            t = time.perf_counter()
            metrics = _score(ds, run, s.ignore_identical_ids)
            metrics["timing_s"] = {"encode": round(enc_s, 3), "search": round(search_s, 3),
                                   "metrics": round(time.perf_counter() - t, 3)}
            results.append((run, metrics))
        return protocol, results, used

    def model(self) -> tuple[dict, str]:
        """The model's scores into the entries; (the report's "model" section, the encoder used)."""
        model = self.settings.model
        path = resolve_model_path(model)
        protocol, results, used = self.dense(model, self.settings.protocol)
        for ds, (run, metrics) in zip(self.sets, results):
            self.entries[ds.name].update(metrics)
            self.entries[ds.name]["run_file"] = self.runs.add(f"{ds.name}.trec", run, _tag(str(model)))
        section = {"name": str(model), "path": str(Path(path).resolve()) if Path(path).exists() else path,
                   "checkpoint_step": checkpoint_step(path), "protocol": protocol}
        return section, used

    def backbone(self, model_protocol: dict | None) -> None:
        """The untrained backbone under its own protocol and, with a model, under the model's (one encode when
        the two are the same)."""
        baseline = self.settings.baseline_model
        native = self.dense(baseline)
        variants = [(NATIVE, native)]
        if model_protocol is not None:
            same = native if native[0] == model_protocol else self.dense(baseline, model_protocol)
            variants.insert(0, (SAME_PROTOCOL, same))
        for key, (used_protocol, results, _) in variants:
            for ds, (run, metrics) in zip(self.sets, results):
                self.entries[ds.name]["baselines"][key] = {
                    "model": str(baseline), "protocol": used_protocol, **metrics,
                    "run_file": self.runs.add(f"{ds.name}.{key}.trec", run, _tag(str(baseline)))}

    def bm25(self) -> None:
        """Plain and identifier-split BM25; without a model the variant that suits each domain is the headline."""
        from revela.evaluation.baselines import bm25_run

        for ds in self.sets:
            entry = self.entries[ds.name]
            for key, ident in (("bm25", False), ("bm25_ident_split", True)):
                t = time.perf_counter()
                run = bm25_run(ds, k=self.settings.k, ident_split=ident)
                entry["baselines"][key] = {
                    **_score(ds, run, self.settings.ignore_identical_ids), "seconds": round(time.perf_counter() - t, 3),
                    "run_file": self.runs.add(f"{ds.name}.{key}.trec", run, key)}
            if self.settings.model is None:
                best = "bm25_ident_split" if ds.domain == "code" else "bm25"
                entry.update({m: entry["baselines"][best][m] for m in (*METRIC_KEYS, "ndcg_at_10_ci95", PER_QUERY)})
                entry["run_file"] = entry["baselines"][best]["run_file"]

    def differences(self) -> None:
        """Each baseline's `model_minus_this`: the model's paired difference to it."""
        for entry in self.entries.values():
            for base in entry["baselines"].values():
                base["model_minus_this"] = _model_minus(entry, base)

    def datasets_and_average(self) -> tuple[dict, dict]:
        """The report's "datasets" (headline metrics first) and "average" sections."""
        first = (*METRIC_KEYS, "ndcg_at_10_ci95", "num_queries", "num_docs", "content_hash")
        datasets = {name: {**{key: e[key] for key in first if key in e},
                           **{key: v for key, v in e.items() if key not in first}}
                    for name, e in self.entries.items()}
        average = {"datasets": [ds.name for ds in self.sets],
                   **{m: float(np.mean([e[m] for e in datasets.values()])) for m in METRIC_KEYS}}
        return datasets, average


def dataset_entry(ds: BeirDataset) -> dict:
    """A dataset's report entry before any system is scored on it."""
    return {"num_queries": len(ds.queries), "num_docs": len(ds.corpus), "content_hash": ds.content_hash,
            "path": str(Path(ds.path).resolve()), "split": ds.split, "domain": ds.domain, "skipped": ds.issues,
            "run_file": None, "baselines": {}}


def new_report(settings: EvalSettings) -> dict:
    """The report's header: schema, time, the settings (REPORTED_SETTINGS) and versions; no results yet."""
    return {"schema": SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": None, "settings": {key: getattr(settings, key) for key in REPORTED_SETTINGS},
            "versions": _versions(), "datasets": {}}


def check_models(settings: EvalSettings) -> None:
    """Each dense model's folder, and the index string at its embedding size, before anything is encoded."""
    for name in (settings.model, settings.baseline_model):
        if name is not None:
            check_index(settings.index, settings.index_params, embedding_dim(name))  # also checks the folder


def write_report(output: Path, report: dict) -> None:
    from revela.train.runfolder import write_json

    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, report, allow_nan=False)


def evaluate(settings: EvalSettings, *, preloaded: list[BeirDataset] | None = None, progress: bool = True,
             show_table: bool = True) -> dict:
    """Score `settings.model` (and the asked-for baselines) on `settings.datasets`; write `settings.output` and its
    run files; the report. `preloaded`: the datasets already loaded (and sampled), as evaluation actors cache them.

    Queries are encoded at `max_length` tokens (None: as the model was trained, or as it declares), passages at
    `passage_max_length` (None: the length the model declares or its checkpoint recorded, else 512; see
    revela.evalprotocol). `protocol` (EncodingProtocol fields) replaces the model's own protocol.

    `baseline_model` (the untrained backbone) is scored twice: under the model's own protocol and lengths
    (`backbone_same_protocol`: the model minus it is the effect of training) and under the backbone's own protocol
    (`backbone_native`: what a user gets without training); one encode when the two protocols are the same. Every
    baseline carries the model's paired difference to it (`model_minus_this`, revela.evaluation.significance).

    The settings are validated when built (EvalSettings); the model folders and the index string are checked here
    before anything is encoded; run files and the report are written only once everything has been scored.
    """
    check_models(settings)
    start = time.perf_counter()
    sets = load_datasets(settings.datasets if preloaded is None else preloaded, settings.split, settings.eval_dir,
                         settings.max_queries)
    scoring = Scoring(settings, sets, progress)
    report = new_report(settings)
    model_protocol = None
    if settings.model is not None:
        report["model"], report["settings"]["encoder"] = scoring.model()
        model_protocol = report["model"]["protocol"]
    if settings.baseline_model is not None:
        scoring.backbone(model_protocol)
    if settings.bm25:
        scoring.bm25()
    if settings.model is not None:
        scoring.differences()
    report["datasets"], report["average"] = scoring.datasets_and_average()
    report["wall_time_s"] = round(time.perf_counter() - start, 3)
    check_finite(report)
    if settings.output:
        scoring.runs.write()
        write_report(settings.output, report)
    if show_table:
        print_table(report)
    return report


def print_table(report: dict, file=None) -> None:
    """A rich table: one row per (dataset, system) with nDCG@10, R@100, MRR@10, MAP@100."""
    from rich.console import Console
    from rich.table import Table

    model = report.get("model") or {}
    title = f"{model.get('name', 'BM25 only')}" + (f" (step {model['checkpoint_step']})"
                                                   if model.get("checkpoint_step") is not None else "")
    table = Table(title=title)
    for col in ("dataset", "system", "queries", "docs", "nDCG@10", "95% CI", "model − this (95% CI)", "R@100",
                "MRR@10", "MAP@100"):
        table.add_column(col, justify="left" if col in ("dataset", "system") else "right")

    def row(name, system, e, d):
        ci, diff = e.get("ndcg_at_10_ci95"), e.get("model_minus_this")
        table.add_row(name, system, str(d["num_queries"]), str(d["num_docs"]), f"{e['ndcg_at_10']:.4f}",
                      f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "",
                      f"{diff['delta']:+.4f} ({diff['low']:+.3f} to {diff['high']:+.3f})" if diff else "",
                      f"{e['recall_at_100']:.4f}", f"{e['mrr_at_10']:.4f}", f"{e['map_at_100']:.4f}")

    labels = {SAME_PROTOCOL: "untrained, model's protocol", NATIVE: "untrained, its own protocol"}
    untrained = set()
    for name, d in report["datasets"].items():
        if report.get("model"):  # in a BM25-only report the headline is one of the baseline rows below
            row(name, "model", d, d)
        for key, base in d.get("baselines", {}).items():
            row(name, labels.get(key, key), base, d)
            if key in labels:
                untrained.add(str(base.get("model")))
    if untrained:
        table.caption = f"untrained = {', '.join(sorted(untrained))}"
    avg = report.get("average", {})
    if len(report["datasets"]) > 1 and avg:
        system = "model" if report.get("model") else "bm25 (domain)"
        table.add_row("average", system, "", "", f"{avg['ndcg_at_10']:.4f}", "", "",
                      f"{avg['recall_at_100']:.4f}", f"{avg['mrr_at_10']:.4f}", f"{avg['map_at_100']:.4f}")
    Console(file=file or sys.stdout, width=170).print(table)
