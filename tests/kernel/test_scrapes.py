"""A scrape storm on the real kernel: scraping costs the same whatever the number of scrapers, answers
stay fast, and the reader loses nothing to it."""

from __future__ import annotations

import hashlib
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, ExporterProcess, build_config, compile_c, toml_dumps
from tests.kernel.test_metrics import scrape
from tests.prom import free_port

SCRAPERS, SECONDS, RATE = 30, 6.0, 20000  # calls/s of the push target: 40 k events/s


def scrape_raw(port: int) -> tuple[float, str]:
    """A bare HTTP/1.0 GET (cheap for the client); its seconds and a digest of the body."""
    t0 = time.perf_counter()
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        while chunk := sock.recv(1 << 16):
            data += chunk
    body = data.split(b"\r\n\r\n", 1)[1]
    return time.perf_counter() - t0, hashlib.sha1(body).hexdigest()


def test_a_scrape_storm_renders_rarely_answers_fast_and_loses_nothing(group: str, tmp_path: Path) -> None:
    binary = compile_c(ROOT / "benchmarks" / "targets" / "loop.c", tmp_path / "loop")
    port = free_port()
    probe = {"name": "hot", "binary": str(binary), "function": "work_push", "args": {"n": "%di:s64"},
             "return": True, "return_args": {"ret": "$retval:s64"}, "latency": True}
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], tmp_path / "out.jsonl",
                                              metrics={"listen": f"127.0.0.1:{port}"})))
    results: list[tuple[float, str]] = []
    errors: list[OSError] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            try:
                results.append(scrape_raw(port))
            except OSError as exc:
                errors.append(exc)

    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        target = subprocess.Popen([binary, "push", str(SECONDS), str(RATE)], stdout=subprocess.PIPE, text=True)
        threads = [threading.Thread(target=scraper) for _ in range(SCRAPERS)]
        start = time.monotonic()
        for t in threads:
            t.start()
        out, _ = target.communicate(timeout=60)
        stop.set()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - start
        calls = int(out.split()[0])
        deadline = time.monotonic() + 20
        s = scrape(port)
        while s.value("uprobe_events_total") < 2 * calls and time.monotonic() < deadline:
            time.sleep(0.3)
            s = scrape(port)
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    assert errors == []
    times = sorted(t for t, _ in results)
    p99 = statistics.quantiles(times, n=100)[98]
    renderings = len({digest for _, digest in results})  # events flow: each rendering differs
    print(f"{len(results)} scrapes in {elapsed:.1f} s, p50 {statistics.median(times) * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms, {renderings} distinct bodies")
    assert len(results) > SCRAPERS * SECONDS, "every scraper is answered several times a second"
    assert p99 < 1.0
    assert renderings <= elapsed / 0.25 + 3, "at most one rendering per 0.25 s, whatever the scrapers"
    assert s.value("uprobe_exporter_kernel_lost_events_total") == 0
    assert s.value("uprobe_events_total") == s.value("uprobe_probe_hits_total") == 2 * calls


@pytest.mark.parametrize("path", ["/metrics", "/favicon.ico"])
def test_options_and_paths(group: str, tmp_path: Path, path: str) -> None:
    """What prometheus-client's server answered stays answered: OPTIONS, any path, a favicon."""
    import urllib.request

    binary = compile_c(ROOT / "benchmarks" / "targets" / "loop.c", tmp_path / "loop")
    port = free_port()
    probe = {"name": "hot", "binary": str(binary), "function": "work_push"}
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], tmp_path / "out.jsonl",
                                              metrics={"listen": f"127.0.0.1:{port}"})))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="OPTIONS"),
                                    timeout=10) as r:
            assert r.headers["Allow"] == "OPTIONS,GET"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            body = r.read()
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    assert (b"uprobe_exporter_build_info" in body) == (path == "/metrics")
