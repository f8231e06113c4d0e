"""The example alert rules, the Grafana dashboard and the chart's autoscaler use only metrics a
running gateway exports, and every alert has its entry in the runbook (docs/operations.md).
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
import yaml

from tests.support.harness import Gateway
from tests.support.helm import CHART, REPO

pytestmark = pytest.mark.e2e

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "voxgate.json"
RUNBOOK = REPO / "docs" / "operations.md"
VOXGATE_METRIC = re.compile(r"\bvoxgate_[a-z0-9_]+\b")

# The sample names a family of each type exposes (Prometheus text format).
SUFFIXES = {
    "counter": ("",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


def exposed_names(text: str) -> set[str]:
    """Every sample name /metrics can carry, including families with no sample yet (labelled, unused)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names |= {family + suffix for suffix in SUFFIXES.get(kind, ("",))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def referenced() -> dict[str, set[str]]:
    """Metric name -> where it is used."""
    uses: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in VOXGATE_METRIC.findall(rule["expr"]):
            uses.setdefault(name, set()).add(f"alert {rule['alert']}")
    for expr in dashboard_exprs():
        for name in VOXGATE_METRIC.findall(expr):
            uses.setdefault(name, set()).add("dashboard")
    hpa_metric = yaml.safe_load((CHART / "values.yaml").read_text())["autoscaling"]["sessions"]["metricName"]
    uses.setdefault(hpa_metric, set()).add("chart autoscaling.sessions.metricName")
    return uses


async def test_every_metric_used_is_exported_by_the_gateway(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.server.http_url) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    exported = exposed_names(response.text)
    uses = referenced()
    assert len(uses) >= 10  # the assets cover sessions, refusals, responses, cost, ledger, live state
    missing = {name: sorted(where) for name, where in uses.items() if name not in exported}
    assert not missing, f"used but not exported by the gateway: {missing}"


def test_every_alert_is_complete_and_has_a_runbook_entry() -> None:
    runbook = RUNBOOK.read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", runbook, flags=re.M)
    }
    rules = alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules), "alert names are unique"
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor in anchors, f"{rule['alert']}: no runbook section #{anchor}"


def test_the_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "voxgate"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("sessions", "refusals", "spend", "ledger"):
        assert topic in titles
