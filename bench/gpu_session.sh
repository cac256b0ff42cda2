#!/usr/bin/env bash
# The issue-8 device check as one prepared run (about 8 minutes on an H100/H200, inside a session's 15):
#   1. agreement: the fused kernels against the fp64 oracle at training shapes, on the GPU;
#   2. the attention and step tables of bench/bench_step.py (random-init models of the real shapes);
#   3. a short `revela train -c jobs/configs/gpu-offline.yaml` (Ray Train, one GPU) on random-init SmolLM2-135M
#      weights with the real tokenizer, to compare its groups/s with the step table's row at the same settings.
#
# On this machine first:  bash bench/gpu_session.sh --prepare      (fills the ignored .gpu-bundle/ and .gpu-assets/)
# Then the device call:    run(command="bash bench/gpu_session.sh", carry=[".gpu-bundle", ".gpu-assets"])
# Results land in $OUT (the device's return folder), else results/gpu/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .gpu-bundle .gpu-assets
  cp -r ../shared/gpu-bundle/. .gpu-bundle/
  source scripts/env.sh
  tok="$REVELA_CACHE/models/smollm2-135m"
  [ -f "$tok/tokenizer.json" ] || { echo "run 'revela assets' first (needs $tok)" >&2; exit 2; }
  cp "$tok"/{config.json,tokenizer.json,tokenizer_config.json} .gpu-assets/
  du -sh .gpu-bundle .gpu-assets
  exit 0
fi

source .gpu-bundle/install.sh
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null
out="${OUT:-results/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

echo "== 1+2. agreement, attention and step tables"
timeout 420 python3 bench/bench_step.py --out "$out/step.json" > "$out/bench.log" 2>&1 || echo "bench exit $?"
grep -v '^{' "$out/bench.log" | tail -60

echo "== 3. revela train on one GPU (random-init SmolLM2-135M, real tokenizer)"
python3 - <<'PY'
import shutil
from transformers import AutoConfig, AutoModelForCausalLM
config = AutoConfig.from_pretrained(".gpu-assets")
AutoModelForCausalLM.from_config(config).save_pretrained("/root/smollm2-random")
for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(f".gpu-assets/{name}", "/root/smollm2-random/")
PY
stdlib="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
timeout 300 python3 -m revela.cli train -c jobs/configs/gpu-offline.yaml --overwrite \
  model.retriever.name=/root/smollm2-random model.lm.name=/root/smollm2-random \
  "data.sources=[$stdlib/asyncio,$stdlib/email,$stdlib/json,$stdlib/logging,$stdlib/unittest]" \
  train.max_steps=40 train.heldout_groups=0 train.checkpoint_every=0 ray.storage_path=/root/runs \
  > "$out/train.log" 2>&1 || echo "train exit $?"
tail -5 "$out/train.log"
cp /root/runs/revela-gpu-offline/metrics.jsonl "$out/train_metrics.jsonl" 2>/dev/null || true
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/train_metrics.jsonl")]
late = [r for r in rows if r["step"] > 10]  # after compile/warm-up
print("revela train groups/s (steps > 10):", sum(r["groups_per_s"] for r in late) / max(1, len(late)),
      "data_wait_fraction:", rows[-1]["data_wait_fraction"])
PY
