"""Retrieval evaluation for Revela: BEIR-layout datasets, dense and BM25 runs, pytrec_eval metrics.

Modules, one idea each (import them directly; this package imports nothing heavy):

- `revela.evaluation.beir`: load and validate a BEIR-layout directory (`corpus.jsonl`, `queries.jsonl`,
  `qrels/<split>.tsv`), with a content hash and counted, reported skips.
- `revela.evaluation.suite`: the offline suite `stdlib-code` and `pyfaq` (docs/offline-assets.md, Evaluation
  sets), built deterministically from the Python standard library and the Debian `python3.11-doc` HTML.
- `revela.evaluation.corpus_eval`: a set built from the user's own corpus (`build-evals --from-corpus`), with
  documents held out of training; its pairings come from `revela.evaluation.codesearchnet` (docstring ->
  definition, shared with `stdlib-code`) and `revela.evaluation.prose_sections` (heading/question -> section).
- `revela.evaluation.encode`: encode texts with a model's own protocol, in process or as Ray Data
  `map_batches` over an actor pool.
- `revela.evaluation.search`: FAISS top-k search (exact inner product by default, any factory string).
- `revela.evaluation.metrics`: nDCG@10, Recall@100, MRR@10, MAP@100 with pytrec_eval.
- `revela.evaluation.baselines`: BM25 (bm25s) with identifier splitting for code.
- `revela.evaluation.significance`: paired bootstrap over queries (and seeds): is a difference in nDCG@10 real.
- `revela.evaluation.settings`: `EvalSettings`, an evaluation's settings as one validated model.
- `revela.evaluation.run`: `evaluate(settings)`: the report JSON, TREC run files, a table.
- `revela.evaluation.actors`: `score_checkpoint` and an evaluator actor for scoring checkpoints during training.
- `revela.evaluation.cli`: `register(app)` adds the `evaluate` and `build-evals` commands.

Quick start::

    revela build-evals --out .cache/evals
    revela evaluate --model all-minilm-l6-v2 --dataset .cache/evals/stdlib-code --output out/minilm.json --bm25
"""
