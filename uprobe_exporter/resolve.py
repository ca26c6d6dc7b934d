"""Resolve every configured probe to a file and offset; report every problem of a configuration at once."""

from __future__ import annotations

from pathlib import Path

from uprobe_exporter.binaries import resolve_binary
from uprobe_exporter.config import Config, load_config_partial
from uprobe_exporter.elf import ElfInfo, load_elf
from uprobe_exporter.errors import ConfigError, ResolveError
from uprobe_exporter.probes import ProbeEvent, ResolvedProbe, build_events


def resolve_probes(config: Config) -> tuple[list[ResolvedProbe], list[str]]:
    """Find each probe's binary and file offset; problems carry their location."""
    root = config.exporter.host_root
    cache: dict[Path, ElfInfo] = {}
    problems: list[str] = []
    resolved: list[ResolvedProbe] = []
    for probe in config.probes:
        where = probe.location
        key = "function" if probe.offset is None else "offset"
        try:
            path = resolve_binary(probe.binary, root)
        except ResolveError as exc:
            problems.append(f"{where}.binary: {exc}")
            continue
        try:
            info = cache.get(path) or cache.setdefault(path, load_elf(path, root))
            if probe.offset is None:
                offset = info.resolve(probe.function, probe.function_offset)
            elif info.offset_is_executable(probe.offset):
                offset = probe.offset
                around = info.function_around(offset) if probe.return_probe else None
                if around is not None and around[1]:
                    raise ResolveError(f"{offset:#x} is {around[0].name}+{around[1]:#x}: a return probe must be at "
                                       f"a function's first instruction ({around[0].name} is at "
                                       f"{offset - around[1]:#x})")
            else:
                raise ResolveError(f"file offset {probe.offset:#x} is outside every executable segment of "
                                   f"{path}; find offsets with: uprobe-exporter symbols {path}")
            resolved.append(ResolvedProbe(probe, str(path), offset))
        except ResolveError as exc:
            problems.append(f"{where}.{key}: {exc}")
    return resolved, problems


def plan_events(config: Config, problems: list[str] | None = None) -> list[ProbeEvent]:
    """Every event to register for ``config``, in order; raises one ConfigError with ``problems`` found
    earlier and every resolution problem."""
    problems = list(problems or [])
    resolved, more = resolve_probes(config)
    problems += more
    events: list[ProbeEvent] = []
    for probe in resolved:
        try:
            events.extend(build_events(probe, config.exporter.group, probe.config.location))
        except ResolveError as exc:
            problems.append(f"{probe.config.location}.binary: {exc}")
    if problems:
        raise ConfigError(problems)
    return events


def load_plan(path: str | None) -> tuple[Config, list[ProbeEvent]]:
    """Read, validate and resolve a configuration; every problem is reported in one ConfigError."""
    config, problems = load_config_partial(path)
    return config, plan_events(config, problems)
