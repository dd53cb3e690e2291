"""Assembler and disassembler of the NPU instruction set.

Everything here is derived from the layouts in :mod:`npu.rtl.isa`: opcodes from ``Opcode``,
dependency flags from ``Deps``, the fields of each instruction from its member of ``Body``
(``LOAD`` -> ``Body.load`` -> ``LoadBody``, and so on; opcodes without a member have no fields).
Words are packed with ``Instruction.const(...)`` and unpacked with ``Instruction.from_bits``, so a
change of the ISA changes the assembler with it.

Text syntax, one instruction per line (``#`` starts a comment; mnemonics and names are
case-insensitive; numbers in any Python integer literal base)::

    LOAD sp_addr=0 rows=8 row_bytes=8 stride=64 addr=0x1000 push_next
    MATMUL sp_addr=0 acc_addr=0 rows=8 accumulate=1 pop_prev
    .word 0x0000000000000000000000000000000f

Fields not written are zero; dependency flags are bare words. A leading ``0x...:`` address, as
:func:`disassemble` prints it, is ignored.

The module also packs the record a ``LOADP`` reads (:func:`pack_param_slot`), since that too is
part of the instruction set's memory interface.
"""

import operator
import re

import numpy as np

from npu.rtl.isa import INSTR_BYTES, Body, Deps, Instruction, Opcode, param_slot_bytes

__all__ = [
    "DEP_FLAGS",
    "Program",
    "assemble",
    "decode",
    "disassemble",
    "encode",
    "fields_of",
    "pack_param_slot",
    "param_slot_dtype",
    "unpack_param_slot",
]

_INSTR_LAYOUT = Instruction.as_shape()
_INSTR_BITS = _INSTR_LAYOUT.size
_OP_FIELD = _INSTR_LAYOUT["op"]
_BODY_LAYOUT = Body.as_shape()

#: Dependency flag names, in bit order.
DEP_FLAGS = tuple(name for name, _ in Deps.as_shape())


def _body_member(op):
    """The member of ``Body`` that holds ``op``'s fields, or None if it has none."""
    name = op.name.lower()
    return name if name in dict(_BODY_LAYOUT) else None


def _field_widths(op):
    member = _body_member(op)
    if member is None:
        return {}
    # Names starting with "_" are padding: not part of the instruction's interface.
    return {name: field.width for name, field in _BODY_LAYOUT[member].shape.as_shape()
            if not name.startswith("_")}


_FIELDS = {op: _field_widths(op) for op in Opcode}


def fields_of(op):
    """Names of ``op``'s fields, in layout (bit) order."""
    return tuple(_FIELDS[_opcode(op)])


def _opcode(op):
    if isinstance(op, Opcode):
        return op
    if isinstance(op, str):
        try:
            return Opcode[op.upper()]
        except KeyError:
            raise ValueError(f"Unknown mnemonic {op!r}") from None
    raise TypeError(f"Opcode must be an Opcode or a mnemonic, not {op!r}")


def _check_word(word):
    if isinstance(word, bool) or not isinstance(word, (int, np.integer)):
        raise TypeError(f"Instruction word must be an integer, not {word!r}")
    word = int(word)
    if not 0 <= word < 1 << _INSTR_BITS:
        raise ValueError(f"Instruction word must fit in {_INSTR_BITS} bits, not {word:#x}")
    return word


def _op_name(op):
    return op.name if isinstance(op, Opcode) else f"opcode {op}"


def encode(op, *, deps=(), **fields):
    """Pack one instruction into its ``INSTR_BITS``-bit word.

    Parameters
    ----------
    op : Opcode, str or int
        The opcode, its mnemonic, or a raw opcode value (which may be an illegal one; an
        illegal opcode takes no fields).
    deps : iterable of str
        Dependency flags among :data:`DEP_FLAGS`.
    **fields : int
        The instruction's fields (see :func:`fields_of`); missing ones are zero.

    Raises
    ------
    ValueError
        For an unknown mnemonic, dependency flag or field, or a value that does not fit its
        field, with a message naming the instruction and the field.
    """
    if isinstance(op, (int, np.integer)) and not isinstance(op, (bool, Opcode)):
        raw = int(op)
        if not 0 <= raw < 1 << _OP_FIELD.width:
            raise ValueError(f"Opcode must be in [0, {(1 << _OP_FIELD.width) - 1}], not {raw}")
        try:
            op = Opcode(raw)
        except ValueError:
            op = raw
    else:
        op = _opcode(op)
    name = _op_name(op)

    if isinstance(deps, str):
        deps = (deps,)
    dep_bits = {}
    for flag in deps:
        if flag not in DEP_FLAGS:
            raise ValueError(
                f"{name} has no dependency flag {flag!r}; flags are {', '.join(DEP_FLAGS)}")
        dep_bits[flag] = 1

    widths = _FIELDS.get(op, {})
    body = {}
    for field, value in fields.items():
        if field not in widths:
            known = ", ".join(widths) if widths else "none"
            raise ValueError(f"{name} has no field {field!r}; its fields are {known}")
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} field {field!r} must be an integer, not {value!r}") \
                from None
        limit = (1 << widths[field]) - 1
        if not 0 <= value <= limit:
            raise ValueError(f"{name} field {field!r} must be in [0, {limit}], not {value}")
        body[field] = value

    init = {"deps": dep_bits}
    if isinstance(op, Opcode):
        init["op"] = op
        if body:
            init["body"] = {_body_member(op): body}
        return Instruction.const(init).as_value().value
    # An illegal opcode is not a member of the enum the layout is built from, so it goes in by
    # the field's position.
    return Instruction.const(init).as_value().value | (op << _OP_FIELD.offset)


def decode(word):
    """Unpack an instruction word.

    Returns
    -------
    dict
        ``{"op": Opcode (or the raw int if illegal), "deps": set of flag names, <field>: int,
        ...}`` with the fields of that opcode's body only, so ``encode(**decode(w))`` rebuilds
        ``w`` unless ``w`` has bits set outside its opcode's fields.
    """
    word = _check_word(word)
    raw_op = (word >> _OP_FIELD.offset) & ((1 << _OP_FIELD.width) - 1)
    view = Instruction.from_bits(word)
    deps = {flag for flag in DEP_FLAGS if getattr(view.deps, flag)}
    try:
        op = Opcode(raw_op)
    except ValueError:
        return {"op": raw_op, "deps": deps}
    result = {"op": op, "deps": deps}
    member = _body_member(op)
    if member is not None:
        body = getattr(view.body, member)
        for field in _FIELDS[op]:
            result[field] = int(getattr(body, field))
    return result


def _is_canonical(word):
    """Whether ``word`` is a legal instruction that its text form rebuilds exactly."""
    fields = decode(word)
    return isinstance(fields["op"], Opcode) and encode(**fields) == word


class Program:
    """An instruction stream under construction.

    One method per opcode appends an instruction (and returns the program, so calls chain);
    ``deps`` is an iterable of :data:`DEP_FLAGS` names.

    Attributes
    ----------
    words : list of int
        The instruction words, in program order.
    """

    def __init__(self, words=()):
        self.words = [_check_word(w) for w in words]

    def __len__(self):
        return len(self.words)

    def __iter__(self):
        return iter(self.words)

    def __repr__(self):
        return f"<Program of {len(self)} instructions>"

    def append(self, op, *, deps=(), **fields):
        """Append ``encode(op, deps=deps, **fields)``."""
        self.words.append(encode(op, deps=deps, **fields))
        return self

    def word(self, value):
        """Append a raw instruction word (for example an illegal one)."""
        self.words.append(_check_word(value))
        return self

    def extend(self, other):
        """Append every instruction of another :class:`Program`."""
        self.words.extend(other.words)
        return self

    def nop(self, *, deps=()):
        return self.append(Opcode.NOP, deps=deps)

    def load(self, sp_addr, rows, row_bytes, stride, addr, *, deps=()):
        return self.append(Opcode.LOAD, deps=deps, sp_addr=sp_addr, rows=rows,
                           row_bytes=row_bytes, stride=stride, addr=addr)

    def loadp(self, slot, addr, *, deps=()):
        return self.append(Opcode.LOADP, deps=deps, slot=slot, addr=addr)

    def loadw(self, sp_addr, *, deps=()):
        return self.append(Opcode.LOADW, deps=deps, sp_addr=sp_addr)

    def matmul(self, sp_addr, acc_addr, rows, accumulate=False, load_weights=False,
               w_sp_addr=0, *, deps=()):
        """MATMUL; with ``load_weights``, the LOADW of the tile at ``w_sp_addr`` comes first."""
        return self.append(Opcode.MATMUL, deps=deps, sp_addr=sp_addr, acc_addr=acc_addr,
                           rows=rows, accumulate=accumulate, load_weights=load_weights,
                           w_sp_addr=w_sp_addr)

    def store(self, acc_addr, rows, cols, stride, addr, raw=False, slot=0, *, deps=()):
        return self.append(Opcode.STORE, deps=deps, acc_addr=acc_addr, rows=rows, cols=cols,
                           stride=stride, addr=addr, raw=raw, slot=slot)

    def barrier(self, *, deps=()):
        return self.append(Opcode.BARRIER, deps=deps)

    def end(self, *, deps=()):
        return self.append(Opcode.END, deps=deps)

    def to_bytes(self):
        """The program as stored in memory: ``INSTR_BYTES`` little-endian bytes each."""
        return b"".join(w.to_bytes(INSTR_BYTES, "little") for w in self.words)

    @classmethod
    def from_bytes(cls, data):
        data = bytes(data)
        if len(data) % INSTR_BYTES:
            raise ValueError(
                f"Program length must be a multiple of {INSTR_BYTES} bytes, not {len(data)}")
        return cls(int.from_bytes(data[i:i + INSTR_BYTES], "little")
                   for i in range(0, len(data), INSTR_BYTES))


# --------------------------------------------------------------------------------------------
# Text

_ADDRESS_PREFIX = re.compile(r"^\s*0x[0-9a-fA-F]+\s*:")


def _parse_int(text):
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def assemble(text):
    """Assemble program text (see the module docstring) into a :class:`Program`.

    Raises
    ------
    ValueError
        ``"line N: ..."`` for the first line that does not assemble.
    """
    program = Program()
    for number, line in enumerate(text.splitlines(), start=1):
        line = _ADDRESS_PREFIX.sub("", line.split("#", 1)[0]).strip()
        if not line:
            continue
        mnemonic, *operands = line.split()
        try:
            if mnemonic.lower() == ".word":
                if len(operands) != 1:
                    raise ValueError(f".word takes one value, not {len(operands)}")
                program.word(_parse_int(operands[0]))
                continue
            op = _opcode(mnemonic)
            fields, deps = {}, []
            for operand in operands:
                name, eq, value = operand.partition("=")
                name = name.lower()
                if not eq:
                    if name not in DEP_FLAGS:
                        raise ValueError(
                            f"{op.name} has no dependency flag {name!r}; "
                            f"flags are {', '.join(DEP_FLAGS)}")
                    deps.append(name)
                    continue
                if name in fields:
                    raise ValueError(f"{op.name} field {name!r} given twice")
                fields[name] = _parse_int(value)
            program.append(op, deps=deps, **fields)
        except (ValueError, TypeError) as error:
            raise ValueError(f"line {number}: {error}") from None
    return program


#: Fields the text form leaves out when zero (a missing field assembles as zero).
_OMITTED_WHEN_ZERO = ("load_weights", "w_sp_addr")


def _format_word(word):
    fields = decode(word)
    op = fields.pop("op")
    deps = fields.pop("deps")
    parts = [op.name]
    for name, value in fields.items():
        if name in _OMITTED_WHEN_ZERO and not value:
            continue
        # Addresses read best in hex; counts and sizes in decimal.
        parts.append(f"{name}={value:#x}" if name == "addr" else f"{name}={value}")
    parts.extend(flag for flag in DEP_FLAGS if flag in deps)
    return " ".join(parts)


def disassemble(data, base=0):
    """One line per instruction, ``0x00001000: LOAD sp_addr=0 ...``, which :func:`assemble`
    reads back to the same bytes. Illegal opcodes, and words with bits set outside their
    opcode's fields, print as ``.word 0x<32 hex digits>``.

    Parameters
    ----------
    data : bytes-like
        A whole number of ``INSTR_BYTES``-byte instructions.
    base : int
        Address of the first instruction.
    """
    lines = []
    for index, word in enumerate(Program.from_bytes(data).words):
        if _is_canonical(word):
            text = _format_word(word)
        else:
            text = f".word {word:#0{2 + _INSTR_BITS // 4}x}"
        lines.append(f"{base + index * INSTR_BYTES:#010x}: {text}")
    return "\n".join(lines) + ("\n" if lines else "")


# --------------------------------------------------------------------------------------------
# The LOADP record

def param_slot_dtype(cols):
    """numpy dtype of the record a LOADP reads, for an array of ``cols`` columns (the layout
    written in ``LoadParamsBody``'s docstring; its size is ``param_slot_bytes(cols)``)."""
    dtype = np.dtype([
        ("bias", "<i4", (cols,)),
        ("multiplier", "<i4", (cols,)),
        ("shift", "i1", (cols,)),
        ("zero_point", "i1"),
        ("act_min", "i1"),
        ("act_max", "i1"),
    ])
    assert dtype.itemsize == param_slot_bytes(cols)
    return dtype


def pack_param_slot(cols, *, bias=0, multiplier=0, shift=0, zero_point=0, act_min=-128,
                    act_max=127):
    """The ``param_slot_bytes(cols)`` bytes of one parameter slot.

    ``bias``, ``multiplier`` and ``shift`` are scalars or sequences of at most ``cols`` values
    (missing channels are zero); values must fit their record fields (int32, int32, int8, and
    int8 for the rest). Range rules of the requantiser itself are not checked here.
    """
    record = np.zeros((), dtype=param_slot_dtype(cols))
    for name, value in (("bias", bias), ("multiplier", multiplier), ("shift", shift)):
        info = np.iinfo(record[name].dtype)
        arr = np.atleast_1d(np.asarray(value, dtype=np.int64))
        if arr.ndim != 1 or arr.shape[0] > cols:
            raise ValueError(f"{name} must have at most {cols} values, not shape {arr.shape}")
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ValueError(f"{name} must be in [{info.min}, {info.max}]")
        if np.ndim(value) == 0:
            arr = np.full(cols, arr[0])
        record[name][:arr.shape[0]] = arr
    for name, value in (("zero_point", zero_point), ("act_min", act_min),
                        ("act_max", act_max)):
        info = np.iinfo(record[name].dtype)
        value = operator.index(value)
        if not info.min <= value <= info.max:
            raise ValueError(f"{name} must be in [{info.min}, {info.max}], not {value}")
        record[name] = value
    return record.tobytes()


def unpack_param_slot(cols, data):
    """The inverse of :func:`pack_param_slot`: a dict of int arrays / ints."""
    record = np.frombuffer(bytes(data[:param_slot_bytes(cols)]), dtype=param_slot_dtype(cols))[0]
    return {name: (record[name].astype(np.int64) if record[name].ndim else int(record[name]))
            for name in record.dtype.names}
