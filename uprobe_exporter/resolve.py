"""Resolve every configured probe to a file and offset, collecting all problems at once."""

from __future__ import annotations

from pathlib import Path

from uprobe_exporter.binaries import resolve_binary
from uprobe_exporter.config import Config
from uprobe_exporter.elf import ElfInfo, load_elf
from uprobe_exporter.errors import ConfigError, ResolveError
from uprobe_exporter.probes import ProbeEvent, ResolvedProbe, build_events


def resolve_probes(config: Config) -> list[ResolvedProbe]:
    """Find each probe's binary and file offset; raise one ConfigError naming every failure."""
    root = config.exporter.host_root
    cache: dict[Path, ElfInfo] = {}
    problems: list[str] = []
    resolved: list[ResolvedProbe] = []
    for i, probe in enumerate(config.probes):
        key = "function" if probe.offset is None else "offset"
        try:
            path = resolve_binary(probe.binary, root)
        except ResolveError as exc:
            problems.append(f"probes[{i}].binary: {exc}")
            continue
        try:
            info = cache.get(path) or cache.setdefault(path, load_elf(path, root))
            if probe.offset is None:
                offset = info.resolve(probe.function, probe.function_offset)
            elif info.offset_is_executable(probe.offset):
                offset = probe.offset
            else:
                raise ResolveError(f"file offset {probe.offset:#x} is outside every executable segment of "
                                   f"{path}; find offsets with: uprobe-exporter symbols {path}")
            resolved.append(ResolvedProbe(probe, str(path), offset))
        except ResolveError as exc:
            problems.append(f"probes[{i}].{key}: {exc}")
    if problems:
        raise ConfigError(problems)
    return resolved


def plan_events(config: Config) -> list[ProbeEvent]:
    """Every event to register for ``config``, in order; resolution problems raise ConfigError."""
    events: list[ProbeEvent] = []
    problems: list[str] = []
    for i, probe in enumerate(resolve_probes(config)):
        try:
            events.extend(build_events(probe, config.exporter.group, f"probes[{i}]"))
        except ResolveError as exc:
            problems.append(f"probes[{i}].binary: {exc}")
    if problems:
        raise ConfigError(problems)
    return events
