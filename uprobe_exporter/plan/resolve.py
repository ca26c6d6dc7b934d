"""Resolve every configured probe to a file and offset; report every problem of a configuration at once."""

from __future__ import annotations

from pathlib import Path

from uprobe_exporter.errors import ConfigError, ResolveError
from uprobe_exporter.plan.binaries import resolve_binary
from uprobe_exporter.plan.config import Config, ProbeConfig
from uprobe_exporter.plan.configfile import load_config_partial
from uprobe_exporter.plan.elf import ElfInfo, StapsdtInfo, Symbol, load_elf, read_function_code, read_stapsdt
from uprobe_exporter.plan.instructions import FunctionCode, calls_back_to_start, find_ret_sites, go_entry_offset
from uprobe_exporter.plan.probes import ProbeEvent, ResolvedProbe, build_events
from uprobe_exporter.plan.stapsdt import find_notes, resolve_site, site_fetchargs


def resolve_probes(config: Config) -> tuple[list[ResolvedProbe], list[str]]:
    """Find each probe's binary and file offset; problems carry their location."""
    root = config.exporter.host_root
    cache: dict[Path, ElfInfo] = {}
    problems: list[str] = []
    resolved: list[ResolvedProbe] = []
    usdt_cache: dict[Path, StapsdtInfo] = {}
    for probe in config.probes:
        if probe.discover is not None:  # resolved per file as processes are found (discover.py)
            continue
        where = probe.location
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
            resolved_probe = resolve_function_probe(probe, info, problems)
            if resolved_probe is not None:
                resolved.append(resolved_probe)
        except ResolveError as exc:
            problems.append(f"{where}.{key}: {exc}")
    return resolved, problems


def resolve_file(probe: ProbeConfig, path: Path, root: str) -> ResolvedProbe:
    """A ``discover`` probe in one file found running (a path the kernel can open); raises ResolveError."""
    problems: list[str] = []
    if probe.usdt:
        usdt = resolve_usdt(probe, path, {}, problems)
        if usdt is None:
            raise ResolveError("; ".join(problems) or f"no USDT {probe.usdt} in {path}", binary=str(path))
        return usdt
    resolved = resolve_function_probe(probe, load_elf(path, root), problems)
    if resolved is None:
        raise ResolveError("; ".join(problems), binary=str(path))
    return resolved


def resolve_usdt(
    probe: ProbeConfig, path: Path, cache: dict[Path, StapsdtInfo], problems: list[str],
) -> ResolvedProbe | None:
    """The sites of a USDT probe (and of its ``return_usdt``) with their translated fetchargs."""
    where = probe.location
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
    """Why a uretprobe on a Go program is refused: the kernel's uretprobe swaps the return address on
    the stack for its trampoline (0x7fffffffe000); Go's runtime walks its own stacks (garbage collection,
    stack growth, preemption, tracebacks) and kills the program at that unknown return address."""
    built = f" ({info.go_version})" if info.go_version else ""
    return (f"{info.path} is a Go program{built}: a uretprobe crashes it (Go's stack walker rejects the "
            "kernel's return trampoline); use return_via = \"ret_instructions\" (the default, \"auto\", does)")


def _function_code(info: ElfInfo, offset: int) -> tuple[Symbol, int, FunctionCode] | None:
    """The function holding file ``offset`` (with a size), how far into it, and its instructions."""
    around = info.function_around(offset)
    if around is None or not around[0].size:
        return None
    return around[0], around[1], read_function_code(info, around[0])


def resolve_function_probe(probe: ProbeConfig, info: ElfInfo, problems: list[str]) -> ResolvedProbe | None:
    """A probe on a function or an offset: its entry offset (checked to start an instruction; for Go, after
    the stack check) and, for ``return_via`` RET instructions, the offsets of every RET of the function."""
    where = probe.location
    if probe.offset is None:
        offset = info.resolve(probe.function, probe.function_offset)
        named = probe.function + (f"+{probe.function_offset:#x}" if probe.function_offset else "")
    elif info.offset_is_executable(probe.offset):
        offset, named = probe.offset, f"{probe.offset:#x}"
    else:
        raise ResolveError(f"file offset {probe.offset:#x} is outside every executable segment of "
                           f"{info.path}; find offsets with: uprobe-exporter symbols {info.path}")
    found = _function_code(info, offset)
    if found is not None:
        sym, into, code = found
        if code.complete and into not in code.starts():
            before, after = code.boundaries_around(into)
            ins = code.at(before) if before is not None else None
            nearest = " and ".join(f"{sym.name}+{b:#x} (file offset {offset - into + b:#x})"
                                   for b in (before, after) if b is not None)
            raise ResolveError(f"{named} is {sym.name}+{into:#x}, inside the instruction '{ins.text if ins else '?'}': "
                               f"a breakpoint there corrupts the program; the nearest instructions start at {nearest}")
        if probe.return_probe and into:
            raise ResolveError(f"{offset:#x} is {sym.name}+{into:#x}: a return probe must be at a function's first "
                               f"instruction ({sym.name} is at {offset - into:#x})")
    via = probe.return_via
    if probe.return_probe:
        if info.is_go:
            if via == "uretprobe":
                problems.append(f"{where}.return_via: {go_return_problem(info)}")
                return None
            if not info.go_register_abi():
                problems.append(f"{where}.return: {info.path} is built by Go {info.go_version or '< 1.17'}, before the "
                                "register ABI (Go 1.17): calls cannot be paired by goroutine; probe the entry only")
                return None
            via = "ret_instructions"
        elif via == "auto":
            via = "uretprobe"
    entry_delta = 0
    if info.is_go and found is not None and found[1] == 0:  # a Go function's start: by name or by offset
        sym, _, code = found
        entry_delta = go_entry_offset(code)
        if not entry_delta and calls_back_to_start(code):
            raise ResolveError(f"{sym.name} jumps back to its first instruction (Go's stack growth) but its stack "
                               "check was not recognised: an entry probe there would fire twice for one call; probe an "
                               "offset after the check (objdump -d shows where it ends)")
    ret_sites: tuple[tuple[int, int], ...] = ()
    if probe.return_probe and via == "ret_instructions":
        if found is None:
            raise ResolveError(f"no function symbol with a size holds {named}: its RET instructions cannot be found; "
                               "use return_via = \"uretprobe\"")
        sym, into, code = found
        start = offset - into
        ret_sites = tuple((start + r, r) for r in find_ret_sites(code, sym.name))
        if any(site == offset + entry_delta for site, _ in ret_sites):
            # two probes at one address: the kernel gives no order between them (the return could come first)
            raise ResolveError(f"{sym.name} returns at its entry probe's instruction: an entry and a return probe "
                               "cannot share one address; use return_via = \"uretprobe\" (not on Go)")
        for name, fetcharg in probe.return_args:
            if "$retval" in fetcharg:
                problems.append(f"{where}.return_args.{name}: '{fetcharg}': $retval is a uretprobe's; at a RET "
                                "instruction the return value is in %ax: write '%ax' (Go: %ax, %bx, %cx... in order)")
        if any("$retval" in f for _, f in probe.return_args):
            return None
    return ResolvedProbe(probe, str(info.path), offset + entry_delta, entry_delta=entry_delta, ret_sites=ret_sites,
                         goroutines=info.is_go and probe.return_probe)


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
