#!/usr/bin/env bash
# The issue-17 device check as one prepared run (about 10 minutes on an H100/H200): where a step's time and memory
# go, the memory levers, the two in-batch kernel sets, and the compiled retriever, with random-init models of the
# real shapes (SmolLM2-135M retriever and LM, LoRA r=256, B=16, L=160, bf16 autocast). Stages, most important first,
# each with its own timeout; every result is JSON in $OUT (else results/gpu_speed/), printed as tables at the end.
#
#   1. G=8 step, levers off / all on: groups/s, peak, time split by phase (retriever, LM pass 2, LM pass 3, in-batch
#      attention, logits + CE, optimizer: GPU kernel time), Chrome traces and memory snapshots (pytorch.org/memory_viz)
#   2. the kernels: agreement with the fp64 oracle and fwd+bwd time of fused_packed / fused_split vs the SDPA floor
#   3. memory per group (G=2 minus G=1) by part of the step and by tensor, for every lever, at the full 30 layers
#   4. the same G=8 step with the split kernels, and with the compiled retriever (A/B)
#   5. groups/s against G with all levers on (the plateau and the largest G that fits)
#
# On this machine first:  bash bench/gpu_session.sh --prepare     (fills the ignored .gpu-bundle/ and .gpu-assets/)
# Then the device call:    run(command="bash bench/gpu_speed.sh", carry=[".gpu-bundle", ".gpu-assets"], timeout_s=600)
# Check the script itself on a CPU (tiny shapes, seconds per stage):  bash bench/gpu_speed.sh --smoke
set -uo pipefail
cd "$(dirname "$0")/.."

smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
out="${OUT:-results/gpu_speed}"
mkdir -p "$out"
if [ $smoke = 1 ]; then
  py=".venv/bin/python"
  export TRITON_INTERPRET=1
  common=(--smoke)
  config=()
else
  source .gpu-bundle/install.sh
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null
  py=python3
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
  common=(--layers 30 --precision bf16)
  config=(--config .gpu-assets)
fi
$py -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

stage() {  # stage NAME SECONDS CMD...  (the CPU smoke gets 20x the time: the kernels run in an interpreter there)
  local name=$1 limit=$(( smoke ? 20 * $2 : $2 ))
  shift 2
  echo "== $name"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1 || echo "$name: exit $?"
  grep -v '^{' "$out/$name.log" | grep '^|' | tail -40
}

stage 1-step-g8 170 $py bench/profile_step.py --time "${common[@]}" "${config[@]}" --groups 8 \
  --levers baseline all --trace-dir "$out/traces" --out "$out/step_g8.json"
stage 2-kernels 120 $py bench/bench_step.py --tables agreement attention $([ $smoke = 1 ] && echo --smoke) \
  --out "$out/kernels.json"
stage 3-memory 150 $py bench/profile_step.py "${common[@]}" "${config[@]}" --groups 1 2 \
  --levers baseline chunked_ce ckpt_pass3 ckpt_pass2 ckpt_retriever all --out "$out/memory.json"
stage 4a-step-g8-split 60 env REVELA_INBATCH_KERNEL=split $py bench/profile_step.py --time "${common[@]}" "${config[@]}" \
  --groups 8 --levers baseline --out "$out/step_g8_split.json"
stage 4b-step-g8-compiled 120 $py bench/profile_step.py --time "${common[@]}" "${config[@]}" --groups 8 \
  --levers compiled_retriever --warmup 3 --out "$out/step_g8_compiled.json"
stage 5-g-scan 120 $py bench/profile_step.py --time "${common[@]}" "${config[@]}" --groups 16 32 48 \
  --levers all --warmup 1 --reps 2 --out "$out/g_scan.json"
ls "$out"
