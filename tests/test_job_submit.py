"""`ray job submit` of a training config against a local head: the job succeeds, checkpoints and metrics are
written, the job's log is clean (one line per logged step, no tracebacks, no per-step result dumps), the revela_*
metrics reach the node's Prometheus endpoint with the run's tag and metrics.jsonl's values, the dashboard answers on
127.0.0.1 without a token (auth explicitly off), and Ray listens on loopback only."""

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import psutil
import pytest
import yaml

from console_checks import false_alarms
from revela.train.telemetry import GAUGES, RUN_TAG, prometheus_names
from tiny import tiny_run_overrides, write_tiny_run_assets

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, json.loads(r.read())


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    ports = {"gcs": free_port(), "dashboard": free_port(), "client": free_port(), "agent": free_port(),
             "metrics": free_port()}
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "4", "--node-ip-address", "127.0.0.1",
           "--port", str(ports["gcs"]), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(ports["dashboard"]),
           "--ray-client-server-port", str(ports["client"]), "--dashboard-agent-listen-port", str(ports["agent"]),
           "--disable-usage-stats", "--include-dashboard", "true", "--metrics-export-port", str(ports["metrics"]),
           # export custom metrics every second (default 10 s): a 2-step job's gauges reach the endpoint while it runs
           "--system-config", json.dumps({"metrics_report_interval_ms": 1000})]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{ports['dashboard']}"
    deadline = time.time() + 120
    while True:
        try:
            get_json(f"{url}/api/version")
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("the Ray head did not come up")
            time.sleep(1)
    yield {"url": url, "pid": proc.pid, "env": env, "metrics": f"http://127.0.0.1:{ports['metrics']}/metrics"}
    os.killpg(proc.pid, signal.SIGTERM)  # only this head's processes, unlike `ray stop`
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_job_submit_trains_and_dashboard_answers_on_loopback(head, tmp_path):
    assets = write_tiny_run_assets(tmp_path / "assets")
    storage = tmp_path / "runs"
    overrides = tiny_run_overrides(assets, storage, "submitted", num_workers=2, max_steps=2, checkpoint_every=1,
                                   heldout_groups=0)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({}))
    submit = [str(BIN / "ray"), "job", "submit", "--address", head["url"], "--working-dir", str(ROOT),
              "--runtime-env", str(ROOT / "jobs" / "runtime_env.yaml"), "--submission-id", "revela-test-job",
              "--no-wait", "--", "python", "jobs/train.py", "--config", str(config), *overrides]
    out = subprocess.run(submit, env=head["env"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Prometheus scrapes while the job runs: a gauge leaves the endpoint ~2 export intervals after its worker exits
    snapshots = scrape_while_running(head, "revela-test-job", run="submitted")

    status, version = get_json(f"{head['url']}/api/version")  # no bearer token: auth is explicitly disabled
    assert status == 200 and version["ray_version"]
    _, job = get_json(f"{head['url']}/api/jobs/revela-test-job")
    assert job["status"] == "SUCCEEDED", get_json(f"{head['url']}/api/jobs/revela-test-job/logs")[1]["logs"][-3000:]

    with urllib.request.urlopen(f"{head['url']}/api/train/v2/runs/v1", timeout=10) as r:  # Train state tracking on
        assert r.status == 200 and "submitted" in r.read().decode()

    run_dir = storage / "submitted"
    assert len(list(run_dir.glob("checkpoint_*/revela_checkpoint.json"))) == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert json.loads((run_dir / "report.json").read_text())["steps"] == 2

    # what `ray job logs` shows: the driver's and the forwarded worker output, one line per logged step
    log = get_json(f"{head['url']}/api/jobs/revela-test-job/logs")[1]["logs"]
    assert not false_alarms(log), log[-3000:]
    assert "\r" not in log  # no progress bar redraws in a log file
    assert "step 1/2 | loss" in log and "step 2/2 | loss" in log and "report: " in log

    # the revela_* series carry the run's tag and metrics.jsonl's values
    names = prometheus_names()
    assert snapshots, "no scrape during the run saw the run's gauges"
    for snap in snapshots:  # each scrape shows one logged step's values (gauges hold the last value set)
        assert any(all(snap[names[k]] == pytest.approx(r[k], rel=1e-6) for k in GAUGES) for r in rows), snap
    counters = scrape_until(head["metrics"], "submitted", lambda s: s.get(names["steps"]) == 2)  # counters stay
    assert counters[names["tokens"]] == pytest.approx(sum(r["tokens"] for r in rows))

    # every listening socket of this head's process tree is on loopback
    tree = [psutil.Process(head["pid"]), *psutil.Process(head["pid"]).children(recursive=True)]
    pids = {p.pid for p in tree}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening
    assert all(is_loopback(c.laddr.ip) for c in listening), [c.laddr for c in listening]


def scrape(url: str, run: str) -> dict[str, float]:
    """{series name: value} of the run's revela_* series on a node's Prometheus endpoint."""
    names = set(prometheus_names().values())
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name in names and s.labels.get(RUN_TAG) == run}


def scrape_while_running(head: dict, submission_id: str, run: str, timeout_s: float = 400) -> list[dict]:
    """Scrapes (twice a second) that saw every gauge of the run, until the job reaches a terminal state."""
    gauges = {prometheus_names()[k] for k in GAUGES}
    snapshots, deadline = [], time.time() + timeout_s
    while time.time() < deadline:
        samples = scrape(head["metrics"], run)
        if gauges <= samples.keys():
            snapshots.append(samples)
        if get_json(f"{head['url']}/api/jobs/{submission_id}")[1]["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return snapshots
        time.sleep(0.5)
    pytest.fail(f"job {submission_id} did not finish in {timeout_s}s")


def scrape_until(url: str, run: str, done, timeout_s: float = 30) -> dict[str, float]:
    deadline = time.time() + timeout_s
    while True:
        samples = scrape(url, run)
        if done(samples):
            return samples
        if time.time() > deadline:
            pytest.fail(f"{url}: revela metrics of run {run!r} after {timeout_s}s: {samples}")
        time.sleep(1)
