"""Filters checked before the kernel sees them (field names per event), the ``comm`` key, and errors that
name the probe: pure, on mappings and strings."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from uprobe_exporter.errors import ConfigError
from uprobe_exporter.plan.config import parse_config, parse_config_partial
from uprobe_exporter.plan.fetchargs import check_fetcharg
from uprobe_exporter.plan.filters import combine_filters, comm_filter, filter_fields
from uprobe_exporter.plan.probes import ResolvedProbe, build_events

PROBE: dict[str, Any] = {"name": "malloc", "binary": "libc.so.6", "function": "malloc",
                         "args": {"size": "%di:u64"}, "return": True, "return_args": {"ptr": "$retval:x64"}}


def problems(**probe: Any) -> list[str]:
    others = [{"name": f"p{i}", "binary": "/bin/true", "function": "main"} for i in range(3)]
    data = {"probes": [*others, {**copy.deepcopy(PROBE), **probe}]}
    return parse_config_partial(data)[1]


def test_errors_name_the_probe_by_index_and_name() -> None:
    assert problems(args={"size": "%di:u33"}) == [
        "probes[3] \"malloc\".args.size: unknown type 'u33' in '%di:u33'; did you mean 'u32'?"]


@pytest.mark.parametrize(("fetcharg", "suggestion"), [
    ("+0(%di):strng", "string"), ("%di:s6", "s64"), ("%di:int", "s32"), ("%di:size_t", "u64"),
    ("+0(%di):x3[4]", "x32"),
])
def test_a_misspelled_type_gets_a_did_you_mean(fetcharg: str, suggestion: str) -> None:
    problem = check_fetcharg(fetcharg, is_return=False)
    assert problem is not None
    assert problem.endswith(f"did you mean '{suggestion}'?")


@pytest.mark.parametrize("expression", [
    "size > 4096", "size >= 1 && !(size < 3)", "common_pid == 1234 || common_pid != 5", '__comm == "nginx"',
    'comm ~ "ng*"', 'COMM == "x" && CPU == 0 && cpu != 1 && common_cpu == 0', "size & 0xfff", "__probe_ip != 0",
    "common_flags == 0 && common_type > 0 && common_preempt_count == 0 && __sp > 0",
    '(size>8)&&(__comm=="a b && c == d")',  # an operator inside a string is not a field
])
def test_filters_on_the_entry_events_fields_pass(expression: str) -> None:
    assert problems(filter=expression) == []


@pytest.mark.parametrize(("key", "expression", "message"), [
    ("filter", "sise > 4096", "the entry event has no field 'sise'; did you mean 'size'?"),
    ("filter", "ptr != 0", "the entry event has no field 'ptr'"),  # a return argument
    ("filter", "__probe_func != 0", "the entry event has no field '__probe_func'"),
    ("filter", "size > 1 && (pid == 3)", "the entry event has no field 'pid'; did you mean "),
    ("return_filter", "size > 4096", "the return event has no field 'size'"),  # an entry argument
    ("return_filter", "pr == 0", "the return event has no field 'pr'; did you mean 'ptr'?"),
    ("return_filter", "__probe_ip != 0", "the return event has no field '__probe_ip'; did you mean"),
])
def test_unknown_filter_fields_are_found_before_the_kernel(key: str, expression: str, message: str) -> None:
    found = problems(**{key: expression})
    assert len(found) == 1, found
    assert found[0].startswith(f'probes[3] "malloc".{key}: {message}')


def test_return_filter_fields() -> None:
    assert problems(return_filter="ptr == 0 && __probe_func != 0 && __probe_ret_ip > 0 && common_pid > 1") == []


def test_filter_fields_are_the_words_before_comparisons() -> None:
    assert filter_fields('a > 1 && !(b == "x > y") || c&1 && d ~ "*"') == ["a", "b", "c", "d"]
    assert filter_fields("") == []


def test_comm_key_becomes_a_filter_on_both_events_anded_with_filter() -> None:
    cfg = parse_config({"probes": [{**PROBE, "comm": ["nginx", "php-fpm*"], "filter": "size > 4096 || size == 1",
                                    "return_filter": "ptr == 0"}]})
    probe = cfg.probes[0]
    assert probe.comm == ("nginx", "php-fpm*")
    entry, ret = build_events(ResolvedProbe(probe, "/usr/lib/x86_64-linux-gnu/libc.so.6", 0x1000), "g")
    by_comm = '__comm == "nginx" || __comm ~ "php-fpm*"'
    assert entry.filter == f"({by_comm}) && (size > 4096 || size == 1)"
    assert ret.filter == f"({by_comm}) && (ptr == 0)"
    alone = parse_config({"probes": [{**PROBE, "comm": ["bash"]}]}).probes[0]
    assert [e.filter for e in build_events(ResolvedProbe(alone, "/x", 0x10), "g")] == ['__comm == "bash"'] * 2
    assert comm_filter([]) == "" and combine_filters("", " a > 1 ") == "a > 1"


@pytest.mark.parametrize(("comm", "location", "message"), [
    ("nginx", "comm", "must be a non-empty list"),
    ([], "comm", "must be a non-empty list"),
    ([""], "comm[0]", "must be a non-empty string"),
    (["ok", 5], "comm[1]", "must be a non-empty string"),
    (['a"b'], "comm[0]", "no '\"'"),
    (["systemd-journald"], "comm[0]", "it can never match; write 'systemd-journal'"),
])
def test_bad_comm_is_located(comm: Any, location: str, message: str) -> None:
    found = problems(comm=comm)
    assert len(found) == 1, found
    where, _, text = found[0].partition(": ")
    assert where == f'probes[3] "malloc".{location}'
    assert message in text


def test_a_probe_without_a_name_is_located_by_index() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"probes": [{"binary": "/bin/true", "function": "main"}]})
    assert info.value.problems[0].startswith("probes[0].name: ")
