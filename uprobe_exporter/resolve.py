"""Resolve every configured probe to a file and offset; report every problem of a configuration at once."""

from __future__ import annotations

from pathlib import Path

from uprobe_exporter.binaries import resolve_binary
from uprobe_exporter.config import Config, ProbeConfig, load_config_partial
from uprobe_exporter.elf import ElfInfo, StapsdtInfo, load_elf, read_stapsdt
from uprobe_exporter.errors import ConfigError, ResolveError
from uprobe_exporter.probes import ProbeEvent, ResolvedProbe, build_events
from uprobe_exporter.stapsdt import find_notes, resolve_site, site_fetchargs


def resolve_probes(config: Config) -> tuple[list[ResolvedProbe], list[str]]:
    """Find each probe's binary and file offset; problems carry their location."""
    root = config.exporter.host_root
    cache: dict[Path, ElfInfo] = {}
    problems: list[str] = []
    resolved: list[ResolvedProbe] = []
    usdt_cache: dict[Path, StapsdtInfo] = {}
    for probe in config.probes:
        where = f"probes[{probe.index}]"
        key = "function" if probe.offset is None else "offset"
        try:
            path = resolve_binary(probe.binary, root)
        except ResolveError as exc:
            problems.append(f"{where}.binary: {exc}")
            continue
        if probe.usdt:
            usdt = resolve_usdt(probe, path, usdt_cache, problems)
            if usdt is not None:
                resolved.append(usdt)
            continue
        try:
            info = cache.get(path) or cache.setdefault(path, load_elf(path, root))
            if probe.return_probe and info.is_go:
                problems.append(f"{where}.return: {go_return_problem(info)}")
                continue
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


def resolve_usdt(
    probe: ProbeConfig, path: Path, cache: dict[Path, StapsdtInfo], problems: list[str],
) -> ResolvedProbe | None:
    """The sites of a USDT probe (and of its ``return_usdt``) with their translated fetchargs."""
    where = f"probes[{probe.index}]"
    try:
        info = cache.get(path) or cache.setdefault(path, read_stapsdt(path))
    except ResolveError as exc:
        problems.append(f"{where}.binary: {exc}")
        return None
    found: list[tuple[tuple[int, int | None, str], ...]] = []
    for key, name, args_key, args in (("usdt", probe.usdt, "args", probe.args),
                                      ("return_usdt", probe.return_usdt, "return_args", probe.return_args)):
        if not name:
            found.append(())
            continue
        try:
            notes = find_notes(info.notes, name, str(path))
            sites = [resolve_site(n, info.stapsdt_base, info.segments, str(path)) for n in notes]
        except ResolveError as exc:
            problems.append(f"{where}.{key}: {exc}")
            return None
        texts: list[str] = [""] * len(sites)
        for arg_name, value in args:  # one at a time: each problem with its own location
            try:
                one = site_fetchargs(sites, [(arg_name, value)])
            except ResolveError as exc:
                problems.append(f"{where}.{args_key}.{arg_name}: {exc}")
                continue
            texts = [f"{t} {o}".strip() for t, o in zip(texts, one, strict=True)]
        found.append(tuple((s.offset, s.ref_ctr_offset, t) for s, t in zip(sites, texts, strict=True)))
    entry, ret = found
    if not entry:
        return None
    return ResolvedProbe(probe, str(path), entry[0][0], entry, ret)


def go_return_problem(info: ElfInfo) -> str:
    """Why a return probe on a Go program is refused: the kernel's uretprobe swaps the return address on
    the stack for its trampoline (0x7fffffffe000); Go's runtime walks its own stacks (garbage collection,
    stack growth, preemption, tracebacks) and kills the program at that unknown return address."""
    built = f" ({info.go_version})" if info.go_version else ""
    return (f"{info.path} is a Go program{built}: a return probe crashes it (Go's stack walker rejects the "
            "kernel's return trampoline); probe the entry only (return = false, no latency)")


def plan_events(config: Config, problems: list[str] | None = None) -> list[ProbeEvent]:
    """Every event to register for ``config``, in order; raises one ConfigError with ``problems`` found
    earlier and every resolution problem."""
    problems = list(problems or [])
    resolved, more = resolve_probes(config)
    problems += more
    events: list[ProbeEvent] = []
    for probe in resolved:
        try:
            events.extend(build_events(probe, config.exporter.group, f"probes[{probe.config.index}]"))
        except ResolveError as exc:
            problems.append(f"probes[{probe.config.index}].binary: {exc}")
    if problems:
        raise ConfigError(problems)
    return events


def load_plan(path: str | None) -> tuple[Config, list[ProbeEvent]]:
    """Read, validate and resolve a configuration; every problem is reported in one ConfigError."""
    config, problems = load_config_partial(path)
    return config, plan_events(config, problems)
