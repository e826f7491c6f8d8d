"""deploy/observability/ (docs/observability.md §2-§3): the alert rules pass `promtool check rules`
and their unit tests (`promtool test rules`), and every metric a rule or a dashboard names is one
the gateway exports. promtool comes from Debian's `prometheus` package, which `.ci/run` installs:
without it these tests fail rather than skip, so a missing check never looks like a passing one."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from services.core import telemetry

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts_test.yml"
DASHBOARDS = sorted((DEPLOY / "dashboards").glob("*.json"))
DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself for every scrape target

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
             "offset", "bool", "inf", "nan"}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana `label_values(metric, label)` query)
    reads: identifiers that are neither functions, keywords, label names nor durations."""
    found = set(re.findall(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,", expr))
    if found:
        return found
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _GROUPING.sub("", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def exported_names() -> set[str]:
    """The series names the gateway's registry exposes, with the suffixes Prometheus sees."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    for metric in (m for m in vars(telemetry).values() if isinstance(m, MetricWrapperBase)):
        for family in metric.describe():
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["query"]["query"])
    return queries


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `apt-get install -y prometheus` (.ci/run does it)")
    return path


@pytest.mark.parametrize("command", [["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]])
def test_promtool_accepts_the_rules_and_their_tests(command: list[str]) -> None:
    result = subprocess.run([promtool(), *command], cwd=DEPLOY, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_silent() -> None:
    """Each alert fires in some case, and stays silent on a healthy series: in a case expecting no
    alert, or beside the firing series in the same case (a healthy provider, store, model...)."""
    fired: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        series_labels = [dict(re.findall(r'(\w+)="([^"]*)"', s["series"])) for s in case["input_series"]]
        for check in case["alert_rule_test"]:
            name, alerts = check["alertname"], check["exp_alerts"]
            if not alerts:
                silent.add(name)
                continue
            fired.add(name)
            keys = {key for alert in alerts for key in alert["exp_labels"]} - {"severity", "job"}
            firing = {(key, alert["exp_labels"][key]) for alert in alerts for key in keys}
            healthy = ((key, labels[key]) for labels in series_labels for key in keys if key in labels)
            if any(pair not in firing for pair in healthy):
                silent.add(name)
    names = {rule["alert"] for rule in rules()}
    assert fired == names
    assert silent == names


def test_every_rule_and_panel_names_only_exported_metrics() -> None:
    exported = exported_names() | PROMETHEUS_OWN
    named: dict[str, set[str]] = {}
    for rule in rules():
        named[f"alert {rule['alert']}"] = metric_names(rule["expr"])
    for path in DASHBOARDS:
        for query in dashboard_queries(json.loads(path.read_text())):
            named[f"{path.name}: {query}"] = metric_names(query)
    unknown = {where: names - exported for where, names in named.items() if names - exported}
    assert not unknown
    assert all(named.values()), [where for where, names in named.items() if not names]
    used = set().union(*named.values())
    # The check itself sees what it should: most families are used, a typo is caught.
    assert len(used) >= 15
    assert metric_names('sum by (le) (rate(aggregator_requets_total{type=~"a|b"}[5m] offset 1d))') == {
        "aggregator_requets_total"}
    assert metric_names("label_values(aggregator_requests_total, endpoint)") == {"aggregator_requests_total"}


def test_three_dashboards_with_described_panels_on_a_datasource_variable() -> None:
    assert {path.stem for path in DASHBOARDS} == {"operations", "business", "providers"}
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        uids.add(dashboard["uid"])
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert len(panels) >= 6, path.name
        for panel in panels:
            assert panel["description"] and panel["targets"], (path.name, panel["title"])
            assert panel["datasource"]["uid"] == "${datasource}"
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
    assert len(uids) == 3


def test_every_alert_has_a_section_in_the_docs() -> None:
    text = DOCS.read_text()
    for rule in rules():
        assert f"`{rule['alert']}`" in text, rule["alert"]
        assert rule["annotations"]["runbook"].startswith("docs/observability.md §2")
