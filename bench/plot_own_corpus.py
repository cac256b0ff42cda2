"""Draw the own-corpus evaluation reports (revela evaluate JSON) as one bar chart: nDCG@10 with its 95% CI per
system and dataset.

    python bench/plot_own_corpus.py bench/own_corpus/*_minilm_bm25.json --out bench/own_corpus/ndcg.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def systems(report: dict) -> dict[str, dict]:
    """name -> metrics for every system of every dataset in a report (model first, then its baselines)."""
    out = {}
    model = (report.get("model") or {}).get("name")
    for name, entry in report["datasets"].items():
        if model:
            out[f"{name}\n{model}"] = entry
        for key, base in entry.get("baselines", {}).items():
            out[f"{name}\n{base.get('model', key) if key == 'backbone' else key}"] = base
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = {}
    for path in args.reports:
        bars.update(systems(json.loads(path.read_text())))
    names = list(bars)
    values = [bars[n]["ndcg_at_10"] for n in names]
    errors = [[v - bars[n]["ndcg_at_10_ci95"][0] for n, v in zip(names, values)],
              [bars[n]["ndcg_at_10_ci95"][1] - v for n, v in zip(names, values)]]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 1, 4))
    ax.bar(range(len(names)), values, yerr=errors, capsize=4, color="tab:blue")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("nDCG@10 (95% CI)")
    ax.set_title("Sets built with build-evals --from-corpus --holdout 0.2")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
