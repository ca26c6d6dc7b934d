"""Start, stop and crash on the real kernel: prompt clean exits, leftovers removed, others untouched."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ExporterProcess, build_config, read_jsonl, run_cli, toml_dumps, wait_for_lines
from tests.prom import free_port
from uprobe_exporter.errors import KernelRefusedError
from uprobe_exporter.kernel.session import remove_event, remove_group
from uprobe_exporter.kernel.tracefs import Tracefs
from uprobe_exporter.plan.elf import load_elf
from uprobe_exporter.plan.probes import removal_command

WORK = {"name": "work", "function": "work", "args": {"a": "%di:s32"}, "return": True}


def write_config(tmp_path: Path, group: str, binary: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [{"binary": str(binary), **WORK}], tmp_path / "out.jsonl")))
    return config


def ours(tracefs: Tracefs, group: str) -> list[str]:
    return [e.event for e in tracefs.read_uprobe_events() if e.group == group]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_promptly_and_removes_everything(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path, sig: int,
) -> None:
    with ExporterProcess(write_config(tmp_path, group, build("calls"))) as exporter:
        exporter.wait_ready()
        assert sorted(ours(tracefs, group)) == ["work_entry", "work_return"]
        assert tracefs.instance(group).exists()
        rc, elapsed = exporter.stop(sig)
    assert rc == 0, exporter.stderr
    assert elapsed < 2.0, f"took {elapsed:.2f} s to stop with no event ever arriving"
    assert ours(tracefs, group) == []
    assert not tracefs.instance(group).exists()
    assert "Traceback" not in exporter.stderr


def test_sigkill_leftovers_are_removed_at_next_start_and_by_cleanup(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    config = write_config(tmp_path, group, build("calls"))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        exporter.stop(signal.SIGKILL)
    assert sorted(ours(tracefs, group)) == ["work_entry", "work_return"], "SIGKILL leaves the probes behind"
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        assert "removed leftovers of an earlier run" in exporter.stderr
        assert sorted(ours(tracefs, group)) == ["work_entry", "work_return"]
        exporter.stop(signal.SIGKILL)
    done = run_cli("cleanup", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert f"{group}/work_entry" in done.stdout
    assert f"instances/{group}" in done.stdout
    assert ours(tracefs, group) == []
    assert not tracefs.instance(group).exists()
    again = run_cli("cleanup", "--config", str(config))
    assert again.stdout.strip() == "nothing to remove"


def test_foreign_probe_on_the_same_function_survives(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    binary = build("calls")
    offset = load_elf(binary).resolve("work")
    foreign = f"{group}_foreign"
    tracefs.write_uprobe_events(f"p:{foreign}/work {binary}:{offset:#x} a=%di:s32")
    try:
        config = write_config(tmp_path, group, binary)
        with ExporterProcess(config) as exporter:
            exporter.wait_ready()
            exporter.stop(signal.SIGKILL)
        with ExporterProcess(config) as exporter:
            exporter.wait_ready()
            exporter.stop()
        run_cli("cleanup", "--config", str(config))
        assert ours(tracefs, foreign) == ["work"]
        assert ours(tracefs, group) == []
    finally:
        tracefs.write_uprobe_events(f"-:{foreign}/work")


def test_mounts_tracefs_itself_when_absent(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    """In a mount namespace where tracefs is not mounted, the exporter (root) mounts it and runs."""
    config = write_config(tmp_path, group, build("calls"))
    script = (f"umount {tracefs.root} && ! grep -q ' - tracefs ' /proc/self/mountinfo && "
              f"exec {sys.executable} -m uprobe_exporter run --config {config}")
    with ExporterProcess(config, argv=["unshare", "--mount", "--propagation", "private", "sh", "-c", script]) as exp:
        exp.wait_ready()
        assert sorted(ours(tracefs, group)) == ["work_entry", "work_return"]
        rc, _ = exp.stop()
    assert rc == 0, exp.stderr
    assert ours(tracefs, group) == []


@pytest.fixture(scope="module")
def nobody_cmd(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``uprobe-exporter`` runnable by uid 65534: the package and its dependencies copied where nobody can
    read them, run by a Python of the same version that nobody can execute (ours may live under /root)."""
    import aiofiles
    import elftools
    import orjson
    import prometheus_client

    import uprobe_exporter

    site = tmp_path_factory.mktemp("nobody_site")
    for module in (uprobe_exporter, aiofiles, elftools, orjson, prometheus_client):
        src = Path(module.__file__ or "").parent
        shutil.copytree(src, site / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [site, *site.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    for parent in site.parents:
        parent.chmod(parent.stat().st_mode | 0o005)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c",
                                "import sys; print(sys.version_info[:2])"], capture_output=True, text=True,
                               check=False)
        if probe.returncode == 0 and probe.stdout.strip() == str(tuple(sys.version_info[:2])):
            return ["env", f"PYTHONPATH={site}", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                    python, "-m", "uprobe_exporter"]
    pytest.fail(f"no {version} that uid 65534 can run: install Debian's {version} (see .ci/run)")


def _readable_config(tmp_path: Path, group: str, binary: Path) -> Path:
    config = write_config(tmp_path, group, binary)
    tmp_path.chmod(0o755)
    config.chmod(0o644)
    return config


def test_not_root_gets_a_clear_error(build: Callable[..., Path], tracefs: Tracefs, group: str,
                                     tmp_path: Path, nobody_cmd: list[str]) -> None:
    config = _readable_config(tmp_path, group, build("calls"))
    done = subprocess.run([*nobody_cmd, "run", "--config", str(config)], cwd="/", capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "needs root" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert ours(tracefs, group) == []


def test_not_root_and_no_tracefs(build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
                                 nobody_cmd: list[str]) -> None:
    config = _readable_config(tmp_path, group, build("calls"))
    script = f"umount {tracefs.root} && exec {' '.join(nobody_cmd)} run --config {config}"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd="/",
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "tracefs is not mounted and only root can mount it" in done.stderr


def test_slow_output_drops_and_counts_never_blocks(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    """JSON to a pipe nobody reads: the bounded queue fills, records are dropped and counted, the exporter
    keeps reading (no kernel loss), and SIGTERM still stops it promptly with everything removed."""
    binary = build("calls")
    port = free_port()
    probe = {"binary": str(binary), **WORK, "args": {"a": "%di:s32", "s": "+0(%si):string"}}
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], tmp_path / "unused", jsonl={
        "path": "-", "max_queue_kb": 64}, metrics={"listen": f"127.0.0.1:{port}"})))
    read_end, write_end = os.pipe()  # never read: 64 KiB of pipe buffer, then writes block
    try:
        with ExporterProcess(config, stdout=write_end) as exporter:
            exporter.wait_ready()
            subprocess.run([binary, "4", "2000", "0"], capture_output=True, check=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    text = r.read().decode()
                entries = _metric(text, "uprobe_events_total")
                if entries >= 16000:
                    break
                time.sleep(0.2)
            assert entries == 16000, "every record was parsed although the output is stuck"
            dropped = _metric(text, "uprobe_exporter_records_dropped_total")
            written = _metric(text, "uprobe_exporter_records_written_total")
            assert dropped > 0
            assert _metric(text, "uprobe_exporter_kernel_lost_events_total") == 0
            rc, elapsed = exporter.stop()
        assert rc == 1, exporter.stderr
        assert elapsed < 5
        assert "JSON output did not take the last records" in exporter.stderr
        assert written + dropped <= entries
        assert ours(tracefs, group) == []
        assert not tracefs.instance(group).exists()
    finally:
        os.close(read_end)
        os.close(write_end)


def _metric(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_sighup_reopens_the_output_file_for_logrotate(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    binary = build("calls")
    out = tmp_path / "records.jsonl"
    probe = {"binary": str(binary), **WORK}
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], out)))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        subprocess.run([binary, "1", "3", "0"], capture_output=True, check=True)
        assert wait_for_lines(out, 6) == 6
        rotated = out.rename(tmp_path / "records.jsonl.1")  # what logrotate does before its postrotate
        exporter.proc.send_signal(signal.SIGHUP)
        subprocess.run([binary, "1", "4", "0"], capture_output=True, check=True)
        assert wait_for_lines(out, 8) == 8
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    assert [r["args"]["a"] for r in read_jsonl(rotated) if r["type"] == "entry"] == [-7, -6, -5]
    assert [r["args"]["a"] for r in read_jsonl(out) if r["type"] == "entry"] == [-7, -6, -5, -4]


@pytest.mark.parametrize("delay", [0.15, 0.22, 0.26, 0.3, 0.34, 0.6])
def test_sigterm_during_startup_leaves_nothing(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path, delay: float,
) -> None:
    """SIGTERM at moments spread over startup (imports, resolution, registration, enabling): the
    exporter exits cleanly or never started, and nothing of its group or instance is left."""
    with ExporterProcess(write_config(tmp_path, group, build("calls"))) as exporter:
        time.sleep(delay)
        rc, elapsed = exporter.stop()
    assert rc in (0, -signal.SIGTERM), exporter.stderr
    assert elapsed < 2.0
    assert "Traceback" not in exporter.stderr
    assert ours(tracefs, group) == []
    assert not tracefs.instance(group).exists()


def test_removal_retries_while_the_event_is_busy(build: Callable[..., Path], tracefs: Tracefs, group: str) -> None:
    """The kernel refuses to remove an enabled event (EBUSY). Removal retries: an event that becomes
    free within the retries (here disabled by someone else 0.2 s later) is removed; one that stays
    busy fails with the kernel's EBUSY, and is removed once free."""
    binary = build("calls")
    instance = tracefs.instance(group)
    instance.create()
    command = f"p:{group}/busy {binary}:{load_elf(binary).resolve('work'):#x}"
    try:
        tracefs.write_uprobe_events(command)
        instance.set_enabled(group, "busy", True)
        timer = threading.Timer(0.2, instance.set_enabled, (group, "busy", False))
        timer.start()
        try:
            remove_event(tracefs, removal_command(group, "busy"))
        finally:
            timer.join()
        assert ours(tracefs, group) == []
        tracefs.write_uprobe_events(command)
        instance.set_enabled(group, "busy", True)
        with pytest.raises(KernelRefusedError) as refused:
            remove_event(tracefs, removal_command(group, "busy"), attempts=3)
        assert refused.value.errno == errno.EBUSY and ours(tracefs, group) == ["busy"]
    finally:
        remove_group(tracefs, group, instance)  # disables it everywhere first
    assert ours(tracefs, group) == [] and not instance.exists()
