"""The shipped Grafana dashboard (jobs/grafana/revela.json): valid JSON with the dashboard-model fields Grafana
reads, one visible variable (the run), and queries over exactly the metric names revela.train.telemetry exports."""

import json
import re
from pathlib import Path

import pytest

from revela.train.telemetry import RUN_TAG, prometheus_names

DASHBOARD = Path(__file__).resolve().parents[1] / "jobs" / "grafana" / "revela.json"
PANEL_TYPES = {"timeseries", "stat"}
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{")  # a metric name with a label matcher


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_dashboard_model_fields(dashboard):
    assert isinstance(dashboard["title"], str) and dashboard["title"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert isinstance(dashboard["schemaVersion"], int) and isinstance(dashboard["version"], int)
    assert set(dashboard["time"]) == {"from", "to"} and isinstance(dashboard["templating"]["list"], list)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) for i in ids)
    cells = set()
    for panel in dashboard["panels"]:
        assert panel["type"] in PANEL_TYPES and panel["title"], panel
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in "hwxy") and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs)
        assert all(t["datasource"] == panel["datasource"] and t["expr"] for t in panel["targets"])


def test_one_variable_for_the_run(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["hide"] == 2  # Ray provisions one Prometheus source: nothing to pick
    visible = [v for v in variables.values() if v.get("hide", 0) != 2]
    assert [v["name"] for v in visible] == [RUN_TAG] and visible[0]["type"] == "query"
    assert visible[0]["query"]["query"] == f"label_values({prometheus_names()['loss']}, {RUN_TAG})"
    for expr in queries(dashboard):
        assert f'{RUN_TAG}=~"${RUN_TAG}"' in expr, expr  # every query follows the chosen runs


def test_queries_use_only_exported_metrics_and_chart_all_of_them(dashboard):
    exported = set(prometheus_names().values())
    used = {name for expr in queries(dashboard) for name in SELECTOR.findall(expr)}
    variable_query = next(v for v in dashboard["templating"]["list"] if v["name"] == RUN_TAG)["query"]["query"]
    used |= set(re.findall(r"label_values\((\w+)", variable_query))
    assert used <= exported, used - exported
    assert used == exported, f"not charted: {exported - used}"
