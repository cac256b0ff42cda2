"""Training metrics exported as Ray custom metrics, so the Ray dashboard (and Prometheus/Grafana) can chart them."""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

GAUGES = {
    "loss": "Pass-3 NTP loss (the training loss)",
    "pass2_loss": "NTP loss of the same chunks without in-batch attention",
    "loss_gap": "pass-2 loss minus pass-3 loss: how much the LM gains from the retrieved chunks",
    "sim_entropy": "Mean row entropy of the retriever's in-batch weights",
    "tokens_per_s": "LM tokens per second, all workers",
    "groups_per_s": "Groups (in-batch attention units) per second, all workers",
    "data_wait_fraction": "Share of wall time the worker waited for data",
}


class DashboardMetrics:
    def __init__(self, run_name: str):
        tags = {"run": run_name}
        self.gauges = {}
        for key, description in GAUGES.items():
            gauge = Gauge(f"revela_{key}", description=description, tag_keys=("run",))
            gauge.set_default_tags(tags)
            self.gauges[key] = gauge
        self.steps = Counter("revela_steps", description="Optimizer steps taken", tag_keys=("run",))
        self.steps.set_default_tags(tags)
        self.tokens = Counter("revela_tokens", description="LM tokens trained on (rank 0)", tag_keys=("run",))
        self.tokens.set_default_tags(tags)

    def record(self, metrics: dict) -> None:
        for key, gauge in self.gauges.items():
            if key in metrics:
                gauge.set(float(metrics[key]))
        self.steps.inc(float(metrics.get("interval_steps", 1)))
        self.tokens.inc(float(metrics.get("tokens", 0)))
