"""CLI commands `evaluate` and `build-evals`; `register(app)` adds them to the main typer app.

    revela build-evals --out .cache/evals --which stdlib-code,pyfaq
    revela evaluate --model all-minilm-l6-v2 --dataset .cache/evals/stdlib-code --dataset pyfaq \
        --output results/minilm.json --bm25
    revela evaluate --model runs/r1/checkpoint_000003 --dataset stdlib-code --output results/ckpt3.json
        # a checkpoint brings its untrained backbone twice: under the checkpoint's protocol and under its own
    revela evaluate --dataset stdlib-code --output results/bm25.json --bm25        # BM25 only

Exit status 2 for unusable input (bad dataset, model or checkpoint), with the reason on stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from revela.clierrors import fail
from revela.options import at_least


def evaluate_cmd(
    dataset: Annotated[list[str], typer.Option("--dataset", "-d", help="BEIR directory or suite name "
                                                "(stdlib-code, pyfaq); repeat for several")],
    output: Annotated[Path, typer.Option("--output", "-o", help="report JSON; run files go to <stem>.runs/")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="alias, model folder, training checkpoint "
                                                  "or export; leave out with --bm25 for BM25 only")] = None,
    bm25: Annotated[bool, typer.Option("--bm25", help="add BM25 baselines (plain and identifier-split)")] = False,
    baseline_model: Annotated[Optional[str], typer.Option(help="also score this untrained backbone, under the "
                                                           "model's protocol and under its own (default for a "
                                                           "training checkpoint: the backbone it was trained from)")
                              ] = None,
    backbone: Annotated[bool, typer.Option("--backbone/--no-backbone", help="score a training checkpoint's "
                                           "untrained backbone (both ways)")] = True,
    split: Annotated[str, typer.Option(help="qrels split")] = "test",
    batch_size: Annotated[int, typer.Option(callback=at_least(1), help="texts per forward pass")] = 64,
    max_length: Annotated[Optional[int], typer.Option(callback=at_least(2), help="query tokens (default: as "
                                                      "trained)")] = None,
    passage_max_length: Annotated[Optional[int], typer.Option(callback=at_least(2), help="passage tokens "
                                                              "(default: the length the model declares or its "
                                                              "checkpoint recorded, else 512)")] = None,
    k: Annotated[int, typer.Option(callback=at_least(1), help="documents retrieved per query")] = 100,
    index: Annotated[str, typer.Option(help="FAISS factory string; Flat = exact")] = "Flat",
    index_params: Annotated[Optional[str], typer.Option(help="FAISS search parameters, e.g. nprobe=32")] = None,
    encoder: Annotated[str, typer.Option(help="auto, local or ray (actor pool)")] = "auto",
    num_actors: Annotated[Optional[int], typer.Option(callback=at_least(1), help="encoder actors for --encoder "
                                                      "ray")] = None,
    max_queries: Annotated[Optional[int], typer.Option(callback=at_least(1), help="sample at most this many "
                                                        "queries per dataset")] = None,
    eval_dir: Annotated[Optional[Path], typer.Option(help="where suite datasets are built")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bars")] = False,
) -> None:
    """Score a model (plus optional baselines) on retrieval datasets: JSON report, TREC runs, a table."""
    from revela.evaluation.beir import DatasetError
    from revela.evaluation.run import ModelLoadError, evaluate
    from revela.evaluation.settings import EvalSettings, SettingsError

    try:
        settings = EvalSettings.of(model=model, datasets=dataset, output=output, bm25=bm25,
                                   baseline_model=baseline_model, split=split, batch_size=batch_size,
                                   max_length=max_length, passage_max_length=passage_max_length, k=k, index=index,
                                   index_params=index_params, encoder=encoder, num_actors=num_actors,
                                   max_queries=max_queries, eval_dir=eval_dir)
    except SettingsError as e:
        fail(str(e.with_flags(FLAGS)))
    if encoder == "ray":
        import ray

        if not ray.is_initialized():
            ray.init()  # attaches to RAY_ADDRESS / a running cluster, else starts a local one
    if baseline_model is None and backbone and model is not None:
        settings.baseline_model = checkpoint_baseline(model)
    try:
        evaluate(settings, progress=not no_progress)
    except (DatasetError, ModelLoadError, ValueError) as e:  # bad input: say why, no traceback
        fail(str(e))
    typer.echo(f"wrote {output}")


FLAGS = {"datasets": "--dataset", **{name: "--" + name.replace("_", "-") for name in (
    "model", "output", "bm25", "baseline_model", "split", "batch_size", "max_length", "passage_max_length", "k",
    "index", "index_params", "encoder", "num_actors", "max_queries", "eval_dir")}}
"""EvalSettings field -> the `evaluate` flag that sets it."""


def checkpoint_baseline(model: str) -> str | None:
    """The backbone a training checkpoint was trained from, when it can be loaded here (else a note and None)."""
    from revela.evalprotocol import checkpoint_backbone
    from revela.modelfiles import ModelLoadError, resolve_model_path

    try:
        name = checkpoint_backbone(resolve_model_path(model))
    except ModelLoadError:
        return None  # evaluate names the problem with the model itself
    if name is None:
        return None
    try:
        resolve_model_path(name)
    except ModelLoadError as e:
        typer.echo(f"note: no untrained rows: the checkpoint's backbone {name!r} is not available here ({e}); "
                   "name one with --baseline-model", err=True)
        return None
    return name


def build_evals_cmd(
    out: Annotated[Optional[Path], typer.Option(help="output folder: the suite's parent folder (default "
                                                "$REVELA_CACHE/evals or <repo>/.cache/evals), or with "
                                                "--from-corpus the dataset folder itself")] = None,
    which: Annotated[Optional[str], typer.Option(help="comma-separated suite sets: stdlib-code,pyfaq "
                                                 "(default: both)")] = None,
    html_root: Annotated[Path, typer.Option(help="python3.11-doc HTML root (for pyfaq)")] = Path(
        "/usr/share/doc/python3.11/html"),
    from_corpus: Annotated[Optional[list[Path]], typer.Option(
        "--from-corpus", help="build a set from your own corpus instead (repeatable): the paths `revela prepare "
        "--source` reads")] = None,
    kind: Annotated[str, typer.Option(help="--from-corpus: prose | code | auto (as revela prepare)")] = "auto",
    max_queries: Annotated[int, typer.Option(callback=at_least(1), help="--from-corpus: at most this many "
                                             "queries (a seeded sample)")] = 1000,
    seed: Annotated[int, typer.Option(help="--from-corpus: seed of the hold-out and the query sample")] = 0,
    holdout: Annotated[float, typer.Option(help="--from-corpus: fraction of the documents with queries held "
                                           "out of training (revela prepare --exclude-eval DIR); their queries "
                                           "alone are kept. 0: no hold-out")] = 0.0,
    on_bad_record: Annotated[str, typer.Option(help="--from-corpus: error | skip (as revela prepare)")] = "error",
    force: Annotated[bool, typer.Option(help="rebuild even if an identical build exists")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar")] = False,
) -> None:
    """Build the offline evaluation suite, or with --from-corpus a set from your own corpus (BEIR layout)."""
    import json

    from revela.evaluation.beir import MANIFEST, DatasetError
    from revela.evaluation.suite import build_suite

    if from_corpus:
        _build_from_corpus(from_corpus, out, which, kind, max_queries, seed, holdout, on_bad_record, force,
                           not no_progress)
        return
    names = [w.strip() for w in (which or "stdlib-code,pyfaq").split(",") if w.strip()]
    try:
        built = build_suite(out, names, html_root=html_root, force=force)
    except (DatasetError, ValueError) as e:
        fail(str(e))
    for name, path in built.items():
        manifest = json.loads((path / MANIFEST).read_text())
        typer.echo(f"{name}: {path}  queries={manifest['counts']['queries']} docs={manifest['counts']['docs']} "
                   f"{manifest['content_hash']}")


def _build_from_corpus(sources: list[Path], out: Optional[Path], which: Optional[str], kind: str, max_queries: int,
                       seed: int, holdout: float, on_bad_record: str, force: bool, progress: bool) -> None:
    import json

    from revela.data.ingest import IngestError
    from revela.evaluation.beir import MANIFEST, DatasetError
    from revela.evaluation.corpus_eval import build_corpus_eval, print_summary

    if which is not None:
        fail("--which names suite sets; it does not go with --from-corpus")
    if out is None:
        fail("--from-corpus needs --out DIR (the dataset folder to write)")
    if kind not in ("auto", "code", "prose"):
        fail(f"--kind must be auto, code or prose, got {kind!r}")
    if on_bad_record not in ("error", "skip"):
        fail(f"--on-bad-record must be error or skip, got {on_bad_record!r}")
    if not 0.0 <= holdout < 1.0:
        fail(f"--holdout must be in [0, 1) (the fraction of documents kept out of training), got {holdout}")
    try:
        path = build_corpus_eval(sources, out, kind=kind, max_queries=max_queries, seed=seed, holdout=holdout,
                                 on_bad_record=on_bad_record, force=force, progress=progress)
    except (IngestError, DatasetError, ValueError) as e:
        fail(str(e))
    print_summary(json.loads((path / MANIFEST).read_text()), path)


def register(app: typer.Typer) -> None:
    """Add `evaluate` and `build-evals` to `app`."""
    app.command("evaluate")(evaluate_cmd)
    app.command("build-evals")(build_evals_cmd)
