"""config.parse_config on mappings: defaults, every validation with its dotted location, all at once."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest

from uprobe_exporter.errors import ConfigError, UprobeExporterError
from uprobe_exporter.plan.config import (
    DEFAULT_BUCKETS,
    DEFAULT_PORT,
    Config,
    ExporterConfig,
    JsonlConfig,
    MetricsConfig,
    parse_config,
    parse_config_partial,
    probe_location,
)
from uprobe_exporter.plan.configfile import example_text

PROBE: dict[str, Any] = {"name": "work", "binary": "/tmp/calls", "function": "work"}


def config_with(**sections: Any) -> dict[str, Any]:
    """A valid minimal configuration with ``sections`` merged in (``probe=`` updates the one probe)."""
    probe = {**PROBE, **sections.pop("probe", {})}
    data: dict[str, Any] = {"probes": [probe], **sections}
    return data


def problems_of(data: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems, "a ConfigError always lists its problems"
    return info.value.problems


def test_minimal_config_takes_every_default() -> None:
    cfg = parse_config(config_with(), source="test.toml")
    assert cfg.exporter == ExporterConfig()
    assert cfg.jsonl == JsonlConfig()
    assert cfg.metrics == MetricsConfig()
    assert (cfg.metrics.host, cfg.metrics.port) == ("", DEFAULT_PORT)
    assert cfg.source == "test.toml"
    (probe,) = cfg.probes
    assert (probe.name, probe.binary, probe.function, probe.function_offset, probe.offset) == (
        "work", "/tmp/calls", "work", 0, None)
    assert probe.buckets == DEFAULT_BUCKETS
    assert (probe.return_probe, probe.latency, probe.args, probe.labels) == (False, False, (), ())
    assert probe.where == "work"


def test_a_full_probe() -> None:
    cfg = parse_config(config_with(probe={
        "function": "work", "args": {"a": "%di:s32", "s": "+0(%si):string"}, "return": True,
        "return_args": {"ret": "$retval:s64"}, "latency": True, "buckets": [0.001, 1, 2.5],
        "labels": ["comm", "a", "ret"], "filter": "a > 0", "return_filter": "ret != 0"}))
    (p,) = cfg.probes
    assert (p.function, p.function_offset, p.where) == ("work", 0, "work")
    entry_only = parse_config(config_with(probe={"function": "work+0x10"})).probes[0]
    assert (entry_only.function, entry_only.function_offset, entry_only.where) == ("work", 0x10, "work+0x10")
    assert p.args == (("a", "%di:s32"), ("s", "+0(%si):string"))
    assert p.return_args == (("ret", "$retval:s64"),)
    assert p.buckets == (0.001, 1.0, 2.5)
    assert all(isinstance(b, float) for b in p.buckets)
    assert p.labels == ("comm", "a", "ret")
    assert (p.filter, p.return_filter, p.return_probe, p.latency) == ("a > 0", "ret != 0", True, True)


def test_decimal_function_offset_and_file_offset() -> None:
    assert parse_config(config_with(probe={"function": "work+16"})).probes[0].function_offset == 16
    (p,) = parse_config(config_with(probe={"function": "", "offset": 0x1189})).probes
    assert (p.offset, p.function, p.where) == (0x1189, "", "0x1189")
    data = config_with()
    del data["probes"][0]["function"]
    data["probes"][0]["offset"] = 4096
    assert parse_config(data).probes[0].where == hex(4096)


@pytest.mark.parametrize(("listen", "host", "port"), [
    (":9000", "", 9000), ("127.0.0.1:1", "127.0.0.1", 1), ("[::1]:65535", "::1", 65535),
])
def test_listen(listen: str, host: str, port: int) -> None:
    m = parse_config(config_with(metrics={"listen": listen})).metrics
    assert (m.host, m.port) == (host, port)


def test_sections_are_read() -> None:
    cfg = parse_config(config_with(
        exporter={"tracefs": "/sys/kernel/tracing", "instance": "i.1-x", "group": "G_1", "buffer_size_kb": 4,
                  "host_root": "/host", "max_pending_calls": 1, "log_level": "debug"},
        output={"jsonl": {"enabled": False, "path": "", "max_queue_kb": 64}},
        metrics={"enabled": False, "tls_cert_file": "c.pem", "tls_key_file": "k.pem", "tls_client_ca_file": "ca",
                 "label_values_max": 1}))
    assert cfg.exporter == ExporterConfig("/sys/kernel/tracing", "i.1-x", "G_1", 4, "/host", 1, "debug")
    assert cfg.jsonl == JsonlConfig(False, "", 64)
    assert cfg.metrics == MetricsConfig(False, "", DEFAULT_PORT, "c.pem", "k.pem", "ca", 1)


BAD: list[tuple[dict[str, Any], str, str]] = [
    # top level
    ({"exporterr": {}}, "exporterr", "did you mean 'exporter'"),
    ({"zzz": 1}, "zzz", "known keys: exporter, output, metrics, probes"),
    ({"exporter": 3}, "exporter", "must be a table, not int"),
    ({"probes": []}, "probes", "at least one [[probes]]"),
    ({"probes": {"name": "x"}}, "probes", "at least one [[probes]]"),
    ({"probes": ["x"]}, "probes[0]", "must be a table"),
    # [exporter]
    ({"exporter": {"grup": "g"}}, "exporter.grup", "did you mean 'group'"),
    ({"exporter": {"buffer_size_kb": "big"}}, "exporter.buffer_size_kb", "must be int, not str"),
    ({"exporter": {"buffer_size_kb": True}}, "exporter.buffer_size_kb", "must be int, not a boolean"),
    ({"exporter": {"buffer_size_kb": 3}}, "exporter.buffer_size_kb", "at least 4"),
    ({"exporter": {"group": "1abc"}}, "exporter.group", "C identifier"),
    ({"exporter": {"group": "g" * 64}}, "exporter.group", "at most 63"),
    ({"exporter": {"instance": ".."}}, "exporter.instance", "plain directory name"),
    ({"exporter": {"instance": "a/b"}}, "exporter.instance", "plain directory name"),
    ({"exporter": {"max_pending_calls": 0}}, "exporter.max_pending_calls", "must be positive"),
    ({"output": {"jsonl": {"max_queue_kb": 1}}}, "output.jsonl.max_queue_kb", "at least 64"),
    ({"exporter": {"log_level": "verbose"}}, "exporter.log_level", "debug, info, warning, error"),
    ({"exporter": {"host_root": "host"}}, "exporter.host_root", "absolute path"),
    ({"exporter": {"tracefs": 1}}, "exporter.tracefs", "must be str, not int"),
    # [output]
    ({"output": {"json": {}}}, "output.json", "did you mean 'jsonl'"),
    ({"output": {"jsonl": []}}, "output.jsonl", "must be a table, not list"),
    ({"output": {"jsonl": {"pth": "-"}}}, "output.jsonl.pth", "did you mean 'path'"),
    ({"output": {"jsonl": {"path": ""}}}, "output.jsonl.path", "set enabled = false"),
    ({"output": {"jsonl": {"enabled": "yes"}}}, "output.jsonl.enabled", "must be bool, not str"),
    # [metrics]
    ({"metrics": {"listen": "9527"}}, "metrics.listen", "not HOST:PORT"),
    ({"metrics": {"listen": ":0"}}, "metrics.listen", "not HOST:PORT"),
    ({"metrics": {"listen": ":65536"}}, "metrics.listen", "not HOST:PORT"),
    ({"metrics": {"listen": "host:"}}, "metrics.listen", "not HOST:PORT"),
    ({"metrics": {"listen": 9527}}, "metrics.listen", "must be str, not int"),
    ({"metrics": {"lisen": ":1"}}, "metrics.lisen", "did you mean 'listen'"),
    ({"metrics": {"tls_cert_file": "c.pem"}}, "metrics.tls_cert_file", "must be given together"),
    ({"metrics": {"tls_key_file": "k.pem"}}, "metrics.tls_cert_file", "must be given together"),
    ({"metrics": {"tls_client_ca_file": "ca.pem"}}, "metrics.tls_client_ca_file", "need tls_cert_file"),
    ({"metrics": {"label_values_max": 0}}, "metrics.label_values_max", "at least 1"),
    # [[probes]]
    ({"probe": {"fucntion": "x"}}, "probes[0].fucntion", "did you mean 'function'"),
    ({"probe": {"name": "Bad-Name"}}, "probes[0].name", "must match [a-z_][a-z0-9_]*"),
    ({"probe": {"name": "n" * 57}}, "probes[0].name", "too long"),
    ({"probe": {"name": 5}}, "probes[0].name", "must be str, not int"),
    ({"probe": {"binary": ""}}, "probes[0].binary", "required"),
    ({"probe": {"offset": 4096}}, "probes[0]", "exactly one of 'function'"),
    ({"probe": {"function": ""}}, "probes[0]", "exactly one of 'function'"),
    ({"probe": {"function": "work+"}}, "probes[0].function", "SYMBOL or SYMBOL+0xOFFSET"),
    ({"probe": {"function": "wo rk"}}, "probes[0].function", "SYMBOL or SYMBOL+0xOFFSET"),
    ({"probe": {"function": "", "offset": -1}}, "probes[0].offset", "non-negative"),
    ({"probe": {"function": "", "offset": True}}, "probes[0].offset", "not a boolean"),
    ({"probe": {"args": "%di"}}, "probes[0].args", "must be a table"),
    ({"probe": {"args": {"1a": "%di"}}}, "probes[0].args.1a", "C identifiers"),
    ({"probe": {"args": {"a" * 32: "%di"}}}, f"probes[0].args.{'a' * 32}", "at most 31"),
    ({"probe": {"args": {"__x": "%di"}}}, "probes[0].args.__x", "reserved"),
    ({"probe": {"args": {"common_pid": "%di"}}}, "probes[0].args.common_pid", "reserved"),
    ({"probe": {"args": {"a": 5}}}, "probes[0].args.a", "must be a string"),
    ({"probe": {"args": {"a": "%nosuchreg"}}}, "probes[0].args.a", "unknown register"),
    ({"probe": {"args": {"a": "$retval"}}}, "probes[0].args.a", "only available in return_args"),
    ({"probe": {"return": True, "return_args": {"r": "%di:string"}}}, "probes[0].return_args.r",
     "must be read from memory"),
    ({"probe": {"return_args": {"r": "$retval"}}}, "probes[0].return_args", "needs return = true"),
    ({"probe": {"return": "yes"}}, "probes[0].return", "must be bool, not str"),
    ({"probe": {"latency": True}}, "probes[0].latency", "needs return = true"),
    ({"probe": {"return_filter": "ret == 0"}}, "probes[0].return_filter", "needs return = true"),
    ({"probe": {"filter": 1}}, "probes[0].filter", "must be str, not int"),
    ({"probe": {"buckets": []}}, "probes[0].buckets", "non-empty list of increasing, finite, positive"),
    ({"probe": {"buckets": [1, 0.5]}}, "probes[0].buckets", "increasing"),
    ({"probe": {"buckets": [0.5, 0.5]}}, "probes[0].buckets", "increasing"),
    ({"probe": {"buckets": [0, 1]}}, "probes[0].buckets", "positive"),
    ({"probe": {"buckets": [True, 2]}}, "probes[0].buckets", "positive numbers"),
    ({"probe": {"buckets": ["1"]}}, "probes[0].buckets", "positive numbers"),
    ({"probe": {"buckets": 1.0}}, "probes[0].buckets", "must be list, not float"),
    ({"probe": {"labels": ["com"], "return": True, "latency": True}}, "probes[0].labels[0]", "did you mean 'comm'"),
    ({"probe": {"labels": ["comm", "zzzzzz"], "return": True, "latency": True}}, "probes[0].labels[1]",
     "choose from comm"),
    ({"probe": {"labels": ["comm"]}}, "probes[0].labels", "need latency = true"),
    ({"probe": {"labels": ["comm", "comm"], "return": True, "latency": True}}, "probes[0].labels[1]",
     "reserved or repeated"),
    ({"probe": {"labels": ["le"], "args": {"le": "%di"}, "return": True, "latency": True}}, "probes[0].labels[0]",
     "reserved or repeated"),
    ({"probe": {"buckets": [0.1, float("inf")]}}, "probes[0].buckets", "finite"),
    ({"probe": {"labels": "comm"}}, "probes[0].labels", "must be list, not str"),
    ({"probe": {"return": True, "return_via": "kretprobe"}}, "probes[0].return_via",
     "must be one of auto, uretprobe, ret_instructions"),
    ({"probe": {"return_via": "uretprobe"}}, "probes[0].return_via", "applies to return = true"),
]


@pytest.mark.parametrize(("change", "location", "text"), BAD, ids=[f"{loc}:{text}" for _, loc, text in BAD])
def test_each_problem_is_reported_at_its_location(change: dict[str, Any], location: str, text: str) -> None:
    data = config_with(**copy.deepcopy(change))
    probes = data.get("probes")
    if isinstance(probes, list) and probes and isinstance(probes[0], dict):  # the location names the probe
        location = location.replace("probes[0]", probe_location(0, probes[0].get("name")), 1)
    problems = problems_of(data)
    where, sep, message = problems[0].partition(": ")
    assert sep
    assert where == location
    assert text in message
    # a wrong type falls back to the default, which may be reported too, but only within the same table
    section = location.split(".", maxsplit=1)[0]
    assert all(p.startswith((f"{section}:", f"{section}.")) for p in problems), problems
    assert len(problems) <= 2


def test_every_problem_at_once() -> None:
    data = {
        "exporter": {"buffer_size_kb": 1, "log_level": "loud", "bogus": 1},
        "output": {"jsonl": {"path": ""}},
        "metrics": {"listen": "nowhere", "label_values_max": 0},
        "probes": [
            {"name": "ok", "binary": "/bin/true", "function": "main"},
            {"name": "Bad", "binary": "", "function": "f", "latency": True},
            {"name": "ok", "binary": "/bin/true", "function": "main", "args": {"x": "%zz"}},
            "not a table",
        ],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    where = [p.partition(": ")[0] for p in info.value.problems]
    assert where == [
        "exporter.bogus", "exporter.buffer_size_kb", "exporter.log_level", "output.jsonl.path", "metrics.listen",
        "metrics.label_values_max", 'probes[1] "Bad".name', 'probes[1] "Bad".binary', 'probes[1] "Bad".latency',
        'probes[2] "ok".args.x', 'probes[2] "ok".name', "probes[3]"]
    assert "'ok' is already used by probes[0]" in info.value.problems[10]
    text = str(info.value)
    assert text.startswith(f"{len(where)} configuration problems:\n  ")
    assert all(p in text for p in info.value.problems)
    assert isinstance(info.value, UprobeExporterError)
    assert info.value.exit_code == 2


def test_one_problem_prints_as_itself() -> None:
    problems = problems_of(config_with(probe={"name": "X"}))
    assert str(ConfigError(problems)) == problems[0]


def test_partial_keeps_the_valid_probes() -> None:
    data = {"probes": [{**PROBE, "name": "good"}, {**PROBE, "name": "bad", "args": {"a": "%zz"}},
                       {**PROBE, "name": "good2"}]}
    cfg, problems = parse_config_partial(data)
    assert [p.name for p in cfg.probes] == ["good", "good2"]
    assert [p.index for p in cfg.probes] == [0, 2]
    assert [p.partition(": ")[0] for p in problems] == ['probes[1] "bad".args.a']


def test_the_built_in_example_parses() -> None:
    text = example_text()
    data = tomllib.loads(text)
    cfg = parse_config(data)
    assert isinstance(cfg, Config)
    assert [p.name for p in cfg.probes] == [p["name"] for p in data["probes"]]
    for probe, raw in zip(cfg.probes, data["probes"], strict=True):
        assert probe.binary == raw["binary"]
        assert probe.function == raw["function"]
        assert dict(probe.args) == raw.get("args", {})
        assert dict(probe.return_args) == raw.get("return_args", {})
        assert probe.latency == raw.get("latency", False)
        assert list(probe.labels) == raw.get("labels", [])
    assert cfg.metrics.port == int(data["metrics"]["listen"].rpartition(":")[2])


def test_config_records_are_frozen() -> None:
    cfg = parse_config(config_with())
    with pytest.raises(AttributeError):
        cfg.exporter.group = "x"  # type: ignore[misc]


@pytest.mark.parametrize("group", ["uprobes", "kprobes", "eprobes", "fprobes", "tracepoints", "synthetic", "ftrace"])
def test_the_kernels_own_groups_are_refused(group: str) -> None:
    assert problems_of(config_with(exporter={"group": group})) == (
        f"exporter.group: '{group}' is the kernel's own group for dynamic events (other users' probes live there "
        "and would be removed); choose a group of your own, such as 'uprobe_exporter'",)


def test_stop_budget() -> None:
    assert parse_config(config_with()).exporter.stop_budget_seconds == 30.0
    assert parse_config(config_with(exporter={"stop_budget_seconds": 45})).exporter.stop_budget_seconds == 45.0
    assert parse_config(config_with(exporter={"stop_budget_seconds": 7.5})).exporter.stop_budget_seconds == 7.5
    for bad in (0, 0.5, -3, float("nan"), float("inf")):
        assert problems_of(config_with(exporter={"stop_budget_seconds": bad}))[0].startswith(
            "exporter.stop_budget_seconds: must be at least 1")
    assert problems_of(config_with(exporter={"stop_budget_seconds": "10"})) == (
        "exporter.stop_budget_seconds: must be int/float, not str",)
