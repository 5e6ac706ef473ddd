"""Every PromQL expression the monitoring runs (dashboard panels, recording and alert rules), in queryable form.

Two rewrites make an expression answerable by an instant query in a test:

* Grafana's variables (``$__rate_interval`` …) become fixed durations;
* an alert's thresholds become ``bool`` comparisons (``x > 1`` → ``x > bool 1``): the expression
  then returns its series with 0 or 1 instead of filtering them away, so "returns at least one
  series" means "its metrics exist and its label matching works", whether or not it would fire.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from recstream.shell.infra import prometheus_rule_files as rule_files

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
DATASOURCE_UID = "recstream-prometheus"

GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
"""Durations standing in for Grafana's variables (1 m: several scrapes at the tests' 1 s interval)."""

COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(\s*bool\b)?")
METRIC = re.compile(r"\brecstream[_:][A-Za-z0-9_:]*")


@dataclass(frozen=True)
class Query:
    """One expression and where it comes from (for failure messages)."""

    where: str
    expr: str

    @property
    def metrics(self) -> set[str]:
        return metric_names(self.expr)


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def rules() -> list[dict]:
    return [
        rule for path in rule_files() for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


def dashboard_queries() -> list[Query]:
    queries = []
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                queries.append(Query(f"{name} / {panel['title']} / {target['refId']}", expr))
    return queries


def rule_queries() -> list[Query]:
    """Recording rules as they are; alert rules with their thresholds turned into ``bool`` comparisons."""
    return [
        Query(f"rule {rule['record']}", rule["expr"])
        if "record" in rule
        else Query(f"alert {rule['alert']}", without_thresholds(rule["expr"]))
        for rule in rules()
    ]


def without_thresholds(expr: str) -> str:
    """Every comparison outside label matchers and strings, in its ``bool`` form.

    >>> without_thresholds('sum(x{a!="b>c"}) > 0 and y <= bool 2 or z == 1')
    'sum(x{a!="b>c"}) > bool 0 and y <= bool 2 or z == bool 1'
    """
    out: list[str] = []
    depth, quote, k = 0, "", 0
    while k < len(expr):
        c = expr[k]
        if quote:
            if c == "\\":
                out.append(expr[k : k + 2])
                k += 2
                continue
            quote = "" if c == quote else quote
        elif c in "\"'`":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0 and (match := COMPARISON.match(expr, k)):
            out.append(match.group(0) if match.group(2) else f"{match.group(1)} bool")
            k = match.end()
            continue
        out.append(c)
        k += 1
    return "".join(out)


def metric_names(expr: str) -> set[str]:
    """The recstream metric and recording-rule names an expression reads.

    >>> sorted(metric_names('rate(recstream_worker_events_total{job="recstream-worker"}[1m]) / recstream:x:y'))
    ['recstream:x:y', 'recstream_worker_events_total']
    """
    return set(METRIC.findall(expr))
