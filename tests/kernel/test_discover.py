"""Discovery on the real kernel: processes started after the exporter, in other mount namespaces and on
overlay mounts, each found, probed once per real file, every call recorded exactly once; a file's
events disabled once no process runs it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TARGETS, ExporterProcess, build_config, read_jsonl, run_cli, toml_dumps, wait_for_lines
from tests.kernel.test_metrics import scrape, wait_scrape
from tests.prom import free_port
from uprobe_exporter.kernel.tracefs import Tracefs, lock_holder

FAST = {"discover_interval": 0.2, "discover_grace_seconds": 0.5, "log_level": "debug"}


class Target:
    """A waiter process: started blocked, released, and its own count of calls read at the end."""

    def __init__(self, argv: list[str], **kwargs: Any) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kwargs)
        self.pid = self.proc.pid

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        """Let it exit; the number of calls it made."""
        out, _ = self.proc.communicate("\n", timeout=30)
        m = re.search(r"calls=(\d+)", out)
        assert m is not None and self.proc.returncode == 0, (out, self.proc.returncode)
        return int(m[1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()  # waits, and closes its pipes


def kill_all(targets: list[Target]) -> None:
    for t in targets:
        t.kill()


def wait_until(check: Callable[[], bool], what: str, exporter: ExporterProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{exporter.stderr[-4000:]}")
        time.sleep(0.05)


def followed(exporter: ExporterProcess, pid: int) -> bool:
    return re.search(rf"process {pid} runs ", exporter.stderr) is not None


def wait_followed(exporter: ExporterProcess, pid: int) -> None:
    wait_until(lambda: followed(exporter, pid), f"process {pid} followed", exporter)


def enabled(tracefs: Tracefs, group: str, event: str) -> str:
    return (tracefs.root / "instances" / group / "events" / group / event / "enable").read_text().strip()


@contextmanager
def overlays(base: Path, lower: Path, count: int) -> Iterator[list[Path]]:
    """``count`` overlay mounts of one lower directory (each with its own upper and work dirs)."""
    merged: list[Path] = []
    try:
        for i in range(count):
            upper, work, m = base / f"upper{i}", base / f"work{i}", base / f"merged{i}"
            for d in (upper, work, m):
                d.mkdir(parents=True)
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={lower},upperdir={upper},workdir={work}", str(m)], check=True)
            merged.append(m)
        yield merged
    finally:
        for m in merged:
            subprocess.run(["umount", "-l", str(m)], check=False)


def test_processes_started_later_each_probed_once_per_real_file(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    waiter = build("waiter")
    tag = f"dw{os.getpid()}"
    a, b = tmp_path / "a" / f"{tag}a", tmp_path / "b" / f"{tag}b"
    for path in (a, b):
        path.parent.mkdir()
        shutil.copy(waiter, path)  # copies: distinct inodes, distinct files
    lower = tmp_path / "lower"
    lower.mkdir()
    shutil.copy(waiter, lower / f"{tag}o")  # one file under two overlay mounts
    ns_dir = tmp_path / "ns"  # a tmpfs only the target's own mount namespace sees
    ns_dir.mkdir()
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.toml"
    probe = {"name": "work", "discover": {"exe": f"{tag}*"}, "function": "work", "args": {"i": "%di:s64"},
             "return": True, "latency": True}
    config.write_text(toml_dumps(build_config(group, [probe], out, exporter=FAST)))
    targets: list[Target] = []
    with ExitStack() as stack:
        exporter = stack.enter_context(ExporterProcess(config))
        stack.callback(kill_all, targets)
        exporter.wait_ready()
        merged = stack.enter_context(overlays(tmp_path / "ov", lower, 2))
        targets += [Target([str(a), "300"]), Target([str(a), "200"]), Target([str(b), "250"])]
        targets += [Target([str(m / f"{tag}o"), str(150 + i)]) for i, m in enumerate(merged)]
        targets.append(Target(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs tmpfs {ns_dir} && cp {waiter} {ns_dir}/{tag}n && "
                               f"exec {ns_dir}/{tag}n 120"]))
        for t in targets:
            wait_followed(exporter, t.pid)
        assert not (ns_dir / f"{tag}n").exists()  # not on the host: only through /proc/<pid>/root
        # the group, made by the first file found (no probe had events at start), is locked as ours
        assert lock_holder(tracefs.group_dir(group)) == exporter.proc.pid
        for t in targets:
            t.release()
        counts = {t.pid: t.finish() for t in targets}
        assert sorted(counts.values()) == [120, 150, 151, 200, 250, 300]
        total = 2 * sum(counts.values())
        wait_for_lines(out, total)
        # a, b, the overlay's lower file and the namespace's file: four files, 8 events
        ours = sorted(e.event for e in tracefs.read_uprobe_events() if e.group == group)
        assert ours == sorted(f"work_F{n}_{k}" for n in range(4) for k in ("entry", "return")), ours
        paths = {e.event: e.path for e in tracefs.read_uprobe_events() if e.group == group}
        assert str(lower / f"{tag}o") in paths.values(), paths  # the real file, not an overlay path
        assert str(a) in paths.values() and str(b) in paths.values()
        assert f"/proc/{targets[5].pid}/root{ns_dir}/{tag}n" in paths.values()  # only through its root
        # every process gone: after the grace period, each file's events are disabled
        wait_until(lambda: all(enabled(tracefs, group, e) == "0" for e in ours)
                   and exporter.stderr.count("no process runs, disabled") >= 4, "events disabled", exporter)
        assert exporter.stderr.count("no process runs, disabled") == 4
        rc, _ = exporter.stop()
        assert rc == 0, exporter.stderr
    records = read_jsonl(out)
    assert len(records) == total
    for pid, n in counts.items():
        mine = [r for r in records if r["pid"] == pid]
        entries = sorted(r["args"]["i"] for r in mine if r["type"] == "entry")
        assert entries == list(range(n)), (pid, len(entries), n)  # every call exactly once
        returns = [r for r in mine if r["type"] == "return"]
        assert len(returns) == n and all(r["duration_ns"] > 0 for r in returns)
        assert len({r["event"] for r in mine}) == 2 and all(r["probe"] == "work" for r in mine)
    by_file = {r["event"] for r in records if r["pid"] in (targets[0].pid, targets[1].pid)}
    assert len(by_file) == 2  # two processes of one file share its events
    overlay = {r["event"] for r in records if r["pid"] in (targets[3].pid, targets[4].pid)}
    assert len(overlay) == 2  # one lower file under two overlay mounts: one set of events
    assert not [e for e in tracefs.read_uprobe_events() if e.group == group]


CGROUP_V2 = Path("/sys/fs/cgroup/unified")  # this machine: cgroup v1 hierarchies and v2 beside them
CGROUP_V1 = Path("/sys/fs/cgroup/pids")


@contextmanager
def cgroups(*paths: Path) -> Iterator[None]:
    """Create the cgroup directories; remove them (deepest first) at the end, their processes gone."""
    made: list[Path] = []
    try:
        for path in paths:
            for d in reversed([path, *path.parents]):
                if not d.exists():
                    d.mkdir()
                    made.append(d)
        yield
    finally:
        for d in sorted(made, key=lambda p: -len(p.parts)):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:  # its last process is still exiting
                    time.sleep(0.05)


def pod_logs(root: Path, namespace: str, pod: str, uid: str, containers: dict[str, str]) -> None:
    """The kubelet's log layout of one pod: a directory per container, a link per container id."""
    pod_dir = root / "pods" / f"{namespace}_{pod}_{uid}"
    (root / "containers").mkdir(parents=True, exist_ok=True)
    for name, cid in containers.items():
        (pod_dir / name).mkdir(parents=True)
        (pod_dir / name / "0.log").write_text("")
        (root / "containers" / f"{pod}_{namespace}_{name}-{cid}.log").symlink_to(pod_dir / name / "0.log")


@pytest.mark.parametrize("reader", ["raw", "text"])
def test_records_and_histograms_carry_the_pod_identity_of_their_process(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path, reader: str,
) -> None:
    import uuid

    assert CGROUP_V2.is_dir() and CGROUP_V1.is_dir()
    tag = f"dk{os.getpid()}"
    exe = tmp_path / tag
    shutil.copy(build("waiter"), exe)
    logs = tmp_path / "log"
    uid_a, uid_b = str(uuid.uuid4()), str(uuid.uuid4())
    cid_a, cid_side, cid_b = (uuid.uuid4().hex * 2 for _ in range(3))
    pod_logs(logs, "shop", "web-7d9f", uid_a, {"nginx": cid_a, "sidecar": cid_side})
    pod_logs(logs, "kube-system", "agent-x1", uid_b, {"agent": cid_b})
    top = f"uetest_{os.getpid()}_{group.rsplit('_', 1)[1]}"  # ours alone; the kubelet's names below it
    systemd = (CGROUP_V2 / top / "kubepods.slice" / "kubepods-besteffort.slice" /
               f"kubepods-besteffort-pod{uid_a.replace('-', '_')}.slice" / f"cri-containerd-{cid_a}.scope")
    cgroupfs = CGROUP_V1 / top / "kubepods" / "burstable" / f"pod{uid_b}" / cid_b
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.toml"
    port = free_port()
    labels = ["k8s_namespace_name", "k8s_pod_name", "k8s_container_name"]
    probe = {"name": "work", "discover": {"exe": tag}, "function": "work", "args": {"i": "%di:s64"},
             "return": True, "latency": True, "labels": labels}
    config.write_text(toml_dumps(build_config(group, [probe], out, metrics={"listen": f"127.0.0.1:{port}"},
                                              exporter={**FAST, "pods_dir": str(logs / "pods"), "reader": reader})))
    targets: list[Target] = []
    with ExitStack() as stack:
        stack.enter_context(cgroups(systemd, cgroupfs))
        exporter = stack.enter_context(ExporterProcess(config))
        stack.callback(kill_all, targets)
        exporter.wait_ready()
        for cg in (systemd, cgroupfs, None):
            enter = f"echo $$ > {cg}/cgroup.procs && " if cg is not None else ""
            targets.append(Target(["sh", "-c", f"{enter}exec {exe} 7"]))
        for t in targets:
            wait_followed(exporter, t.pid)
            t.release()
        counts = {t.pid: t.finish() for t in targets}
        wait_for_lines(out, 2 * sum(counts.values()))
        s = wait_scrape(port, lambda s: s.value("uprobe_call_duration_seconds_count") == 21)
        exporter.stop()
    for names, n in ((("shop", "web-7d9f", "nginx"), 7), (("kube-system", "agent-x1", "agent"), 7), (("", "", ""), 7)):
        assert s.value("uprobe_call_duration_seconds_count", probe="work", **dict(zip(labels, names, strict=True))) == n
    records = read_jsonl(out)
    assert len(records) == 42
    by_pid = {t.pid: [r for r in records if r["pid"] == t.pid] for t in targets}
    keys = ("namespace", "pod", "container", "container_id")
    assert {tuple(r.get(k) for k in keys) for r in by_pid[targets[0].pid]} == {("shop", "web-7d9f", "nginx", cid_a)}
    assert {tuple(r.get(k) for k in keys) for r in by_pid[targets[1].pid]} == {
        ("kube-system", "agent-x1", "agent", cid_b)}
    assert all(not set(keys) & set(r) for r in by_pid[targets[2].pid])  # outside any pod: none of them
    assert all(len(v) == 14 for v in by_pid.values())
    assert not systemd.exists() and not (CGROUP_V2 / top).exists() and not (CGROUP_V1 / top).exists()


def test_check_shows_what_a_discover_probe_would_follow_today(build: Callable[..., Path], tmp_path: Path) -> None:
    tag = f"dc{os.getpid()}"
    exe = tmp_path / tag
    shutil.copy(build("waiter"), exe)
    config = tmp_path / "config.toml"
    probe = {"name": "work", "discover": {"exe": tag}, "function": "work", "return": True}
    missing = {"name": "nope", "discover": {"exe": tag}, "function": "no_such_function"}
    config.write_text(toml_dumps(build_config("g", [probe, missing], tmp_path / "o")))
    targets = [Target([str(exe), "1"]) for _ in range(2)]
    try:
        done = run_cli("check", "--config", str(config))
    finally:
        for t in targets:
            t.kill()
    assert done.returncode == 0, done.stderr
    pids = " ".join(str(t.pid) for t in sorted(targets, key=lambda t: t.pid))
    assert "# discover probes[0] work: 1 files, 2 processes now" in done.stdout
    assert f"#   {exe} (device " in done.stdout and f"processes {pids}" in done.stdout
    assert f"p:g/work_F0_entry {exe}:0x" in done.stdout and f"r:g/work_F0_return {exe}:0x" in done.stdout
    assert "symbol 'no_such_function'" in done.stdout


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_many_short_lived_processes_leak_no_events_memory_or_pending_state(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    tag = f"ds{os.getpid()}"
    exe = tmp_path / tag
    shutil.copy(build("waiter"), exe)
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.toml"
    port = free_port()
    probe = {"name": "work", "discover": {"exe": tag}, "function": "work", "args": {"i": "%di:s64"},
             "return": True, "latency": True}
    config.write_text(toml_dumps(build_config(group, [probe], out, exporter={**FAST, "discover_interval": 0.05},
                                              metrics={"listen": f"127.0.0.1:{port}"})))
    burst, seconds = 500, 45.0  # the caches by process are swept every 5 s and keep an exited one 10 s
    loop = f"i=0; while [ $i -lt {burst} ]; do {exe} -3 >/dev/null; i=$((i+1)); done"
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        keeper = Target([str(exe), "1"])  # keeps the file's events enabled through the bursts
        try:
            wait_followed(exporter, keeper.pid)
            rates, rss = [], []
            began, n = time.monotonic(), 0
            while time.monotonic() - began < seconds:
                n += 1
                start = time.monotonic()
                subprocess.run(["sh", "-c", loop], check=True)
                rates.append(burst / (time.monotonic() - start))
                lines = wait_for_lines(out, 2 * 3 * burst * n, timeout=60)
                assert lines == 2 * 3 * burst * n, (lines, scrape(port).text, exporter.stderr[-3000:])
                rss.append(rss_kb(exporter.proc.pid))
            keeper.release()
            assert keeper.finish() == 1
            total = 2 * (3 * burst * n + 1)
            assert wait_for_lines(out, total) == total
            # every process gone, nothing pending, and the file idle past the grace period: disabled
            s = wait_scrape(port, lambda s: s.value("uprobe_exporter_targets", kind="processes") == 0
                            and s.value("uprobe_exporter_pending_calls") == 0
                            and s.value("uprobe_exporter_targets", probe="work", kind="files") == 0)
            assert s.value("uprobe_exporter_discover_changes_total", change="registered") == 1
            assert s.value("uprobe_exporter_returns_without_entry_total") == 0
            assert s.value("uprobe_exporter_events_registered") == 2
        finally:
            keeper.kill()
        ours = [e.event for e in tracefs.read_uprobe_events() if e.group == group]
        assert sorted(ours) == ["work_F0_entry", "work_F0_return"]  # one file: two events, however many processes
        rc, _ = exporter.stop()
        assert rc == 0
    records = read_jsonl(out)
    assert len(records) == total and sum(r["type"] == "entry" for r in records) == total // 2
    print(f"short-lived processes per second: {[round(r) for r in rates]}; exporter RSS (kB): {rss}")
    assert min(rates) > 100, rates  # hundreds per second, on a busy machine
    # the caches (per thread, per process) are bounded and swept: once in their steady state, more processes
    # leave no lasting growth. RSS swings by ±2 MB as the allocator returns arenas, so peaks are compared:
    # the last third's against the middle third's (80 s here, 75,000 processes: 36 MB at the start, flat at
    # 45-46 MB after 40 s)
    third = len(rss) // 3
    assert max(rss[2 * third:]) - max(rss[third:2 * third]) < 3072, rss
    assert rss[-1] - rss[0] < 16384, rss


def test_files_beyond_discover_files_max_are_refused_and_counted(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    tag = f"dm{os.getpid()}"
    copies = []
    for i in range(3):
        (tmp_path / str(i)).mkdir()
        copies.append(shutil.copy(build("waiter"), tmp_path / str(i) / tag))
    config = tmp_path / "config.toml"
    port = free_port()
    probe = {"name": "work", "discover": {"exe": tag}, "function": "work"}
    config.write_text(toml_dumps(build_config(group, [probe], tmp_path / "out.jsonl",
                                              exporter={**FAST, "discover_files_max": 2},
                                              metrics={"listen": f"127.0.0.1:{port}"})))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        targets = [Target([str(c), "1"]) for c in copies]
        try:
            s = wait_scrape(port, lambda s: s.value("uprobe_exporter_discover_changes_total", change="refused") == 1
                            and s.value("uprobe_exporter_targets", kind="processes") == 2)
            assert s.value("uprobe_exporter_targets", kind="files") == 2
            assert s.value("uprobe_exporter_discover_changes_total", change="registered") == 2
            assert len([e for e in tracefs.read_uprobe_events() if e.group == group]) == 2
            assert "discover_files_max" in exporter.stderr
        finally:
            for t in targets:
                t.kill()
        assert exporter.stop()[0] == 0


def test_a_library_probe_follows_the_library_each_process_maps(tracefs: Tracefs, group: str, tmp_path: Path) -> None:
    tag = f"dl{os.getpid()}"
    libs = []
    for d in ("one", "two"):  # two copies of the library: two files, each probed once
        (tmp_path / d).mkdir()
        lib = tmp_path / d / "libshared.so"
        subprocess.run(["gcc", "-O1", "-g", "-shared", "-fPIC", "-o", str(lib), str(TARGETS / "shared.c")],
                       check=True)
        libs.append(lib)
    exe = tmp_path / tag
    subprocess.run(["gcc", "-O0", "-g", "-o", str(exe), str(TARGETS / "libwaiter.c"), f"-L{tmp_path / 'one'}",
                    "-lshared"], check=True)
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.toml"
    probe = {"name": "add", "binary": "libshared.so", "discover": {"exe": tag}, "function": "shared_add",
             "args": {"a": "%di:s64"}}
    config.write_text(toml_dumps(build_config(group, [probe], out, exporter=FAST)))
    targets: list[Target] = []
    with ExitStack() as stack:
        exporter = stack.enter_context(ExporterProcess(config))
        stack.callback(kill_all, targets)
        exporter.wait_ready()
        for i, lib in enumerate([*libs, libs[0]]):
            targets.append(Target([str(exe), str(20 + i)], env={**os.environ, "LD_LIBRARY_PATH": str(lib.parent)}))
        for t in targets:
            wait_followed(exporter, t.pid)
            t.release()
        counts = {t.pid: t.finish() for t in targets}
        wait_for_lines(out, sum(counts.values()))
        paths = sorted({e.path for e in tracefs.read_uprobe_events() if e.group == group})
        assert paths == sorted(str(lib) for lib in libs)  # the library files, not the executable
        assert exporter.stop()[0] == 0
    records = read_jsonl(out)
    assert len(records) == sum(counts.values()) == 20 + 21 + 22
    for pid, n in counts.items():
        assert sorted(r["args"]["a"] for r in records if r["pid"] == pid) == list(range(n))
    assert len({r["event"] for r in records}) == 2


def test_a_library_mapped_after_the_process_was_found_is_followed(
    tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    tag = f"dd{os.getpid()}"
    lib = tmp_path / "libshared.so"
    subprocess.run(["gcc", "-O1", "-g", "-shared", "-fPIC", "-o", str(lib), str(TARGETS / "shared.c")], check=True)
    exe = tmp_path / tag
    subprocess.run(["gcc", "-O0", "-g", "-o", str(exe), str(TARGETS / "dlwaiter.c"), "-ldl"], check=True)
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.toml"
    probe = {"name": "add", "binary": "libshared.so", "discover": {"exe": tag}, "function": "shared_add",
             "args": {"a": "%di:s64"}}
    config.write_text(toml_dumps(build_config(group, [probe], out, exporter=FAST)))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        target = Target([str(exe), str(lib), "9"])
        try:
            time.sleep(0.5)  # found by a scan or two, its library not mapped yet
            assert not followed(exporter, target.pid)
            target.release()  # dlopen
            assert target.proc.stdout is not None and target.proc.stdout.readline() == "mapped\n"
            wait_followed(exporter, target.pid)  # its maps read again at the next scans
            target.release()
            assert target.finish() == 9
        finally:
            target.kill()
        wait_for_lines(out, 9)
        assert exporter.stop()[0] == 0
    assert sorted(r["args"]["a"] for r in read_jsonl(out)) == list(range(9))
