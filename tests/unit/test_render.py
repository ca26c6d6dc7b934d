"""render: records of the captured trace → JSON lines that json.loads and the real jq read back exactly."""

from __future__ import annotations

import datetime as dt
import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uprobe_exporter.decode.records import TraceRecord
from uprobe_exporter.decode.traceline import TextParser
from uprobe_exporter.kernel.formatfile import parse_format
from uprobe_exporter.pipeline.render import EventInfo, Renderer

KERNEL = Path(__file__).parent.parent / "fixtures" / "kernel"
GROUP = "uprobe_exporter"
WALL_OFFSET_NS = 1_764_000_000_123_456_789  # CLOCK_REALTIME − CLOCK_MONOTONIC of some boot in late 2025
ENTRY_KEYS = {"time", "ts_ns", "probe", "type", "event", "pid", "tid", "comm", "cpu", "ip", "args"}
RETURN_KEYS = ENTRY_KEYS - {"ip"} | {"func", "ret_ip"}


@functools.cache
def fixture_records() -> tuple[TraceRecord, ...]:
    parser = TextParser.for_formats(parse_format(f.read_text(encoding="utf-8")) for f in KERNEL.glob("*.format"))
    lines = (KERNEL / "calls.trace_pipe").read_bytes().decode("latin-1").split("\n")[:-1]
    items, errors = parser.parse_lines(lines, final=True)
    assert errors == []
    return tuple(i for i in items if isinstance(i, TraceRecord))


def info_of(rec: TraceRecord) -> EventInfo:
    probe, kind = rec.event.rsplit("_", 1)
    return EventInfo(probe, "return" if kind == "return" else "entry", f"{GROUP}/{rec.event}")


def expected_time(wall_ns: int) -> str:
    seconds, ns = divmod(wall_ns, 10**9)
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).replace(microsecond=ns // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def render_all(renderer: Renderer) -> list[tuple[TraceRecord, int | None, bytes]]:
    out = []
    for i, rec in enumerate(fixture_records()):
        duration = 1000 + i if rec.is_return else None
        out.append((rec, duration, renderer.render(rec, info_of(rec), duration, rec.tgid)))
    return out


def test_every_line_parses_back_to_the_record() -> None:
    for rec, duration, line in render_all(Renderer(WALL_OFFSET_NS)):
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1, "a newline inside a string must be escaped"
        doc: dict[str, Any] = json.loads(line)
        keys = RETURN_KEYS if rec.is_return else ENTRY_KEYS
        assert set(doc) == (keys | {"duration_ns"} if duration is not None else keys)
        assert doc["ts_ns"] == rec.ts_ns + WALL_OFFSET_NS
        assert doc["time"] == expected_time(doc["ts_ns"])
        assert (doc["probe"], doc["type"], doc["event"]) == (info_of(rec).probe, info_of(rec).type,
                                                             f"{GROUP}/{rec.event}")
        assert (doc["pid"], doc["tid"], doc["comm"], doc["cpu"]) == (rec.tgid, rec.tid, rec.comm, rec.cpu)
        assert doc["args"] == rec.args
        if rec.is_return:
            assert (int(doc["func"], 16), int(doc["ret_ip"], 16)) == (rec.ip, rec.ret_ip)
            assert doc["func"].startswith("0x")
            assert doc["duration_ns"] == duration
        else:
            assert int(doc["ip"], 16) == rec.ip
            assert doc["ip"].startswith("0x")


def test_strings_come_out_as_the_target_wrote_them() -> None:
    report = [json.loads(x) for x in (KERNEL / "calls.report.jsonl").read_text(encoding="utf-8").splitlines()]
    want = {bytes.fromhex(c["s_hex"]).decode("utf-8", "backslashreplace") for c in report if c["fn"] == "work"}
    got = {json.loads(line)["args"]["s"] for rec, _, line in render_all(Renderer(0)) if rec.event == "work_entry"}
    assert got == want


def test_unknown_pid_is_null() -> None:
    rec = fixture_records()[0]
    doc = json.loads(Renderer(0).render(rec, info_of(rec), None, 0))
    assert doc["pid"] is None
    assert "duration_ns" not in doc


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**62), min_size=1, max_size=20))
def test_time_text_matches_datetime(stamps: list[int]) -> None:
    renderer = Renderer(0)  # one renderer for all: its cached seconds must never leak into another second
    for ns in [*stamps, *stamps[::-1]]:
        assert renderer.clock.second(ns).decode() == expected_time(ns)


@pytest.mark.parametrize(("wall_ns", "text"), [
    (0, "1970-01-01T00:00:00.000000Z"),
    (999, "1970-01-01T00:00:00.000000Z"),
    (1_000, "1970-01-01T00:00:00.000001Z"),
    (1_999_999_999, "1970-01-01T00:00:01.999999Z"),
    (951_782_400 * 10**9, "2000-02-29T00:00:00.000000Z"),
])
def test_time_text_examples(wall_ns: int, text: str) -> None:
    assert Renderer(0).clock.second(wall_ns).decode() == text == expected_time(wall_ns)


def test_jq_reads_every_line() -> None:
    jq = shutil.which("jq")
    assert jq is not None, "jq is needed for this test"
    lines = [line for _, _, line in render_all(Renderer(WALL_OFFSET_NS))]
    done = subprocess.run([jq, "-c", "."], input=b"".join(lines), capture_output=True, check=False, timeout=30)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode("utf-8").splitlines()
    assert len(out) == len(lines)
    for ours, theirs in zip([json.loads(x) for x in lines], [json.loads(x) for x in out], strict=True):
        # jq 1.6 holds numbers as doubles: ts_ns (~1.8e18 > 2**53) comes back rounded to 53 bits
        assert float(theirs.pop("ts_ns")) == float(ours.pop("ts_ns"))
        assert theirs == ours
