"""The JSON output failing on the real kernel: disk full, a reader that goes away, a pipe nobody reads at
SIGTERM, a reopen that fails. In each, every record parsed is counted written or dropped, exactly, and
the output holds exactly the lines counted written, whole."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, ExporterProcess, build_config, compile_c, toml_dumps
from tests.prom import free_port

SUMMARY = re.compile(r"stopped: (\d+) records parsed, (\d+) written, (\d+) dropped by the sink")


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(ROOT / "benchmarks" / "targets" / "loop.c", tmp_path_factory.mktemp("loop") / "loop")


def config_for(tmp_path: Path, group: str, binary: Path, out: str, port: int, **jsonl: object) -> Path:
    probe = {"name": "hot", "binary": str(binary), "function": "work_push", "args": {"n": "%di:s64"},
             "return": True, "return_args": {"ret": "$retval:s64"}}
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], Path(out), jsonl=dict(jsonl),
                                              metrics={"listen": f"127.0.0.1:{port}"})))
    return config


def calls(binary: Path, seconds: float, rate: int) -> int:
    done = subprocess.run([binary, "push", str(seconds), str(rate)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def metric(port: int, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def wait_metric(port: int, name: str, check: Callable[[float], bool], timeout: float = 20) -> float:
    deadline = time.monotonic() + timeout
    value = metric(port, name)
    while not check(value) and time.monotonic() < deadline:
        time.sleep(0.3)
        value = metric(port, name)
    return value


def settle(port: int, expected: int) -> None:
    """Wait until the exporter parsed ``expected`` records and its sink counted each of them."""
    wait_metric(port, "uprobe_events_total", lambda v: v >= expected)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if metric(port, "uprobe_exporter_records_written_total") + metric(
                port, "uprobe_exporter_records_dropped_total") >= expected:
            return
        time.sleep(0.3)


def summary(stderr: str) -> tuple[int, int, int]:
    m = SUMMARY.search(stderr)
    assert m is not None, stderr
    parsed, written, dropped = (int(g) for g in m.groups())
    return parsed, written, dropped


def whole_lines(data: bytes) -> int:
    """The number of lines in ``data``, each a JSON object; no partial line at the end."""
    assert data == b"" or data.endswith(b"\n"), f"a partial last line: {data[-80:]!r}"
    lines = data.splitlines()
    for line in lines:
        json.loads(line)
    return len(lines)


def wait_stopped(pid: int) -> None:
    """SIGSTOP is delivered asynchronously: wait until every thread of ``pid`` is stopped."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in Path(f"/proc/{pid}/task").iterdir()]
        if all(s == "T" for s in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"{pid} did not stop")


def read_all(fd: int) -> bytes:
    data = b""
    try:
        while chunk := os.read(fd, 1 << 20):
            data += chunk
    except BlockingIOError:
        pass
    return data


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "uetest", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_counts_every_record_and_writes_again_when_space_returns(
    loop: Path, group: str, tmp_path: Path, small_tmpfs: Path,
) -> None:
    out = small_tmpfs / "out.jsonl"
    port = free_port()
    with ExporterProcess(config_for(tmp_path, group, loop, str(out), port)) as exporter:
        exporter.wait_ready()
        first = calls(loop, 1, 20000)  # ~6 MB of JSON into 256 KiB
        settle(port, 2 * first)
        assert exporter.proc.poll() is None, "the exporter keeps running on a full disk"
        assert metric(port, "uprobe_exporter_output_write_errors_total") >= 1
        assert "No space left on device" in exporter.stderr
        written_full = metric(port, "uprobe_exporter_records_written_total")
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)  # space returns
        time.sleep(1.5)  # the retry interval
        second = calls(loop, 0.2, 5000)
        settle(port, 2 * (first + second))
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    parsed, written, dropped = summary(exporter.stderr)
    assert parsed == 2 * (first + second)
    assert written + dropped == parsed
    assert dropped > 0
    assert whole_lines(out.read_bytes()) == written
    assert written == written_full + 2 * second, "every record is written again once space returned"
    assert "is written again" in exporter.stderr


def test_reader_gone_counts_every_record(loop: Path, group: str, tmp_path: Path) -> None:
    """stdout to a pipe whose reader stops reading (the pipe fills, records queue up) and then goes away:
    the exporter stops (exit 0, as `| head` wants), every record is counted written or dropped, and what
    the reader could have read is exactly the lines counted written."""
    port = free_port()
    read_end, write_end = os.pipe()
    received = b""
    try:
        with ExporterProcess(config_for(tmp_path, group, loop, "-", port), stdout=write_end) as exporter:
            os.close(write_end)
            write_end = -1
            exporter.wait_ready()
            os.set_blocking(read_end, False)
            first = calls(loop, 0.3, 5000)
            deadline = time.monotonic() + 20
            while received.count(b"\n") < 2 * first and time.monotonic() < deadline:
                received += read_all(read_end)
                time.sleep(0.05)
            second = calls(loop, 1, 20000)  # nobody reads: the pipe fills
            wait_metric(port, "uprobe_events_total", lambda v: v >= 2 * (first + second))
            second += calls(loop, 0.3, 5000)  # batches queue up behind the write waiting for room
            wait_metric(port, "uprobe_events_total", lambda v: v >= 2 * (first + second))
            exporter.proc.send_signal(signal.SIGSTOP)  # what is in the pipe now is all the reader could get
            wait_stopped(exporter.proc.pid)
            received += read_all(read_end)
            os.close(read_end)
            read_end = -1
            exporter.proc.send_signal(signal.SIGCONT)
            rc, _ = exporter.stop()
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    assert rc == 0, exporter.stderr
    parsed, written, dropped = summary(exporter.stderr)
    assert parsed == 2 * (first + second)
    assert written + dropped == parsed
    assert whole_lines(received) == written
    assert written > 2 * first and dropped > 0


def test_pipe_nobody_reads_at_sigterm_counts_every_record(loop: Path, group: str, tmp_path: Path) -> None:
    """A FIFO nobody reads: the pipe fills, the queue fills (dropped, counted); at SIGTERM the output
    does not take the last records: they are dropped and counted, and the FIFO holds exactly the lines
    counted written, whole."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    keep = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader exists (the open succeeds), never reads
    port = free_port()
    try:
        with ExporterProcess(config_for(tmp_path, group, loop, str(fifo), port, max_queue_kb=256)) as exporter:
            exporter.wait_ready()
            n = calls(loop, 1, 20000)
            wait_metric(port, "uprobe_events_total", lambda v: v >= 2 * n)
            rc, elapsed = exporter.stop()
        data = read_all(keep)
    finally:
        os.close(keep)
    assert rc == 1, exporter.stderr
    assert elapsed < 5
    assert "JSON output did not take the last records" in exporter.stderr
    parsed, written, dropped = summary(exporter.stderr)
    assert parsed == 2 * n
    assert written + dropped == parsed
    assert whole_lines(data) == written > 0


def test_failed_reopen_is_counted_logged_and_retried(loop: Path, group: str, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    out = logs / "out.jsonl"
    port = free_port()
    with ExporterProcess(config_for(tmp_path, group, loop, str(out), port)) as exporter:
        exporter.wait_ready()
        first = calls(loop, 0.1, 1000)
        settle(port, 2 * first)
        rotated = logs.rename(tmp_path / "logs.1")  # the directory went away: the reopen cannot create the file
        exporter.proc.send_signal(signal.SIGHUP)
        assert wait_metric(port, "uprobe_exporter_output_reopen_errors_total", lambda v: v >= 2) >= 2, \
            "a failed reopen is counted and retried"
        assert "cannot reopen JSON output" in exporter.stderr
        second = calls(loop, 0.1, 1000)  # still written, to the file it replaced
        settle(port, 2 * (first + second))
        logs.mkdir()
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        third = calls(loop, 0.1, 1000)
        settle(port, 2 * (first + second + third))
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    assert exporter.stderr.count("cannot reopen JSON output") == 1, "one log line, not one per retry"
    assert "reopened JSON output" in exporter.stderr
    parsed, written, dropped = summary(exporter.stderr)
    assert parsed == written == 2 * (first + second + third) and dropped == 0
    assert whole_lines((rotated / "out.jsonl").read_bytes()) == 2 * (first + second)
    assert whole_lines(out.read_bytes()) == 2 * third
