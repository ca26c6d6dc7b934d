"""pipeline: the captured trace, batch by batch, through parsing, pairing, histograms and JSON rendering."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from uprobe_exporter.decode.traceline import TextParser
from uprobe_exporter.kernel.formatfile import parse_format
from uprobe_exporter.pipeline.calls import event_infos
from uprobe_exporter.pipeline.histogram import OTHER
from uprobe_exporter.pipeline.pairing import Pairing
from uprobe_exporter.pipeline.render import Renderer
from uprobe_exporter.pipeline.text import TextPipeline
from uprobe_exporter.plan.config import Config, parse_config
from uprobe_exporter.plan.probes import ResolvedProbe, build_events

KERNEL = Path(__file__).parent.parent / "fixtures" / "kernel"
GROUP = "capture"
BINARY = "/tmp/calls"  # the path uprobe_profile shows


def config() -> Config:
    return parse_config({"probes": [
        {"name": "work", "binary": BINARY, "function": "work", "args": {"a": "%di:s32", "s": "+0(%si):string"},
         "return": True, "return_args": {"ret": "$retval:s64"}, "latency": True, "labels": ["comm", "s"],
         "buckets": [0.000001, 0.00001, 0.001]},
        {"name": "recurse", "binary": BINARY, "function": "recurse", "args": {"n": "%di:s32"},
         "return": True, "return_args": {"ret": "$retval:s32"}, "latency": True},
        {"name": "types", "binary": BINARY, "function": "work"},
    ]})


def pipeline(renderer: Renderer | None, label_values_max: int = 100) -> TextPipeline:
    cfg = config()
    # the file offset only appears in the uprobe_events command, which the pipeline does not use
    events = [e for p in cfg.probes for e in build_events(ResolvedProbe(p, BINARY, 0), GROUP)]
    parser = TextParser.for_formats(parse_format(f.read_text(encoding="utf-8")) for f in KERNEL.glob("*.format"))
    return TextPipeline(parser, event_infos(events, cfg.probes), cfg.probes, renderer, Pairing(), label_values_max)


def lines() -> list[str]:
    return (KERNEL / "calls.trace_pipe").read_bytes().decode("latin-1").split("\n")[:-1]


def report() -> list[dict[str, Any]]:
    return [json.loads(x) for x in (KERNEL / "calls.report.jsonl").read_text(encoding="utf-8").splitlines()]


def run_in_batches(p: TextPipeline, size: int) -> list[dict[str, Any]]:
    text = lines()
    out = b""
    for i in range(0, len(text), size):
        chunk = p.process(text[i:i + size])
        assert chunk is not None
        assert chunk[0].count(b"\n") == chunk[1]
        out += chunk[0]
    last = p.process([], final=True)
    assert last is not None
    return [json.loads(x) for x in (out + last[0]).splitlines()]


def test_records_and_durations() -> None:
    docs = run_in_batches(pipeline(Renderer(0)), 7)
    profile = {ln.split()[1]: int(ln.split()[2]) for ln in (KERNEL / "uprobe_profile").read_text().splitlines()}
    assert Counter(f"{d['probe']}_{d['type']}" for d in docs) == Counter(profile)
    calls = [c for c in report() if c["fn"] == "work"]
    assert Counter((d["tid"], d["args"]["ret"]) for d in docs if d["probe"] == "work" and d["type"] == "return") \
        == Counter((c["tid"], c["ret"]) for c in calls)
    # durations: the last entry of the same probe and thread (work is not recursive), n == ret for recurse
    last_entry: dict[tuple[str, int], int] = {}
    entry_of_n: dict[tuple[int, int], int] = {}
    for d in docs:
        key = (d["probe"], d["tid"])
        if d["type"] == "entry":
            last_entry[key] = d["ts_ns"]
            if d["probe"] == "recurse":
                entry_of_n[d["tid"], d["args"]["n"]] = d["ts_ns"]
            assert "duration_ns" not in d
        elif d["probe"] == "work":
            assert d["duration_ns"] == d["ts_ns"] - last_entry[key]
        else:
            assert d["duration_ns"] == d["ts_ns"] - entry_of_n[d["tid"], d["args"]["ret"]]
    pids = {c["pid"] for c in report()}
    assert {d["pid"] for d in docs} == pids
    assert all(d["event"] == f"{GROUP}/{d['probe']}_{d['type']}" for d in docs)


def test_histograms_count_every_call_by_label() -> None:
    p = pipeline(None)
    for i in range(0, len(lines()), 13):
        assert p.process(lines()[i:i + 13]) is None
    assert p.process([], final=True) is None
    calls = [c for c in report() if c["fn"] == "work"]
    text = {c["s_hex"]: bytes.fromhex(c["s_hex"]).decode("utf-8", "backslashreplace") for c in calls}
    by_label: Counter[tuple[str, str]] = Counter(
        (bytes.fromhex(c["comm_hex"]).decode(), text[c["s_hex"]]) for c in calls)
    work = p.histograms["work"]
    assert {k: sum(h.counts) for k, h in work.series.items()} == dict(by_label)
    recurse = p.histograms["recurse"]
    assert sum(sum(h.counts) for h in recurse.series.values()) == sum(c["n"] + 1 for c in report()
                                                                      if c["fn"] == "recurse")
    stats = p.statistics()
    assert stats.parse_errors == {}
    assert stats.events[("work", "entry")] == len(calls)
    assert p.pairing.statistics().returns_without_entry == 0


def test_label_cap_folds_into_other() -> None:
    p = pipeline(None, label_values_max=2)
    p.process(lines(), final=True)
    work = p.histograms["work"]
    comms = {k[0] for k in work.series}
    strings = {k[1] for k in work.series}
    assert len(comms - {OTHER}) <= 2
    assert len(strings - {OTHER}) <= 2
    assert len({c["s_hex"] for c in report() if c["fn"] == "work"}) > 2
    assert OTHER in strings
    assert sum(sum(h.counts) for h in work.series.values()) == sum(c["fn"] == "work" for c in report())


def test_errors_and_lost_events_are_counted() -> None:
    p = pipeline(Renderer(0))
    text = lines()
    text.insert(5, text[5][:40])
    text.insert(9, "CPU:1 [LOST 7 EVENTS]")
    text.insert(12, "CPU:0 [LOST 5 EVENTS]")
    text.insert(20, "CPU:0 [LOST EVENTS]")
    out = p.process(text, final=True)
    assert out is not None
    assert len(out[0].splitlines()) == out[1] == len(lines()) - sum(ln.startswith("line two") for ln in lines())
    stats = p.statistics()
    assert stats.parse_errors == {"line_format": 1}
    assert stats.lost_inband == 12


def test_same_output_whatever_the_batching() -> None:
    whole = run_in_batches(pipeline(Renderer(0)), 10_000)
    for size in (1, 2, 5, 33):
        assert run_in_batches(pipeline(Renderer(0)), size) == whole


def test_entries_without_return_are_counted_as_pending() -> None:
    p = pipeline(None)
    text = [ln for ln in lines() if " recurse_return: " not in ln]
    p.process(text, final=True)
    per_thread: dict[int, int] = defaultdict(int)
    for c in report():
        if c["fn"] == "recurse":
            per_thread[c["tid"]] += c["n"] + 1
    assert p.pairing.statistics().pending == sum(per_thread.values())
    assert p.pairing.threads() == set(per_thread)
