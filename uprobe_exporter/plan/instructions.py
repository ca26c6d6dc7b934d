"""Pure: a function's machine code (x86-64) → its instructions, with capstone; where its RETs are, where
its instructions start, and where a Go function's stack-check prologue ends.

Strategy: decode the whole symbol range (``st_size`` bytes from ``st_value``) in one linear sweep. x86
code from gcc, clang and Go holds no data between a function's instructions, so a sweep that decodes
every byte up to the end is the function's instruction stream; anything else (an undecodable byte, a
sweep that stops early) makes every question about the function unanswerable, and callers refuse.

    >>> code = decode_function(bytes.fromhex("554889e5c3"), 0x1139)
    >>> [(i.offset, i.mnemonic) for i in code.instructions]
    [(0, 'push'), (1, 'mov'), (4, 'ret')]
"""

from __future__ import annotations

from dataclasses import dataclass

from uprobe_exporter.errors import ResolveError

_GRP_JUMP, _GRP_CALL, _GRP_RELATIVE = 1, 2, 7  # capstone's CS_GRP_JUMP, CS_GRP_CALL, CS_GRP_BRANCH_RELATIVE
# Go's stack check (cmd/internal/obj/x86/obj6.go: stacksplit): ``cmp rsp|r12, [r14+0x10]`` (g.stackguard0
# of the g in %r14, ABIInternal) then ``jbe`` to a block that calls runtime.morestack* and jumps back to
# the function's first instruction.
GO_STACKGUARD0 = "qword ptr [r14 + 0x10]"
MAX_INSTRUCTION = 15  # bytes: the longest x86 instruction
GO_PROLOGUE_SCAN = 4  # the check is within the first instructions (a `lea r12, [rsp - N]` may come first)


@dataclass(frozen=True, slots=True)
class Instruction:
    """One decoded instruction; ``offset`` counts from the function's first byte."""

    offset: int
    size: int
    mnemonic: str  # "ret", "push", "jbe", "repz ret"...
    op_str: str
    is_ret: bool  # `ret` or `ret imm16` (with any prefix)
    is_jump: bool
    is_call: bool
    target: int | None  # a direct (relative) jump or call: its target address; None when indirect or neither

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


@dataclass(frozen=True, slots=True)
class FunctionCode:
    """The instructions of one function at ``address`` (its ``st_value``), ``size`` bytes long."""

    address: int
    size: int
    instructions: tuple[Instruction, ...]

    @property
    def complete(self) -> bool:
        """Every byte of the function decoded: the instructions tile [0, size)."""
        return sum(i.size for i in self.instructions) == self.size and self.size > 0

    def starts(self) -> frozenset[int]:
        return frozenset(i.offset for i in self.instructions)

    def boundaries_around(self, offset: int) -> tuple[int | None, int | None]:
        """The instruction starts just before and just after ``offset`` (None past either end)."""
        before = [i.offset for i in self.instructions if i.offset <= offset]
        after = [i.offset for i in self.instructions if i.offset > offset]
        return (before[-1] if before else None), (after[0] if after else None)

    def at(self, offset: int) -> Instruction | None:
        return next((i for i in self.instructions if i.offset == offset), None)

    def leaves_function(self, ins: Instruction) -> bool:
        """A jump whose target is not in this function (a tail call), or an indirect one (unknowable)."""
        if not ins.is_jump:
            return False
        return ins.target is None or not self.address <= ins.target < self.address + self.size


def decode_function(code: bytes, address: int) -> FunctionCode:
    """Decode ``code`` (a function's bytes) as x86-64 instructions at ``address``."""
    # imported here: capstone loads importlib.resources (and with it subprocess) to find its library
    import capstone
    from capstone import x86

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    out = []
    for ins in md.disasm(code, address):
        groups = set(ins.groups)
        target = None
        if _GRP_RELATIVE in groups and ins.operands and ins.operands[0].type == x86.X86_OP_IMM:
            target = int(ins.operands[0].imm)
        out.append(Instruction(ins.address - address, ins.size, ins.mnemonic, ins.op_str, ins.id == x86.X86_INS_RET,
                               _GRP_JUMP in groups, _GRP_CALL in groups, target))
    return FunctionCode(address, len(code), tuple(out))


def find_ret_sites(code: FunctionCode, name: str) -> tuple[int, ...]:
    """The offsets of every RET of the function; a ResolveError says why they cannot be trusted to be all
    of its exits: not fully decoded, a jump out of it (a tail call) or an indirect jump, or no RET."""
    if code.size == 0:
        raise ResolveError(f"{name} has no size in the symbol table: its RET instructions cannot be found")
    if not code.complete:
        decoded = sum(i.size for i in code.instructions)
        raise ResolveError(f"{name} does not decode as x86-64 instructions past byte {decoded:#x} of {code.size}: "
                           "its RET instructions cannot be found safely")
    for ins in code.instructions:
        if code.leaves_function(ins):
            where = "an indirect jump" if ins.target is None else f"a jump out of the function (to {ins.target:#x})"
            raise ResolveError(f"{name}+{ins.offset:#x} is {where}, '{ins.text}': the function may end without "
                               "a RET of its own (a tail call), so return = true cannot see every return")
    rets = tuple(i.offset for i in code.instructions if i.is_ret)
    if not rets:
        raise ResolveError(f"{name} has no RET instruction (it never returns, or only by a tail call)")
    return rets


def go_entry_offset(code: FunctionCode) -> int:
    """Where a Go function's entry probe goes: after the prologue's stack check (``cmp …, [r14+0x10]``
    then ``jbe`` to the morestack call, which comes back to offset 0: a probe at 0 would fire twice for
    one call whose stack grows), or 0 when the function has no stack check (NOSPLIT)."""
    head = code.instructions[:GO_PROLOGUE_SCAN]
    for k, ins in enumerate(head[:-1]):
        if ins.mnemonic == "cmp" and ins.op_str.endswith(", " + GO_STACKGUARD0):
            branch = head[k + 1]
            if branch.mnemonic in ("jbe", "jb") and branch.target is not None \
                    and _returns_to_start(code, branch.target):
                return branch.offset + branch.size
    return 0


def calls_back_to_start(code: FunctionCode) -> bool:
    """Some block of the function ends with a jump to its first instruction (Go's morestack path)."""
    return any(i.is_jump and i.target == code.address for i in code.instructions)


def _returns_to_start(code: FunctionCode, target: int) -> bool:
    """The block at ``target`` calls something, then jumps back to the function's first instruction."""
    seen_call = False
    for ins in code.instructions:
        if ins.offset < target - code.address:
            continue
        if ins.is_call:
            seen_call = True
        elif ins.is_jump:
            return seen_call and ins.target == code.address
    return False
