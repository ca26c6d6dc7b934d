"""RET-instruction returns and Go events, without the kernel: the commands build_events writes, and how
the hidden fields become a record's ip, ret_ip, pairing sp and pairing key (hidden.hidden_values)."""

from __future__ import annotations

from uprobe_exporter.decode.hidden import hidden_values
from uprobe_exporter.pipeline.pairing import PID_MAX_LIMIT, GoroutineKeys, PythonPairing
from uprobe_exporter.plan.config import ProbeConfig
from uprobe_exporter.plan.kernelabi import GO_STACK_TOP
from uprobe_exporter.plan.probes import ResolvedProbe, build_events


def test_ret_sites_feed_one_return_event_with_their_offsets() -> None:
    cfg = ProbeConfig(name="w", binary="/bin/t", function="work", return_probe=True,
                      return_args=(("r", "%ax:s64"), ("s", "%bx:gostring")), return_via="ret_instructions")
    events = build_events(ResolvedProbe(cfg, "/bin/t", 0x1139, ret_sites=((0x1150, 0x17), (0x1160, 0x27))), "g")
    assert [e.command for e in events] == [
        "p:g/w_entry /bin/t:0x1139 __comm=$comm __sp=%sp:x64",
        "p:g/w_return /bin/t:0x1150 __comm=$comm __sp_ret=%sp:x64 __ret_addr=+0(%sp):x64 __ip_delta=\\23:u32"
        " r=%ax:s64 s=+0(%bx):x64[8] __len_s=%cx:s64",
        "p:g/w_return /bin/t:0x1160 __comm=$comm __sp_ret=%sp:x64 __ret_addr=+0(%sp):x64 __ip_delta=\\39:u32"
        " r=%ax:s64 s=+0(%bx):x64[8] __len_s=%cx:s64"]
    assert [e.at_ret for e in events] == [False, True, True]


def test_go_events_fetch_the_goroutine_and_start_after_the_stack_check() -> None:
    cfg = ProbeConfig(name="h", binary="/bin/go", function="main.h", return_probe=True)
    events = build_events(ResolvedProbe(cfg, "/bin/go", 0x8412, entry_delta=0x12, ret_sites=((0x8480, 0x80),),
                                        goroutines=True), "g")
    assert [e.command for e in events] == [
        "p:g/h_entry /bin/go:0x8412 __comm=$comm __sp=%sp:x64 __g=%r14:x64 __g_hi=+8(%r14):x64 __ip_delta=\\18:u32",
        "p:g/h_return /bin/go:0x8480 __comm=$comm __sp_ret=%sp:x64 __ret_addr=+0(%sp):x64 __g=%r14:x64 "
        "__g_hi=+8(%r14):x64 __ip_delta=\\128:u32"]


def values(exprs: dict[str, int], ip: int = 0x1000, ret_ip: int = 0) -> tuple[int, int, int, int]:
    names = {k: f"v_{k}" for k in exprs}
    code = hidden_values(names, "ip", "ret_ip")
    env = {**{f"v_{k}": v for k, v in exprs.items()}, "ip": ip, "ret_ip": ret_ip}
    ip_v, ret_v, sp_v, key_v = (eval(c, {}, env) for c in code)  # our own generated expressions
    return ip_v, ret_v, sp_v, key_v


def test_hidden_values() -> None:
    assert values({"__sp": 0x7F00}) == (0x1000, 0, 0x7F00, 0)  # an entry: as it was
    # at a RET %sp points at the return address, as at the entry: paired as a uretprobe's (+8)
    assert values({"__sp_ret": 0x7F00, "__ret_addr": 0x4242, "__ip_delta": 0x17}) == (0x1000 - 0x17, 0x4242, 0x7F08, 0)
    # Go: pair by g, and by the distance from the top of the goroutine's stack (survives a stack copy)
    before = values({"__sp": 0xC000_7F00, "__g": 0xC0000_1000, "__g_hi": 0xC000_8000})
    after_copy_ret = values({"__sp_ret": 0xC010_FF00, "__g": 0xC0000_1000, "__g_hi": 0xC011_0000})
    assert before[3] == after_copy_ret[3] == 0xC0000_1000
    assert before[2] == GO_STACK_TOP - 0x100
    assert after_copy_ret[2] - 8 == before[2]
    pairing = PythonPairing()
    pairing.enter("h", before[3], before[2], 1)
    frame = pairing.leave("h", after_copy_ret[3], after_copy_ret[2])
    assert frame is not None and frame.ts_ns == 1
    assert values({"__sp": 0x10, "__g": 0, "__g_hi": 0}) == (0x1000, 0, 0, 0)  # no g (its read faulted): the thread


def test_goroutine_keys_tell_processes_apart() -> None:
    """Go heaps sit at the same addresses in every Go process: the same g in two replicas is two keys."""
    tgid = {101: 100, 102: 100, 201: 200}
    keys = GoroutineKeys(tgid.__getitem__, max_keys=2)
    g = 0xC000_0010_00
    a, a_again, b = keys.key(101, g), keys.key(102, g), keys.key(201, g)
    assert a == a_again != b  # the same goroutine on another thread of its process; another process
    assert min(a, b) > PID_MAX_LIMIT and keys.owner == {a: 100, b: 200}
    assert keys.key(101, 0) == 101  # no g: the thread
    keys.key(101, g + 0x400)
    keys.prune({a})  # past max_keys: those without pending calls go
    assert keys.owner == {a: 100} and keys.key(101, g) == a
