"""Serving ``/metrics``: one rendering shared by every scraper, and scrape work bounded whatever asks.

Strategy: a scrape runs on a thread that shares the GIL with the reader. When every scrape rendered the
exposition itself, 50 scrapers in a loop kept the reader from the GIL long enough for the kernel to
overwrite 6.6 % of the events. So the cost of scraping no longer grows with the number of scrapers:

- the exposition is rendered at most once per ``max_age`` seconds (or per ``RENDER_FACTOR`` times the
  CPU time the last rendering and its encoding took, when that is longer), by one thread at a time;
  every scrape meanwhile gets the same bytes (each format and compression encoded once per rendering);
- at most ``handlers`` connections are served at once, the others wait in the listen backlog;
- after each request a handler rests in proportion to the CPU time it used, so that all handlers
  together use at most ``cpu_share`` of one core.
"""

from __future__ import annotations

import gzip
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
MAX_AGE_SECONDS = 0.25  # the oldest exposition a scrape can get (README: Metrics reference)
RENDER_FACTOR = 10  # renderings take at most 1/RENDER_FACTOR of the time, however long one takes
HANDLERS = 4  # connections served at once
CPU_SHARE = 0.25  # of one core, for all scrape handling together
MAX_REST_SECONDS = 1.0
REQUEST_TIMEOUT_SECONDS = 10  # a client that sends its request (or takes the response) slower is cut off


class _Families(Collector):
    """A collector that returns the families of one rendering (what the encoders are given)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


@dataclass
class _Rendering:
    at: float
    families: _Families
    bodies: dict[tuple[str, bool], bytes] = field(default_factory=dict)  # (content type, gzip) → body


@dataclass
class ScrapeStatistics:
    requests: int = 0
    renderings: int = 0


class Exposition:
    """The latest rendering of ``registry``, renewed when older than the allowed age."""

    def __init__(self, registry: Collector, max_age: float = MAX_AGE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.max_age = max_age
        self.clock = clock
        self.stats = ScrapeStatistics()
        self._lock = threading.Lock()  # one rendering or encoding at a time
        self._latest: _Rendering | None = None
        self._age_limit = max_age
        self._closed = False

    def get(self, accept: str, accept_encoding: str) -> tuple[bytes, list[tuple[str, str]]]:
        """The body and headers for one scrape; renders only when the latest rendering is too old."""
        encoder, content_type = choose_encoder(accept)
        compress = gzip_accepted(accept_encoding)
        cpu: float | None = None
        with self._lock:
            self.stats.requests += 1
            latest = self._latest
            if self._closed:  # the sources may be gone: the last rendering, if any
                if latest is None:
                    return b"", [("Content-Type", content_type)]
            elif latest is None or self.clock() - latest.at > self._age_limit:
                cpu = time.thread_time()  # CPU, not wall time: waiting for the GIL is no cost of ours
                latest = self._render()
            body = latest.bodies.get((content_type, compress))
            if body is None:
                body = encoder(latest.families)
                if compress:
                    body = gzip.compress(body, compresslevel=6)
                latest.bodies[(content_type, compress)] = body
            if cpu is not None:  # what this rendering and its first encoding cost
                self._age_limit = max(self.max_age, RENDER_FACTOR * (time.thread_time() - cpu))
        headers = [("Content-Type", content_type)] + ([("Content-Encoding", "gzip")] if compress else [])
        return body, headers

    def _render(self) -> _Rendering:
        self.stats.renderings += 1  # before collecting: the rendering counts itself
        families = list(self.registry.collect())
        self._latest = _Rendering(self.clock(), _Families(families))
        return self._latest

    def close(self, timeout: float) -> None:
        """No rendering after this returns (waits for one in progress): the sources may go away."""
        if self._lock.acquire(timeout=timeout):
            self._closed = True
            self._lock.release()
        else:
            log.warning("a metrics rendering did not finish within %.1f s", timeout)
            self._closed = True


class _Handler(BaseHTTPRequestHandler):
    server: ScrapeServer
    timeout = REQUEST_TIMEOUT_SECONDS  # StreamRequestHandler sets it on the socket

    def setup(self) -> None:
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, under the timeout, not in the thread that accepts

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/favicon.ico":
            self._reply(b"", [])
            return
        body, headers = self.server.exposition.get(self.headers.get("Accept", ""),
                                                   self.headers.get("Accept-Encoding", ""))
        self._reply(body, headers)

    def do_OPTIONS(self) -> None:
        self._reply(b"", [("Allow", "OPTIONS,GET")])

    def _reply(self, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(200)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ScrapeServer(ThreadingMixIn, HTTPServer):
    """A thread per connection, at most ``handlers`` at once, each resting after its request so that all
    together use at most ``cpu_share`` of a core."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: scrapers beyond the handlers wait here, not in SYN retries

    def __init__(self, host: str, port: int, exposition: Exposition, tls: ssl.SSLContext | None,
                 handlers: int = HANDLERS, cpu_share: float = CPU_SHARE) -> None:
        self.address_family = _family(host, port)
        self.exposition = exposition
        self.slots = threading.BoundedSemaphore(handlers)
        self.rest_factor = handlers / cpu_share - 1
        self.closing = threading.Event()
        super().__init__((host, port), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def process_request(self, request: Any, client_address: Any) -> None:
        while not self.slots.acquire(timeout=0.1):
            if self.closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        start = time.thread_time()
        try:
            super().process_request_thread(request, client_address)
        finally:
            rest = (time.thread_time() - start) * self.rest_factor
            if not self.closing.is_set():
                self.closing.wait(min(rest, MAX_REST_SECONDS))
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away, timed out or failed the TLS handshake: not our problem, no traceback."""
        log.debug("metrics request from %s failed", client_address, exc_info=True)

    def close(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()


def _family(host: str, port: int) -> socket.AddressFamily:
    if not host:
        return socket.AF_INET
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]


def tls_context(certfile: str, keyfile: str, client_cafile: str) -> ssl.SSLContext:
    """HTTPS with our certificate; with a client CA, a client certificate signed by it is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile=certfile, keyfile=keyfile)
    if client_cafile:
        context.load_verify_locations(cafile=client_cafile)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
