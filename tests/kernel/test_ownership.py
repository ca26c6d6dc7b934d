"""Our group and instance are ours alone, on the real kernel: a second exporter, a pre-existing
instance, the kernel's own groups, someone removing our events, ``cleanup`` beside a live exporter."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, ExporterProcess, build_config, run_cli, toml_dumps
from tests.prom import free_port
from uprobe_exporter.kernel.kerneltext import parse_proc_locks
from uprobe_exporter.kernel.tracefs import Tracefs, lock_holder
from uprobe_exporter.plan.probes import removal_command

WORK = {"name": "work", "function": "work", "args": {"a": "%di:s32"}, "return": True}


def ours(tracefs: Tracefs, group: str) -> list[str]:
    return sorted(e.event for e in tracefs.read_uprobe_events() if e.group == group)


def write_config(path: Path, group: str, instance: str, binary: Path, port: int | None = None,
                 **exporter: Any) -> Path:
    metrics = {"listen": f"127.0.0.1:{port}"} if port else {"enabled": False}
    data = build_config(group, [{"binary": str(binary), **WORK}], path.with_suffix(".jsonl"), metrics=metrics,
                        exporter={"instance": instance, **exporter})
    path.write_text(toml_dumps(data))
    return path


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_second_exporter_with_our_group_is_refused_and_touches_nothing(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    """Before: the second exporter removed the first one's live probes as 'leftovers'."""
    binary = build("calls")
    first_cfg = write_config(tmp_path / "first.toml", group, group, binary, free_port())
    second_cfg = write_config(tmp_path / "second.toml", group, f"{group}_b", binary, free_port())
    with ExporterProcess(first_cfg) as first:
        first.wait_ready()
        before = ours(tracefs, group)
        second = run_cli("run", "--config", str(second_cfg))
        assert second.returncode == 1, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"exporter.group '{group}' is held by a running uprobe-exporter (pid {first.proc.pid})" in lines[0]
        assert ours(tracefs, group) == before == ["work_entry", "work_return"]
        assert not tracefs.instance(f"{group}_b").exists()
        enable = tracefs.instance(group).event_dir(group, "work_entry") / "enable"
        assert enable.read_text().strip() == "1", "the first exporter's events are still enabled"
        # and the first one still records: its events are intact
        subprocess.run([binary, "1", "2", "0"], capture_output=True, check=True)
        deadline = time.monotonic() + 10
        out = first_cfg.with_suffix(".jsonl")
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 4):
            time.sleep(0.05)
        assert out.read_text().count("\n") == 4
        rc, _ = first.stop()
    assert rc == 0, first.stderr
    assert "vanished" not in first.stderr
    assert ours(tracefs, group) == []


def test_second_exporter_with_our_instance_is_refused(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    binary = build("calls")
    other_group = f"{group}_b"
    first_cfg = write_config(tmp_path / "first.toml", group, group, binary)
    second_cfg = write_config(tmp_path / "second.toml", other_group, group, binary)
    with ExporterProcess(first_cfg) as first:
        first.wait_ready()
        second = run_cli("run", "--config", str(second_cfg))
        assert second.returncode == 1, second.stderr
        assert f"exporter.instance '{group}' is held by a running uprobe-exporter (pid {first.proc.pid})" \
            in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert ours(tracefs, other_group) == []
        assert ours(tracefs, group) == ["work_entry", "work_return"]
        rc, _ = first.stop()
    assert rc == 0, first.stderr


def test_two_exporters_starting_at_once_one_runs(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    """The race: both find nothing and would both take the group. The claim lock makes one win; the
    other is refused, and the winner's events are never removed."""
    binary = build("calls")
    for round_ in range(3):
        configs = [write_config(tmp_path / f"r{round_}_{i}.toml", group, f"{group}_{i}", binary) for i in range(2)]
        procs = [ExporterProcess(c) for c in configs]
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(p.ready.is_set() for p in procs):
                time.sleep(0.02)
            winners = [p for p in procs if p.ready.is_set()]
            assert len(winners) == 1, [p.stderr for p in procs]
            loser = next(p for p in procs if p is not winners[0])
            assert loser.proc.wait(30) == 1, loser.stderr
            assert f"is held by a running uprobe-exporter (pid {winners[0].proc.pid})" in loser.stderr
            time.sleep(0.3)
            assert ours(tracefs, group) == ["work_entry", "work_return"]
            rc, _ = winners[0].stop()
            assert rc == 0, winners[0].stderr
        finally:
            for p in procs:
                p.stop()
        assert ours(tracefs, group) == []
        assert not any(tracefs.instance(f"{group}_{i}").exists() for i in range(2))


def test_instance_made_by_someone_else_is_refused_and_left_alone(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    """Before: an existing instance with our name was taken over (its clock changed) and deleted."""
    foreign = tracefs.instance(group)
    foreign.create()
    try:
        clock = (foreign.root / "trace_clock").read_text()
        config = write_config(tmp_path / "c.toml", group, group, build("calls"))
        done = run_cli("run", "--config", str(config))
        assert done.returncode == 1, done.stderr
        assert f"exporter.instance '{group}': {foreign.root} exists and is not ours (its trace_clock is local" \
            in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert foreign.exists() and (foreign.root / "trace_clock").read_text() == clock
        assert ours(tracefs, group) == []
        cleanup = run_cli("cleanup", "--config", str(config))
        assert cleanup.returncode == 1 and "is not ours" in cleanup.stderr
        assert foreign.exists()
    finally:
        foreign.remove()


@pytest.mark.parametrize("reserved", ["uprobes", "kprobes", "synthetic"])
def test_the_kernels_own_groups_are_refused(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path, reserved: str,
) -> None:
    """Before: group = "uprobes" was accepted, and its leftovers (other people's probes) removed."""
    binary = build("calls")
    config = write_config(tmp_path / "c.toml", reserved, group, binary)
    before = ours(tracefs, reserved)
    for command in ("run", "check", "cleanup"):
        done = run_cli(command, "--config", str(config))
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"uprobe-exporter: error: exporter.group: '{reserved}' is the kernel's own group for dynamic events "
            "(other users' probes live there and would be removed); choose a group of your own, such as "
            "'uprobe_exporter'"]
    assert ours(tracefs, reserved) == before
    assert not tracefs.instance(group).exists()


def test_cleanup_refuses_a_live_exporters_group(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "c.toml", group, group, build("calls"))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        done = run_cli("cleanup", "--config", str(config))
        assert done.returncode == 1, done.stderr
        assert f"is held by a running uprobe-exporter (pid {exporter.proc.pid})" in done.stderr
        assert ours(tracefs, group) == ["work_entry", "work_return"]
        assert lock_holder(tracefs.group_dir(group)) == exporter.proc.pid
        assert lock_holder(tracefs.instance(group).root) == exporter.proc.pid
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    assert ours(tracefs, group) == []


def test_events_removed_by_someone_else_are_noticed(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    """Before: events_registered kept saying 2 after someone removed one of them."""
    port = free_port()
    config = write_config(tmp_path / "c.toml", group, group, build("calls"), port)
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        first = scrape(port)
        assert first["uprobe_exporter_events_registered"] == 2
        assert first["uprobe_exporter_events_vanished_total"] == 0
        tracefs.instance(group).set_enabled(group, "work_return", False)
        tracefs.write_uprobe_events(removal_command(group, "work_return"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and scrape(port)["uprobe_exporter_events_vanished_total"] == 0:
            time.sleep(0.2)
        after = scrape(port)
        assert after["uprobe_exporter_events_vanished_total"] == 1
        assert after["uprobe_exporter_events_registered"] == 1
        assert f"of our events vanished (removed by someone else): {group}/work_return" in exporter.stderr
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    assert ours(tracefs, group) == []
    assert not tracefs.instance(group).exists()


def test_the_lock_is_seen_from_another_mount_namespace(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    """An exporter in its own mount namespace with its own tracefs mount (as in a pod) holds the same
    locks: a second exporter outside is refused, naming it."""
    binary = build("calls")
    mnt = tmp_path / "tracefs"
    mnt.mkdir()
    inner = write_config(tmp_path / "inner.toml", group, group, binary, tracefs=str(mnt))
    script = (f"mount -t tracefs nodev {mnt} && "
              f"exec {sys.executable} -m uprobe_exporter run --config {inner}")
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    with ExporterProcess(inner, argv=argv) as exporter:
        exporter.wait_ready()
        assert not os.path.ismount(mnt), "the exporter's tracefs mount is private to its namespace"
        outer = write_config(tmp_path / "outer.toml", group, f"{group}_b", binary)
        done = run_cli("run", "--config", str(outer))
        assert done.returncode == 1, done.stderr
        assert f"(pid {exporter.proc.pid})" in done.stderr
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    assert ours(tracefs, group) == []


def test_proc_locks_parse() -> None:
    text = ("1: FLOCK  ADVISORY  WRITE 9775 00:0d:20219 0 EOF\n"
            "1: -> FLOCK  ADVISORY  WRITE 9776 00:0d:20219 0 EOF\n"
            "2: OFDLCK ADVISORY  READ  -1 08:01:1234 0 EOF\n")
    locks = parse_proc_locks(text)
    assert [(lk.kind, lk.mode, lk.pid, lk.dev, lk.inode) for lk in locks] == [
        ("FLOCK", "WRITE", 9775, (0, 13), 20219), ("OFDLCK", "READ", -1, (8, 1), 1234)]


def test_cleanup_wait_outlasts_a_stopping_exporter_then_removes_its_leftovers(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    """What the chart's post-delete Job does: ``cleanup --wait`` while the exporter still holds its
    group; the exporter is killed (its grace period over), and cleanup then removes what it left."""
    import signal
    import threading

    config = write_config(tmp_path / "c.toml", group, group, build("calls"))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        killer = threading.Timer(1.5, exporter.proc.send_signal, (signal.SIGKILL,))
        killer.start()
        started = time.monotonic()
        done = run_cli("cleanup", "--config", str(config), "--wait", "30")
        killer.join()
        exporter.stop()
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started >= 1.5
    assert f"{group}/work_entry" in done.stdout and f"instances/{group}" in done.stdout
    assert ours(tracefs, group) == []
    assert not tracefs.instance(group).exists()


def test_a_holder_in_a_pid_namespace_we_cannot_see_is_still_refused_and_waited_for(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    """From a pid namespace of its own (a pod without hostPID, like the chart's cleanup Job),
    /proc/locks hides the exporter's locks: they still hold, and ``cleanup --wait`` still waits."""
    config = write_config(tmp_path / "c.toml", group, group, build("calls"))
    inside = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "uprobe_exporter"]
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        done = subprocess.run([*inside, "cleanup", "--config", str(config)], capture_output=True, text=True,
                              timeout=60, check=False, cwd=ROOT)
        assert done.returncode == 1, done.stderr
        assert "is held by a running uprobe-exporter (a process in another pid namespace)" in done.stderr
        assert ours(tracefs, group) == ["work_entry", "work_return"]
        waiting = subprocess.Popen([*inside, "cleanup", "--config", str(config), "--wait", "30"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        time.sleep(1.0)
        assert waiting.poll() is None, "waits while the exporter holds its group"
        rc, _ = exporter.stop()
        out, err = waiting.communicate(timeout=60)
    assert rc == 0, exporter.stderr
    assert waiting.returncode == 0, err
    assert out.strip() == "nothing to remove"
    assert ours(tracefs, group) == []


def test_a_group_emptied_and_taken_by_another_exporter_is_not_removed_at_stop(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    """Someone removes all of A's events; B then takes the (new) group with events of the same names.
    A notices, and its stop removes none of B's events."""
    binary = build("calls")
    a_cfg = write_config(tmp_path / "a.toml", group, group, binary)
    b_cfg = write_config(tmp_path / "b.toml", group, f"{group}_b", binary)
    with ExporterProcess(a_cfg) as a:
        a.wait_ready()
        for event in ("work_entry", "work_return"):
            tracefs.instance(group).set_enabled(group, event, False)
            tracefs.write_uprobe_events(removal_command(group, event))
        with ExporterProcess(b_cfg) as b:
            b.wait_ready()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "vanished" not in a.stderr:
                time.sleep(0.1)
            assert "2 of our events vanished" in a.stderr
            rc, _ = a.stop()
            assert rc == 0, a.stderr
            assert f"our group {group} was removed while we ran: removing none of its events" in a.stderr
            assert ours(tracefs, group) == ["work_entry", "work_return"], "B's events are untouched"
            assert not tracefs.instance(group).exists()
            enable = tracefs.instance(f"{group}_b").event_dir(group, "work_entry") / "enable"
            assert enable.read_text().strip() == "1"
            rc, _ = b.stop()
        assert rc == 0, b.stderr
    assert ours(tracefs, group) == []
    assert not tracefs.instance(f"{group}_b").exists()
