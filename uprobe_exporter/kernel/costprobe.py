"""Measure, on the running kernel, what a probe hit costs per kind of first instruction; cached per kernel.

Strategy: write the code file of costclass.py (one tiny function per kind and a loop that calls one of
them N times), and in a child Python map it executable from the file (uprobes fire on file-backed
mappings) and time the loop per kind, without probes and then with a `p:` probe on each function (our
own group ``uprobe_exporter_cost_<pid>`` and instance, removed afterwards, as every session is).
Cost per hit = (with − without) / N, the best of a few rounds. The figures are kept in a JSON file per
kernel release (``$UPROBE_EXPORTER_CACHE``, else ``~/.cache/uprobe-exporter``): measured once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from uprobe_exporter.errors import TracefsError, UprobeExporterError
from uprobe_exporter.kernel.session import ProbeSession
from uprobe_exporter.kernel.tracefs import Tracefs, find_tracefs
from uprobe_exporter.plan.costclass import CostClass, classify, code_file
from uprobe_exporter.plan.probes import ProbeEvent

CALLS, ROUNDS = 4000, 3
COST_GROUP = "uprobe_exporter_cost"  # its own group and instance for the measurement
CACHE_NAME = "cost-classes-v1.json"
# The child: map the code file (PROT_READ|PROT_EXEC, from the file) and time loop(n, fn) per kind.
_TIMER = r"""
import ctypes, json, mmap, os, sys, time
path, loop_off, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
offsets = json.loads(sys.argv[5])
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
base = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_EXEC, mmap.MAP_PRIVATE, fd, 0)
if base in (None, ctypes.c_void_p(-1).value):
    sys.exit("mmap failed: " + os.strerror(ctypes.get_errno()))
loop = ctypes.CFUNCTYPE(None, ctypes.c_long, ctypes.c_void_p)(base + loop_off)
out = {}
for kind, off in offsets.items():
    best = None
    for _ in range(rounds):
        t = time.perf_counter_ns()
        loop(n, base + off)
        t = time.perf_counter_ns() - t
        best = t if best is None or t < best else best
    out[kind] = best / n
print(json.dumps(out))
"""


def cache_dir() -> Path:
    env = os.environ.get("UPROBE_EXPORTER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "uprobe-exporter"


def read_cached_costs(directory: Path | None = None) -> dict[str, float] | None:
    """The figures measured earlier on this kernel release, or None."""
    path = (directory or cache_dir()) / CACHE_NAME
    try:
        data = json.loads(path.read_text())
        costs = data.get(os.uname().release)
    except (OSError, ValueError, AttributeError):  # no usable cache: measured again
        return None
    return {str(k): float(v) for k, v in costs.items()} if isinstance(costs, dict) else None


def _time_kinds(path: Path, loop_off: int, offsets: dict[str, int]) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _TIMER, str(path), str(loop_off), str(CALLS), str(ROUNDS),
                           json.dumps(offsets)], capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise TracefsError(f"timing probe hits failed: {done.stderr.strip()[-300:]}")
    return {str(k): float(v) for k, v in json.loads(done.stdout).items()}


def measure_costs(tracefs: Tracefs, directory: Path | None = None) -> dict[str, float]:
    """Nanoseconds per probe hit per kind, measured now and cached."""
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    data, loop_off, offsets = code_file()
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = Path(tmp) / "kinds.bin"
        path.write_bytes(data)
        bare = _time_kinds(path, loop_off, offsets)
        # one fixed name, locked while measuring (ownership.py): a measurement killed halfway leaves
        # leftovers the next one removes, and two at once do not both measure
        group = COST_GROUP
        events = [ProbeEvent(kind, group, kind, False, str(path), off, f"p:{group}/{kind} {path}:{off:#x}", "")
                  for kind, off in offsets.items()]
        with ProbeSession(tracefs, tracefs.instance(group), group, events, 64):
            probed = _time_kinds(path, loop_off, offsets)
    costs = {kind: max(probed[kind] - bare[kind], 0.0) for kind in offsets}
    cache = directory / CACHE_NAME
    try:
        existing = json.loads(cache.read_text()) if cache.exists() else {}
    except ValueError:
        existing = {}
    existing[os.uname().release] = costs
    partial = cache.with_name(f"{CACHE_NAME}.{os.getpid()}")
    partial.write_text(json.dumps(existing, indent=1, sort_keys=True) + "\n")
    partial.replace(cache)  # atomic: another check measuring meanwhile never reads half a file
    return costs


def cost_classes(tracefs_setting: str = "auto") -> tuple[dict[str, CostClass] | None, str]:
    """The classes per kind (cached, else measured now), or None and why they could not be measured."""
    costs = read_cached_costs()
    if costs is None:
        try:
            tracefs = Tracefs(find_tracefs(tracefs_setting))
            tracefs.check_writable()
            costs = measure_costs(tracefs)
        except (UprobeExporterError, OSError) as exc:  # a note for `check`: the costs are optional
            return None, str(exc)
    return classify(costs), ""
