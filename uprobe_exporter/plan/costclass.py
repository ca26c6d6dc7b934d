"""Pure: which kind of first instruction a probe site has, and what a probe hit on that kind costs.

The kernel either emulates the probed instruction (arch/x86/kernel/uprobes.c: branch_setup_xol_ops for
jmp/call/jcc, push_setup_xol_ops for `push reg`, nops…: about 1–2 µs per hit) or copies it to an
out-of-line slot and single-steps it there (a second trap: about 10 µs per hit). Which instructions are
emulated changed across kernel versions, so the class is measured (costprobe.py) on a generated code
file holding one tiny function per kind below, and looked up here by kind: ``push rbp`` (55) is a
``push_reg``, ``sub rsp, 0xd8`` a ``sub``; a kind not measured is reported as probably single-stepped.
"""

from __future__ import annotations

from dataclasses import dataclass

from uprobe_exporter.plan.instructions import Instruction

# kind → a function whose first instruction is of that kind, safe to call (clobbers rax, r11, flags only)
KIND_CODE: dict[str, bytes] = {
    "push_reg": bytes.fromhex("55 5d c3"),  # push rbp; pop rbp; ret
    "nop": bytes.fromhex("90 c3"),
    "nop_long": bytes.fromhex("0f1f440000 c3"),  # nopl 0x0(%rax,%rax,1)
    "endbr64": bytes.fromhex("f30f1efa c3"),
    "jmp": bytes.fromhex("eb00 c3"),  # jmp to the next instruction
    "jcc": bytes.fromhex("7400 c3"),  # je to the next instruction
    "call": bytes.fromhex("e800000000 58 c3"),  # call the next instruction; pop rax; ret
    "ret": bytes.fromhex("c3"),
    "mov": bytes.fromhex("4889e0 c3"),  # mov rax, rsp
    "sub": bytes.fromhex("4883ec08 4883c408 c3"),  # sub rsp, 8; add rsp, 8
    "lea": bytes.fromhex("4c8d5c24a8 c3"),  # lea r11, [rsp - 0x58] (Go's big-frame stack check begins so)
    "cmp": bytes.fromhex("4839c0 c3"),  # cmp rax, rax
}
# loop(n = %rdi, fn = %rsi): test rdi, rdi; je done; L: call rsi; dec rdi; jne L; done: ret
LOOP_CODE = bytes.fromhex("4885ff 7407 ffd6 48ffcf 75f9 c3")
SLOT = 64  # bytes per function in the code file
EMULATED, SINGLE_STEPPED = "emulated", "single-stepped"
SINGLE_STEP_KIND = "mov"  # never emulated: the reference cost of single-stepping
_MEASURED_MNEMONICS = ("mov", "sub", "lea", "cmp")


@dataclass(frozen=True, slots=True)
class CostClass:
    """A kind's measured cost per probe hit and its class."""

    kind: str
    ns_per_hit: float
    cls: str  # EMULATED or SINGLE_STEPPED

    def describe(self) -> str:
        return f"{self.cls}, {self.ns_per_hit / 1000:.1f} µs/hit"


def code_file() -> tuple[bytes, int, dict[str, int]]:
    """The code file's bytes: the loop at offset 0, then one function per kind; (bytes, loop offset,
    offset of each kind's function). Padding is int3."""
    parts = [LOOP_CODE.ljust(SLOT, b"\xcc")]
    offsets = {}
    for i, (kind, code) in enumerate(KIND_CODE.items(), start=1):
        offsets[kind] = i * SLOT
        parts.append(code.ljust(SLOT, b"\xcc"))
    return b"".join(parts), 0, offsets


def instruction_kind(ins: Instruction) -> str:
    """The measured kind an instruction counts as; "" when none was measured for it."""
    if ins.is_ret:
        return "ret"
    if ins.mnemonic == "push":
        return "push_reg" if ins.size <= 2 and "ptr" not in ins.op_str and ins.op_str[:1] not in "0123456789-" \
            else ""
    if ins.mnemonic.startswith("nop"):
        return "nop" if ins.size == 1 else "nop_long"
    if ins.mnemonic == "endbr64":
        return "endbr64"
    if ins.target is not None:
        if ins.is_call:
            return "call"
        return "jmp" if ins.mnemonic == "jmp" else "jcc"
    if ins.mnemonic in _MEASURED_MNEMONICS:
        return ins.mnemonic
    if ins.mnemonic.startswith("mov"):  # movsxd, movzx, movabs, movaps...: moves, as `mov`
        return "mov"
    return ""


def classify(costs: dict[str, float]) -> dict[str, CostClass]:
    """Each kind's class: emulated when a hit costs less than half of a single-stepped one (``mov``)."""
    reference = costs.get(SINGLE_STEP_KIND, 0.0)
    return {kind: CostClass(kind, ns, EMULATED if reference and ns < reference / 2 else SINGLE_STEPPED)
            for kind, ns in costs.items()}


def describe_site(ins: Instruction | None, classes: dict[str, CostClass] | None) -> str:
    """``push rbp: emulated, 0.6 µs/hit`` (measured for its kind on this kernel), for ``symbols`` and
    ``check``; without measurements, the instruction alone."""
    if ins is None:
        return "undecodable instruction"
    kind = instruction_kind(ins)
    if classes is None:
        return ins.text
    if not kind or kind not in classes:
        return f"{ins.text}: probably {SINGLE_STEPPED} (a kind not measured)"
    return f"{ins.text}: {classes[kind].describe()}"
