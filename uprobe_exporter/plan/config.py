"""Pure: a TOML mapping in, frozen ``Config`` out; every problem reported at once with its dotted location.

``parse_config`` takes the ``Mapping`` from ``tomllib``; ``configfile.py`` reads the file or the built-in
example. Symbol resolution happens later (``resolve.py``): it needs the binaries.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from uprobe_exporter.errors import ConfigError
from uprobe_exporter.plan.fetchargs import check_fetcharg
from uprobe_exporter.plan.filters import check_comm, check_filter, event_fields
from uprobe_exporter.plan.kernelabi import GOSTRING_LEN_PREFIX
from uprobe_exporter.plan.stapsdt import check_usdt_arg

DEFAULT_PORT = 9527
DEFAULT_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
NAME_RE = re.compile(r"[a-z_][a-z0-9_]*\Z")
GROUP_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
ARG_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
FUNCTION_RE = re.compile(r"(?P<symbol>[^\s+]+)(?:\+(?P<off>0x[0-9a-fA-F]+|\d+))?\Z")
MAX_EVENT_NAME = 63  # trace_probe.h: MAX_EVENT_NAME_LEN 64 includes the NUL
MAX_ARG_NAME = 31  # MAX_ARG_NAME_LEN 32
# histogram labels of a record's pod (OpenTelemetry's names: Prometheus' target labels for the exporter's
# own pod are namespace, pod and container) → the PodIdentity field
POD_LABELS = {"k8s_namespace_name": "namespace", "k8s_pod_name": "pod", "k8s_container_name": "container"}
RECORD_LABELS = ("comm", *POD_LABELS)
RESERVED_LABELS = ("probe", "le", "instance", "job")  # set by the histogram itself or by Prometheus
LOG_LEVELS = ("debug", "info", "warning", "error")
RETURN_VIA = ("auto", "uretprobe", "ret_instructions")  # a kernel uretprobe, or a `p:` probe on each RET
READERS = ("raw", "text")  # per-CPU trace_pipe_raw (binary, ns timestamps), or the text trace_pipe
# Groups the kernel itself puts dynamic events in (kernel/trace: UPROBE_EVENT_SYSTEM, KPROBE_EVENT_SYSTEM,
# EPROBE_EVENT_SYSTEM, FPROBE_EVENT_SYSTEM and TRACEPOINT_EVENT_SYSTEM, SYNTH_SYSTEM; "ftrace" holds the
# tracer's own events): other people's probes live there, and we remove every uprobe of our group.
RESERVED_GROUPS = ("uprobes", "kprobes", "eprobes", "fprobes", "tracepoints", "synthetic", "ftrace")


@dataclass(frozen=True, slots=True)
class ExporterConfig:
    tracefs: str = "auto"
    instance: str = "uprobe_exporter"
    group: str = "uprobe_exporter"
    buffer_size_kb: int = 4096
    host_root: str = "/"
    max_pending_calls: int = 65536
    log_level: str = "info"
    reader: str = "raw"
    # discovery (probes with ``discover``): the kubelet's pod log directory inside host_root (its sibling
    # ``containers`` holds the container links), how often /proc is scanned, how many distinct files one
    # probe may follow, how long the events of a file no process runs stay enabled
    pods_dir: str = "/var/log/pods"
    discover_interval: float = 1.0
    discover_files_max: int = 16
    discover_grace_seconds: float = 5.0
    stop_budget_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class JsonlConfig:
    enabled: bool = True
    path: str = "-"
    max_queue_kb: int = 32768


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    host: str = ""
    port: int = DEFAULT_PORT
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    label_values_max: int = 100


@dataclass(frozen=True, slots=True)
class DiscoverConfig:
    """Which processes a probe follows: globs on the executable (its file name, or with a '/' the path as
    the process sees it) and, optionally, on its pod's namespace, name and container name."""

    exe: str
    namespace: str = ""
    pod: str = ""
    container: str = ""


DISCOVER_KEYS = ("exe", "namespace", "pod", "container")
FILE_TAG = "_F"  # discovered files' events: <probe>_F<n>_entry (upper case: no probe name can make it)


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    name: str
    binary: str
    index: int = 0  # position in [[probes]], for error locations
    function: str = ""  # symbol, without the +offset
    function_offset: int = 0  # the "+0x10" part of function
    offset: int | None = None  # a file offset instead of a symbol
    args: tuple[tuple[str, str], ...] = ()
    return_probe: bool = False
    return_args: tuple[tuple[str, str], ...] = ()
    filter: str = ""
    return_filter: str = ""
    latency: bool = False
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    labels: tuple[str, ...] = ()
    usdt: str = ""  # provider:name of a USDT probe (.note.stapsdt), instead of function/offset
    return_usdt: str = ""  # the USDT that ends the call (then return_probe is True)
    discover: DiscoverConfig | None = None  # follow running processes instead of one binary
    comm: tuple[str, ...] = ()  # thread names: a kernel filter on the entry and the return, ANDed with filter
    return_via: str = "auto"  # RETURN_VIA: how returns are seen (auto: Go → ret_instructions, else uretprobe)

    @property
    def location(self) -> str:
        """Where the probe is in the configuration, for messages: ``probes[3] "malloc"``."""
        return probe_location(self.index, self.name)

    @property
    def where(self) -> str:
        """The probed location as a person wrote it: ``readline``, ``work+0x4``, ``0x1149`` or ``python:line``."""
        if self.usdt:
            return self.usdt
        if self.offset is not None:
            return hex(self.offset)
        return self.function + (f"+{self.function_offset:#x}" if self.function_offset else "")


@dataclass(frozen=True, slots=True)
class Config:
    exporter: ExporterConfig
    jsonl: JsonlConfig
    metrics: MetricsConfig
    probes: tuple[ProbeConfig, ...]
    source: str = "<built-in example>"


class _Problems:
    """Collects located problems, all reported together."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def _table(data: Mapping[str, Any], key: str, where: str, problems: _Problems) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        problems.add(where, f"must be a table, not {type(value).__name__}")
        return {}
    return value


def _unknown_keys(table: Mapping[str, Any], known: tuple[str, ...], where: str, problems: _Problems) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            problems.add(f"{where}.{key}" if where else key, f"unknown key{hint}")


def _get(
    table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any, where: str,
    problems: _Problems,
) -> Any:
    if key not in table:
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # TOML booleans are not integers here, whatever Python thinks.
    if isinstance(value, bool) and bool not in kinds:
        problems.add(f"{where}.{key}", f"must be {'/'.join(k.__name__ for k in kinds)}, not a boolean")
        return default
    if not isinstance(value, kinds):
        problems.add(f"{where}.{key}", f"must be {'/'.join(k.__name__ for k in kinds)}, not {type(value).__name__}")
        return default
    return value


def _parse_listen(listen: str, where: str, problems: _Problems) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        problems.add(where, f"'{listen}' is not HOST:PORT or :PORT (for example ':{DEFAULT_PORT}')")
        return "", DEFAULT_PORT
    return host.strip("[]"), int(port)


def _parse_exporter(data: Mapping[str, Any], problems: _Problems) -> ExporterConfig:
    t = _table(data, "exporter", "exporter", problems)
    d = ExporterConfig()
    _unknown_keys(t, ExporterConfig.__slots__, "exporter", problems)
    cfg = ExporterConfig(
        tracefs=_get(t, "tracefs", str, d.tracefs, "exporter", problems),
        instance=_get(t, "instance", str, d.instance, "exporter", problems),
        group=_get(t, "group", str, d.group, "exporter", problems),
        buffer_size_kb=_get(t, "buffer_size_kb", int, d.buffer_size_kb, "exporter", problems),
        host_root=_get(t, "host_root", str, d.host_root, "exporter", problems),
        max_pending_calls=_get(t, "max_pending_calls", int, d.max_pending_calls, "exporter", problems),
        log_level=_get(t, "log_level", str, d.log_level, "exporter", problems),
        reader=_get(t, "reader", str, d.reader, "exporter", problems),
        pods_dir=_get(t, "pods_dir", str, d.pods_dir, "exporter", problems),
        discover_interval=float(_get(t, "discover_interval", (int, float), d.discover_interval, "exporter",
                                     problems)),
        discover_files_max=_get(t, "discover_files_max", int, d.discover_files_max, "exporter", problems),
        discover_grace_seconds=float(_get(t, "discover_grace_seconds", (int, float), d.discover_grace_seconds,
                                          "exporter", problems)),
        stop_budget_seconds=float(_get(t, "stop_budget_seconds", (int, float), d.stop_budget_seconds, "exporter",
                                       problems)),
    )
    if not 0.05 <= cfg.discover_interval <= 3600:
        problems.add("exporter.discover_interval", "must be between 0.05 and 3600 seconds")
    if not 1 <= cfg.discover_files_max <= 9999:
        problems.add("exporter.discover_files_max", "must be between 1 and 9999")
    if not 0 <= cfg.discover_grace_seconds <= 86400:
        problems.add("exporter.discover_grace_seconds", "must be between 0 and 86400 seconds")
    if not cfg.pods_dir.startswith("/"):
        problems.add("exporter.pods_dir", f"'{cfg.pods_dir}' must be an absolute path (inside host_root)")
    if not GROUP_RE.match(cfg.group) or len(cfg.group) > MAX_EVENT_NAME:
        problems.add("exporter.group", f"'{cfg.group}' must be a C identifier of at most 63 characters")
    elif cfg.group in RESERVED_GROUPS:
        problems.add("exporter.group", f"'{cfg.group}' is the kernel's own group for dynamic events (other users' "
                     "probes live there and would be removed); choose a group of your own, such as "
                     f"'{d.group}'")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", cfg.instance) or cfg.instance in (".", ".."):
        problems.add("exporter.instance", f"'{cfg.instance}' must be a plain directory name ([A-Za-z0-9_.-])")
    if cfg.buffer_size_kb < 4:
        problems.add("exporter.buffer_size_kb", "must be at least 4 (one page per CPU)")
    if not 1 <= cfg.stop_budget_seconds < math.inf:
        problems.add("exporter.stop_budget_seconds", "must be at least 1 (seconds the stop is given: the grace "
                     "period, TimeoutStopSec)")
    if cfg.max_pending_calls < 1:
        problems.add("exporter.max_pending_calls", "must be positive")
    if cfg.log_level not in LOG_LEVELS:
        problems.add("exporter.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        cfg = replace(cfg, log_level=d.log_level)  # logging is set up before the problems are reported
    if cfg.reader not in READERS:
        problems.add("exporter.reader", f"'{cfg.reader}' must be one of {', '.join(READERS)}")
    if not cfg.host_root.startswith("/"):
        problems.add("exporter.host_root", f"'{cfg.host_root}' must be an absolute path")
    return cfg


def _parse_outputs(data: Mapping[str, Any], problems: _Problems) -> JsonlConfig:
    out = _table(data, "output", "output", problems)
    _unknown_keys(out, ("jsonl",), "output", problems)
    t = _table(out, "jsonl", "output.jsonl", problems)
    _unknown_keys(t, JsonlConfig.__slots__, "output.jsonl", problems)
    cfg = JsonlConfig(
        enabled=_get(t, "enabled", bool, True, "output.jsonl", problems),
        path=_get(t, "path", str, "-", "output.jsonl", problems),
        max_queue_kb=_get(t, "max_queue_kb", int, 32768, "output.jsonl", problems),
    )
    if cfg.max_queue_kb < 64:
        problems.add("output.jsonl.max_queue_kb", "must be at least 64")
    if cfg.enabled and not cfg.path:
        problems.add("output.jsonl.path", "must be '-' (stdout) or a file path; set enabled = false to turn off")
    return cfg


def _parse_metrics(data: Mapping[str, Any], problems: _Problems) -> MetricsConfig:
    t = _table(data, "metrics", "metrics", problems)
    known = ("enabled", "listen", "tls_cert_file", "tls_key_file", "tls_client_ca_file", "label_values_max")
    _unknown_keys(t, known, "metrics", problems)
    host, port = _parse_listen(_get(t, "listen", str, f":{DEFAULT_PORT}", "metrics", problems),
                               "metrics.listen", problems)
    cfg = MetricsConfig(
        enabled=_get(t, "enabled", bool, True, "metrics", problems),
        host=host,
        port=port,
        tls_cert_file=_get(t, "tls_cert_file", str, "", "metrics", problems),
        tls_key_file=_get(t, "tls_key_file", str, "", "metrics", problems),
        tls_client_ca_file=_get(t, "tls_client_ca_file", str, "", "metrics", problems),
        label_values_max=_get(t, "label_values_max", int, 100, "metrics", problems),
    )
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        problems.add("metrics.tls_cert_file", "tls_cert_file and tls_key_file must be given together")
    if cfg.tls_client_ca_file and not cfg.tls_cert_file:
        problems.add("metrics.tls_client_ca_file", "client certificates need tls_cert_file and tls_key_file")
    if cfg.label_values_max < 1:
        problems.add("metrics.label_values_max", "must be at least 1")
    return cfg


def _parse_args(
    value: Any, where: str, is_return: bool, problems: _Problems, usdt: bool = False,
) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        problems.add(where, "must be a table of name = \"fetcharg[:type]\"")
        return ()
    args: list[tuple[str, str]] = []
    for name, fetcharg in value.items():
        loc = f"{where}.{name}"
        if not ARG_NAME_RE.match(name) or len(name) > MAX_ARG_NAME:
            problems.add(loc, "argument names must be C identifiers of at most 31 characters")
        elif name.startswith(("__", "common_")):
            problems.add(loc, "names starting with '__' or 'common_' are reserved; choose another name")
        elif isinstance(fetcharg, str) and ":gostring" in fetcharg and len(GOSTRING_LEN_PREFIX + name) > MAX_ARG_NAME:
            problems.add(loc, f"a gostring argument's name is at most {MAX_ARG_NAME - len(GOSTRING_LEN_PREFIX)} "
                         "characters (its length is the hidden argument __len_NAME)")
        if not isinstance(fetcharg, str):
            problems.add(loc, "must be a string such as \"%di:s32\" or \"+0(%si):string\"")
            continue
        if usdt and fetcharg.startswith("arg"):  # argN[:type] of the note; any other value is a fetcharg
            if (err := check_usdt_arg(fetcharg)) is not None:
                problems.add(loc, err)
        elif (err := check_fetcharg(fetcharg, is_return=is_return)) is not None:
            problems.add(loc, err)
        args.append((name, fetcharg))
    return tuple(args)


def probe_location(index: int, name: object) -> str:
    """``probes[3] "malloc"``: the index, and the name when there is one to show."""
    if isinstance(name, str) and name:
        return f"probes[{index}] {json.dumps(name, ensure_ascii=False)}"
    return f"probes[{index}]"


def _parse_comm(t: Mapping[str, Any], where: str, problems: _Problems) -> tuple[str, ...]:
    value = t.get("comm", [])
    if not isinstance(value, list) or (not value and "comm" in t):
        problems.add(f"{where}.comm", 'must be a non-empty list of thread names, such as ["nginx"]')
        return ()
    for i, name in enumerate(value):
        if (err := check_comm(name)) is not None:
            problems.add(f"{where}.comm[{i}]", err)
    return tuple(str(n) for n in value)


def _parse_probe(index: int, t: Any, problems: _Problems) -> ProbeConfig | None:
    if not isinstance(t, Mapping):
        problems.add(f"probes[{index}]", "must be a table ([[probes]])")
        return None
    where = probe_location(index, t.get("name"))
    known = ("name", "binary", "function", "offset", "args", "return", "return_args", "filter",
             "return_filter", "comm", "latency", "buckets", "labels", "return_via", "discover", *USDT_KEYS)
    _unknown_keys(t, known, where, problems)
    name = _get(t, "name", str, "", where, problems)
    if not NAME_RE.match(name):
        problems.add(f"{where}.name", f"'{name}' must match [a-z_][a-z0-9_]*")
    elif len(name) + len("_return") > MAX_EVENT_NAME:
        problems.add(f"{where}.name", "too long: the event name <name>_return must fit in 63 characters")
    binary = _get(t, "binary", str, "", where, problems)
    discover = _parse_discover(t, where, problems)
    if not binary and discover is None:
        problems.add(f"{where}.binary", "required: a path such as /usr/bin/bash or a library such as libc.so.6 "
                     "(or discover = { exe = \"nginx\" } to follow running processes)")
    if discover is not None and NAME_RE.match(name) and len(name) + len(f"{FILE_TAG}9999_return") > MAX_EVENT_NAME:
        problems.add(f"{where}.name", f"too long for discover: the event name <name>{FILE_TAG}<n>_return must fit "
                     "in 63 characters")
    function = _get(t, "function", str, "", where, problems)
    offset = _get(t, "offset", int, None, where, problems)
    symbol, function_offset = "", 0
    usdt, return_usdt = _parse_usdt(t, where, problems)
    if usdt and (function or offset is not None):
        problems.add(where, "give one of 'function', 'offset' or 'usdt', not several")
    elif not usdt and bool(function) == (offset is not None):
        problems.add(where, "give exactly one of 'function' (a symbol), 'offset' (a file offset) or 'usdt' "
                     "(provider:name)")
    elif function:
        m = FUNCTION_RE.match(function)
        if not m:
            problems.add(f"{where}.function", f"'{function}' must be SYMBOL or SYMBOL+0xOFFSET")
        else:
            symbol, function_offset = m["symbol"], int(m["off"] or "0", 0)
    elif offset is not None and offset < 0:
        problems.add(f"{where}.offset", "must be a non-negative file offset")
    return_probe = _get(t, "return", bool, False, where, problems) or bool(return_usdt)
    if return_probe and function_offset:
        # a uretprobe replaces the return address it finds at the top of the stack: only true at entry
        problems.add(f"{where}.function", f"a return probe must be at the function's first instruction, not "
                     f"{function}; drop the +offset or return = true")
    return_via = _get(t, "return_via", str, "auto", where, problems)
    if return_via not in RETURN_VIA:
        problems.add(f"{where}.return_via", f"'{return_via}' must be one of {', '.join(RETURN_VIA)}")
    elif "return_via" in t and (usdt or not return_probe):
        problems.add(f"{where}.return_via", "applies to return = true on a function or offset")
    args = _parse_args(t.get("args", {}), f"{where}.args", False, problems, bool(usdt))
    return_args = _parse_args(t.get("return_args", {}), f"{where}.return_args", not usdt, problems, bool(usdt))
    ret_key = "return_usdt" if usdt else "return = true"
    if return_args and not return_probe:
        problems.add(f"{where}.return_args", f"needs {ret_key}")
    latency = _get(t, "latency", bool, False, where, problems)
    if latency and not return_probe:
        problems.add(f"{where}.latency", f"needs {ret_key}: latency pairs entry and return events")
    buckets = _get(t, "buckets", list, list(DEFAULT_BUCKETS), where, problems)
    if not buckets or not all(isinstance(b, int | float) and not isinstance(b, bool) and 0 < b < math.inf
                              for b in buckets) or sorted(set(buckets)) != list(buckets):
        problems.add(f"{where}.buckets", "must be a non-empty list of increasing, finite, positive numbers (seconds); "
                     "+Inf is always added")
        buckets = list(DEFAULT_BUCKETS)
    labels = _get(t, "labels", list, [], where, problems)
    allowed = (*RECORD_LABELS, *(n for n, _ in args), *(n for n, _ in return_args))
    if labels and not latency:
        problems.add(f"{where}.labels", "labels apply to the latency histogram: they need latency = true")
    for i, label in enumerate(labels):
        if label in RESERVED_LABELS or labels.index(label) != i:
            problems.add(f"{where}.labels[{i}]", f"'{label}' is reserved or repeated; rename the argument")
        elif label not in allowed:
            close = difflib.get_close_matches(str(label), allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"choose from {', '.join(allowed)}"
            problems.add(f"{where}.labels[{i}]", f"unknown label '{label}'; {hint}")
    filters = {k: _get(t, k, str, "", where, problems) for k in ("filter", "return_filter")}
    if filters["return_filter"] and not return_probe:
        problems.add(f"{where}.return_filter", f"needs {ret_key}")
    for key, is_return, names in (("filter", False, args), ("return_filter", True, return_args)):
        # a USDT return is a `p:` event (__probe_ip), not a uretprobe's (__probe_func, __probe_ret_ip)
        fields = event_fields([n for n, _ in names], is_return=is_return and not usdt)
        for problem in check_filter(filters[key], fields, "return" if is_return else "entry"):
            problems.add(f"{where}.{key}", problem)
    comm = _parse_comm(t, where, problems)
    return ProbeConfig(
        name=name, binary=binary, index=index, function=symbol, function_offset=function_offset, offset=offset,
        args=args, return_probe=return_probe, return_args=return_args, filter=filters["filter"],
        return_filter=filters["return_filter"], latency=latency,
        buckets=tuple(float(b) for b in buckets), labels=tuple(str(x) for x in labels), comm=comm,
        usdt=usdt, return_usdt=return_usdt, return_via=return_via, discover=discover,
    )


def _parse_discover(t: Mapping[str, Any], where: str, problems: _Problems) -> DiscoverConfig | None:
    """``discover = { exe = "nginx", namespace = "shop", pod = "web-*", container = "nginx" }``."""
    if "discover" not in t:
        return None
    value = t["discover"]
    loc = f"{where}.discover"
    if not isinstance(value, Mapping):
        problems.add(loc, "must be a table such as { exe = \"nginx\" }")
        return None
    _unknown_keys(value, DISCOVER_KEYS, loc, problems)
    globs = {k: _get(value, k, str, "", loc, problems) for k in DISCOVER_KEYS}
    if not globs["exe"]:
        problems.add(f"{loc}.exe", "required: a glob on the executable's file name (\"nginx\"), or with a '/' on "
                     "its path as the process sees it (\"/usr/sbin/*\")")
        return None
    return DiscoverConfig(**globs)


USDT_KEYS = ("usdt", "return_usdt")
USDT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*:[A-Za-z_][A-Za-z0-9_]*\Z")


def _parse_usdt(t: Mapping[str, Any], where: str, problems: _Problems) -> tuple[str, str]:
    """``usdt`` and ``return_usdt`` (``provider:name``); ``return = true`` does not apply to a USDT."""
    usdt = _get(t, "usdt", str, "", where, problems)
    return_usdt = _get(t, "return_usdt", str, "", where, problems)
    for key, value in (("usdt", usdt), ("return_usdt", return_usdt)):
        if value and not USDT_RE.match(value):
            problems.add(f"{where}.{key}", f"'{value}' must be provider:name, as 'uprobe-exporter usdt BINARY' "
                         "lists them (for example python:function__entry)")
    if return_usdt and not usdt:
        problems.add(f"{where}.return_usdt", "needs usdt = \"provider:name\" (the USDT that starts the call)")
    if usdt and t.get("return") is True:
        problems.add(f"{where}.return", "a USDT is not a function: there is no return to probe; name the USDT "
                     "that ends the call with return_usdt = \"provider:name\"")
    return usdt, return_usdt


def parse_config_partial(data: Mapping[str, Any], source: str = "<mapping>") -> tuple[Config, list[str]]:
    """Validate a TOML mapping; return a Config of the valid probes and every problem found."""
    problems = _Problems()
    _unknown_keys(data, ("exporter", "output", "metrics", "probes"), "", problems)
    exporter = _parse_exporter(data, problems)
    jsonl = _parse_outputs(data, problems)
    metrics = _parse_metrics(data, problems)
    raw_probes = data.get("probes", [])
    if not isinstance(raw_probes, list) or not raw_probes:
        problems.add("probes", "at least one [[probes]] table is required")
        raw_probes = []
    probes: list[ProbeConfig] = []
    seen: dict[str, int] = {}
    for i, t in enumerate(raw_probes):
        before = len(problems.items)
        probe = _parse_probe(i, t, problems)
        if probe is None:
            continue
        if probe.name in seen:
            problems.add(f"{probe.location}.name", f"'{probe.name}' is already used by probes[{seen[probe.name]}]")
        seen.setdefault(probe.name, i)
        if len(problems.items) == before:
            probes.append(probe)
    return Config(exporter, jsonl, metrics, tuple(probes), source), problems.items


def parse_config(data: Mapping[str, Any], source: str = "<mapping>") -> Config:
    """Validate a TOML mapping; raise one ``ConfigError`` listing every problem found."""
    config, problems = parse_config_partial(data, source)
    if problems:
        raise ConfigError(problems)
    return config
