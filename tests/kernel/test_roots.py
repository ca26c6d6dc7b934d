"""Binaries seen through another root, as a DaemonSet sees the host: ``exporter.host_root`` (symlinks
re-rooted, libraries found through the root's own ld.so.conf) and ``/proc/<pid>/root/...`` paths."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import TARGETS, ExporterProcess, build_config, read_jsonl, run_cli, toml_dumps, wait_for_lines
from uprobe_exporter.kernel.tracefs import Tracefs

WORK = {"name": "work", "function": "work", "args": {"a": "%di:s32"}}


def run_probe(group: str, tmp_path: Path, probe: dict[str, Any], target: list[str], expected: int,
              **sections: Any) -> list[dict[str, Any]]:
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], out, **sections)))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        subprocess.run(target, capture_output=True, check=True)
        wait_for_lines(out, expected)
        exporter.stop()
    return read_jsonl(out)


def test_host_root_resolves_paths_and_absolute_symlinks_inside_it(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    host = tmp_path / "host"
    real = host / "usr" / "local" / "bin" / "calls_real"
    real.parent.mkdir(parents=True)
    shutil.copy(build("calls"), real)
    (host / "usr" / "bin").mkdir(parents=True)
    (host / "usr" / "bin" / "calls").symlink_to("/usr/local/bin/calls_real")  # absolute: means <host>/usr/...
    probe = {"binary": "/usr/bin/calls", **WORK}
    config = tmp_path / "check.toml"
    config.write_text(toml_dumps(build_config(group, [probe], tmp_path / "o", exporter={"host_root": str(host)})))
    done = run_cli("check", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert f" {real}:0x" in done.stdout
    records = run_probe(group, tmp_path, probe, [str(real), "2", "5", "0"], 10, exporter={"host_root": str(host)})
    assert sorted(r["args"]["a"] for r in records) == sorted([i - 7 for i in range(5)] + [993 + i for i in range(5)])


def test_host_root_library_by_name_through_its_ld_so_conf(tmp_path: Path) -> None:
    host = tmp_path / "host"
    libdir = host / "opt" / "vendor" / "lib"
    libdir.mkdir(parents=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(libdir / "libshared.so.1"), str(TARGETS / "shared.c")],
                   check=True)
    (host / "etc" / "ld.so.conf.d").mkdir(parents=True)
    (host / "etc" / "ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (host / "etc" / "ld.so.conf.d" / "vendor.conf").write_text("# vendor libraries\n/opt/vendor/lib\n")
    probe = {"name": "add", "binary": "libshared.so.1", "function": "shared_add"}
    config = tmp_path / "check.toml"
    config.write_text(toml_dumps(build_config("g", [probe], tmp_path / "o", exporter={"host_root": str(host)})))
    done = run_cli("check", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert f" {libdir / 'libshared.so.1'}:0x" in done.stdout


def test_proc_pid_root_path(build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path) -> None:
    """``/proc/<pid>/root/<path>``: the binary as another process sees it (its mount namespace)."""
    binary = build("calls")
    holder = subprocess.Popen(["sleep", "120"])
    try:
        probe = {"binary": f"/proc/{holder.pid}/root{binary}", **WORK}
        records = run_probe(group, tmp_path, probe, [str(binary), "1", "4", "0"], 4)
        assert [r["args"]["a"] for r in records] == [-7, -6, -5, -4]
    finally:
        holder.kill()
        holder.wait()
