"""bench/bench_step.py's glue on the CPU (its numbers come from a GPU): each model reads token ids of its own
vocabulary, the reference attention row runs in bf16, and a row that fails is recorded while the run goes on."""

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_step", ROOT / "bench" / "bench_step.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
CPU = torch.device("cpu")


def test_retriever_and_lm_read_ids_of_their_own_vocabularies():
    batch = bench.random_groups(2, 4, 32, retriever_vocab=1000, lm_vocab=3000, device=CPU)
    for key in ("query_input_ids", "passage_input_ids"):
        assert int(batch[key].max()) < 1000
    assert 1000 <= int(batch["lm_input_ids"].max()) < 3000


def test_step_row_of_a_retriever_and_an_lm_with_different_vocabularies():
    assert bench.config_of("tiny").vocab_size < bench.config_of("tiny-wide-vocab").vocab_size
    rows = list(bench.step_rows("tiny", "tiny-wide-vocab", 4, (1,), 16, CPU, reps=1, warmup=0, lora_r=4,
                                backend="auto"))
    assert len(rows) == 1 and "error" not in rows[0], rows
    assert rows[0]["groups_per_s"] > 0 and rows[0]["plain_ms"] > 0


def test_attention_rows_in_bf16_including_the_reference():
    rows = list(bench.attention_rows([3], CPU, torch.bfloat16, reps=1, warmup=0, L=8, d=16))
    assert [r["impl"] for r in rows] == ["blockwise", "reference", "floor"]  # fused needs a GPU to be timed
    assert all("error" not in r and r["ms"] > 0 for r in rows), rows


def test_a_failing_row_records_its_error_and_the_next_row_runs():
    def fails(row):
        raise ValueError("the Triton in-batch attention takes ...\nsecond line")

    failed = bench.measured({"table": "step"}, fails, CPU)
    assert failed["error"] == "ValueError: the Triton in-batch attention takes ..."
    assert bench.measured({"table": "step"}, lambda row: row.update(ms=1.0), CPU) == {"table": "step", "ms": 1.0}
    assert bench.LOST_CONTEXT == []  # a CPU error never loses a device context


def test_after_an_error_that_loses_the_device_context_later_rows_say_so(monkeypatch):
    """A device-side assert leaves a CUDA context unusable (simulated here: the device probe fails)."""
    monkeypatch.setattr(bench, "device_usable", lambda device: False)
    monkeypatch.setattr(bench, "LOST_CONTEXT", [])
    ran = []

    def device_assert(row):
        raise RuntimeError("CUDA error: device-side assert triggered")

    bench.measured({"table": "step", "lm": "qwen2.5-0.5b", "B": 16, "G": 1}, device_assert, CPU)
    later = bench.measured({"table": "step", "lm": "llama-3.2-1b", "B": 16, "G": 1}, ran.append, CPU)
    assert ran == [] and later["error"].startswith("not run: the CUDA context was lost at an earlier row")
    assert "qwen2.5-0.5b" in later["error"] and "device-side assert" in later["error"]
