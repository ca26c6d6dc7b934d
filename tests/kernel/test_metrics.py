"""Metrics against ground truth on the real kernel, scraped by a real Prometheus and checked by promtool."""

from __future__ import annotations

import bisect
import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ExporterProcess, build_config, run_cli, toml_dumps
from tests.prom import PrometheusServer, free_port, scalar
from uprobe_exporter.kernel.tracefs import Tracefs

BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5]
THREADS, CALLS, EXITING = 4, 10, 2
OVERHEAD_PER_CALL = 0.0005  # seconds: uprobe hits, scheduling; durations are µs-granular in text


@dataclass
class Scrape:
    text: str

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        out = []
        for family in text_string_to_metric_families(self.text):
            out += [(s.labels, s.value) for s in family.samples if s.name == name]
        return out

    def value(self, name: str, **labels: str) -> float:
        return sum(v for ls, v in self.samples(name) if all(ls.get(k) == x for k, x in labels.items()))


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return Scrape(r.read().decode())


@dataclass
class Running:
    exporter: ExporterProcess
    port: int
    report: list[dict[str, Any]]


@pytest.fixture
def sleeper_run(build: Callable[..., Path], group: str, tmp_path: Path) -> Iterator[Running]:
    binary = build("sleeper")
    port = free_port()
    probe = {"name": "sleeper", "binary": str(binary), "function": "sleeper", "args": {"ms": "%di:s32"},
             "return": True, "return_args": {"ret": "$retval:s32"}, "latency": True, "buckets": BUCKETS,
             "labels": ["comm"]}
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], tmp_path / "out.jsonl",
                                              metrics={"listen": f"127.0.0.1:{port}"})))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        done = subprocess.run([binary, str(THREADS), str(CALLS), str(EXITING)], capture_output=True, text=True,
                              check=True, timeout=120)
        yield Running(exporter, port, [json.loads(line) for line in done.stdout.splitlines()])
        rc, _ = exporter.stop()
        assert rc == 0, exporter.stderr


def wait_scrape(port: int, check: Callable[[Scrape], bool], timeout: float = 20) -> Scrape:
    deadline = time.monotonic() + timeout
    s = scrape(port)
    while not check(s) and time.monotonic() < deadline:
        time.sleep(0.2)
        s = scrape(port)
    return s


def test_histogram_matches_the_durations_the_target_measured(sleeper_run: Running) -> None:
    calls = [r for r in sleeper_run.report if r["kind"] == "call"]
    assert len(calls) > THREADS * CALLS  # recursion adds inner calls
    s = wait_scrape(sleeper_run.port,
                    lambda s: s.value("uprobe_call_duration_seconds_count", probe="sleeper") >= len(calls))
    expected = Counter(bisect.bisect_left(BUCKETS, c["ns"] / 1e9) for c in calls)
    cumulative = 0
    for i, bound in enumerate(BUCKETS):
        cumulative += expected[i]
        le = repr(float(bound))
        assert s.value("uprobe_call_duration_seconds_bucket", probe="sleeper", le=le) == cumulative, le
    assert s.value("uprobe_call_duration_seconds_bucket", probe="sleeper", le="+Inf") == len(calls)
    assert s.value("uprobe_call_duration_seconds_count", probe="sleeper") == len(calls)
    measured = sum(c["ns"] for c in calls) / 1e9
    total = s.value("uprobe_call_duration_seconds_sum", probe="sleeper")
    assert abs(total - measured) <= OVERHEAD_PER_CALL * len(calls), (total, measured)
    # every call ran: the kernel's own counter. A return probe's counter counts the entries that armed it
    # (trace_uprobe.c: uprobe_dispatcher() counts before it knows the probe is a return probe), so the
    # calls that never returned are in both.
    n_entries = len(calls) + EXITING
    assert s.value("uprobe_probe_hits_total", probe="sleeper", event=f"{_group(s)}/sleeper_entry") == n_entries
    assert s.value("uprobe_probe_hits_total", probe="sleeper", event=f"{_group(s)}/sleeper_return") == n_entries
    assert s.value("uprobe_events_total", probe="sleeper", type="return") == len(calls)
    assert s.value("uprobe_events_total", probe="sleeper", type="entry") == n_entries
    assert s.value("uprobe_exporter_returns_without_entry_total") == 0


def _group(s: Scrape) -> str:
    return s.samples("uprobe_probe_hits_total")[0][0]["event"].split("/")[0]


def test_calls_that_never_return_are_evicted_when_their_thread_exits(sleeper_run: Running) -> None:
    s = wait_scrape(sleeper_run.port, lambda s: s.value("uprobe_exporter_calls_evicted_total",
                                                        reason="thread_exit") >= EXITING)
    assert s.value("uprobe_exporter_calls_evicted_total", probe="sleeper", reason="thread_exit") == EXITING
    assert s.value("uprobe_exporter_pending_calls", probe="sleeper") == 0


def test_promtool_accepts_a_real_scrape(sleeper_run: Running, tmp_path: Path) -> None:
    text = scrape(sleeper_run.port).text
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("uprobe_probe_hits_total", "uprobe_events_total", "uprobe_call_duration_seconds_bucket",
                 "uprobe_exporter_kernel_lost_events_total", "uprobe_exporter_build_info",
                 "process_resident_memory_bytes"):
        assert f"\n{name}" in text


def test_prometheus_scrapes_and_answers_promql(sleeper_run: Running, prometheus: PrometheusServer) -> None:
    calls = [r for r in sleeper_run.report if r["kind"] == "call"]
    prometheus.set_targets([f"127.0.0.1:{sleeper_run.port}"])
    try:
        prometheus.wait_for('up{job="uprobe_exporter"} == 1', lambda r: len(r) == 1)
        count = prometheus.wait_for('sum(uprobe_call_duration_seconds_count{probe="sleeper"})',
                                    lambda r: bool(r) and scalar(r) == len(calls))
        assert scalar(count) == len(calls)
        hits = prometheus.query('sum(uprobe_probe_hits_total{probe="sleeper", event=~".*_entry"})')
        assert scalar(hits) == len(calls) + EXITING
        durations = sorted(c["ns"] / 1e9 for c in calls)
        median = durations[len(durations) // 2]
        i = bisect.bisect_left(BUCKETS, median)
        low, high = ([0.0, *BUCKETS])[i], BUCKETS[i]
        q = scalar(prometheus.query(
            'histogram_quantile(0.5, sum by (le) (uprobe_call_duration_seconds_bucket{probe="sleeper"}))'))
        assert low <= q <= high, (q, low, high, median)
    finally:
        prometheus.set_targets([])


def test_pending_calls_stay_bounded(build: Callable[..., Path], group: str, tmp_path: Path) -> None:
    """More calls that never return than the table holds: the oldest are evicted and counted."""
    binary = build("sleeper")
    port = free_port()
    probe = {"name": "sleeper", "binary": str(binary), "function": "sleeper", "return": True, "latency": True}
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], tmp_path / "out.jsonl",
                                              exporter={"max_pending_calls": 5},
                                              metrics={"listen": f"127.0.0.1:{port}"})))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        subprocess.run([binary, "0", "0", "12"], capture_output=True, check=True, timeout=60)
        s = wait_scrape(port, lambda s: s.value("uprobe_events_total", type="entry") >= 12)
        assert s.value("uprobe_exporter_pending_calls") <= 5
        evicted = s.value("uprobe_exporter_calls_evicted_total")
        assert s.value("uprobe_exporter_pending_calls") + evicted == 12
        exporter.stop()


def test_histogram_without_labels_exists_before_the_first_call(build: Callable[..., Path], group: str,
                                                               tmp_path: Path) -> None:
    """README: every series exists from the start, at 0 (a histogram with labels excepted)."""
    port = free_port()
    probe = {"name": "sleeper", "binary": str(build("sleeper")), "function": "sleeper", "return": True,
             "latency": True, "buckets": BUCKETS}
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], tmp_path / "out.jsonl",
                                              metrics={"listen": f"127.0.0.1:{port}"})))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        s = scrape(port)
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    buckets = s.samples("uprobe_call_duration_seconds_bucket")
    assert sorted(ls["le"] for ls, _ in buckets) == sorted([*(repr(b) for b in BUCKETS), "+Inf"])
    assert all(ls["probe"] == "sleeper" and v == 0 for ls, v in buckets)
    assert s.samples("uprobe_call_duration_seconds_count") == [({"probe": "sleeper"}, 0.0)]
    assert s.samples("uprobe_call_duration_seconds_sum") == [({"probe": "sleeper"}, 0.0)]


def test_port_in_use_fails_before_registering(build: Callable[..., Path], tracefs: Tracefs, group: str,
                                              tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        probe = {"name": "w", "binary": str(build("calls")), "function": "work"}
        config = tmp_path / "config.toml"
        config.write_text(toml_dumps(build_config(group, [probe], tmp_path / "o.jsonl",
                                                  metrics={"listen": f"127.0.0.1:{port}"})))
        done = run_cli("run", "--config", str(config))
    assert done.returncode == 1
    assert done.stderr.strip() == (f"uprobe-exporter: error: metrics.listen: cannot listen on 127.0.0.1:{port}: "
                                   "Address already in use; choose another address or port")
    assert [e for e in tracefs.read_uprobe_events() if e.group == group] == []


def test_missing_tls_file_fails_before_registering(build: Callable[..., Path], tracefs: Tracefs, group: str,
                                                   tmp_path: Path) -> None:
    probe = {"name": "w", "binary": str(build("calls")), "function": "work"}
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], tmp_path / "o.jsonl", metrics={
        "listen": f"127.0.0.1:{free_port()}", "tls_cert_file": str(tmp_path / "no.pem"),
        "tls_key_file": str(tmp_path / "no.key")})))
    done = run_cli("run", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.startswith("uprobe-exporter: error: metrics.tls_cert_file: cannot read")
    assert [e for e in tracefs.read_uprobe_events() if e.group == group] == []


def test_tls_with_client_certificates(build: Callable[..., Path], group: str, tmp_path: Path) -> None:
    """HTTPS through prometheus-client's own TLS support; a client without a certificate is refused."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "server.key", "-out", "server.pem")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=scraper",
            "-keyout", "client.key", "-out", "client.pem")
    port = free_port()
    probe = {"name": "w", "binary": str(build("calls")), "function": "work"}
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], tmp_path / "o.jsonl", metrics={
        "listen": f"127.0.0.1:{port}", "tls_cert_file": str(tmp_path / "server.pem"),
        "tls_key_file": str(tmp_path / "server.key"), "tls_client_ca_file": str(tmp_path / "client.pem")})))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        context = ssl.create_default_context(cafile=str(tmp_path / "server.pem"))
        context.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context, timeout=10) as r:
            assert b"uprobe_exporter_build_info" in r.read()
        anonymous = ssl.create_default_context(cafile=str(tmp_path / "server.pem"))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)), \
                urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=anonymous, timeout=10) as r:
            r.read()
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
