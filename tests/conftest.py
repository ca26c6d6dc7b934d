"""Fixtures for kernel tests: a writable tracefs, a unique group per test, compiled C targets, and
checks that nothing a test registered is left behind, per test and for the whole session."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import TARGETS, compile_c, compile_go
from tests.prom import PrometheusServer
from uprobe_exporter.errors import TracefsError
from uprobe_exporter.kernel.session import remove_group
from uprobe_exporter.kernel.tracefs import Tracefs, find_tracefs

TEST_PREFIX = "uetest"
_counter = itertools.count()


def _ours(tracefs: Tracefs) -> tuple[list[str], list[str]]:
    """What this pytest process's groups left; another test session may run beside this one."""
    mine = f"{TEST_PREFIX}_{os.getpid()}_"
    events = [f"{e.group}/{e.event}" for e in tracefs.read_uprobe_events() if e.group.startswith(mine)]
    instances = sorted(p.name for p in (tracefs.root / "instances").iterdir() if p.name.startswith(mine))
    return events, instances


@pytest.fixture(scope="session", autouse=True)
def _cost_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Probe costs (costprobe.py) are measured once per test session, into its own cache, not ~/.cache."""
    before = os.environ.get("UPROBE_EXPORTER_CACHE")
    os.environ["UPROBE_EXPORTER_CACHE"] = str(tmp_path_factory.mktemp("cost-cache"))
    yield
    if before is None:
        del os.environ["UPROBE_EXPORTER_CACHE"]
    else:
        os.environ["UPROBE_EXPORTER_CACHE"] = before


@pytest.fixture(scope="session")
def tracefs() -> Iterator[Tracefs]:
    """The real tracefs, writable; skips (with the reason) only where it truly cannot be written."""
    try:
        fs = Tracefs(find_tracefs("auto"))
        fs.check_writable()
    except TracefsError as exc:
        pytest.skip(f"tracefs cannot be written here: {exc}")
    yield fs
    events, instances = _ours(fs)
    assert not events and not instances, f"the test session left probes behind: {events} {instances}"


@pytest.fixture
def group(tracefs: Tracefs) -> Iterator[str]:
    """A unique group and instance name; after the test, nothing of it may remain."""
    name = f"{TEST_PREFIX}_{os.getpid()}_{next(_counter)}"
    yield name
    left = [e.event for e in tracefs.read_uprobe_events() if e.group == name]
    instance = tracefs.instance(name)
    had_instance = instance.exists()
    if left or had_instance:
        remove_group(tracefs, name, instance)
        pytest.fail(f"group {name} left behind: events {left}, instance {had_instance}")


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """build("calls", "-no-pie") compiles tests/targets/calls.c once per set of flags."""
    out_dir = tmp_path_factory.mktemp("targets")

    def _build(name: str, *flags: str, source: str | None = None) -> Path:
        suffix = "".join(f.strip("-").replace("=", "_").replace(",", "_") for f in flags)
        out = out_dir / (f"{name}_{suffix}" if suffix else name)
        return compile_c(TARGETS / f"{source or name}.c", out, *flags)

    return _build


@pytest.fixture(scope="session")
def build_go(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """build_go("gocalls") builds tests/targets/gocalls.go with Debian's golang-go, once per set of flags."""
    out_dir = tmp_path_factory.mktemp("go")

    def _build(name: str, *flags: str) -> Path:
        suffix = "".join(f.strip("-").replace("=", "_").replace(" ", "_") for f in flags)
        return compile_go(TARGETS / f"{name}.go", out_dir / (f"{name}_{suffix}" if suffix else name), *flags)

    return _build


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """One real Prometheus server for the session; tests point it at their exporter with set_targets."""
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    yield server
    server.close()


KERNEL_TESTS = Path(__file__).resolve().parent / "kernel"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``kernel``: every test under tests/kernel, and any other that registers probes (uses ``tracefs``)."""
    for item in items:
        here = Path(str(item.fspath)).resolve()
        if KERNEL_TESTS in here.parents or "tracefs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kernel)
