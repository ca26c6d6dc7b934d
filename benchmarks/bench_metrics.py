"""Metrics at scale (root, real kernel): what pairing and histograms cost, memory over a long run, and
scrape time with many probes.

    python benchmarks/bench_metrics.py [--rate 45000] [--seconds 60] [--probes 100] [--python PYTHON]

1. offline: µs per record of the pipeline on captured kernel pages (the raw reader), JSON only vs JSON + pairing +
   latency histograms (labels = comm); the difference is what pairing and histograms add, also as
   exact instruction counts (valgrind), because timings on a shared VM vary by 2x from run to run.
2. live: the `push` target called at --rate calls/s (2 events a call) for --seconds, entry+return probes
   with latency; kernel hits vs records vs kernel losses, exporter CPU µs per event, RSS at start and end.
3. scrape: --probes probes (entry + return each) registered; /metrics fetched 20 times; median and max ms.

    python benchmarks/bench_metrics.py --storm 50 [--storm-seconds 30] [--storm-probes 1] [--rate 45000]

4. storm (only this when --storm is given): the `push` target at --rate calls/s for --storm-seconds with
   --storm-probes probes (entry + return), scraped over loopback in a loop by 1 scraper, then by --storm
   scrapers at once; per run: scrapes, scrape p50/p99/max, renderings, events lost in the kernel (share
   of the events generated). The exporter is expected to lose no more with --storm scrapers than with 1.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_live import cpu_seconds, wait_quiet  # noqa: E402
from bench_offline import FIXTURES, formats  # noqa: E402

from tests.prom import free_port  # noqa: E402
from uprobe_exporter.backend import CHOSEN  # noqa: E402
from uprobe_exporter.decode.rawpage import Located, PageLayout, RawDecoder  # noqa: E402
from uprobe_exporter.decode.records import LostEvents  # noqa: E402
from uprobe_exporter.pipeline.pairing import Pairing  # noqa: E402
from uprobe_exporter.pipeline.raw import RawPipeline  # noqa: E402
from uprobe_exporter.pipeline.render import EventInfo, Renderer  # noqa: E402
from uprobe_exporter.plan.config import ProbeConfig  # noqa: E402


def _pipeline(latency: bool) -> tuple[RawPipeline, RawDecoder, list[bytes]]:
    """A raw-reader pipeline (the default reader) and the captured pages of tests/fixtures/kernel."""
    fmts = formats()
    paired = ("work", "recurse")  # the captured probes that have return events ("types" has none)
    probes = [ProbeConfig(name=n, binary="/x", function=n, return_probe=latency and n in paired,
                          latency=latency and n in paired, labels=("comm",) if latency else ())
              for n in ("work", "recurse", "types")]
    labels = probes[0].labels
    infos = {f.name: EventInfo(f.name.rsplit("_", 1)[0], "return" if f.is_return else "entry", f"g/{f.name}",
                               labels) for f in fmts}
    layout = PageLayout.parse((FIXTURES / "header_page").read_text())
    pages = []
    for path in sorted(FIXTURES.glob("calls.raw.cpu*")):
        data = path.read_bytes()
        pages += [data[i:i + layout.page_size] for i in range(0, len(data), layout.page_size)]
    pipeline = RawPipeline(infos, probes, Renderer(0), Pairing(twin=CHOSEN.pairing), CHOSEN, tgid_of=lambda tid: 1)
    return pipeline, RawDecoder(layout, pipeline.emitters(fmts), pipeline.decode_errors, CHOSEN.walk), pages


def run_pipeline(latency: bool, repeat: int) -> tuple[float, int]:
    """CPU seconds and records for the captured pages, repeated, through one pipeline."""
    pipeline, decoder, pages = _pipeline(latency)
    t0 = time.process_time()
    for _ in range(repeat):
        located: list[Located] = []
        lost: list[LostEvents] = []
        for page in pages:
            decoder.locate(page, 0, located, lost)
        pipeline.process_located(located, lost)
    return time.process_time() - t0, sum(pipeline.statistics().events.values())


def instructions(latency: bool, repeat: int) -> int:
    """Instructions executed (valgrind --tool=callgrind): exact and repeatable on a noisy machine."""
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                           __file__, "--pipeline-once", str(int(latency)), str(repeat)],
                          capture_output=True, text=True, check=True)
    m = re.search(r"Collected : (\d+)", done.stderr)
    assert m, done.stderr
    return int(m[1])


def offline(repeat: int = 200, runs: int = 7) -> None:
    """JSON only vs JSON + pairing + histograms: best of ``runs`` interleaved timings, and exact
    instruction counts per record (the difference of two runs of different lengths)."""
    best: dict[bool, float] = {}
    for _ in range(runs):
        for latency in (False, True):
            seconds, records = run_pipeline(latency, repeat)
            best[latency] = min(best.get(latency, 1e9), seconds / records * 1e6)
    per_record = {}
    for latency in (False, True):
        _, records = run_pipeline(latency, 40)
        per_record[latency] = (instructions(latency, 40) - instructions(latency, 0)) / records
    for latency, label in ((False, "JSON only"), (True, "JSON + pairing + histograms")):
        print(f"offline {label:28} {best[latency]:6.2f} µs/record (best of {runs}), "
              f"{per_record[latency]:8.0f} instructions/record")
    extra = per_record[True] - per_record[False]
    rate = per_record[False] / best[False]  # instructions per µs at this machine's best
    print(f"offline pairing + histograms add {extra:.0f} instructions/record ≈ {extra / rate:.2f} µs "
          f"(at {rate / 1000:.1f} instructions/ns, this machine's best); timed: {best[True] - best[False]:.2f} µs")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def scrape(port: int) -> tuple[str, float]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return text, (time.perf_counter() - t0) * 1000


def metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def start_exporter(python: str, config: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([python, "-m", "uprobe_exporter", "run", "--config", str(config)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "; reading" in line:
            return proc
    raise SystemExit(f"exporter did not start: exit {proc.wait()}")


def config_text(group: str, out: Path, port: int, probes: str) -> str:
    return (f'[exporter]\ngroup = "{group}"\ninstance = "{group}"\nbuffer_size_kb = 4096\n'
            f'[output.jsonl]\npath = "{out}"\n[metrics]\nlisten = "127.0.0.1:{port}"\n{probes}')


def live(python: str, binary: Path, rate: int, seconds: float, tmp: Path) -> None:
    port = free_port()
    out = tmp / "live.jsonl"
    probe = (f'[[probes]]\nname = "work"\nbinary = "{binary}"\nfunction = "work_push"\nargs = {{ x = "%di:s64" }}\n'
             'return = true\nreturn_args = { ret = "$retval:s64" }\nlatency = true\nlabels = ["comm"]\n')
    config = tmp / "live.toml"
    config.write_text(config_text("bench_metrics_live", out, port, probe))
    exporter = start_exporter(python, config, port)
    try:
        target = subprocess.Popen([binary, "push", str(seconds), str(rate)], stdout=subprocess.PIPE, text=True)
        time.sleep(min(5.0, seconds / 4))
        rss_start, cpu0, t0 = rss_kb(exporter.pid), cpu_seconds(exporter.pid), time.monotonic()
        samples = []
        while target.poll() is None:
            time.sleep(min(10.0, seconds / 10))
            samples.append(rss_kb(exporter.pid))
        cpu_window = cpu_seconds(exporter.pid) - cpu0
        window = time.monotonic() - t0
        calls = int((target.stdout.read() if target.stdout else "0").split()[0])
        wait_quiet(out)
        text, _ = scrape(port)
    finally:
        exporter.terminate()
        exporter.wait()
    hits = metric(text, "uprobe_probe_hits_total", probe="work")
    events = metric(text, "uprobe_events_total", probe="work")
    lost = metric(text, "uprobe_exporter_kernel_lost_events_total")
    count = metric(text, "uprobe_call_duration_seconds_count", probe="work")
    rate_seen = events / seconds
    print(f"live: {calls} calls in {seconds:.0f} s = {2 * calls / seconds:.0f} events/s offered")
    print(f"live: kernel hits {hits:.0f}, records {events:.0f}, lost in kernel {lost:.0f} "
          f"({'adds up' if hits == events + lost else 'DOES NOT add up'}), calls timed {count:.0f}")
    per_event = cpu_window / (rate_seen * window) * 1e6
    print(f"live: exporter CPU {cpu_window / window * 100:.0f}% of a core = {per_event:.2f} µs per event")
    print(f"live: RSS start {rss_start} kB, end {samples[-1]} kB, min {min(samples)} kB, max {max(samples)} kB")
    print(f"live: RSS samples (kB, every {min(10.0, seconds / 10):.0f} s): {' '.join(map(str, samples))}")


def scrape_many(python: str, binary: Path, n: int, tmp: Path) -> None:
    port = free_port()
    probes = "".join(
        f'[[probes]]\nname = "p{i}"\nbinary = "{binary}"\nfunction = "work_push"\nreturn = true\n'
        'latency = true\n' for i in range(n))
    config = tmp / "many.toml"
    config.write_text(config_text("bench_metrics_many", tmp / "many.jsonl", port, probes))
    exporter = start_exporter(python, config, port)
    try:
        subprocess.run([binary, "push", "0.5", "200"], check=True, capture_output=True)  # data in every series
        wait_quiet(tmp / "many.jsonl")
        times = [scrape(port)[1] for _ in range(20)]
    finally:
        exporter.terminate()
        exporter.wait()
    print(f"scrape with {n} probes ({2 * n} events): median {statistics.median(times):.1f} ms, max {max(times):.1f} ms")


def scrape_raw(port: int) -> float:
    """One scrape as cheap for the client as it gets (a bare HTTP/1.0 GET); its seconds."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        while sock.recv(1 << 16):
            pass
    return time.perf_counter() - t0


def storm_run(python: str, binary: Path, scrapers: int, probes: int, rate: int, seconds: float,
              tmp: Path) -> None:
    port = free_port()
    out = tmp / f"storm{scrapers}.jsonl"
    text = "".join(
        f'[[probes]]\nname = "p{i}"\nbinary = "{binary}"\nfunction = "work_push"\nargs = {{ x = "%di:s64" }}\n'
        'return = true\nreturn_args = { ret = "$retval:s64" }\nlatency = true\n' for i in range(probes))
    config = tmp / f"storm{scrapers}.toml"
    config.write_text(config_text(f"bench_storm_{scrapers}", out, port, text))
    exporter = start_exporter(python, config, port)
    times: list[float] = []
    failures = [0]
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            try:
                times.append(scrape_raw(port))
            except OSError:
                failures[0] += 1

    try:
        threads = [threading.Thread(target=scraper) for _ in range(scrapers)]
        target = subprocess.Popen([binary, "push", str(seconds), str(rate)], stdout=subprocess.DEVNULL)
        for t in threads:
            t.start()
        target.wait()
        stop.set()
        for t in threads:
            t.join()
        wait_quiet(out)
        time.sleep(0.5)
        final, _ = scrape(port)
    finally:
        exporter.terminate()
        exporter.wait()
    hits = metric(final, "uprobe_probe_hits_total")
    lost = metric(final, "uprobe_exporter_kernel_lost_events_total")
    renderings = metric(final, "uprobe_exporter_scrape_renderings_total")
    q = statistics.quantiles(times, n=100) if len(times) >= 2 else [float("nan")] * 99
    print(f"storm: {scrapers:3d} scrapers, {probes} probes, {seconds:.0f} s: {len(times)} scrapes "
          f"({failures[0]} failed), p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, "
          f"max {max(times, default=0) * 1000:.0f} ms, {renderings:.0f} renderings; kernel lost {lost:.0f} of "
          f"{hits:.0f} events ({lost / max(hits, 1) * 100:.2f} %)")


def main() -> None:
    if sys.argv[1:2] == ["--pipeline-once"]:  # the workload valgrind counts
        run_pipeline(sys.argv[2] == "1", int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=45000, help="calls per second (2 events a call)")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs the exporter")
    ap.add_argument("--storm", type=int, default=0, help="only the scrape storm: this many scrapers vs 1")
    ap.add_argument("--storm-seconds", type=float, default=30)
    ap.add_argument("--storm-probes", type=int, default=1)
    args = ap.parse_args()
    if args.storm:
        with tempfile.TemporaryDirectory() as d:
            binary = Path(d) / "loop"
            subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "benchmarks" / "targets" / "loop.c")],
                           check=True)
            for n in (1, args.storm):
                storm_run(args.python, binary, n, args.storm_probes, args.rate, args.storm_seconds, Path(d))
        return
    offline()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        binary = tmp / "loop"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "benchmarks" / "targets" / "loop.c")], check=True)
        scrape_many(args.python, binary, args.probes, tmp)
        live(args.python, binary, args.rate, args.seconds, tmp)


if __name__ == "__main__":
    main()
