"""Cost classes measured on the running kernel (costprobe.py): ``symbols`` and ``check`` say, per probe
site, whether the kernel emulates its first instruction or single-steps it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import build_config, run_cli, toml_dumps
from uprobe_exporter.kernel.costprobe import CACHE_NAME, COST_GROUP, measure_costs
from uprobe_exporter.kernel.tracefs import Tracefs
from uprobe_exporter.plan.costclass import EMULATED, SINGLE_STEPPED, classify, instruction_kind
from uprobe_exporter.plan.instructions import decode_function


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cost-cache")


def test_measured_classes_on_this_kernel(tracefs: Tracefs, cache: Path) -> None:
    costs = measure_costs(tracefs, cache)
    classes = classify(costs)
    # emulated on every kernel since 4.x (branch_setup_xol_ops; push since 6.x): far cheaper than a single step
    for kind in ("jmp", "call", "jcc"):
        assert classes[kind].cls == EMULATED, costs
    for kind in ("mov", "sub", "lea", "cmp"):
        assert classes[kind].cls == SINGLE_STEPPED, costs
    assert max(costs[k] for k in ("jmp", "call", "jcc")) < min(costs[k] for k in ("mov", "sub", "lea", "cmp"))
    stored = json.loads((cache / CACHE_NAME).read_text())
    assert stored[os.uname().release] == costs
    assert not [e for e in tracefs.read_uprobe_events() if e.group == COST_GROUP]


def test_symbols_and_check_print_the_class(build: Callable[..., Path], cache: Path, group: str, tmp_path: Path) -> None:
    binary = build("costs")
    env = {**os.environ, "UPROBE_EXPORTER_CACHE": str(cache)}
    done = run_cli("symbols", str(binary), "*e*", env=env)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[2]: line for line in done.stdout.splitlines()}
    costs = json.loads((cache / CACHE_NAME).read_text())[os.uname().release]
    push_class = classify(costs)["push_reg"].cls
    assert re.search(rf"  \(push rbp: {push_class}, [\d.]+ µs/hit\)$", lines["pushes"]), lines
    assert re.search(r"  \(mov rax, rsp: single-stepped, [\d.]+ µs/hit\)$", lines["stepped"]), lines
    probes = [{"name": n, "binary": str(binary), "function": n, "return": True, "return_via": "ret_instructions"}
              for n in ("pushes", "stepped")]
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_dumps(build_config(group, probes, tmp_path / "o.jsonl")))
    done = run_cli("check", "--config", str(cfg), env=env)
    assert done.returncode == 0, done.stderr
    comments = [x for x in done.stdout.splitlines() if x.startswith("# cost ")]
    assert len(comments) == 4  # per probe site: each entry, each RET
    assert re.search(rf"^# cost {group}/pushes_entry at 0x[0-9a-f]+: push rbp: {push_class}, ", done.stdout, re.M)
    assert re.search(rf"^# cost {group}/stepped_entry at 0x[0-9a-f]+: mov rax, rsp: single-stepped, ", done.stdout,
                     re.M)
    ret_class = classify(costs)["ret"].cls
    assert re.search(rf"^# cost {group}/stepped_return at 0x[0-9a-f]+: ret: {ret_class}, ", done.stdout, re.M)


def test_kinds_of_instructions() -> None:
    def kind(hexcode: str) -> str:
        return instruction_kind(decode_function(bytes.fromhex(hexcode), 0x1000).instructions[0])

    assert kind("55") == "push_reg" and kind("4154") == "push_reg"  # push rbp, push r12
    assert kind("ff7508") == ""  # push qword ptr [rbp + 8]: not the emulated form
    assert kind("6a01") == ""  # push 1
    assert kind("90") == "nop" and kind("0f1f440000") == "nop_long" and kind("f30f1efa") == "endbr64"
    assert kind("eb00") == "jmp" and kind("7400") == "jcc" and kind("e800000000") == "call"
    assert kind("ffe0") == ""  # jmp rax
    assert kind("c3") == "ret" and kind("c20800") == "ret"
    assert kind("4889e5") == "mov" and kind("4883ec08") == "sub" and kind("493b6610") == "cmp"
    assert kind("4863c2") == "mov"  # movsxd rax, edx
    assert kind("31c0") == ""  # xor eax, eax: not measured
