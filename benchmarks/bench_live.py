"""Live benchmark on the real kernel (root): the exporter against `cat trace_pipe > file`.

    python benchmarks/bench_live.py [--seconds 5] [--targets step,push,go] [--producers 1] [--readers raw,text]
                                    [--return-via uretprobe,ret_instructions] [--python PYTHON]

For each target (a function starting with an instruction the kernel single-steps, and one starting
with `push`, which it emulates; ``go``: a Go function, main.work, whose returns are always seen at its RET),
entry + return probes (returns by ``--return-via``: a uretprobe or a `p:` probe on each RET instruction),
``--producers`` copies of the target at once, runs of the same length:
  none     probes enabled in an instance, nobody reading (the target's speed with probes alone)
  raw      uprobe-exporter run, reader = "raw" (per-CPU trace_pipe_raw), JSON lines to a file
  text     uprobe-exporter run, reader = "text" (trace_pipe), JSON lines to a file
  cat      cat instances/<name>/trace_pipe > file
and prints, per run: calls/s of the target, events generated (uprobe_profile hits), records emitted,
events lost in the kernel (per-CPU stats), records the exporter's JSON sink dropped (its queue full),
whether they add up exactly, reader CPU µs per record (per event generated, for the CPU/event ratio),
the target's slowdown against nobody reading, the exporter's peak RSS, and the exporter/cat ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uprobe_exporter.kernel.session import ProbeSession  # noqa: E402
from uprobe_exporter.kernel.tracefs import Tracefs, find_tracefs  # noqa: E402
from uprobe_exporter.plan.config import ProbeConfig  # noqa: E402
from uprobe_exporter.plan.elf import load_elf  # noqa: E402
from uprobe_exporter.plan.probes import build_events  # noqa: E402
from uprobe_exporter.plan.resolve import resolve_function_probe  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
BUFFER_KB = 4096


@dataclass
class Run:
    name: str
    calls: int
    seconds: float
    hits: int
    records: int
    lost: int
    cpu_s: float
    rss_kb: tuple[int, int] = (0, 0)  # at the start of the run, at its end
    dropped: int = 0  # records the exporter's JSON sink dropped (its queue full), counted by it

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def adds_up(self) -> bool:
        return self.hits == self.records + self.lost + self.dropped


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def hits_of(tracefs: Tracefs, path: str, events: list[str]) -> int:
    return sum(e.hits for e in tracefs.read_uprobe_profile() if e.path == path and e.event in events)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_target(binary: Path, mode: str, seconds: float, producers: int = 1) -> tuple[int, float]:
    """``producers`` copies at once; their calls summed, the longest elapsed time."""
    procs = [subprocess.Popen([binary, mode, str(seconds)], stdout=subprocess.PIPE, text=True)
             for _ in range(producers)]
    calls, elapsed = 0, 0.0
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"{binary} failed: {p.returncode}")
        calls += int(out.split()[0])
        elapsed = max(elapsed, float(out.split()[1]))
    return calls, elapsed


def wait_quiet(path: Path, settle: float = 0.5) -> None:
    """Wait until ``path`` stops growing (the reader has drained the backlog)."""
    size, since = -1, time.monotonic()
    while time.monotonic() - since < settle:
        now = path.stat().st_size if path.exists() else 0
        if now != size:
            size, since = now, time.monotonic()
        time.sleep(0.05)


def count_records(path: Path) -> int:
    """Lines that are records: not the "CPU:N [LOST M EVENTS]" markers cat also writes."""
    with path.open("rb") as f:
        return sum(1 for line in f if not line.startswith(b"CPU:"))


def function_of(mode: str) -> str:
    return "main.work" if mode == "go" else f"work_{mode}"


def args_of(mode: str, via: str) -> tuple[str, str]:
    """The argument and the return value: Go's register ABI, and %ax at a RET ($retval is a uretprobe's)."""
    return ("%ax:s64" if mode == "go" else "%di:s64",
            "%ax:s64" if mode == "go" or via == "ret_instructions" else "$retval:s64")


def probes_for(binary: Path, mode: str, via: str) -> list[ProbeConfig]:
    arg, ret = args_of(mode, via)
    return [ProbeConfig(name="work", binary=str(binary), function=function_of(mode), args=(("x", arg),),
                        return_probe=True, return_args=(("ret", ret),), return_via=via)]


def session(tracefs: Tracefs, group: str, binary: Path, mode: str, via: str) -> ProbeSession:
    info = load_elf(binary)
    problems: list[str] = []
    resolved = [resolve_function_probe(p, info, problems) for p in probes_for(binary, mode, via)]
    if problems:
        raise SystemExit("; ".join(problems))
    events = [e for r in resolved if r is not None for e in build_events(r, group)]
    return ProbeSession(tracefs, tracefs.instance(group), group, events, BUFFER_KB)


def run_none(tracefs: Tracefs, binary: Path, mode: str, seconds: float, producers: int, via: str) -> Run:
    group = f"bench_none_{mode}_{os.getpid()}"
    with session(tracefs, group, binary, mode, via) as s:
        calls, elapsed = run_target(binary, mode, seconds, producers)
        hits = hits_of(tracefs, str(binary), [e.event for e in s.events])
        lost = s.instance.read_lost()
        kept = sum(s.instance.read_stats(c).get("entries", 0) for c in s.instance.cpus())
    return Run("none", calls, elapsed, hits, kept, lost, 0.0)


def run_cat(tracefs: Tracefs, binary: Path, mode: str, seconds: float, producers: int, tmp: Path, via: str) -> Run:
    group = f"bench_cat_{mode}_{os.getpid()}"
    out = tmp / f"cat_{mode}.txt"
    with session(tracefs, group, binary, mode, via) as s, out.open("wb") as f:
        cat = subprocess.Popen(["cat", str(s.instance.trace_pipe)], stdout=f)
        time.sleep(0.3)
        cpu0 = cpu_seconds(cat.pid)
        calls, elapsed = run_target(binary, mode, seconds, producers)
        wait_quiet(out)
        cpu = cpu_seconds(cat.pid) - cpu0
        hits = hits_of(tracefs, str(binary), [e.event for e in s.events])
        lost = s.instance.read_lost()
        cat.send_signal(signal.SIGTERM)
        cat.wait()
    return Run("cat", calls, elapsed, hits, count_records(out), lost, cpu)


def run_exporter(binary: Path, mode: str, seconds: float, producers: int, tmp: Path, python: str,
                 reader: str, via: str) -> Run:
    group = f"bench_exp_{mode}_{os.getpid()}"
    out = tmp / f"exporter_{mode}.jsonl"
    out.unlink(missing_ok=True)  # the sink appends
    config = tmp / "config.toml"
    arg, ret = args_of(mode, via)
    config.write_text(
        f'[exporter]\ngroup = "{group}"\ninstance = "{group}"\nbuffer_size_kb = {BUFFER_KB}\n'
        f'reader = "{reader}"\n'
        f'[output.jsonl]\npath = "{out}"\n[metrics]\nenabled = false\n'
        f'[[probes]]\nname = "work"\nbinary = "{binary}"\nfunction = "{function_of(mode)}"\n'
        f'args = {{ x = "{arg}" }}\nreturn = true\nreturn_args = {{ ret = "{ret}" }}\n'
        f'return_via = "{via}"\n')
    exporter = subprocess.Popen([python, "-m", "uprobe_exporter", "run", "--config", str(config)], cwd=ROOT,
                                stderr=subprocess.PIPE, text=True)
    assert exporter.stderr is not None
    for line in exporter.stderr:
        if "; reading" in line:
            break
    else:
        raise SystemExit(f"exporter did not start (exit {exporter.wait()})")
    tracefs = Tracefs(find_tracefs("auto"))
    cpu0, rss0 = cpu_seconds(exporter.pid), rss_kb(exporter.pid)
    calls, elapsed = run_target(binary, mode, seconds, producers)
    wait_quiet(out)
    cpu, rss1 = cpu_seconds(exporter.pid) - cpu0, rss_kb(exporter.pid)
    hits = hits_of(tracefs, str(binary), ["work_entry", "work_return"])
    exporter.send_signal(signal.SIGTERM)
    log = exporter.stderr.read()
    exporter.wait()
    m = re.search(r"(\d+) lost in the kernel", log)
    lost = int(m[1]) if m else -1
    m = re.search(r"(\d+) dropped by the sink", log)
    dropped = int(m[1]) if m else -1
    return Run(reader, calls, elapsed, hits, count_records(out), lost, cpu, (rss0, rss1), dropped)


def report(mode: str, producers: int, runs: dict[str, Run], via: str) -> None:
    none = runs["none"]
    print(f"\n== target '{mode}' x{producers}: entry + return probes ({via}), {none.seconds:.1f} s per run ==")
    print(f"{'run':6} {'calls/s':>10} {'events':>10} {'records':>10} {'lost':>10} {'dropped':>8} {'loss%':>6} "
          f"{'adds up':>7} {'µs CPU/rec':>10} {'µs CPU/ev':>9} {'slowdown':>8} {'RSS MB start/end':>16}")
    for r in runs.values():
        per_rec = r.cpu_s / r.records * 1e6 if r.records and r.cpu_s else 0.0
        per_ev = r.cpu_s / r.hits * 1e6 if r.hits and r.cpu_s else 0.0
        slowdown = (none.rate / r.rate - 1) * 100
        rss = f"{r.rss_kb[0] / 1024:.1f}/{r.rss_kb[1] / 1024:.1f}" if r.rss_kb[0] else ""
        print(f"{r.name:6} {r.rate:10.0f} {r.hits:10d} {r.records:10d} {r.lost:10d} {r.dropped:8d} "
              f"{(r.lost + r.dropped) / max(r.hits, 1) * 100:6.2f} {'yes' if r.adds_up else 'NO':>7} {per_rec:10.2f} "
              f"{per_ev:9.2f} {slowdown:7.1f}% {rss:>16}")
    cat = runs["cat"]
    for name in ("raw", "text"):
        if name not in runs:
            continue
        exp = runs[name]
        print(f"{name}/cat: CPU per event {exp.cpu_s / max(exp.hits, 1) / (cat.cpu_s / max(cat.hits, 1)):.2f}x, "
              f"CPU per record {exp.cpu_s / max(exp.records, 1) / (cat.cpu_s / max(cat.records, 1)):.2f}x, "
              f"loss {(exp.lost + exp.dropped) / max(exp.hits, 1) * 100:.2f}% "
              f"vs {cat.lost / max(cat.hits, 1) * 100:.2f}%, "
              f"slowdown {(none.rate / exp.rate - 1) * 100:.1f}% vs {(none.rate / cat.rate - 1) * 100:.1f}%, "
              f"events/s {exp.hits / exp.seconds:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--targets", default="step,push")
    ap.add_argument("--producers", type=int, default=1, help="copies of the target running at once")
    ap.add_argument("--readers", default="raw,text", help="the exporter's readers to run (raw, text)")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs the exporter")
    ap.add_argument("--return-via", default="uretprobe", help="uretprobe, ret_instructions or both (comma)")
    args = ap.parse_args()
    tracefs = Tracefs(find_tracefs("auto"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        c_loop, go_loop = tmp / "loop", tmp / "goloop"
        subprocess.run(["gcc", "-O2", "-o", str(c_loop), str(ROOT / "benchmarks" / "targets" / "loop.c")],
                       check=True)
        if "go" in args.targets.split(","):
            subprocess.run(["go", "build", "-o", str(go_loop), str(ROOT / "benchmarks" / "targets" / "goloop.go")],
                           check=True, env={**os.environ, "GOCACHE": str(tmp / "gocache")})
        for mode in args.targets.split(","):
            binary = go_loop if mode == "go" else c_loop
            for via in args.return_via.split(","):
                if mode == "go" and via == "uretprobe":
                    continue  # it would crash the Go program: refused
                runs = {"none": run_none(tracefs, binary, mode, args.seconds, args.producers, via)}
                for reader in args.readers.split(","):
                    runs[reader] = run_exporter(binary, mode, args.seconds, args.producers, tmp, args.python,
                                                reader, via)
                runs["cat"] = run_cat(tracefs, binary, mode, args.seconds, args.producers, tmp, via)
                report(mode, args.producers, runs, via)


if __name__ == "__main__":
    main()
