"""Command line: ``run``, ``check``, ``symbols``, ``usdt``, ``cleanup``, ``example``; the one place errors
become exit codes.

Exit codes: 0 ok, 2 bad configuration or usage, 1 runtime failure (or ``symbols`` matched nothing, like
grep), 130 interrupted. Expected failures print one
``uprobe-exporter: error: ...`` line (plus the kernel's error_log lines when it refused a command),
never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from uprobe_exporter import __version__
from uprobe_exporter.backend import STATUS as BACKEND_STATUS
from uprobe_exporter.errors import ConfigError, NoMatchError, OwnershipError, UprobeExporterError
from uprobe_exporter.kernel.costprobe import cost_classes
from uprobe_exporter.kernel.ownership import claim_leftovers
from uprobe_exporter.kernel.session import EVENT_STOP_COST_S, STOP_FIXED_S, STOP_MARGIN, remove_events, remove_group
from uprobe_exporter.plan.binaries import resolve_binary
from uprobe_exporter.plan.config import Config
from uprobe_exporter.plan.configfile import example_text, load_config_partial
from uprobe_exporter.plan.costclass import CostClass, describe_site
from uprobe_exporter.plan.elf import (
    close_functions,
    load_elf,
    match_functions,
    read_instruction_at,
    read_stapsdt,
    render_usdt_listing,
)
from uprobe_exporter.plan.probes import ProbeEvent
from uprobe_exporter.plan.resolve import load_plan
from uprobe_exporter.processes.identity import pod_identities
from uprobe_exporter.run.daemon import discover_events_max, open_tracefs, run
from uprobe_exporter.run.discover import survey

PROG = "uprobe-exporter"


def version_text() -> str:
    """``--version``: the package, the Python and kernel it runs on, and whether the native path is on."""
    uname = os.uname()
    return (f"{PROG} {__version__}\n"
            f"Python {platform.python_version()} ({sys.executable})\n"
            f"kernel {uname.release} ({uname.machine})\n"
            f"native path: {BACKEND_STATUS.describe()}")


class _Version(argparse.Action):
    """Like argparse's "version" action, but the text is computed only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version, Python, kernel, native path")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Linux uprobes as JSON lines and Prometheus metrics.")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "TOML configuration (default: the built-in example: bash readline, libc getaddrinfo)"
    r = sub.add_parser("run", help="register the probes and emit records until SIGINT/SIGTERM")
    r.add_argument("--config", "-c", metavar="FILE", help=config_help)
    c = sub.add_parser("check", help="validate and resolve; print the uprobe_events lines, touch nothing")
    c.add_argument("--config", "-c", metavar="FILE", help=config_help)
    s = sub.add_parser("symbols", help="list probeable functions of a binary with their file offsets")
    s.add_argument("binary", help="a path, or a library name such as libc.so.6")
    s.add_argument("pattern", nargs="?", help="a glob (or substring) the function name must match")
    s.add_argument("--host-root", default="/", metavar="DIR", help="resolve the binary inside DIR")
    u = sub.add_parser("usdt", help="list the USDT probes (.note.stapsdt) of a binary: sites, semaphore, arguments")
    u.add_argument("binary", help="a path, or a library name such as libstdc++.so.6")
    u.add_argument("pattern", nargs="?", help="a glob (or substring) provider:name must match")
    u.add_argument("--host-root", default="/", metavar="DIR", help="resolve the binary inside DIR")
    k = sub.add_parser("cleanup", help="remove leftovers of our group and instance (after a crash)")
    k.add_argument("--config", "-c", metavar="FILE", help=config_help)
    k.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for a running exporter holding the group or instance to exit")
    sub.add_parser("example", help="print the built-in example configuration (to start one's own file)")
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=f"{PROG}: %(levelname)s: %(message)s")


def _cmd_run(args: argparse.Namespace) -> int:
    config, problems = load_config_partial(args.config)
    _setup_logging(config.exporter.log_level)
    if not asyncio.run(run(config, problems)):
        # Our probes are removed; only a thread blocked writing to a reader that stopped reading is left,
        # and interpreter exit would wait for it forever.
        sys.stderr.flush()
        os._exit(1)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    config, events = load_plan(args.config)
    classes = _cost_classes(config.exporter.tracefs)
    _print_events(events, classes)
    if any(p.discover is not None for p in config.probes):
        _print_survey(config, classes)
    # a USDT event has a command per site; discover probes may add up to discover_files_max files each
    n = len({ev.event for ev in events}) + discover_events_max(config)
    need = n * EVENT_STOP_COST_S * STOP_MARGIN + STOP_FIXED_S
    budget = config.exporter.stop_budget_seconds
    print(f"# stop: {n} events take about {need:.0f} s to disable and remove "
          f"({EVENT_STOP_COST_S * 1000:.0f} ms each on Linux 6.18; 'run' measures this kernel when it matters); "
          f"exporter.stop_budget_seconds = {budget:g}"
          + ("" if need <= budget else f": too little, give the stop at least {need + 1:.0f} s")
          + "; TimeoutStopSec / terminationGracePeriodSeconds must exceed the budget")
    return 0


def _print_survey(config: Config, classes: dict[str, CostClass] | None) -> None:
    """What each discover probe would follow today: its files, the processes running them, their events."""
    entries = survey(config, pod_identities(config.exporter.host_root, config.exporter.pods_dir))
    for probe in (p for p in config.probes if p.discover is not None):
        mine = [e for e in entries if e.probe.name == probe.name]
        print(f"# discover probes[{probe.index}] {probe.name}: {len(mine)} files, "
              f"{sum(len(e.pids) for e in mine)} processes now")
        for e in mine:
            print(f"#   {e.file.path} (device {e.file.dev:#x}, inode {e.file.inode}): processes "
                  f"{' '.join(map(str, e.pids))}" + (f"; cannot be probed: {e.problem}" if e.problem else ""))
            _print_events(list(e.events), classes)


def _print_events(events: list[ProbeEvent], classes: dict[str, CostClass] | None) -> None:
    filtered = set()
    for ev in events:
        print(ev.command)
        print(f"# cost {ev.full_name} at {ev.offset:#x}: "
              f"{describe_site(read_instruction_at(Path(ev.path), ev.offset), classes)}")
        if ev.filter and ev.event not in filtered:  # once per event (a USDT event has a command per site)
            filtered.add(ev.event)
            print(f"# filter {ev.full_name}: {ev.filter}")


def _cost_classes(tracefs: str) -> dict[str, CostClass] | None:
    """The cost class per kind of first instruction (measured once per kernel); None, said on stderr, when
    it cannot be measured here (not root)."""
    classes, why = cost_classes(tracefs)
    if classes is None:
        print(f"{PROG}: note: probe costs not measured ({why})", file=sys.stderr)
    return classes


def _cmd_symbols(args: argparse.Namespace) -> int:
    path = resolve_binary(args.binary, args.host_root)
    info = load_elf(path, args.host_root)
    found = match_functions(info, args.pattern)
    classes = _cost_classes("auto") if found else None
    for sym, offset in found:
        print(f"{offset:#010x} {sym.size:8d} {sym.name}  ({describe_site(read_instruction_at(path, offset), classes)})")
    if not found:
        close = close_functions(info, args.pattern or "")
        hint = f"; close names: {', '.join(close)}" if close else ""
        what = f"matches '{args.pattern}'" if args.pattern else "can be probed"
        raise NoMatchError(f"no function of {path} {what}{hint}")
    return 0


def _cmd_example(args: argparse.Namespace) -> int:
    sys.stdout.write(example_text())
    return 0


def _cmd_usdt(args: argparse.Namespace) -> int:
    path = resolve_binary(args.binary, args.host_root)
    info = read_stapsdt(path)
    for line in render_usdt_listing(info, args.pattern):
        print(line)
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    config, problems = load_config_partial(args.config)  # only [exporter] matters here, not the probes
    exporter_problems = [p for p in problems if p.startswith(("exporter.", "exporter:"))]
    if exporter_problems:
        raise ConfigError(exporter_problems)
    _setup_logging(config.exporter.log_level)
    tracefs, instance = open_tracefs(config)
    group = config.exporter.group
    # Refuses (exit 1, naming the pid) what a running exporter holds, and an instance that is not ours.
    deadline = time.monotonic() + args.wait
    while True:
        try:
            owned = claim_leftovers(tracefs, group, instance)
            break
        except OwnershipError as exc:
            if exc.pid is None or time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    try:
        removed = remove_group(tracefs, group) if owned.holds(tracefs.group_dir(group)) else []
        if owned.holds(instance.root):
            removed += remove_events(tracefs, group, [], instance)
    finally:
        owned.release()
    print(f"removed {len(removed)}: {', '.join(removed)}" if removed else "nothing to remove")
    return 0


COMMANDS = {"run": _cmd_run, "check": _cmd_check, "symbols": _cmd_symbols, "usdt": _cmd_usdt,
            "cleanup": _cmd_cleanup, "example": _cmd_example}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UprobeExporterError, BaseExceptionGroup) as exc:
        errors = [e for e in _leaves(exc) if isinstance(e, UprobeExporterError)]
        if len(errors) != len(_leaves(exc)):
            raise  # a bug: keep the traceback
        for e in errors:
            if e.exit_code:
                print(f"{PROG}: error: {e}", file=sys.stderr)
        return max(e.exit_code for e in errors)
    except KeyboardInterrupt:
        return 130


def _leaves(exc: BaseException) -> list[BaseException]:
    """The individual errors inside (nested) exception groups raised by the TaskGroup."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
