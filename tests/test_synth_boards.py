# amaranth: UnusedElaboratable=no
"""Board tops elaborate for every board (no toolchain needed), and the UART lines of a top
reach the bridge."""

import struct

import pytest

from npu.sim.amaranth_sim import run_simulation
from npu.synth.boards import BOARDS, BoardTop, board_config, ecp5_pll_params
from npu.synth.bridge import Command
from npu.synth.build import board_platform


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_board_top_elaborates_to_a_build_plan(board):
    config, mem_bytes = board_config(board, cores=1, rows=2, cols=2)
    top = BoardTop(board, config, mem_bytes=mem_bytes)
    plan = BOARDS[board].platform().build(top, name="top", do_build=False)
    rtlil = plan.files["top.il"]
    assert "top.system.npu.core0.execute.array.pe_1_1" in rtlil
    assert "build_top.sh" in plan.files
    # The UART pins of the board are constrained; the ECP5 makes its 100 MHz with a PLL, the
    # iCE40 memory is SPRAM.
    if BOARDS[board].family == "ecp5":
        assert top.clock_hz == 100e6
        assert "EHXPLLL" in rtlil and "FREQUENCY_PIN_CLKOP" in rtlil
        # The synchronised reset reaches the design through a global buffer.
        assert rtlil.count("cell \\DCCA") == 1
        constraints = plan.files["top.lpf"]
    else:
        assert rtlil.count("SB_SPRAM256KA") == 2   # 64 KiB at 32 bits
        constraints = plan.files["top.pcf"]
    assert "uart_0__rx" in constraints and "uart_0__tx" in constraints


@pytest.mark.parametrize("pe_mult, instances", [("dsp", 4), ("lut", 0)])
def test_ecp5_products_on_dsps_are_registered_inside_the_dsp(pe_mult, instances):
    # The retimed ULX3S array: each PE product on a DSP is one MULT18X18D whose output
    # register is the PE's product register; Booth-encoded PEs keep an inferred product.
    # Each requantiser lane's four partial products are MULT18X18Ds registered likewise, and
    # so is each core's dispatch rows x stride product.
    config, mem_bytes = board_config("ulx3s-85f", cores=1, rows=2, cols=2)
    assert config.retime and config.requant_lanes is None
    top = BoardTop("ulx3s-85f", config, mem_bytes=mem_bytes)
    plan = board_platform("ulx3s-85f", config, pe_mult).build(top, name="top",
                                                              do_build=False)
    rtlil = plan.files["top.il"]
    instances += 4 * config.cols + config.cores
    assert rtlil.count("cell \\MULT18X18D") == instances
    assert rtlil.count('parameter \\REG_OUTPUT_CLK "CLK0"') == instances


@pytest.mark.parametrize("f_out", [100e6, 125e6, 60e6])
def test_ecp5_pll_settings_obey_the_datasheet_ranges(f_out):
    clki, clkfb, clkop, out = ecp5_pll_params(25e6, f_out)
    assert out == pytest.approx(f_out, rel=1e-3)
    assert out == 25e6 / clki * clkfb
    assert 3.125e6 <= 25e6 / clki <= 400e6
    assert 400e6 <= out * clkop <= 800e6


def test_icebreaker_runs_at_its_oscillator_only():
    config, mem_bytes = board_config("icebreaker", cores=1, rows=2, cols=2)
    with pytest.raises(ValueError, match="runs at its 12 MHz oscillator, not 48 MHz"):
        BoardTop("icebreaker", config, mem_bytes=mem_bytes, clock_hz=48e6)


@pytest.mark.parametrize("gather, stage", [("crossbar", "g1_picks"), ("lane", "lane_sel")])
def test_ulx3s_gather_of_32_bytes_is_a_two_stage_crossbar_or_one_select_per_lane(gather, stage):
    # 8 rows x sparse group 4: each row gathers from a 32-byte line. The crossbar selects in
    # two registered stages (first-stage picks g1_picks*); the lane gather has per-row
    # sub-block selects (lane_sel*) and no first stage.
    config, mem_bytes = board_config("ulx3s-85f", cores=1, rows=8, cols=2, gather=gather)
    assert config.gather == gather
    top = BoardTop("ulx3s-85f", config, mem_bytes=mem_bytes)
    rtlil = BOARDS["ulx3s-85f"].platform().build(top, name="top", do_build=False).files["top.il"]
    other = {"g1_picks": "lane_sel", "lane_sel": "g1_picks"}[stage]
    assert f"\\{stage}" in rtlil and f"\\{other}" not in rtlil


def test_board_config_applies_defaults_and_checks():
    config, mem_bytes = board_config("ulx3s-85f", cores=4, rows=8, cols=8)
    assert (config.cores, config.macs_per_cycle, mem_bytes) == (4, 256, 65536)
    assert config.addr_width == 16
    config, _ = board_config("ulx3s-85f", cores=1, rows=8, cols=8, mem_bytes=1 << 18,
                             acc_rows=256)
    assert config.addr_width == 18 and config.acc_rows == 256
    with pytest.raises(ValueError, match="Board must be one of"):
        board_config("de0", cores=1, rows=2, cols=2)
    with pytest.raises(ValueError, match="Memory size must be a power of two"):
        board_config("icebreaker", cores=1, rows=2, cols=2, mem_bytes=3000)


def uart_bits(data):
    return [bit for byte in data for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]]


def test_info_frame_over_the_uart_lines_of_a_board_top():
    # The iCEBreaker top at 3 Mbaud from 12 MHz: 4 cycles per bit, so the whole frame is a few
    # hundred cycles. Elaborated without a platform, its UART lines are driven from Python.
    config, _ = board_config("icebreaker", cores=1, rows=2, cols=2)
    top = BoardTop("icebreaker", config, mem_bytes=4096, baud=3_000_000)
    divisor = top.divisor
    assert divisor == 4
    reply = []

    async def host(ctx):
        ctx.set(top.rx_phy.rx, 1)
        await ctx.tick().repeat(8)
        for bit in uart_bits([Command.INFO.value]):
            ctx.set(top.rx_phy.rx, bit)
            await ctx.tick().repeat(divisor)
        # Receive 6 bytes: echo, 4-byte memory size, status; sample each bit mid-way.
        for _ in range(6):
            while ctx.get(top.tx_phy.tx):
                await ctx.tick()
            await ctx.tick().repeat(divisor // 2 + divisor)
            byte = 0
            for i in range(8):
                byte |= ctx.get(top.tx_phy.tx) << i
                await ctx.tick().repeat(divisor)
            assert ctx.get(top.tx_phy.tx) == 1, "stop bit"
            reply.append(byte)

    run_simulation(top, host, name="board_uart_info", deadline_cycles=3000)
    assert reply[0] == Command.INFO.value
    assert struct.unpack("<I", bytes(reply[1:5]))[0] == 4096
    assert reply[5] == 0
