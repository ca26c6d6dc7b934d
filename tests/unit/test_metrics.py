"""The collector against a tracefs tree laid out like the kernel's (captured text), including a broken
one: a scrape that cannot read uprobe_profile or stats serves everything else and counts the failure."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.twins import native
from uprobe_exporter.decode.traceline import TextParser
from uprobe_exporter.kernel.tracefs import Tracefs
from uprobe_exporter.pipeline.calls import event_infos
from uprobe_exporter.pipeline.histogram import Histogram
from uprobe_exporter.pipeline.pairing import Pairing
from uprobe_exporter.pipeline.render import Renderer
from uprobe_exporter.pipeline.text import TextPipeline
from uprobe_exporter.plan.config import ProbeConfig
from uprobe_exporter.plan.probes import ProbeEvent
from uprobe_exporter.run.metrics import Sources, UprobeCollector

FIXTURES = Path(__file__).parent.parent / "fixtures" / "kernel"
GROUP = next(line.split()[0].split(":")[1].split("/")[0]
             for line in (FIXTURES / "uprobe_events").read_text().splitlines())  # the capture's group


def fake_tracefs(root: Path, profile: bool = True) -> Tracefs:
    """instances/<name>/per_cpu/cpu{0,1}/stats and uprobe_profile, from text captured on this kernel."""
    for cpu in (0, 1):
        d = root / "instances" / "i" / "per_cpu" / f"cpu{cpu}"
        d.mkdir(parents=True)
        shutil.copy(FIXTURES / "stats", d / "stats")
    shutil.copy(FIXTURES / "uprobe_events", root / "uprobe_events")
    if profile:
        shutil.copy(FIXTURES / "uprobe_profile", root / "uprobe_profile")
    return Tracefs(root)


def collect(tracefs: Tracefs) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    probes = [ProbeConfig(name="work", binary="/tmp/calls", function="work", return_probe=True, latency=True)]
    events = [ProbeEvent("work", GROUP, "work_entry", False, "/tmp/calls", 0x11f9, "", ""),
              ProbeEvent("work", GROUP, "work_return", True, "/tmp/calls", 0x11f9, "", "")]
    pipeline = TextPipeline(TextParser({}), event_infos(events, probes), probes, Renderer(0), Pairing())
    pipeline.event_counts["work_entry"] += 3
    pipeline.histograms["work"].observe((), 2_000_000)
    sources = Sources()
    sources.update(tracefs, tracefs.instance("i"), events, pipeline, None, None)
    registry = CollectorRegistry()
    registry.register(UprobeCollector(sources))
    text = generate_latest(registry).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    return text, samples


def profile_hits(event: str) -> int:
    for line in (FIXTURES / "uprobe_profile").read_text().splitlines():
        _, name, hits = line.split()
        if name == event:
            return int(hits)
    raise AssertionError(event)


def test_hits_come_from_uprobe_profile_at_scrape_time(tmp_path: Path) -> None:
    _, samples = collect(fake_tracefs(tmp_path))
    key = ("uprobe_probe_hits_total", (("event", f"{GROUP}/work_entry"), ("path", "/tmp/calls"), ("probe", "work")))
    assert samples[key] == profile_hits("work_entry")
    assert samples[("uprobe_events_total", (("probe", "work"), ("type", "entry")))] == 3
    assert samples[("uprobe_call_duration_seconds_count", (("probe", "work"),))] == 1
    assert samples[("uprobe_exporter_scrape_errors_total", (("source", "uprobe_profile"),))] == 0
    overrun = int(next(line.split(":")[1] for line in (FIXTURES / "stats").read_text().splitlines()
                       if line.startswith("overrun:")))
    assert samples[("uprobe_exporter_kernel_lost_events_total", (("cpu", "1"), ("reason", "overrun")))] == overrun


def test_unreadable_uprobe_profile_is_counted_and_the_rest_served(tmp_path: Path) -> None:
    tracefs = fake_tracefs(tmp_path, profile=False)
    text, samples = collect(tracefs)
    assert not any(name == "uprobe_probe_hits_total" for name, _ in samples)
    assert samples[("uprobe_exporter_scrape_errors_total", (("source", "uprobe_profile"),))] == 1
    assert samples[("uprobe_events_total", (("probe", "work"), ("type", "entry")))] == 3
    assert "uprobe_call_duration_seconds_bucket" in text


def test_unreadable_stats_are_counted(tmp_path: Path) -> None:
    tracefs = fake_tracefs(tmp_path)
    shutil.rmtree(tmp_path / "instances" / "i" / "per_cpu")
    _, samples = collect(tracefs)
    assert samples[("uprobe_exporter_scrape_errors_total", (("source", "stats"),))] == 1
    assert samples[("uprobe_exporter_scrape_errors_total", (("source", "uprobe_profile"),))] == 0


def test_another_group_with_the_same_event_and_path_is_not_counted(tmp_path: Path) -> None:
    """uprobe_profile has no group column; the group comes from uprobe_events, line by line."""
    tracefs = fake_tracefs(tmp_path)
    ours = next(line for line in (FIXTURES / "uprobe_events").read_text().splitlines() if "/work_entry " in line)
    with (tmp_path / "uprobe_events").open("a") as f:
        f.write(ours.replace(f":{GROUP}/", ":someone_else/") + "\n")
    with (tmp_path / "uprobe_profile").open("a") as f:
        f.write("  /tmp/calls work_entry                                            123456\n")
    _, samples = collect(tracefs)
    hits = [v for (name, labels), v in samples.items() if name == "uprobe_probe_hits_total"
            and dict(labels)["event"].endswith("/work_entry")]
    assert hits == [profile_hits("work_entry")]


def test_uprobe_events_and_profile_that_disagree_are_a_scrape_error(tmp_path: Path) -> None:
    tracefs = fake_tracefs(tmp_path)
    with (tmp_path / "uprobe_profile").open("a") as f:
        f.write("  /tmp/other some_event                                            1\n")
    _, samples = collect(tracefs)
    assert samples[("uprobe_exporter_scrape_errors_total", (("source", "uprobe_profile"),))] == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 20 * 10**9)), max_size=40))
def test_the_native_series_expose_what_the_python_series_expose(observations: list[tuple[str, int]]) -> None:
    """The same observations into Python and native series: the same exposition, byte for byte."""
    texts = []
    for series in (Histogram, native().histogram):
        with tempfile.TemporaryDirectory() as root:
            tracefs = fake_tracefs(Path(root))
            probes = [ProbeConfig(name="work", binary="/tmp/calls", function="work", return_probe=True, latency=True,
                                  labels=("comm",), buckets=(0.001, 0.5, 2.0)),
                      ProbeConfig(name="plain", binary="/tmp/calls", function="work", return_probe=True, latency=True)]
            events = [ProbeEvent("work", GROUP, "work_entry", False, "/tmp/calls", 0x11f9, "", ""),
                      ProbeEvent("work", GROUP, "work_return", True, "/tmp/calls", 0x11f9, "", "")]
            pipeline = TextPipeline(TextParser({}), event_infos(events, probes[:1]), probes, Renderer(0), Pairing(),
                                    new_series=series)
            for comm, d in observations:
                pipeline.histograms["work"].observe((comm,), d)
                pipeline.histograms["plain"].observe((), d)
            sources = Sources()
            sources.update(tracefs, tracefs.instance("i"), events, pipeline, None, None)
            registry = CollectorRegistry()
            registry.register(UprobeCollector(sources))
            text = generate_latest(registry).decode()
        texts.append([line for line in text.splitlines() if line.startswith("uprobe_call_duration_seconds")])
    assert texts[0] == texts[1]
    assert len(texts[0]) >= 6  # the plain probe's series exists from the start
