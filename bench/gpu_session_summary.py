"""The summary screen of bench/gpu_session.sh: one block per stage (status, time, key numbers, files), read from what
the stages wrote into the session folder; also written there as summary.json. Standard library only, so it prints
whatever state the stages left.

    python bench/gpu_session_summary.py results/gpu-session
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

TOLERANCE = {"fp32": (1e-5, 1e-4), "16-bit": (2e-2, 5e-2)}
"""Relative error allowed against the fp64 oracle (output, gradients): the CPU tests' bounds."""
TRAIN_TARGET = 0.10
"""`revela train`'s groups/s within 10% of the step table's row at the same settings."""
WARMUP_STEPS = 10
"""Logged steps up to this one are left out of the train's groups/s (compilation, allocator warm-up)."""


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def bench_rows(path: Path) -> list[dict]:
    return (read_json(path) or {}).get("rows", [])


def fmt(x, digits=2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def errors_of(rows: list[dict]) -> list[str]:
    return [f"{row_name(r)}: {r['error']}" for r in rows if "error" in r]


def row_name(r: dict) -> str:
    keys = ("impl", "retriever", "lm", "B", "G", "dtype")
    return " ".join(f"{k}={r[k]}" for k in keys if k in r)


# ---------------------------------------------------------------------------------------------- stages

def setup(out: Path) -> tuple[list[str], dict]:
    env = read_json(out / "environment.json", {})
    gpu = env.get("gpu")
    card = f"{gpu['name']} ({gpu['memory_gib']} GiB) x{gpu['count']}" if gpu else "no GPU"
    versions = " ".join(f"{k} {env[k]}" for k in ("torch", "triton", "transformers", "ray") if k in env)
    lines = [f"{card}; {versions}; python {env.get('python', '?')}; Ray dashboard: {env.get('ray_dashboard', '?')}"]
    missing = env.get("missing", {})
    lines.append("imports: all present" if not missing else
                 "MISSING imports: " + "; ".join(f"{k} ({v})" for k, v in missing.items()))
    return lines, {"environment": env, "ok": not missing}


def agreement(out: Path) -> tuple[list[str], dict]:
    rows = bench_rows(out / "agreement.json")
    if not rows:
        return ["no rows"], {"ok": False}
    lines, ok = [], True
    for r in rows:
        if "error" in r:
            lines.append(f"{r['dtype']} G={r['G']} B={r['B']} L={r['L']} d={r['d']}: ERROR {r['error']}")
            ok = False
            continue
        tol = TOLERANCE["fp32" if r["dtype"] == "float32" else "16-bit"]
        grads = max(r[f"grad_{n}"] for n in "qkvw")
        good = r["out"] <= tol[0] and grads <= tol[1]
        ok &= good
        lines.append(f"{r['dtype']:<38} G={r['G']} B={r['B']} L={r['L']} d={r['d']}: out {r['out']:.1e}, "
                     f"grads <= {grads:.1e} {'ok' if good else f'OVER {tol[0]:.0e}/{tol[1]:.0e}'}")
    return lines, {"rows": len(rows), "ok": ok}


def attention(out: Path) -> tuple[list[str], dict]:
    rows = bench_rows(out / "attention.json")
    if not rows:
        return ["no rows"], {"ok": False}
    by = {(r["impl"], r["B"]): r for r in rows}
    lines = []
    for B in sorted({r["B"] for r in rows}):
        fused, floor = by.get(("fused", B), {}), by.get(("floor", B), {})
        cells = [f"B={B}:"]
        for impl in ("fused", "blockwise", "reference", "floor"):
            r = by.get((impl, B))
            if r is not None:
                cells.append(f"{impl} {fmt(r.get('ms'), 1)} ms/{fmt(r.get('peak_gib'))} GiB" if "error" not in r
                             else f"{impl} ERROR")
        if fused.get("ms") and floor.get("ms"):
            cells.append(f"| fused/floor {fused['ms'] / floor['ms']:.2f}x")
        lines.append(" ".join(cells))
    errors = errors_of(rows)
    lines += [f"ERROR {e}" for e in errors]
    return lines, {"rows": len(rows), "errors": errors, "ok": not errors}


def step(out: Path, name: str) -> tuple[list[str], dict]:
    rows = bench_rows(out / f"{name}.json")
    if not rows:
        return ["no rows"], {"ok": False}
    lines = []
    for r in rows:
        head = f"{r['retriever']} + {r['lm']} B={r['B']} G={r['G']}:"
        if "error" in r:
            lines.append(f"{head} {r['error']}")
        else:
            lines.append(f"{head} {fmt(r['groups_per_s'])} groups/s, step {fmt(r['revela_ms'], 0)} ms "
                         f"({fmt(r['ratio'])}x plain), peak {fmt(r.get('revela_peak_gib'), 1)} GiB")
    errors = errors_of(rows)
    # out of memory is a measurement (what does not fit this card), anything else is a failure
    failures = [e for e in errors if not e.endswith("out of memory")]
    return lines, {"rows": len(rows), "errors": errors, "ok": not failures}


def train(out: Path, gpu: bool = True) -> tuple[list[str], dict]:
    settings = read_json(out / "train_settings.json", {})
    path = out / "train_metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    log = (out / "train.log").read_text(errors="replace") if (out / "train.log").is_file() else ""
    notices = [line for line in log.splitlines() if "dashboard packages are missing" in line]
    tracebacks = log.count("Traceback (most recent call last)")
    console = (f"console: {tracebacks} traceback(s)" + (f"; notice: {notices[0][:110]}" if notices else ""))
    if not rows:
        return ["no metrics", console], {"ok": False, "tracebacks": tracebacks}
    late = [r for r in rows if r["step"] > WARMUP_STEPS]
    which = f"logged steps > {WARMUP_STEPS}" if late else "last logged step"
    late = late or rows[-1:]
    groups_per_s = sum(r["groups_per_s"] for r in late) / len(late)
    memory = max((r.get("gpu_max_memory_gib") or 0.0) for r in rows) or None
    step_rows = [r for name in ("step-smollm2", "step-qwen", "step-llama") for r in bench_rows(out / f"{name}.json")]
    match = next((r for r in step_rows if "groups_per_s" in r and all(r.get(k) == settings.get(k) for k in
                                                                       ("retriever", "lm", "B", "G", "L"))), None)
    lines = [f"{rows[-1]['step']} steps at B={settings.get('B')} G={settings.get('G')}: {groups_per_s:.2f} groups/s "
             f"({which}), data wait {rows[-1].get('data_wait_fraction', 0):.0%}, "
             f"peak {fmt(memory, 1)} GiB"]
    result = {"groups_per_s": groups_per_s, "steps": rows[-1]["step"], "peak_gib": memory, "tracebacks": tracebacks,
              "ok": tracebacks == 0}
    if match:
        ratio = groups_per_s / match["groups_per_s"]
        within = abs(ratio - 1) <= TRAIN_TARGET
        lines.append(f"step table ({match['retriever']} + {match['lm']} B={match['B']} G={match['G']} "
                     f"L={match['L']}): {match['groups_per_s']:.2f} groups/s -> ratio {ratio:.2f} "
                     f"({'within' if within else 'OUTSIDE'} the {TRAIN_TARGET:.0%} target)")
        result.update(table_groups_per_s=match["groups_per_s"], ratio=ratio, within_target=within)
        result["ok"] &= within or not gpu  # on the CPU smoke the two numbers are not comparable
    else:
        lines.append(f"no step-table row at {settings} to compare with")
    lines.append(console)
    return lines, result


def untrained(value: str) -> str:
    """A baseline cell of the sweep report's results.csv: empty when the sweep scored no backbone."""
    return f"{float(value):.4f}" if value else "-"


def sweep(out: Path) -> tuple[list[str], dict]:
    table = out / "sweep-report" / "results.csv"
    if not table.is_file():
        log = (out / "sweep.log").read_text(errors="replace") if (out / "sweep.log").is_file() else ""
        last = [line for line in log.splitlines() if line.strip()][-1:] or ["no log"]
        return [f"no report; last line of sweep.log: {last[0][:150]}"], {"ok": False}
    with open(table) as f:
        rows = [r for r in csv.DictReader(f) if r["dataset"] == "mean" and r["metric"] == "ndcg_at_10"]
    cells = [f"{r['trial']} (B={r['group_size']}, {r['steps']} steps): dev nDCG@10 best {float(r['best']):.4f}, "
             f"untrained {untrained(r['backbone_same_protocol'])} (same protocol), "
             f"{untrained(r['backbone_native'])} (native)" for r in rows]
    summary_path = out / "sweep-report" / "summary.md"
    summary_md = summary_path.read_text() if summary_path.is_file() else ""
    missing = [line for line in summary_md.splitlines() if "without results" in line]
    return cells + missing, {"trials": len(rows), "ok": len(rows) == 2 and not missing}


FILES = {"setup": "setup.log environment.json", "agreement": "agreement.json", "attention": "attention.json",
         "step-smollm2": "step-smollm2.json step-smollm2.png", "step-qwen": "step-qwen.json",
         "step-llama": "step-llama.json", "train": "train.log train_metrics.jsonl",
         "sweep": "sweep.log sweep.yaml sweep-report/summary.md"}


def main(out: Path) -> dict:
    session = read_json(out / "session.json", {})
    stages = {}
    for line in (out / "stages.tsv").read_text().splitlines() if (out / "stages.tsv").is_file() else []:
        name, status, seconds, log, note = (line.split("\t") + [""] * 5)[:5]
        stages[name] = {"status": status, "seconds": int(seconds or 0), "log": log, "note": note}
    gpu = session.get("mode") != "cpu"
    readers = {"setup": setup, "agreement": agreement, "attention": attention,
               **{name: (lambda o, n=name: step(o, n)) for name in ("step-smollm2", "step-qwen", "step-llama")},
               "train": lambda o: train(o, gpu), "sweep": sweep}
    wall = session.get("wall_s")
    bar = "=" * 118
    print(bar)
    print(f"GPU session summary ({session.get('mode', '?')} mode): {wall if wall is not None else '?'} s wall "
          f"(target {session.get('target_s', 480)} s, budget {session.get('budget_s', '?')} s); folder {out}")
    if session.get("mode") == "cpu":
        print("CPU smoke: tiny models on the CPU, so the numbers check the glue only; they are not measurements")
    print(bar)
    report = {"session": session, "stages": {}}
    for name, read in readers.items():
        stage = stages.get(name, {"status": "not run", "seconds": 0, "log": "", "note": ""})
        try:
            lines, numbers = read(out) if stage["status"] not in ("skipped", "not run") else ([stage["note"]], {})
        except Exception as e:  # noqa: BLE001 (a summary that cannot read one stage still shows the others)
            lines, numbers = [f"could not read this stage's output: {type(e).__name__}: {e}"], {"ok": False}
        verdict = stage["status"] if stage["status"] != "ok" or numbers.get("ok", True) else "ok"
        if stage["status"] == "ok" and not numbers.get("ok", True):
            verdict = "check"
        print(f"{name:<13} {verdict:<11} {stage['seconds']:>4} s  {lines[0] if lines else ''}")
        for line in lines[1:]:
            print(f"{'':<31}{line}")
        log = f" ({stage['log']})" if stage["log"] and stage["log"] not in FILES[name] else ""
        print(f"{'':<31}files: {FILES[name]}{log}")
        report["stages"][name] = {**stage, "verdict": verdict, "lines": lines, **numbers}
    print(bar)
    (out / "summary.json").write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/gpu-session"))
