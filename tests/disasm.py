"""Disassembly helpers of the instruction-level kernel tests (NEON fp32, int8 on x86 and arm64):
a library's functions as ``(address, mnemonic, operands)`` lists, and their innermost loops."""

from __future__ import annotations

import re
import subprocess

_FUNC = re.compile(r"^([0-9a-f]+) <(.+)>:$")
_INSN = re.compile(r"^\s+([0-9a-f]+):\s+(?:\{\w+\}\s+)?(\S+)\s*(.*)$")  # "{vex} vpdpbusd" -> vpdpbusd
_TARGET = re.compile(r"\b([0-9a-f]+) <")
_ARM_BRANCH = re.compile(r"^(b|b\.\w+|cbz|cbnz|tbz|tbnz)$")

# arch -> (objdump, comment marker, is this mnemonic a branch)
ARCHES = {
    "x86_64": ("objdump", "#", lambda mnem: mnem.startswith("j")),
    "aarch64": ("aarch64-linux-gnu-objdump", "//", lambda mnem: bool(_ARM_BRANCH.match(mnem))),
}


def disassemble(path, arch: str = "x86_64") -> dict[str, list[tuple[int, str, str]]]:
    """symbol -> [(address, mnemonic, operands)] of the library's code."""
    objdump, comment, _ = ARCHES[arch]
    out = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True,
                         check=True).stdout
    funcs: dict[str, list] = {}
    cur = None
    for line in out.splitlines():
        m = _FUNC.match(line)
        if m:
            cur = funcs.setdefault(m.group(2), [])
            continue
        m = _INSN.match(line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2), m.group(3).split(comment)[0].strip()))
    return funcs


def innermost_loops(insns, arch: str = "x86_64") -> list[list[tuple[int, str, str]]]:
    """The bodies of the innermost loops of one function: a branch back to an address inside the
    function closes a loop (header .. latch; several latches of one header make one loop), and a
    loop is innermost when no other loop lies inside it."""
    if not insns:
        return []
    is_branch = ARCHES[arch][2]
    lo = insns[0][0]
    latch: dict[int, int] = {}
    for addr, mnem, ops in insns:
        if is_branch(mnem):
            m = _TARGET.search(ops)
            if m and lo <= int(m.group(1), 16) <= addr:
                head = int(m.group(1), 16)
                latch[head] = max(latch.get(head, addr), addr)
    loops = sorted(latch.items())
    inner = [(h, t) for h, t in loops if not any((h2, t2) != (h, t) and h <= h2 and t2 <= t for h2, t2 in loops)]
    return [[i for i in insns if h <= i[0] <= t] for h, t in inner]
