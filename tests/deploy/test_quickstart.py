"""The README's Quick start, as written: its first command, run as root in a fresh copy of the clone, installs
everything, builds the native parts and runs the exporter on the built-in example; records arrive from a
bash typed into through a pty and from `getent ahosts localhost`, every event on the native path; Ctrl-C
(SIGINT to the process group) stops it and nothing is left.

The command installs to /opt/uprobe-exporter and /usr/local/bin: it runs in a private mount namespace
with both overlaid by temporary directories, so the host's (and CI's own environment, in the clone's .venv)
stay as they are. The example's group and instance are fixed (uprobe_exporter), so the test holds a host-wide
lock and refuses to start when that group exists: an exporter started from the Quick start elsewhere on
the host would otherwise have its probes removed by ours (leftovers of a group are removed at start).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT
from uprobe_exporter.kernel.session import remove_group
from uprobe_exporter.kernel.tracefs import Tracefs
from uprobe_exporter.plan.config import parse_config

EXAMPLE = parse_config(tomllib.loads((ROOT / "uprobe_exporter" / "example.toml").read_text(encoding="utf-8")))
GROUP, INSTANCE = EXAMPLE.exporter.group, EXAMPLE.exporter.instance
LOCK = Path("/run/lock/uprobe-exporter-quickstart.lock")
INSTALL_SECONDS = 900  # apt-get update and install, pip downloading and compiling, on a busy machine
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # a stock Debian root's PATH


def quickstart_command(readme: str) -> str:
    """The first ```sh block of the README's "Quick start" section."""
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```sh\n(.*?)```", section, re.S)
    assert m is not None, "the Quick start has no ```sh block"
    return m[1].strip()


def fresh_clone(dest: Path) -> Path:
    """What a clone checks out: the tracked files of this tree (as they are now), nothing built."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if not name:
            continue
        src, dst = ROOT / name, dest / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree and not yet committed
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
    return dest


@contextmanager
def host_lock() -> Iterator[None]:
    """One Quick start test at a time on this host (the example's group and port are fixed)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


class Lines:
    """A child's output, line by line, collected by a thread."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def join(self) -> None:
        self._thread.join(10)


def records(out: Lines) -> list[dict[str, Any]]:
    return [json.loads(line) for line in list(out.lines) if line.startswith("{")]


def wait_for(what: str, check: Any, proc: subprocess.Popen[str], err: Lines, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := check()):
            return found
        if proc.poll() is not None:
            time.sleep(0.5)
            raise AssertionError(f"the Quick start command exited ({proc.returncode}) before {what}:\n{err.text()}")
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {timeout} s:\n{err.text()}")


def type_into_bash(line: str) -> int:
    """An interactive bash on a pseudo-terminal reads ``line`` with readline, then exits; returns its pid."""
    controller, terminal = os.openpty()
    bash = subprocess.Popen(["/bin/bash", "--norc", "--noprofile", "-i"], stdin=terminal, stdout=terminal,
                            stderr=terminal, start_new_session=True,
                            env={"PATH": ROOT_PATH, "TERM": "dumb", "PS1": "$ "})
    os.close(terminal)
    try:
        os.write(controller, f"{line}\nexit\n".encode())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if not os.read(controller, 4096):
                    break
            except OSError:  # EIO: the terminal's last user is gone
                break
        assert bash.wait(30) == 0
    finally:
        os.close(controller)
        if bash.poll() is None:
            bash.kill()
    return bash.pid


def ours(tracefs: Tracefs) -> tuple[list[str], bool]:
    events = [e.event for e in tracefs.read_uprobe_events() if e.group == GROUP]
    return events, tracefs.instance(INSTANCE).exists()


@pytest.mark.kernel
def test_quick_start_as_written(tracefs: Tracefs, tmp_path: Path) -> None:
    command = quickstart_command((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "uprobe-exporter run" in command  # it runs the exporter through the installed command
    clone = fresh_clone(tmp_path / "clone")
    layers = tmp_path / "layers"
    mounts = []
    for target in ("/opt", "/usr/local"):
        upper, work = layers / target.strip("/").replace("/", "_"), layers / (target.strip("/") + "_work")
        upper.mkdir(parents=True)
        work.mkdir(parents=True)
        mounts.append(f"mount -t overlay overlay -o lowerdir={target},upperdir={upper},workdir={work} {target}")
    script = " && ".join([*mounts, f"cd {clone}", f"exec bash -c {shlex.quote(command)}"])
    env = {"PATH": ROOT_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", "USER": "root"}
    env.update({k: v for k, v in os.environ.items() if k.startswith(("PIP_", "http_", "https_", "no_proxy"))})

    with host_lock():
        left, instance = ours(tracefs)
        if left or instance:
            pytest.fail(f"group {GROUP} is registered on this host (events {left}, instance {instance}): an exporter "
                        "runs the example here; stop it (or `uprobe-exporter cleanup`) before this test")
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                                start_new_session=True, env=env)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        try:
            wait_for("exporter ready", lambda: "; reading" in err.text(), proc, err, INSTALL_SECONDS)
            assert sorted(ours(tracefs)[0]) == sorted(["readline_entry", "readline_return", "getaddrinfo_entry",
                                                       "getaddrinfo_return"])
            # The hot path is compiled and used for every event.
            native = re.search(r"raw reader: native path for (\d+) of (\d+) events; native parts: active "
                               r"\((/opt/uprobe-exporter/\S+/uprobe_exporter/_native\.\S+\.so)\)$", err.text(), re.M)
            assert native is not None, err.text()
            assert native[1] == native[2] == "4"

            token = f"echo quickstart_{secrets.token_hex(4)}"
            bash_pid = type_into_bash(token)
            getent = subprocess.run(["getent", "ahosts", "localhost"], capture_output=True, text=True, check=True,
                                    env={"PATH": ROOT_PATH})
            assert "127.0.0.1" in getent.stdout or "::1" in getent.stdout

            def seen() -> list[dict[str, Any]] | None:
                recs = records(out)
                typed = [r for r in recs if r["probe"] == "readline" and r["type"] == "return"
                         and r["pid"] == bash_pid and r["args"]["line"] == token]
                lookups = [r for r in recs if r["probe"] == "getaddrinfo" and r["comm"] == "getent"
                           and r["type"] == "entry" and r["args"]["node"] == "localhost"]
                returns = [r for r in recs if r["probe"] == "getaddrinfo" and r["type"] == "return"
                           and lookups and r["tid"] == lookups[0]["tid"] and "duration_ns" in r]
                return [*typed, *lookups, *returns] if typed and lookups and returns else None

            found = wait_for("records of the typed line and the lookup", seen, proc, err, 30)
            assert {(r["probe"], r["type"]) for r in found} == {
                ("readline", "return"), ("getaddrinfo", "entry"), ("getaddrinfo", "return")}
            with urllib.request.urlopen("http://127.0.0.1:9527/metrics", timeout=10) as page:
                metrics = page.read().decode()
            assert re.search(r'^uprobe_events_total\{probe="readline",type="return"\} [1-9]', metrics, re.M)

            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal the command was pasted into
            rc = proc.wait(60)
            err.join()
            assert rc == 0, err.text()
            assert "stopped:" in err.text()
            assert ours(tracefs) == ([], False)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            left, instance = ours(tracefs)
            if left or instance:  # ours: the group was absent when we started, and we hold the lock
                remove_group(tracefs, GROUP, tracefs.instance(INSTANCE))
            out.join()
            err.join()
            proc.stdout.close()
            proc.stderr.close()

