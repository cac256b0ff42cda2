"""Encoding throughput of revela.evaluation.encode vs a bare transformers loop (same model, data, threads).

The bare loop is the strong baseline: AutoTokenizer + AutoModel, texts sorted by length, padding to the longest
in each batch, truncation at the protocol's max length, mean/CLS/EOS pooling as the protocol says, L2 norm.
Each of our paths (`local`: encode_local in process; `ray`: Ray Data map_batches over an actor pool, timed end to
end including actor start-up) must produce the same embeddings (max abs difference reported) and is compared
as texts/s ratio to the bare loop. The goal is a ratio >= 0.9.

    .venv/bin/python bench/bench_encode.py --limit 2000 --modes bare,local,ray --ray-actors 2

Prints one JSON object. Set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 on the CPU box.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np


def bare_encode(path: str, texts: list[str], protocol, batch_size: int) -> tuple[np.ndarray, float, float]:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            idx = order[s: s + batch_size]
            enc = tok([protocol.passage_prefix + texts[i] for i in idx], padding=True, truncation=True,
                      max_length=protocol.max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            m = enc["attention_mask"]
            if protocol.pooling == "mean":
                mf = m.unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mf).sum(1) / mf.sum(1).clamp(min=1)
            elif protocol.pooling == "cls":
                emb = hidden[:, 0]
            else:
                emb = hidden[torch.arange(hidden.shape[0]), m.sum(1) - 1]
            out[idx] = F.normalize(emb, dim=-1).numpy()
    return out, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--dataset", default="stdlib-code", help="BEIR dir or suite name; its corpus is encoded")
    ap.add_argument("--limit", type=int, default=2000, help="first N documents (0 = all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--modes", default="bare,local,ray")
    ap.add_argument("--ray-actors", type=int, default=2)
    ap.add_argument("--ray-cpus-per-actor", type=float, default=1)
    ap.add_argument("--ray-num-cpus", type=int, default=4, help="logical CPUs of the local Ray instance")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eval-dir", default=None)
    args = ap.parse_args()

    import torch

    from revela.evaluation.beir import load_beir
    from revela.evaluation.encode import encode_local, encode_ray
    from revela.evaluation.run import load_retriever, resolve_model_path
    from revela.evaluation.suite import resolve_dataset

    ds = load_beir(resolve_dataset(args.dataset, args.eval_dir))
    texts = ds.doc_texts()[: args.limit or None]
    path = resolve_model_path(args.model)
    retriever = load_retriever(path)
    protocol = retriever.protocol
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    report = {"model": args.model, "dataset": ds.name, "content_hash": ds.content_hash, "texts": len(texts),
              "batch_size": args.batch_size, "max_length": protocol.max_length, "pooling": protocol.pooling,
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.node(),
              "cuda": torch.cuda.is_available(), "runs": {}}
    ap_ray = "ray" in modes
    if ap_ray:
        import ray

        ray.init(address="local", num_cpus=args.ray_num_cpus, include_dashboard=False, log_to_driver=False)

    def run(mode: str) -> tuple[np.ndarray, float, float | None]:
        """(embeddings, wall seconds, CPU seconds of this process; None for ray, whose work is in the actors)."""
        if mode == "bare":
            return bare_encode(path, texts, protocol, args.batch_size)
        start, cpu = time.perf_counter(), time.process_time()
        if mode == "local":
            emb = encode_local(retriever, texts, "passage", args.batch_size)
            return emb, time.perf_counter() - start, time.process_time() - cpu
        emb = encode_ray(path, {"passage": texts}, batch_size=args.batch_size, num_actors=args.ray_actors,
                         cpus_per_actor=args.ray_cpus_per_actor, progress=False)["passage"]
        return emb, time.perf_counter() - start, None

    # the box is shared: interleave the modes, rotate their order each repeat, compare within a repeat
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu_times: dict[str, list[float]] = {m: [] for m in modes}
    ratios: dict[str, list[float]] = {m: [] for m in modes if m != "bare"}
    diffs: dict[str, float] = {}
    for r in range(args.repeats):
        order = modes[r % len(modes):] + modes[: r % len(modes)]
        this, embs = {}, {}
        for mode in order:
            embs[mode], this[mode], cpu = run(mode)
            times[mode].append(round(this[mode], 3))
            if cpu is not None:
                cpu_times[mode].append(round(cpu, 3))
        if "bare" in this:
            for mode in ratios:
                ratios[mode].append(this["bare"] / this[mode])
                diffs[mode] = max(diffs.get(mode, 0.0), float(np.abs(embs[mode] - embs["bare"]).max()))
    for mode in modes:
        best = min(times[mode])
        entry = {"seconds": times[mode], "best_texts_per_s": round(len(texts) / best, 2)}
        if cpu_times[mode]:
            entry["cpu_seconds"] = cpu_times[mode]
            if mode != "bare" and cpu_times.get("bare"):  # less sensitive to other load on a shared box
                entry["cpu_ratio_vs_bare_median"] = round(
                    float(np.median(cpu_times["bare"]) / np.median(cpu_times[mode])), 3)
        if mode in ratios and ratios[mode]:
            entry["ratio_vs_bare_per_repeat"] = [round(x, 3) for x in ratios[mode]]
            entry["ratio_vs_bare_median"] = round(float(np.median(ratios[mode])), 3)
            entry["max_abs_diff_vs_bare"] = diffs[mode]
        if mode == "ray":
            entry.update(actors=args.ray_actors, cpus_per_actor=args.ray_cpus_per_actor,
                         includes="actor start-up and model load in every repeat")
        report["runs"][mode] = entry
    if ap_ray:
        ray.shutdown()
    report["command"] = " ".join([os.path.basename(sys.executable)] + sys.argv)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
