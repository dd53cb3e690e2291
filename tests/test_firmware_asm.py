"""The assembler and disassembler (npu.firmware.asm): exact bit positions against integers worked
out by hand from the layouts in rtl/isa.py, round trips, and the error messages."""

import inspect

import numpy as np
import pytest

from npu.firmware.asm import (
    DEP_FLAGS,
    Program,
    assemble,
    decode,
    disassemble,
    encode,
    fields_of,
    pack_param_slot,
    param_slot_dtype,
    unpack_param_slot,
)
from npu.rtl.isa import INSTR_BYTES, Body, Opcode, param_slot_bytes

# --------------------------------------------------------------------------------------------
# Bit positions, worked out by hand: op in bits 3:0, deps (pop_prev, pop_next, push_prev,
# push_next) in bits 7:4, the body from bit 8 in struct order.


def test_load_bits_match_hand_computed_word():
    word = encode(Opcode.LOAD, deps=["push_next"], sp_addr=3, addr=0x1000)
    # op 1 -> 0x1; push_next is deps bit 3 -> bit 7 -> 0x80; sp_addr at body bit 0 -> bit 8;
    # addr after sp_addr 16 + rows 16 + row_bytes 8 + stride 24 = body bit 64 -> bit 72.
    assert word == 0x1000_0000_0000_0000_0003_81


def test_load_rows_row_bytes_stride_bits():
    word = encode("LOAD", rows=0xABCD, row_bytes=0x5A, stride=0x123456)
    # rows at bit 24, row_bytes at bit 40, stride at bit 48.
    assert word == 0x1234_565A_ABCD_0000_01


def test_store_top_fields_bits():
    word = encode(Opcode.STORE, deps=["pop_prev"], raw=1, slot=0xFF)
    # body: acc_addr 16, rows 16, cols 8, stride 24, addr 32 -> raw at body bit 96 (bit 104),
    # slot at body bit 97 (bits 112:105); pop_prev is deps bit 0 -> bit 4.
    assert word == (0xFF << 105) | (1 << 104) | 0x15


def test_matmul_accumulate_bit_and_byte_order():
    program = Program().matmul(sp_addr=0x0102, acc_addr=0, rows=1, accumulate=True)
    # accumulate after sp_addr, acc_addr, rows (3 x 16 bits) -> body bit 48 -> bit 56.
    assert program.words == [(1 << 56) | (1 << 40) | (0x0102 << 8) | 0x4]
    data = program.to_bytes()
    assert len(data) == INSTR_BYTES
    assert data[:8] == bytes([0x04, 0x02, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01])
    assert data[8:] == bytes(8)


def test_illegal_opcode_encodes_in_op_field():
    assert encode(15, deps=["pop_next"]) == 0x2F
    assert decode(0x2F) == {"op": 15, "deps": {"pop_next"}}


# --------------------------------------------------------------------------------------------
# Round trips


def _extremes(op):
    widths = {name: field.width for name, field in
              Body.as_shape()[op.name.lower()].shape.as_shape()} if fields_of(op) else {}
    low = {name: 0 for name in fields_of(op)}
    high = {name: (1 << widths[name]) - 1 for name in fields_of(op)}
    return low, high


@pytest.mark.parametrize("op", list(Opcode), ids=lambda op: op.name)
def test_encode_decode_round_trip_extremes(op):
    low, high = _extremes(op)
    for fields, deps in ((low, set()), (high, set(DEP_FLAGS)), (high, {"push_prev"})):
        word = encode(op, deps=deps, **fields)
        assert 0 <= word < 1 << (8 * INSTR_BYTES)
        assert decode(word) == {"op": op, "deps": deps, **fields}
        assert encode(**decode(word)) == word


@pytest.mark.parametrize("op", list(Opcode), ids=lambda op: op.name)
def test_text_round_trip_extremes(op):
    low, high = _extremes(op)
    program = Program().append(op, **low).append(op, deps=DEP_FLAGS, **high)
    text = disassemble(program.to_bytes(), base=0x1000)
    assert text.splitlines()[0].startswith(f"0x00001000: {op.name}")
    assert text.splitlines()[1].startswith(f"0x00001010: {op.name}")
    assert assemble(text).words == program.words


def test_disassemble_format():
    program = (Program()
               .load(0, 8, 8, 64, 0x1000, deps=["push_next"])
               .matmul(0, 16, 8, accumulate=True, deps=["pop_prev", "push_next"])
               .store(16, 8, 8, 32, 0x2000, raw=True, deps=["pop_prev"])
               .barrier()
               .end())
    assert disassemble(program.to_bytes(), base=0x40) == (
        "0x00000040: LOAD sp_addr=0 rows=8 row_bytes=8 stride=64 addr=0x1000 push_next\n"
        "0x00000050: MATMUL sp_addr=0 acc_addr=16 rows=8 accumulate=1 pop_prev push_next\n"
        "0x00000060: STORE acc_addr=16 rows=8 cols=8 stride=32 addr=0x2000 raw=1 slot=0 "
        "pop_prev\n"
        "0x00000070: BARRIER\n"
        "0x00000080: END\n")


def test_illegal_and_noncanonical_words_disassemble_as_word():
    illegal = encode(8, deps=["pop_prev"])
    # A LOADW only has 16 bits of body; a bit above them is not part of any field.
    stray = encode(Opcode.LOADW, sp_addr=5) | (1 << 100)
    program = Program().word(illegal).word(stray).nop()
    text = disassemble(program.to_bytes())
    assert text.splitlines() == [
        "0x00000000: .word 0x00000000000000000000000000000018",
        "0x00000010: .word 0x00000010000000000000000000000503",
        "0x00000020: NOP",
    ]
    assert assemble(text).words == program.words


def test_assemble_syntax():
    program = assemble("""
        # a comment line
        load sp_addr=0x10 rows=2 row_bytes=8 stride=0b1000 addr=4096 PUSH_NEXT  # trailing
        0x00000010: MatMul sp_addr=16 acc_addr=0 rows=2 pop_prev

        STORE acc_addr=0 rows=2 cols=4 stride=8 addr=0x2000
        END
    """)
    assert program.words == (Program()
                             .load(16, 2, 8, 8, 0x1000, deps=["push_next"])
                             .matmul(16, 0, 2, deps=["pop_prev"])
                             .store(0, 2, 4, 8, 0x2000)
                             .end()).words
    assert len(program) == 4


def test_program_bytes_round_trip():
    program = Program().loadp(slot=255, addr=0xFFFF_FFF8).loadw(sp_addr=0xFFFF).nop(
        deps=DEP_FLAGS)
    assert Program.from_bytes(program.to_bytes()).words == program.words


@pytest.mark.parametrize("method", ["load", "loadp", "loadw", "matmul", "store"])
def test_builder_parameters_follow_the_layout(method):
    # The builder spells the field names out for readability; this keeps them tied to isa.py.
    params = [name for name in inspect.signature(getattr(Program, method)).parameters
              if name not in ("self", "deps")]
    assert params == list(fields_of(Opcode[method.upper()]))


# --------------------------------------------------------------------------------------------
# Errors


def test_unknown_field_message():
    with pytest.raises(ValueError, match=r"^LOAD has no field 'slot'; its fields are sp_addr, "
                                         r"rows, row_bytes, stride, addr$"):
        encode(Opcode.LOAD, slot=1)
    with pytest.raises(ValueError, match=r"^END has no field 'rows'; its fields are none$"):
        encode(Opcode.END, rows=1)
    with pytest.raises(ValueError, match=r"^LOADP has no field '_pad'"):
        encode(Opcode.LOADP, _pad=1)


def test_value_too_wide_message():
    with pytest.raises(ValueError,
                       match=r"^MATMUL field 'rows' must be in \[0, 65535\], not 65536$"):
        encode(Opcode.MATMUL, rows=65536)
    with pytest.raises(ValueError,
                       match=r"^STORE field 'cols' must be in \[0, 255\], not -1$"):
        Program().store(0, 1, -1, 0, 0)
    with pytest.raises(TypeError, match=r"^LOAD field 'rows' must be an integer, not '8'$"):
        encode(Opcode.LOAD, rows="8")


def test_unknown_dependency_flag_message():
    with pytest.raises(ValueError, match=r"^NOP has no dependency flag 'pop_up'; flags are "
                                         r"pop_prev, pop_next, push_prev, push_next$"):
        encode(Opcode.NOP, deps=["pop_up"])


def test_assemble_error_messages():
    with pytest.raises(ValueError, match=r"^line 2: Unknown mnemonic 'FROB'$"):
        assemble("NOP\nFROB x=1\n")
    with pytest.raises(ValueError, match=r"^line 1: LOAD field 'row_bytes' must be in "
                                         r"\[0, 255\], not 256$"):
        assemble("LOAD row_bytes=256")
    with pytest.raises(ValueError, match=r"^line 1: LOADW has no field 'rows'"):
        assemble("LOADW rows=1")
    with pytest.raises(ValueError, match=r"^line 1: 'ten' is not an integer$"):
        assemble("LOAD rows=ten")
    with pytest.raises(ValueError, match=r"^line 1: LOAD field 'rows' given twice$"):
        assemble("LOAD rows=1 rows=2")
    with pytest.raises(ValueError, match=r"^line 3: END has no dependency flag 'pop'"):
        assemble("NOP\n\nEND pop")


def test_decode_rejects_too_wide_word():
    with pytest.raises(ValueError, match=r"^Instruction word must fit in 128 bits"):
        decode(1 << 128)


def test_disassemble_rejects_partial_instruction():
    with pytest.raises(ValueError, match=r"^Program length must be a multiple of 16 bytes, "
                                         r"not 17$"):
        disassemble(bytes(17))


# --------------------------------------------------------------------------------------------
# The LOADP record


def test_param_slot_record_layout():
    cols = 8
    data = pack_param_slot(cols, bias=[-2**31, 2**31 - 1], multiplier=2**30, shift=[-31, 30],
                           zero_point=-128, act_min=-100, act_max=127)
    assert len(data) == param_slot_bytes(cols) == param_slot_dtype(cols).itemsize
    assert data[:8] == bytes([0, 0, 0, 0x80, 0xFF, 0xFF, 0xFF, 0x7F])
    assert data[8:4 * cols] == bytes(4 * cols - 8)  # missing channels are zero
    assert data[4 * cols:4 * cols + 4] == (2**30).to_bytes(4, "little")
    assert data[8 * cols:8 * cols + 3] == bytes([0xE1, 30, 0])
    assert data[9 * cols:] == bytes([0x80, 0x9C, 0x7F])
    slot = unpack_param_slot(cols, data)
    assert slot["bias"].tolist() == [-2**31, 2**31 - 1] + [0] * 6
    assert slot["multiplier"].tolist() == [2**30] * cols
    assert (slot["zero_point"], slot["act_min"], slot["act_max"]) == (-128, -100, 127)
    assert isinstance(slot["shift"], np.ndarray)


def test_param_slot_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"^shift must be in \[-128, 127\]$"):
        pack_param_slot(4, shift=[200])
    with pytest.raises(ValueError, match=r"^bias must have at most 4 values"):
        pack_param_slot(4, bias=[0] * 5)
    with pytest.raises(ValueError, match=r"^act_max must be in \[-128, 127\], not 128$"):
        pack_param_slot(4, act_max=128)
