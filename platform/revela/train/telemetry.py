"""Training metrics exported as Ray custom metrics, so the Ray dashboard (and Prometheus/Grafana) can chart them.

Every series carries the tag `run` (the run name). Ray's metrics agent serves them on each node's Prometheus
endpoint (`ray start --metrics-export-port`) as `ray_revela_<key>`, counters with the suffix `_total`; the Grafana
dashboard in jobs/grafana/revela.json charts those names (`prometheus_names()`).
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

GAUGES = {
    "loss": "Pass-3 NTP loss (the training loss)",
    "pass2_loss": "NTP loss of the same chunks without in-batch attention",
    "loss_gap": "pass-2 loss minus pass-3 loss: how much the LM gains from the retrieved chunks",
    "sim_entropy": "Mean row entropy of the retriever's in-batch weights",
    "sim_entropy_fraction": "Mean Sim row entropy as a fraction of its maximum ln(B-1) (0: one-hot, 1: uniform)",
    "temperature": "tau of Sim = softmax(cos / tau): the config's, or calibrated (temperature: auto)",
    "tokens_per_s": "LM tokens per second, all workers",
    "groups_per_s": "Groups (in-batch attention units) per second, all workers",
    "data_wait_fraction": "Share of wall time the worker waited for data",
}
COUNTERS = {
    "steps": "Optimizer steps taken",
    "tokens": "LM tokens trained on (rank 0)",
}
RUN_TAG = "run"
PROMETHEUS_PREFIX = "ray_"  # Ray's exporter prefixes application metrics; OpenTelemetry adds _total to counters


def metric_name(key: str) -> str:
    return f"revela_{key}"


def prometheus_names() -> dict[str, str]:
    """Metric key -> the series name on Ray's Prometheus endpoint."""
    names = {key: PROMETHEUS_PREFIX + metric_name(key) for key in GAUGES}
    names.update({key: f"{PROMETHEUS_PREFIX}{metric_name(key)}_total" for key in COUNTERS})
    return names


class DashboardMetrics:
    """Rank 0's exporter. `start_step`: the step the process starts from (a resumed checkpoint's), so that
    `revela_steps` counts the optimizer steps this process takes even when only logging steps are recorded."""

    def __init__(self, run_name: str, start_step: int = 0):
        self.last_step = start_step
        tags = {RUN_TAG: run_name}
        self.gauges = {}
        for key, description in GAUGES.items():
            gauge = Gauge(metric_name(key), description=description, tag_keys=(RUN_TAG,))
            gauge.set_default_tags(tags)
            self.gauges[key] = gauge
        self.counters = {}
        for key, description in COUNTERS.items():
            counter = Counter(metric_name(key), description=description, tag_keys=(RUN_TAG,))
            counter.set_default_tags(tags)
            self.counters[key] = counter

    def record(self, metrics: dict) -> None:
        for key, gauge in self.gauges.items():
            if key in metrics:
                gauge.set(float(metrics[key]))
        step = int(metrics.get("step", self.last_step + 1))
        if step > self.last_step:
            self.counters["steps"].inc(step - self.last_step)
        self.last_step = step
        tokens = float(metrics.get("tokens", 0))
        if tokens > 0:  # a Counter refuses non-positive increments
            self.counters["tokens"].inc(tokens)
