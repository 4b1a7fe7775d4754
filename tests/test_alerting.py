"""The alerts and the dashboard as Prometheus and Grafana read them: promtool's own checks and
unit tests of deploy/prometheus/rules.yaml, and every metric the rules and the dashboard's panels
name is one a real server exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from claude_sessions.errors import BudgetExceededError, RateLimitedError
from claude_sessions.observability.telemetry import WORKER_STATES
from claude_sessions.offline_model import OfflineModelServer
from claude_sessions.store.records import CreateOutcome
from helpers import wait_no_cli
from server_process import start_server

DEPLOY = Path(__file__).parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yaml"
RULE_TESTS = Path(__file__).parent / "data" / "rules_test.yaml"
DASHBOARD = DEPLOY / "grafana" / "claude-sessions.json"
#: Series not ours that a rule or a panel may name: Prometheus's own.
FOREIGN = {"up"}
SEVERITIES = {"critical", "warning", "info"}

#: PromQL's functions, aggregations and keywords: any other identifier in an expression is a metric.
_PROMQL_WORDS = """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max
    clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv exp
    floor histogram_count histogram_fraction histogram_quantile histogram_sum holt_winters hour idelta increase
    irate label_join label_replace last_over_time ln log10 log2 max_over_time min_over_time minute month pi
    predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_desc
    sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp vector year
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    by without on ignoring group_left group_right and or unless bool offset atan2 inf nan
"""
PROMQL_WORDS = frozenset(_PROMQL_WORDS.split())
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside strings, label matchers,
    ranges and grouping clauses, less PromQL's own words. A misspelt function counts as a metric:
    strict on purpose."""
    bare = _STRING.sub('""', expr)
    bare = re.sub(r"\{[^}]*\}", "{}", bare)
    bare = re.sub(r"\[[^\]]*\]", "[]", bare)
    bare = _GROUPING.sub(" ", bare)
    bare = re.sub(r"\$\w+", " ", bare)  # a dashboard's variables
    return {name for name in _IDENTIFIER.findall(bare) if name not in PROMQL_WORDS}


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def variable_metrics() -> set[str]:
    """Metrics the dashboard's variables list label values of (``label_values(metric{...}, label)``)."""
    queries = [v["query"]["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]
    return {match for query in queries for match in re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)", query)}


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def used_metrics() -> dict[str, set[str]]:
    """Each metric the rules and the dashboard read, with where (which alert, record or panel)."""
    used: dict[str, set[str]] = {}
    for rule in rules():
        for name in metric_names(rule["expr"]) - recorded():
            used.setdefault(name, set()).add(rule.get("alert") or rule["record"])
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                used.setdefault(name, set()).add(f"panel {panel['title']!r}")
    for name in variable_metrics():
        used.setdefault(name, set()).add("a variable")
    return used


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").is_file() else None)
    assert found, "promtool is needed (Debian: apt-get install -y --no-install-recommends prometheus)"
    return subprocess.run([found, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def exported(metrics_text: str) -> tuple[set[str], set[str]]:
    """The sample names a ``/metrics`` page holds, and the ones its declared families (``# TYPE``)
    stand for, samples or not yet (a labelled counter shows none until its first event)."""
    samples: set[str] = set()
    declared: set[str] = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for family in text_string_to_metric_families(metrics_text):
        samples.update(sample.name for sample in family.samples)
        declared.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    return samples, declared


def unknown(exprs: list[str], names: set[str]) -> set[str]:
    return {name for expr in exprs for name in metric_names(expr)} - names - FOREIGN


# -- promtool ------------------------------------------------------------------------------


def test_the_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


def test_the_alerts_fire_as_their_promtool_unit_tests_expect() -> None:
    tested = promtool("test", "rules", RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_unit_tested_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert {rule["alert"] for rule in rules() if "alert" in rule} == fired


def test_the_dashboards_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel's query, its Grafana variables given values, as a recording rule."""
    exprs = [re.sub(r"\$\w+", ".*", re.sub(r"\$__\w+", "5m", expr)) for expr in dashboard_exprs()]
    as_rules = {
        "groups": [{"name": "dashboard", "rules": [{"record": f"panel:{i}", "expr": e} for i, e in enumerate(exprs)]}]
    }
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(json.dumps(as_rules))  # JSON is YAML
    checked = promtool("check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- the files' shape ----------------------------------------------------------------------


def test_every_alert_has_a_delay_a_severity_and_templated_annotations() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    assert alerts
    for alert in alerts:
        name = alert["alert"]
        assert re.fullmatch(r"\d+[smh]", alert.get("for", "")), name
        assert alert["labels"]["severity"] in SEVERITIES, name
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], name
        if "absent(" not in alert["expr"]:  # absent() has no labels to name
            assert "{{ $labels." in annotations["summary"] + annotations["description"], name


def test_the_alerts_cover_nodes_pool_model_budgets_and_the_database() -> None:
    records = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}

    def reads(expr: str) -> set[str]:
        """The metrics an expression reads, through the recording rules it names."""
        names = metric_names(expr)
        return names.union(*(reads(records[name]) for name in names & set(records)))

    read = set().union(*(reads(rule["expr"]) for rule in rules() if "alert" in rule))
    assert {
        "up",
        "claude_sessions_pool_max_workers",
        "claude_sessions_api_errors_total",
        "claude_sessions_turns_refused_total",
        "claude_sessions_rejected_total",
        "claude_sessions_database_up",
    } <= read


def test_the_label_values_the_rules_and_panels_match_exist() -> None:
    """``reason`` and ``state`` values a matcher names are ones the code sets (a typo matches nothing)."""
    reasons = {BudgetExceededError.kind, RateLimitedError.kind} | (set(get_args(CreateOutcome)) - {"created", "exists"})
    known = {"reason": reasons, "state": set(WORKER_STATES)}
    exprs = [rule["expr"] for rule in rules()] + dashboard_exprs()
    seen = 0
    for expr in exprs:
        for label, value in re.findall(r'\b(reason|state)\s*[!=]~?\s*"([^"]*)"', expr):
            for alternative in value.split("|"):
                assert alternative in known[label], f"{label}={alternative!r} in {expr}"
                seen += 1
    assert seen >= 5


def test_the_dashboard_is_templated_on_its_data_source_job_and_instance() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39 and board["uid"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert 'job=~"$job"' in target["expr"], (panel["title"], target["expr"])
    cells = [
        (x, y)
        for p in board["panels"]
        for g in [p["gridPos"]]
        for x in range(g["x"], g["x"] + g["w"])
        for y in range(g["y"], g["y"] + g["h"])
    ]
    assert len(cells) == len(set(cells)), "panels overlap"


# -- the metric names ----------------------------------------------------------------------


def test_metric_names_are_read_from_promql_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, job) (rate(claude_sessions_turn_duration_seconds_bucket{job=~"$job",'
        ' state!="a b"}[$__rate_interval] offset 5m))) / on (job) group_left(instance) up{job="x"} > bool 1e3'
        ' and ignoring(tenant) job:claude_sessions_messages:rate5m unless label_replace(foo, "a", "$1", "b", "(.*)")'
    )
    assert metric_names(expr) == {
        "claude_sessions_turn_duration_seconds_bucket",
        "up",
        "job:claude_sessions_messages:rate5m",
        "foo",
    }


def test_the_rules_and_the_panels_name_only_our_metrics_and_up() -> None:
    foreign = {name for name in used_metrics() if not name.startswith("claude_sessions_")}
    assert foreign <= FOREIGN, foreign


@pytest.mark.slow
def test_every_metric_the_rules_and_the_dashboard_read_is_one_a_server_exports(
    offline_server: OfflineModelServer, tmp_path: Path
) -> None:
    server = start_server(
        tmp_path,
        offline_server.base_url,
        CP_MAX_LIVE="4",
        CP_MAX_SIZE="3",
        TENANT_MAX_SESSIONS="2",
        TENANT_TURNS_PER_MINUTE="bob:1",
        OPT_CLI_MAX_RETRIES="0",  # a model error ends its turn at once
        OPT_MESSAGE_TIMEOUT="2",
    )
    pids: set[int] = set()
    try:
        with server.client("alice") as alice, server.client("bob") as bob, server.client("admin") as admin:
            assert alice.post("/v1/sessions", json={"session_id": "watched"}).status_code == 201
            turn = alice.post("/v1/sessions/watched/messages?stream=false", json={"content": "hello"})
            assert turn.status_code == 200, turn.text
            failed = alice.post("/v1/sessions/watched/messages?stream=false", json={"content": "[[fail:529]] x"})
            assert failed.status_code == 502 and failed.json()["error"]["type"] == "model_error"
            timed_out = alice.post("/v1/sessions/watched/messages?stream=false", json={"content": "[[hang]] x"})
            assert timed_out.status_code == 504
            assert bob.post("/v1/sessions", json={"session_id": "b1"}).status_code == 201
            assert bob.post("/v1/sessions/b1/messages?stream=false", json={"content": "one"}).status_code == 200
            refused = bob.post("/v1/sessions/b1/messages?stream=false", json={"content": "two"})
            assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limited"
            assert bob.post("/v1/sessions", json={"session_id": "b2"}).status_code == 201
            assert bob.post("/v1/sessions", json={"session_id": "b3"}).status_code == 429  # TENANT_MAX_SESSIONS
            page = admin.get("/metrics")
            assert page.status_code == 200
            pids = server.cli_pids()
    finally:
        server.end()
    assert wait_no_cli(pids) == [], "the server's CLIs outlived it"

    samples, declared = exported(page.text)
    # What the turns above did shows as samples, not only as declared families.
    for name in [
        "claude_sessions_messages_total",
        "claude_sessions_api_errors_total",
        "claude_sessions_turn_timeouts_total",
        "claude_sessions_turns_refused_total",
        "claude_sessions_rejected_total",
        "claude_sessions_tokens_total",
        "claude_sessions_cost_usd_total",
        "claude_sessions_turn_duration_seconds_bucket",
        "claude_sessions_worker_connect_duration_seconds_bucket",
    ]:
        assert name in samples, name
    names = samples | declared
    missing = {name: where for name, where in used_metrics().items() if name not in names | FOREIGN}
    assert missing == {}, f"not exported by the server: {missing}"
    assert unknown(dashboard_exprs() + [r["expr"] for r in rules()], names | recorded()) == set()
    # The check can fail: a misspelt name, in a rule or a panel, is caught.
    assert unknown(["sum(rate(claude_sessions_mesages_total[5m]))"], names) == {"claude_sessions_mesages_total"}
    assert unknown(['claude_sessions_database_up_total{job=~"$job"}'], names) == {"claude_sessions_database_up_total"}

    # The gauges computed at scrape: the pool's ceilings, every worker state, the database.
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page.text)
        for s in family.samples
    }
    assert values["claude_sessions_pool_max_workers", ()] == 4
    assert values["claude_sessions_pool_max_idle_workers", ()] == 3
    assert values["claude_sessions_database_up", ()] == 1
    assert 1 <= values["claude_sessions_pool_live_workers", ()] <= 4
    assert {labels[0][1] for name, labels in values if name == "claude_sessions_pool_workers"} == set(WORKER_STATES)
