#!/usr/bin/env bash
# The one GPU acceptance check (issue 14): a fresh GPU machine trains, benchmarks and sweeps in one call (target: 8
# minutes on an H100/H200 including the install; not yet run on a GPU), then prints one summary screen. Stages, each with its own
# timeout (cut to what is left of the session budget, keeping the later stages' minimum):
#   0 setup       the GPU bundle (slim Ray without dashboard packages, faiss, datasets, eval packages), the package,
#                 the card and versions, and an import check of everything the later stages need
#   1 agreement   the fused kernels against the fp64 oracle at training shapes (bf16, fp32, and fp32 q/k with bf16 v
#                 under bf16 autocast, as the LM hands them in)
#   2 tables      bench/bench_step.py: attention (fused, blockwise, reference, SDPA floor at B = 16, 64, 128) and the
#                 step table, one process per LM (SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B), random-init weights
#   3 train       40 steps of `revela train -c jobs/configs/gpu-offline.yaml` through Ray on the GPU (random-init
#                 SmolLM2-135M with its real tokenizer); its groups/s against the step table's row at the same B, G, L
#   4 sweep       a two-cell `revela sweep` (B = 8, 16) on the GPU, each checkpoint scored on stdlib-code (built on the
#                 device from its own standard library), then `revela report`
# Everything lands in $OUT (the device's return folder), else results/gpu-session/: one log per stage, the bench
# JSONs, the train metrics, the sweep report, stages.tsv and summary.json.
#
#   bash bench/gpu_session.sh --prepare      # here: fill the ignored .gpu-bundle/ and .gpu-assets/ (< 64 MiB)
#   run(command="bash bench/gpu_session.sh", carry=[".gpu-bundle", ".gpu-assets"], timeout_s=600)   # the device
#   bash bench/gpu_session.sh --cpu-smoke    # the same glue on this CPU machine at tiny sizes (no bundle, no GPU)
#
# SESSION_BUDGET (seconds, default 570 on a GPU) bounds the whole run so that the summary always prints inside the
# device call's 600 s; the summary compares the wall time with the 8-minute target.
set -uo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

mode=gpu
case "${1:-}" in
  --prepare)
    rm -rf .gpu-bundle .gpu-assets && mkdir -p .gpu-bundle .gpu-assets
    cp -r ../shared/gpu-bundle/. .gpu-bundle/ 2>/dev/null || cp -r /work/shared/gpu-bundle/. .gpu-bundle/
    source scripts/env.sh
    tok="$REVELA_CACHE/models/smollm2-135m"
    [ -f "$tok/tokenizer.json" ] || { echo "run 'revela assets' first (needs $tok)" >&2; exit 2; }
    cp "$tok"/{config.json,tokenizer.json,tokenizer_config.json} .gpu-assets/
    du -sh .gpu-bundle .gpu-assets
    carried=$(du -sk .gpu-bundle .gpu-assets | awk '{s += $1} END {print s}')
    tree=$(git ls-files -co --exclude-standard -z | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
    echo "carried: $((carried / 1024)) MiB in .gpu-bundle + .gpu-assets, working tree $((tree / 1024)) MiB (limit 64 MiB)"
    (( carried + tree < 64 * 1024 )) || { echo "over the 64 MiB carry limit" >&2; exit 1; }
    exit 0 ;;
  --cpu-smoke) mode=cpu ;;
  "") ;;
  *) echo "usage: bash bench/gpu_session.sh [--prepare | --cpu-smoke]" >&2; exit 2 ;;
esac

out="${OUT:-results/gpu-session}"
[ "$mode" = cpu ] && out="${OUT:-results/gpu-session-cpu-smoke}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/revela-gpu-session.XXXXXX")"
started=$(date +%s)
budget="${SESSION_BUDGET:-$([ "$mode" = gpu ] && echo 570 || echo 1800)}"
deadline=$((started + budget))
: > "$out/stages.tsv"
printf '{"mode": "%s", "budget_s": %s, "target_s": 480, "started": %s}\n' "$mode" "$budget" "$started" > "$out/session.json"

# stage  cap (s): GPU / CPU smoke   floor (s): what a later stage keeps for itself when an earlier one runs long
declare -A CAP=([setup]=120/60 [agreement]=90/240 [attention]=90/240 [step-smollm2]=150/300 [step-qwen]=60/300
                [step-llama]=90/300 [train]=180/420 [sweep]=240/900)
declare -A FLOOR=([setup]=60 [agreement]=20 [attention]=20 [step-smollm2]=45 [step-qwen]=20 [step-llama]=30
                  [train]=120 [sweep]=180)
ORDER=(setup agreement attention step-smollm2 step-qwen step-llama train sweep)
SUMMARY_RESERVE=25  # the summary, and the 20 s a timed-out stage gets to exit

# run_stage NAME COMMAND...: COMMAND under its timeout, output in $out/NAME.log, one line in stages.tsv
run_stage() {
  local name=$1; shift
  local cap=${CAP[$name]%/*}; [ "$mode" = cpu ] && cap=${CAP[$name]#*/}
  local later=0 seen=0 s
  for s in "${ORDER[@]}"; do
    (( seen )) && later=$((later + FLOOR[$s]))
    [ "$s" = "$name" ] && seen=1
  done
  local left=$((deadline - $(date +%s) - SUMMARY_RESERVE - later))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 20 )); then
    printf '%s\tskipped\t0\t%s.log\tno time left in the %ss budget\n' "$name" "$name" "$budget" >> "$out/stages.tsv"
    echo "== $name: skipped (no time left)"; return
  fi
  echo "== $name (timeout ${limit}s)"
  local t0=$(date +%s) rc status
  timeout --kill-after=20 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status="failed($rc)" ;; esac
  printf '%s\t%s\t%s\t%s.log\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$name" "timeout ${limit}s" >> "$out/stages.tsv"
  echo "   $status in $(( $(date +%s) - t0 ))s: $(grep -v -e '^{' -e '^[[:space:]]*$' "$out/$name.log" | tail -1 | cut -c1-150)"
}

# ------------------------------------------------------------------------------------------------ 0. setup
if [ "$mode" = gpu ]; then
  PY=python3
  run_stage setup bash -c 'set -e; bash .gpu-bundle/install.sh
    PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} python3 -m pip install -q --no-index --no-deps \
      --no-build-isolation -e .
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader'
  eval "$(grep '^export ' .gpu-bundle/install.sh)"  # the bundle's environment (PYTHONPATH=/tmp/site, Ray, offline)
  assets="$root/.gpu-assets"
  shape=full
else
  PY="${PYTHON:-$root/.venv/bin/python}"
  source scripts/env.sh
  # as on the device (the bundle's slim Ray): Ray's dashboard packages absent, the way a package that is not
  # installed is absent, in every process of the run (SMOKE_DASHBOARD=1 keeps them)
  if [ "${SMOKE_DASHBOARD:-0}" != 1 ]; then
    for m in aiohttp_cors opencensus; do
      mkdir -p "$work/absent/$m"
      echo "raise ModuleNotFoundError(\"No module named '$m'\", name='$m')" > "$work/absent/$m/__init__.py"
    done
    export PYTHONPATH="$work/absent${PYTHONPATH:+:$PYTHONPATH}"
  fi
  assets="$REVELA_CACHE/models/smollm2-135m"  # the real tokenizer; the model is a tiny random-init one of its vocab
  shape=tiny
  printf 'setup\tok\t0\tsetup.log\tCPU smoke: no bundle, no GPU\n' >> "$out/stages.tsv"
  echo "CPU smoke: $($PY -c 'import torch; print("torch", torch.__version__)')" > "$out/setup.log"
fi
export REVELA_CACHE="$work/cache" TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
mkdir -p "$REVELA_CACHE"
# versions and the import check, whatever the setup stage did (its log says why when something is missing)
$PY - "$out/environment.json" <<'PY' >> "$out/setup.log" 2>&1
import importlib, json, subprocess, sys
env = {"python": sys.version.split()[0], "missing": {}}
for name in ("torch", "triton", "transformers", "peft", "ray", "ray.train", "ray.tune", "ray.data", "faiss",
             "datasets", "pytrec_eval", "bm25s", "pandas", "pyarrow", "matplotlib", "typer", "yaml", "rich", "tqdm",
             "pydantic", "safetensors", "sentence_transformers", "revela.cli", "revela.evaluation", "revela.tuning"):
    try:
        module = importlib.import_module(name)
        env[name] = getattr(module, "__version__", "present")
    except Exception as e:  # noqa: BLE001 (reported, not raised)
        env["missing"][name] = f"{type(e).__name__}: {e}"[:200]
try:
    import ray._private.utils as ray_utils
    error = ray_utils.get_dashboard_dependency_error()
    env["ray_dashboard"] = "present" if error is None else f"missing ({error})"
except Exception as e:  # noqa: BLE001
    env["ray_dashboard"] = f"unknown ({e})"
try:
    import torch
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
    env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True).stdout.strip() or None
except Exception as e:  # noqa: BLE001
    env["gpu_error"] = str(e)
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env))
PY

# ------------------------------------------------------------------------------------------------ 1, 2. bench
bench=("$PY" bench/bench_step.py)
if [ "$mode" = cpu ]; then
  bench+=(--smoke); lms=(tiny tiny-wide-vocab tiny); names=(step-smollm2 step-qwen step-llama)
  train_row=(tiny tiny 4 2 16)  # retriever, LM, B, G, L of the step row stage 3 is compared with
else
  lms=(smollm2-135m qwen2.5-0.5b llama-3.2-1b); names=(step-smollm2 step-qwen step-llama)
  train_row=(smollm2-135m smollm2-135m 16 4 160)
fi
run_stage agreement "${bench[@]}" --tables agreement --out "$out/agreement.json"
run_stage attention "${bench[@]}" --tables attention --reps 3 --warmup 1 --out "$out/attention.json"
for i in 0 1 2; do
  if [ "$mode" = cpu ] && [ "$i" = 2 ]; then  # the smoke has two pairs: same vocabulary, and a wider LM vocabulary
    printf '%s\tskipped\t0\t%s.log\tCPU smoke: two step pairs\n' "${names[$i]}" "${names[$i]}" >> "$out/stages.tsv"
    continue
  fi
  run_stage "${names[$i]}" "${bench[@]}" --tables step --lm "${lms[$i]}" --reps 2 --warmup 1 \
    --out "$out/${names[$i]}.json"
done

# ------------------------------------------------------------------------------------------------ 3. train
stdlib="$($PY -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
model="$work/smollm2-135m-random"
$PY - "$assets" "$model" "$shape" <<'PY' > "$out/model.log" 2>&1
"""A random-init model with the real tokenizer: the real shape on a GPU, a tiny one (same vocabulary) on the CPU."""
import shutil, sys
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
assets, target, shape = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
config = AutoConfig.from_pretrained(assets)
if shape == "tiny":
    config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16))
AutoModelForCausalLM.from_config(config).save_pretrained(target)
for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(assets / name, target / name)
print(f"random-init {config.model_type} ({shape}) with the tokenizer of {assets} in {target}")
PY
B=${train_row[2]} G=${train_row[3]} L=${train_row[4]}
printf '{"retriever": "%s", "lm": "%s", "B": %s, "G": %s, "L": %s}\n' "${train_row[@]}" > "$out/train_settings.json"
train_args=(-c jobs/configs/gpu-offline.yaml --overwrite name=gpu-session-train
  "model.retriever.name=$model" "model.lm.name=$model" "data.group_size=$B" "train.groups_per_forward=$G"
  train.max_steps=40 train.heldout_groups=0 train.checkpoint_every=0 "ray.storage_path=$work/runs")
if [ "$mode" = gpu ]; then
  train_args+=("data.sources=[$stdlib/asyncio,$stdlib/email,$stdlib/json,$stdlib/logging,$stdlib/unittest]")
else
  train_args+=("data.sources=[$stdlib/json]" "model.retriever.max_length=$L" "model.lm.max_length=$L"
    "data.max_tokens=$L" data.max_words=12 data.stream_actors=1 train.max_steps=8 train.log_every=1
    train.warmup_steps=1 train.precision=auto ray.use_gpu=false ray.cpus_per_worker=1
    "model.retriever.lora.r=4" "model.lm.lora.r=4")
fi
run_stage train "$PY" -m revela.cli train "${train_args[@]}"
cp "$work/runs/gpu-session-train/metrics.jsonl" "$out/train_metrics.jsonl" 2>/dev/null

# ------------------------------------------------------------------------------------------------ 4. sweep
# Trained on peft's own source (installed wherever this runs), scored on stdlib-code (the stdlib): no overlap.
if [ "$mode" = gpu ]; then sweep_sizes="[8, 16]"; sweep_chunks=32; sweep_budget=320; else
  sweep_sizes="[3, 4]"; sweep_chunks=8; sweep_budget=32; fi
MODEL="$model" ROOT="$root" WORK="$work" MODE="$mode" L="$L" SIZES="$sweep_sizes" CHUNKS="$sweep_chunks" \
BUDGET="$sweep_budget" $PY - "$work/sweep.yaml" <<'PY' > "$out/sweep-config.log" 2>&1
"""Two cells of the paper-batch-size shape with the random-init model as retriever and LM."""
import json, os, sys
from pathlib import Path

import peft
import yaml

e = os.environ
run = {"model": {"retriever": {"name": e["MODEL"]}, "lm": {"name": e["MODEL"]}},
       "data": {"sources": [str(Path(peft.__file__).parent)]},
       "train": {"heldout_groups": 0, "log_every": 2, "keep_checkpoints": 1}}  # warmup: the sweep's warmup_fraction
if e["MODE"] == "gpu":
    run["ray"] = {"num_workers": 1, "use_gpu": True, "gpus_per_worker": 0.75, "cpus_per_worker": 4}
    run["eval"] = {"max_queries": 200, "batch_size": 128, "num_cpus": 1, "num_gpus": 0.25}
else:
    L = int(e["L"])
    for part in ("retriever", "lm"):
        run["model"][part].update(max_length=L, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    run["data"].update(max_tokens=L, max_words=12, stream_actors=1)
    run["train"].update(log_every=1, precision="auto")
    run["ray"] = {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1}
    run["eval"] = {"max_queries": 50, "batch_size": 64, "num_cpus": 0.5, "num_gpus": 0}
sweep = {"name": "gpu-session", "base": f"{e['ROOT']}/jobs/configs/gpu-offline.yaml", "run": run,
         "datasets": ["stdlib-code"], "budget": {"chunks": int(e["BUDGET"])},
         "chunks_per_forward": int(e["CHUNKS"]), "checkpoints": 1, "storage_path": f"{e['WORK']}/sweeps",
         "axes": {"group_size": json.loads(e["SIZES"])}}
Path(sys.argv[1]).write_text(yaml.safe_dump(sweep, sort_keys=False))
print(yaml.safe_dump(sweep, sort_keys=False))
PY
cp "$work/sweep.yaml" "$out/sweep.yaml"
run_stage sweep bash -c "set -o pipefail; '$PY' -m revela.cli sweep --config '$work/sweep.yaml' &&
  '$PY' -m revela.cli report '$work/sweeps/gpu-session' --out '$out/sweep-report'"

# ------------------------------------------------------------------------------------------------ summary
printf '{"mode": "%s", "budget_s": %s, "target_s": 480, "started": %s, "wall_s": %s}\n' \
  "$mode" "$budget" "$started" "$(( $(date +%s) - started ))" > "$out/session.json"
$PY bench/gpu_session_summary.py "$out"
rm -rf "$work"
