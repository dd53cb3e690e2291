"""Tables of docs/architecture.md generated from the one ISA and register definition.

``python -m npu.firmware.docgen`` rewrites the marked sections in place; a test checks that
the document matches, so the documentation cannot drift from the design.
"""

import re
from pathlib import Path

from amaranth.lib import data

from npu.rtl.control import COUNTERS, RegisterMap
from npu.rtl.isa import Body, Deps, ErrorCode, Instruction, Opcode

__all__ = ["DOC", "error_table", "isa_table", "register_table", "render"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"

_BODY_OF = {Opcode.LOAD: "load", Opcode.LOADP: "loadp", Opcode.LOADW: "loadw",
            Opcode.MATMUL: "matmul", Opcode.STORE: "store"}


def _fields(layout, base):
    return [(name, base + f.offset, f.width) for name, f in data.Layout.cast(layout)]


def _bits(offset, width):
    return f"[{offset}]" if width == 1 else f"[{offset + width - 1}:{offset}]"


def isa_table():
    top = {n: (o, w) for n, o, w in _fields(Instruction, 0)}
    body_base = top["body"][0]
    lines = ["| opcode | value | unit | fields (bit positions in the 128-bit word) |",
             "|---|---|---|---|"]
    from npu.rtl.isa import UNIT_OF
    for op in Opcode:
        member = _BODY_OF.get(op)
        if member is None:
            fields = "—"
        else:
            layout = data.Layout.cast(Body)[member].shape
            fields = ", ".join(f"{n} {_bits(o, w)}" for n, o, w in _fields(layout, body_base)
                               if not n.startswith("_"))
        lines.append(f"| {op.name} | {op.value} | {UNIT_OF[op].name.lower()} | {fields} |")
    op_o, op_w = top["op"]
    deps = ", ".join(f"{n} {_bits(o, w)}" for n, o, w in _fields(Deps, top["deps"][0]))
    lines.append("")
    lines.append(f"Every instruction: op {_bits(op_o, op_w)}; dependency flags {deps}; "
                 f"body from bit {body_base}.")
    return "\n".join(lines)


def register_table():
    rm = RegisterMap
    lines = ["| offset | name | access | meaning |", "|---|---|---|---|",
             f"| 0x{rm.ID:03x} | ID | R | 0x4E505531 (\"NPU1\") |",
             (f"| 0x{rm.CONFIG:03x} | CONFIG | R | rows [7:0], cols [15:8], cores [19:16], "
              "bus bytes [31:24] |"),
             (f"| 0x{rm.IRQ_STATUS:03x} | IRQ_STATUS | R/W1C | bit i: core i finished "
              "(done or error) |"),
             f"| 0x{rm.IRQ_ENABLE:03x} | IRQ_ENABLE | RW | bit i enables core i's interrupt |"]
    per_core = [(rm.CTRL, "CTRL", "W", "bit 0: start (ignored while busy)"),
                (rm.STATUS, "STATUS", "R", ("state [1:0] (0 idle, 1 busy, 2 done, 3 error), "
                                            "error code [7:4]")),
                (rm.PROG_ADDR, "PROG_ADDR", "RW", "byte address of the first instruction"),
                (rm.WIN_BASE, "WIN_BASE", "RW", "lowest byte address the core may access"),
                (rm.WIN_LIMIT, "WIN_LIMIT", "RW", "first byte address above the window"),
                (rm.PC, "PC", "R", "instruction being dispatched (the faulting one on error)")]
    per_core += [(rm.COUNTER_BASE + 4 * k, name.upper(), "R",
                  "counter (32 bits, wraps)" if name == "cycles"
                  else "counter (`counter_width` bits, 32 by default; wraps)")
                 for k, name in enumerate(COUNTERS)]
    for off, name, acc, meaning in per_core:
        lines.append(f"| 0x{rm.CORE_BASE:03x} + 0x{rm.CORE_STRIDE:02x}·i + 0x{off:02x} | "
                     f"{name} | {acc} | {meaning} |")
    return "\n".join(lines)


def error_table():
    meaning = {
        "NONE": "no error",
        "ILLEGAL_OPCODE": "the opcode is not one of the table above",
        "ILLEGAL_FIELD": "a field outside its limit, or a token flag the unit cannot use",
        "DMA_WINDOW": "a fetch or DMA extent outside [WIN_BASE, WIN_LIMIT)",
        "MISALIGNED": "program address not a multiple of 16, or a DMA address / stride not a "
                      "multiple of the bus width",
        "BUS_ERROR": "the memory answered SLVERR or DECERR",
    }
    lines = ["| code | name | meaning |", "|---|---|---|"]
    for e in ErrorCode:
        lines.append(f"| {e.value} | {e.name} | {meaning[e.name]} |")
    return "\n".join(lines)


SECTIONS = {"isa-table": isa_table, "register-table": register_table,
            "error-table": error_table}


def render(text):
    """``text`` with every ``<!-- begin NAME -->`` ... ``<!-- end NAME -->`` section
    regenerated."""
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- begin {name} -->\n).*?(\n<!-- end {name} -->)", re.DOTALL)
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + m.group(2), text)
    return text


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text()))
    print(f"updated {DOC}")
