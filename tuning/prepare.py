"""What a sweep builds before its trials start, each once and reused on re-runs: derived models, the groups of
each size (`revela prepare`, cached by its input hash) and the untrained backbones' dev scores."""

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


def baseline_key(run: dict) -> tuple:
    ev = run["eval"]
    return (run["model"]["retriever"]["name"], tuple(ev["datasets"]), ev["max_queries"],
            ev["max_length"] or run["model"]["retriever"]["max_length"], ev["batch_size"])


def baseline_path(sweep_dir: Path, trial: Trial) -> Path:
    digest = hashlib.sha256(json.dumps(baseline_key(trial.run)).encode()).hexdigest()[:10]
    return sweep_dir / BASELINES_DIR / f"{trial.params['retriever']}-{digest}.json"


def score_backbones(trials: list[Trial], sweep_dir: Path, storage: dict | None = None) -> dict[str, Path]:
    """Dev scores of every untrained retriever backbone, on the trials' dev sets with the same query sample and
    truncation as their checkpoints; each scored by a Ray task with the evaluation resources, once per sweep.
    Returns trial name -> the JSON file holding its backbone's flat metrics."""
    import ray

    from revela.evaluation.actors import score_checkpoint

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
            task = ray.remote(score_checkpoint).options(num_cpus=ev["num_cpus"], num_gpus=ev["num_gpus"])
            ref = task.remote(trial.run["model"]["retriever"]["name"], list(ev["datasets"]),
                              max_queries=ev["max_queries"], batch_size=ev["batch_size"],
                              max_length=ev["max_length"] or trial.run["model"]["retriever"]["max_length"],
                              storage=storage)  # derived backbones live in the sweep folder
            path_of[ref] = path
        for ref, path in path_of.items():
            metrics = ray.get(ref)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"model": todo[path].run["model"]["retriever"]["name"],
                                       "key": list(baseline_key(todo[path].run)), "metrics": metrics}, indent=2))
            tmp.replace(path)
            log.info("untrained %s: dev_ndcg_at_10=%.4f", todo[path].params["retriever"], metrics["dev_ndcg_at_10"])
    return files
