"""Micro-benchmark: inbatch_attention vs the plain [B, B, H, L, L] reference, forward + backward.

    .venv/bin/python bench/bench_attention.py                       # CPU, fp32, B = 8 16 32
    .venv/bin/python bench/bench_attention.py --device cuda --dtype bf16 --batch 16 64 128

Each (implementation, B) runs in a fresh subprocess so peak memory is its own: CUDA's max_memory_allocated
on GPU, the process's peak RSS growth on CPU. Prints one JSON line per case and a summary table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASE = r"""
import json, resource, statistics, sys, time, torch
sys.path.insert(0, {tests!r})
from oracle import plain_inbatch_attention
from revela.attention import inbatch_attention
impl, B, H, Hkv, L, d, device, dtype, reps = {args!r}
dtype = {{"fp32": torch.float32, "bf16": torch.bfloat16}}[dtype]
fn = plain_inbatch_attention if impl == "plain" else inbatch_attention
g = torch.Generator(device=device).manual_seed(0)
def inputs():
    q = torch.randn(B, H, L, d, device=device, dtype=dtype, generator=g, requires_grad=True)
    k = torch.randn(B, Hkv, L, d, device=device, dtype=dtype, generator=g, requires_grad=True)
    v = torch.randn(B, Hkv, L, d, device=device, dtype=dtype, generator=g, requires_grad=True)
    w = torch.randn(B, B, device=device, generator=g).softmax(-1).to(dtype).requires_grad_(True)
    mask = torch.ones(B, L, dtype=torch.bool, device=device)
    mask[:, L - L // 4:] = torch.rand(B, L // 4, device=device, generator=g) > 0.5
    mask[:, 0] = True
    return q, k, v, w, mask
def sync():
    if device == "cuda": torch.cuda.synchronize()
q, k, v, w, mask = inputs()
sync()
if device == "cuda":
    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
times = []
for rep in range(reps + 1):
    sync(); t = time.perf_counter()
    out = fn(q, k, v, w, mask)
    out.float().square().mean().backward()
    sync(); times.append(time.perf_counter() - t)
    q.grad = k.grad = v.grad = w.grad = None
    del out
if device == "cuda":
    peak = torch.cuda.max_memory_allocated() - base
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
print(json.dumps({{"impl": impl, "B": B, "H": H, "Hkv": Hkv, "L": L, "d": d, "device": device,
                  "dtype": {dtype_name!r}, "fwd_bwd_ms_median": 1000 * statistics.median(times[1:]),
                  "peak_extra_mib": peak / 2**20}}))
"""


def run_case(impl: str, B: int, a) -> dict:
    args = (impl, B, a.heads, a.kv_heads, a.length, a.head_dim, a.device, a.dtype, a.reps)
    code = CASE.format(tests=str(ROOT / "tests"), args=args, dtype_name=a.dtype)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return {"impl": impl, "B": B, "error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--heads", type=int, default=14)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--length", type=int, default=160)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    a = p.parse_args()
    rows = []
    for B in a.batch:
        for impl in ("plain", "inbatch_attention"):
            row = run_case(impl, B, a)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'B':>4} {'impl':>18} {'fwd+bwd ms':>11} {'peak MiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['B']:>4} {r['impl']:>18}  error: {r['error']}")
        else:
            print(f"{r['B']:>4} {r['impl']:>18} {r['fwd_bwd_ms_median']:>11.1f} {r['peak_extra_mib']:>9.1f}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
