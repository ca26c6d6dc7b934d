"""scrapeserver: one rendering serves every scrape for a while; bounded handlers; formats and gzip."""

from __future__ import annotations

import gzip
import threading
import time
import urllib.request
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from uprobe_exporter.run.scrapeserver import Exposition, ScrapeServer


class Counting(Collector):
    """Each collect() is one rendering; its number is the metric's value."""

    def __init__(self, cost: float = 0.0) -> None:
        self.calls = 0
        self.cost = cost

    def collect(self) -> Iterable[Metric]:
        self.calls += 1
        end = time.thread_time() + self.cost
        while time.thread_time() < end:  # CPU, as a real rendering spends it
            pass
        c = CounterMetricFamily("renders", "Renderings.")
        c.add_metric([], self.calls)
        return [c]


def test_one_rendering_serves_every_scrape_until_it_is_too_old() -> None:
    now = [100.0]
    collector = Counting()
    exposition = Exposition(collector, max_age=0.25, clock=lambda: now[0])
    bodies = {exposition.get("", "")[0] for _ in range(50)}
    assert len(bodies) == 1 and collector.calls == 1
    now[0] += 0.2
    assert exposition.get("", "")[0] in bodies and collector.calls == 1
    now[0] += 0.1
    assert exposition.get("", "")[0] not in bodies and collector.calls == 2
    assert exposition.stats.requests == 52 and exposition.stats.renderings == 2


def test_a_slow_rendering_is_reused_longer() -> None:
    now = [0.0]
    collector = Counting(cost=0.05)  # 10x that is 0.5 s
    exposition = Exposition(collector, max_age=0.25, clock=lambda: now[0])
    exposition.get("", "")
    now[0] += 0.3
    exposition.get("", "")
    assert collector.calls == 1
    now[0] += 0.3
    exposition.get("", "")
    assert collector.calls == 2


def test_formats_and_gzip_are_encoded_once_per_rendering() -> None:
    exposition = Exposition(Counting(), clock=lambda: 0.0)
    text, headers = exposition.get("", "gzip")
    assert ("Content-Encoding", "gzip") in headers
    assert b"renders_total 1.0" in gzip.decompress(text)
    om, headers = exposition.get("application/openmetrics-text; version=1.0.0", "")
    assert dict(headers)["Content-Type"].startswith("application/openmetrics-text")
    assert om.endswith(b"# EOF\n")
    assert exposition.get("", "gzip")[0] is text


def test_many_concurrent_scrapers_share_renderings_and_all_get_answers() -> None:
    collector = Counting(cost=0.002)
    exposition = Exposition(collector)
    server = ScrapeServer("127.0.0.1", 0, exposition, None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    results: list[bytes] = []
    start = time.monotonic()

    def scraper() -> None:
        for _ in range(5):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                results.append(r.read())

    try:
        scrapers = [threading.Thread(target=scraper) for _ in range(40)]
        for t in scrapers:
            t.start()
        for t in scrapers:
            t.join()
    finally:
        server.close()
        thread.join(5)
    elapsed = time.monotonic() - start
    assert len(results) == 200
    assert collector.calls <= elapsed / 0.25 + 2, "at most one rendering per 0.25 s"
    assert len(set(results)) == collector.calls
    assert not thread.is_alive()


def test_no_rendering_after_close() -> None:
    """The daemon closes the exposition before it removes the instance whose files a rendering reads."""
    now = [0.0]
    collector = Counting()
    exposition = Exposition(collector, clock=lambda: now[0])
    assert exposition.get("", "")[0] == exposition.get("", "")[0]
    exposition.close(1)
    now[0] += 10
    assert b"renders_total 1.0" in exposition.get("", "")[0] and collector.calls == 1
    fresh = Exposition(collector)
    fresh.close(1)
    assert fresh.get("", "")[0] == b"" and collector.calls == 1
