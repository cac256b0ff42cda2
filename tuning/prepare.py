"""What a sweep builds before its trials start, each once and reused on re-runs: derived models, the groups of
each size (`revela prepare`, cached by its input hash) and the untrained backbones' dev scores (under the
checkpoints' protocol and under their own)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from revela.tuning.grid import MODELS_DIR, Trial

log = logging.getLogger(__name__)

BASELINES_DIR = "baselines"


def check_dev_sets(datasets: list[str]) -> None:
    """Build suite sets on first use and load every dev set once here, so a bad one fails before any trial."""
    from revela.evaluation.beir import load_beir
    from revela.evaluation.suite import resolve_dataset

    for name in datasets:
        ds = load_beir(resolve_dataset(name))
        log.info("dev set %s: %d queries, %d docs (%s)", ds.name, len(ds.queries), len(ds.corpus), ds.path)


def derive_models(sweep, sweep_dir: Path) -> None:
    from revela.tuning.models import derive_truncated

    for choice in [*sweep.axes.retriever, *sweep.axes.lm]:
        if choice.derive is not None:
            path = derive_truncated(choice.derive.base, choice.derive.layers, sweep_dir / MODELS_DIR / choice.label)
            log.info("model %s: first %d layers of %s -> %s", choice.label, choice.derive.layers,
                     choice.derive.base, path)


def prepare_groups(trials: list[Trial], sweep_dir: Path) -> dict[str, dict]:
    """Group the corpus once per distinct data config (one per B, grouping and LM tokenizer); a folder whose
    manifest already matches its inputs is reused untouched. Returns each data key's prepare summary."""
    from revela.data.config import DataConfig
    from revela.data.prepare import prepare_config
    from revela.data.shards import read_manifest

    summaries = {}
    for trial in trials:
        if trial.data_key in summaries:
            continue
        out = Path(trial.run["data"]["shards"])
        summary = prepare_config(DataConfig.model_validate(trial.data_config), out, progress=False, quiet=True)
        summary["chunk_tokens_mean"] = read_manifest(out)["counts"]["chunk_tokens_mean"]
        log.info("groups B=%s (%s): %s groups in %s%s", summary["group_size"], summary["grouping"],
                 summary["groups"], out, " (up to date)" if summary["up_to_date"] else "")
        summaries[trial.data_key] = summary
    return summaries


def baseline_protocol(run: dict) -> dict:
    """The protocol the trial's checkpoints are evaluated with (prefixes, pooling, trained query length, the
    passage length the backbone declares), before eval.max_length / eval.passage_max_length apply."""
    from revela.config import ModelConfig
    from revela.evalprotocol import checkpoint_protocol

    return checkpoint_protocol(ModelConfig.model_validate(run["model"])).model_dump()


def baseline_key(run: dict) -> tuple:
    ev = run["eval"]
    return (run["model"]["retriever"]["name"], tuple(ev["datasets"]), ev["max_queries"], ev["max_length"],
            ev.get("passage_max_length"), ev["batch_size"], json.dumps(baseline_protocol(run), sort_keys=True))


def baseline_path(sweep_dir: Path, trial: Trial) -> Path:
    digest = hashlib.sha256(json.dumps(baseline_key(trial.run)).encode()).hexdigest()[:10]
    return sweep_dir / BASELINES_DIR / f"{trial.params['retriever']}-{digest}.json"


def score_backbone(name: str, datasets: list[str], protocol: dict, storage: dict | None = None,
                   **score_kwargs) -> dict:
    """The untrained backbone scored two ways, on the trials' dev sets with their query sample and lengths:
    {"same_protocol": encoded exactly like the trials' checkpoints (the control for the effect of training),
     "native": under the backbone's own protocol (what a user gets without training)}, each
    {"protocol", "metrics", "per_query"}. One encode when the two protocols are the same. storage: the sweep
    folder's marker (derived backbones live there), checked on the task's node."""
    from revela.evalprotocol import resolve_evaluation_protocol
    from revela.evaluation.actors import score_model
    from revela.modelfiles import resolve_model_path
    from revela.train import check_marker

    check_marker(storage, "backbone scoring task")

    lengths = {k: score_kwargs.get(k) for k in ("max_length", "passage_max_length")}
    path = resolve_model_path(name)
    same_protocol = resolve_evaluation_protocol(path, protocol, **lengths)
    native_protocol = resolve_evaluation_protocol(path, None, **lengths)
    out = {}
    for key, given in (("same_protocol", same_protocol), ("native", native_protocol)):
        if key == "native" and native_protocol == same_protocol:
            out[key] = out["same_protocol"]
            continue
        scored = score_model(name, datasets, protocol=given.model_dump(), **score_kwargs)
        out[key] = {k: scored[k] for k in ("protocol", "metrics", "per_query")}
    return out


def read_baseline(path: Path) -> dict:
    """A trial record's "backbone" entry from a baseline file: the same-protocol scores at the top level
    ("metrics", "per_query", "protocol"), the backbone's own under "native". A file written before both were
    scored keeps its one score as it was ("metrics", taken under the backbone's own protocol; see
    revela.tuning.report.backbone_scores)."""
    data = json.loads(path.read_text())
    if "same_protocol" not in data:
        return {"model": data["model"], "file": str(path), "metrics": data["metrics"]}
    same, native = data["same_protocol"], data["native"]
    return {"model": data["model"], "file": str(path), **same, "native": native}


def score_backbones(trials: list[Trial], sweep_dir: Path, storage: dict | None = None) -> dict[str, Path]:
    """Dev scores of every untrained retriever backbone, on the trials' dev sets with the same query sample and
    lengths as their checkpoints, under the checkpoints' protocol and under the backbone's own (`score_backbone`);
    each scored by a Ray task with the evaluation resources, once per sweep.
    Returns trial name -> the JSON file holding them."""
    import ray

    from revela.train import write_json

    files = {t.name: baseline_path(sweep_dir, t) for t in trials}
    todo = {}
    for trial in trials:
        path = files[trial.name]
        if not path.is_file() and path not in todo:
            todo[path] = trial
    if todo:
        path_of = {}
        for path, trial in todo.items():
            ev = trial.run["eval"]
            task = ray.remote(score_backbone).options(num_cpus=ev["num_cpus"], num_gpus=ev["num_gpus"])
            ref = task.remote(trial.run["model"]["retriever"]["name"], list(ev["datasets"]),
                              baseline_protocol(trial.run), storage=storage, max_queries=ev["max_queries"],
                              batch_size=ev["batch_size"], max_length=ev["max_length"],
                              passage_max_length=ev.get("passage_max_length"))
            path_of[ref] = path
        for ref, path in path_of.items():
            scored = ray.get(ref)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, {"model": todo[path].run["model"]["retriever"]["name"],
                              "key": list(baseline_key(todo[path].run)), **scored})
            log.info("untrained %s: dev_ndcg_at_10=%.4f under the checkpoints' protocol, %.4f under its own",
                     todo[path].params["retriever"], scored["same_protocol"]["metrics"]["dev_ndcg_at_10"],
                     scored["native"]["metrics"]["dev_ndcg_at_10"])
    return files
