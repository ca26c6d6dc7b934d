"""The Grafana dashboard (grafana/uprobe-exporter.json): valid against the JSON Schema generated from Grafana's own
dashboard type (grafana/dashboard.schema.json, see grafana/SCHEMA.md), sound in layout and templating, and every
query it runs returns data from a real exporter on a real target, scraped by a real Prometheus."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.helpers import ROOT, ExporterProcess, build_config, toml_dumps
from tests.prom import PrometheusServer, free_port, scalar
from uprobe_exporter import __version__
from uprobe_exporter.decode.rawpage import RAW_ERROR_REASONS
from uprobe_exporter.pipeline.pairing import EVICTION_REASONS

DASHBOARD = ROOT / "grafana" / "uprobe-exporter.json"
SCHEMA = ROOT / "grafana" / "dashboard.schema.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24
BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5]
THREADS, CALLS, EXITING = 4, 60, 1  # sleeper runs ~4 s: several 1 s scrapes see the counters move
RATE_INTERVAL = "5s"  # what Grafana's $__rate_interval is at least (4 scrape intervals), plus one

# Metrics that carry a probe label: their selectors must follow the $probe variable too.
PROBE_METRICS = ("uprobe_probe_hits_total", "uprobe_events_total", "uprobe_call_duration_seconds",
                 "uprobe_exporter_returns_without_entry_total", "uprobe_exporter_calls_evicted_total",
                 "uprobe_exporter_pending_calls")
# What people asked the dashboard to show.
WANTED = ("uprobe_probe_hits_total", "uprobe_events_total", "uprobe_call_duration_seconds_bucket",
          "uprobe_call_duration_seconds_count", "uprobe_exporter_kernel_lost_events_total",
          "uprobe_exporter_parse_errors_total", "uprobe_exporter_returns_without_entry_total",
          "uprobe_exporter_calls_evicted_total", "uprobe_exporter_pending_calls",
          "uprobe_exporter_records_dropped_total", "uprobe_exporter_build_info", "uprobe_exporter_events_registered",
          "process_cpu_seconds_total", "process_resident_memory_bytes")
SELECTOR = re.compile(r"\b([a-z_:][a-z0-9_:]*)\{([^}]*)\}")
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((?:(.*),\s*)?(\w+)\)$")


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows and the panels inside collapsed rows included."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out += panel.get("panels", [])
    return out


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in data_panels(dashboard):
        for target in panel["targets"]:
            yield panel, target


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def substitute(text: str, values: dict[str, str]) -> str:
    """Grafana's interpolation of $name and ${name}; an unknown variable fails."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise AssertionError(f"unknown variable ${name} in {text!r}")
        return values[name]

    return VARIABLE.sub(one, text)


def promql_regex(value: str) -> str:
    """A single value as Grafana writes it into a =~ matcher: regex-escaped, then escaped for a PromQL string."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


# --- static checks -------------------------------------------------------------------------------------------------


def test_dashboard_is_valid_against_grafanas_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(load_dashboard()), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


@pytest.mark.parametrize("spoil", [
    lambda d: d.pop("schemaVersion"),
    lambda d: d["panels"][1].update(gridpos={"x": 0}),  # a misspelled key
    lambda d: d["panels"][1]["gridPos"].update(w="6"),
    lambda d: d["panels"][1].pop("type"),
    lambda d: d["templating"]["list"][0].update(type="dropdown"),
    lambda d: d["templating"]["list"].append({"name": "x"}),
], ids=["no schemaVersion", "unknown panel key", "string width", "panel without type", "unknown variable type",
        "variable without type"])
def test_the_schema_rejects_broken_dashboards(spoil: Callable[[dict[str, Any]], object]) -> None:
    """The schema is strict enough to catch what Grafana would refuse or silently drop."""
    dashboard = copy.deepcopy(load_dashboard())
    spoil(dashboard)
    assert not jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).is_valid(dashboard)


def test_dashboard_identity_and_variables() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "uprobe-exporter"
    assert dashboard["schemaVersion"] >= 39
    assert not {"__inputs", "__requires", "id"} & set(dashboard)  # importable as is, with any data source
    assert list(variables(dashboard)) == ["datasource", "instance", "probe", "namespace", "pod"]
    datasource, instance, probe, namespace, pod = variables(dashboard).values()
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    assert variable_query(instance) == "label_values(uprobe_exporter_build_info, instance)"
    assert variable_query(probe) == 'label_values(uprobe_events_total{instance=~"$instance"}, probe)'
    # the pod identity of discover probes' calls, where their histograms carry it
    assert variable_query(namespace) == ('label_values(uprobe_call_duration_seconds_count{instance=~"$instance", '
                                         'probe=~"$probe"}, k8s_namespace_name)')
    assert variable_query(pod) == ('label_values(uprobe_call_duration_seconds_count{instance=~"$instance", '
                                   'probe=~"$probe", k8s_namespace_name=~"$namespace"}, k8s_pod_name)')
    for variable in (instance, probe, namespace, pod):
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["multi"] is True
        assert variable["includeAll"] is True


def test_panels_are_sound() -> None:
    dashboard = load_dashboard()
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels(dashboard):
        title = panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["y"] >= 0 and pos["w"] >= 1 and pos["h"] >= 1, title
        assert pos["x"] + pos["w"] <= GRID_COLUMNS, f"{title} is wider than the grid: {pos}"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{title} overlaps {cells[x, y]}"
                cells[x, y] = title
        if panel["type"] == "row":
            assert "targets" not in panel and pos["w"] == GRID_COLUMNS, title
            continue
        assert panel["datasource"] == DATASOURCE, title
        assert panel["targets"], title
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, title
    heatmaps = [p for p in data_panels(dashboard) if p["type"] == "heatmap"]
    assert heatmaps and all(t["format"] == "heatmap" for p in heatmaps for t in p["targets"])


def test_queries_follow_the_variables() -> None:
    """Every selector is filtered by $instance (and $probe where the metric has one), never by job; every
    range is Grafana's $__rate_interval (or $__range for a whole-range stat)."""
    dashboard = load_dashboard()
    used: set[str] = set()
    for panel, target in targets(dashboard):
        expr = target["expr"]
        assert "job" not in expr, (panel["title"], expr)
        selectors = SELECTOR.findall(expr)
        assert selectors, (panel["title"], expr)
        for metric, matchers in selectors:
            used.add(metric)
            assert 'instance=~"$instance"' in matchers, (panel["title"], metric)
            if metric.startswith(PROBE_METRICS):
                assert 'probe=~"$probe"' in matchers, (panel["title"], metric)
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window in {"$__rate_interval", "$__range"}, (panel["title"], expr)
        assert set(VARIABLE.findall(expr)) <= {("", "instance"), ("", "probe"), ("", "__rate_interval"),
                                               ("", "__range"), ("", "namespace"), ("", "pod")}, expr
        if "$namespace" in expr or "$pod" in expr:  # only with the labels they name
            assert 'k8s_namespace_name=~"$namespace"' in expr and 'k8s_pod_name=~"$pod"' in expr, expr
    assert not set(WANTED) - used, f"no panel shows {set(WANTED) - used}"


# --- every query against a real exporter ---------------------------------------------------------------------------


def finite(result: list[dict[str, Any]]) -> list[float]:
    values = [float(v) for series in result for _, v in series.get("values", [series.get("value", [0, "NaN"])])]
    return [v for v in values if math.isfinite(v)]


@pytest.mark.kernel
def test_every_dashboard_query_returns_data(build: Callable[..., Path], group: str, tmp_path: Path,
                                            prometheus: PrometheusServer) -> None:
    binary = build("sleeper")
    port = free_port()
    instance = f"127.0.0.1:{port}"
    probe = {"name": "sleeper", "binary": str(binary), "function": "sleeper", "args": {"ms": "%di:s32"},
             "return": True, "return_args": {"ret": "$retval:s32"}, "latency": True, "buckets": BUCKETS,
             "labels": ["comm"]}
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], tmp_path / "out.jsonl",
                                              metrics={"listen": instance})))
    dashboard = load_dashboard()
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        prometheus.set_targets([instance])
        try:
            mine = f'instance="{instance}"'
            prometheus.wait_for(f"count_over_time(uprobe_exporter_build_info{{{mine}}}[5m])",
                                lambda r: bool(r) and scalar(r) >= 3)
            start = time.time()
            done = subprocess.run([binary, str(THREADS), str(CALLS), str(EXITING)], capture_output=True,
                                  text=True, check=True, timeout=120)
            calls = sum(json.loads(line)["kind"] == "call" for line in done.stdout.splitlines())
            prometheus.wait_for(f"sum(uprobe_call_duration_seconds_count{{{mine}}})",
                                lambda r: bool(r) and scalar(r) == calls)
            # the exiting thread's call is evicted by the exporter's sweep (every 5 s): seen in two scrapes
            evicted = f'uprobe_exporter_calls_evicted_total{{{mine}, reason="thread_exit"}}'
            prometheus.wait_for(f"count_over_time({evicted}[5m])", lambda r: bool(r) and scalar(r) >= 2)
            settled = time.time()  # one more scrape, so that the last rate windows see the end of the run
            prometheus.wait_for(f"timestamp(uprobe_exporter_build_info{{{mine}}})",
                                lambda r: bool(r) and scalar(r) > settled + 1)
            end = time.time()
            values = {"instance": promql_regex(instance), "probe": ".*", "namespace": ".*", "pod": ".*",
                      "__rate_interval": RATE_INTERVAL,
                      "__range": f"{math.ceil(end - start) + 5}s"}

            results: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for panel, target in targets(dashboard):
                expr = substitute(target["expr"], values)
                if target.get("instant"):
                    result = prometheus.api("query", query=expr, time=f"{end:.3f}")["result"]
                else:
                    result = prometheus.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                                            step="1")["result"]
                results[panel["title"], target["refId"]] = result
            empty = [key for key, result in results.items() if not finite(result)]
            assert not empty, f"queries without data: {empty}"

            variable_values: dict[str, list[str]] = {}
            for name, variable in variables(dashboard).items():
                if variable["type"] != "query":
                    continue
                m = LABEL_VALUES.match(variable_query(variable))
                assert m, variable_query(variable)
                selector, label = m.groups()
                params = {"start": f"{start:.3f}", "end": f"{end:.3f}"}
                if selector:
                    params["match[]"] = substitute(selector, values)
                variable_values[name] = prometheus.api(f"label/{label}/values", **params)
        finally:
            prometheus.set_targets([])
        rc, _ = exporter.stop()
        assert rc == 0, exporter.stderr

    assert instance in variable_values["instance"]
    assert "sleeper" in variable_values["probe"]

    def labels(title: str, ref: str = "A") -> list[dict[str, str]]:
        return [s["metric"] for s in results[title, ref]]

    [build_info] = labels("Exporter build")
    assert build_info["version"] == __version__
    assert scalar(results["Events registered", "A"]) == 2  # sleeper_entry and sleeper_return
    for title, ref in (("Calls/s per probe", "A"), ("Kernel hits vs records emitted", "A"),
                       ("Kernel hits vs records emitted", "B"), ("Completed calls/s by comm", "A"),
                       ("Exporter CPU", "A"), ("Exporter memory", "A"), ("Trace read throughput", "A"),
                       ("Records dropped by the sink", "B")):
        assert max(finite(results[title, ref])) > 0, (title, ref)
    assert labels("Calls/s per probe") == [{"probe": "sleeper"}]
    assert labels("Completed calls/s by comm") == [{"probe": "sleeper", "comm": "sleeper"}]
    for ref in "ABC":
        latencies = finite(results["Call latency p50 / p90 / p99", ref])
        assert all(0 < v <= BUCKETS[-1] for v in latencies), (ref, latencies)
    heatmap = labels("Call latency heatmap")
    assert sorted(float(ls["le"]) for ls in heatmap) == [*BUCKETS, math.inf]
    assert {ls["reason"] for ls in labels("Events lost in the kernel")} == {"overrun", "commit_overrun", "dropped"}
    assert {ls["sink"] for ls in labels("Records dropped by the sink")} == {"jsonl"}
    # Every series exists from the start, at 0: nothing unparsable, no return without its entry.
    assert sorted(ls["reason"] for ls in labels("Parse errors by reason")) == sorted(RAW_ERROR_REASONS)
    assert max(finite(results["Parse errors by reason", "A"])) == 0
    assert labels("Unpaired calls/s") == [{"probe": "sleeper"}]
    assert max(finite(results["Unpaired calls/s", "A"])) == 0
    assert {ls["reason"] for ls in labels("Unpaired calls/s", "B")} == set(EVICTION_REASONS)
    assert labels("Pending calls") == [{"probe": "sleeper"}]
