"""Shared libraries on the real kernel: libc by name (resolved like ld.so), our own library by path."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TARGETS, ExporterProcess, build_config, read_jsonl, run_cli, toml_dumps, wait_for_lines
from uprobe_exporter.plan.binaries import resolve_library

CALLS = 25


@pytest.fixture(scope="module")
def libcall(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("libs")
    lib = d / "libshared.so"
    subprocess.run(["gcc", "-O1", "-g", "-shared", "-fPIC", "-o", str(lib), str(TARGETS / "shared.c")], check=True)
    exe = d / "libcall"
    subprocess.run(["gcc", "-O0", "-g", "-o", str(exe), str(TARGETS / "libcall.c"), f"-L{d}", "-lshared",
                    f"-Wl,-rpath,{d}"], check=True)
    return exe, lib


@pytest.mark.parametrize("function", ["getenv", "getenv@@GLIBC_2.2.5"])
def test_libc_by_name_and_own_library_by_path(
    libcall: tuple[Path, Path], group: str, tmp_path: Path, function: str,
) -> None:
    exe, lib = libcall
    out = tmp_path / "out.jsonl"
    probes: list[dict[str, Any]] = [
        {"name": "getenv", "binary": "libc.so.6", "function": function, "args": {"name": "+0(%di):string"}},
        {"name": "shared_add", "binary": str(lib), "function": "shared_add",
         "args": {"a": "%di:s64", "b": "%si:s64"}, "return": True, "return_args": {"sum": "$retval:s64"}},
    ]
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, probes, out)))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        done = subprocess.run([exe, str(CALLS)], capture_output=True, text=True, check=True)
        pid = int(done.stdout.split()[0])
        wait_for_lines(out, 3 * CALLS)
        exporter.stop()
    records = [r for r in read_jsonl(out) if r["pid"] == pid]  # other programs call getenv too
    names = [r["args"]["name"] for r in records if r["probe"] == "getenv"]
    assert [n for n in names if n.startswith("UETEST_VAR_")] == [f"UETEST_VAR_{i}" for i in range(CALLS)]
    adds = [r for r in records if r["probe"] == "shared_add"]
    assert [(r["args"]["a"], r["args"]["b"]) for r in adds if r["type"] == "entry"] == [(i, 100) for i in range(CALLS)]
    assert [r["args"]["sum"] for r in adds if r["type"] == "return"] == [i + 100 for i in range(CALLS)]
    assert all(r["duration_ns"] >= 0 for r in adds if r["type"] == "return")


def test_library_name_resolves_like_the_dynamic_loader() -> None:
    ldconfig = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    expected = next(line.split(" => ")[1] for line in ldconfig.splitlines()
                    if line.strip().startswith("libc.so.6 (libc6,x86-64)"))
    assert resolve_library("libc.so.6", "/") == expected


def test_symlink_is_followed_to_the_real_file(libcall: tuple[Path, Path], tmp_path: Path) -> None:
    _, lib = libcall
    link = tmp_path / "liblink.so"
    link.symlink_to(lib)
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config("g", [{"name": "a", "binary": str(link), "function": "shared_add"}],
                                              tmp_path / "o")))
    done = run_cli("check", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert f" {lib}:0x" in done.stdout
