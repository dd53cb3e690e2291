# amaranth: UnusedElaboratable=no
"""The UART PHY of the board tops, against the 8N1 rule written out bit by bit."""

import pytest
from amaranth import Module

from npu.sim.amaranth_sim import run_simulation
from npu.sim.streams import stream_get, stream_put
from npu.synth.uart import UARTRx, UARTTx, uart_divisor


def frame_bits(byte):
    """8N1: start bit 0, eight data bits LSB first, stop bit 1."""
    return [0] + [(byte >> i) & 1 for i in range(8)] + [1]


@pytest.mark.parametrize("divisor", [4, 7])
def test_tx_line_follows_8n1_at_the_divisor(divisor):
    dut = UARTTx(divisor=divisor)
    payload = [0x00, 0xA5, 0xFF, 0x3C]
    seen = []

    async def sender(ctx):
        for byte in payload:
            await stream_put(ctx, dut.i, byte)

    async def line(ctx):
        # Wait for the first start bit, then sample the middle of every bit.
        while ctx.get(dut.tx):
            await ctx.tick()
        await ctx.tick().repeat(divisor // 2)
        for _ in range(10 * len(payload)):
            seen.append(ctx.get(dut.tx))
            await ctx.tick().repeat(divisor)

    run_simulation(dut, sender, line, name="uart_tx", deadline_cycles=20 * divisor * 10)
    assert seen == [bit for byte in payload for bit in frame_bits(byte)]


async def drive_line(ctx, line, bits, divisor):
    for bit in bits:
        ctx.set(line, bit)
        await ctx.tick().repeat(divisor)


@pytest.mark.parametrize("divisor", [4, 9])
def test_rx_decodes_a_line_driven_from_python(divisor):
    dut = UARTRx(divisor=divisor)
    payload = [0x55, 0x00, 0xFF, 0x81, 0x7E]
    got = []

    async def line(ctx):
        await ctx.tick().repeat(3)
        # Back to back frames, then idle.
        await drive_line(ctx, dut.rx, [b for byte in payload for b in frame_bits(byte)], divisor)

    async def reader(ctx):
        for _ in payload:
            got.append(await stream_get(ctx, dut.o))
        assert not ctx.get(dut.overrun) and not ctx.get(dut.frame_error)

    run_simulation(dut, line, reader, name="uart_rx", deadline_cycles=20 * divisor * 10)
    assert got == payload


def test_rx_flags_a_low_stop_bit_and_drops_the_byte():
    divisor = 4
    dut = UARTRx(divisor=divisor)
    got = []

    async def line(ctx):
        bad = frame_bits(0x12)[:-1] + [0]
        await drive_line(ctx, dut.rx, bad + [1, 1] + frame_bits(0x34), divisor)
        await ctx.tick().repeat(2 * divisor)
        got.append(ctx.get(dut.frame_error))

    async def reader(ctx):
        got.append(await stream_get(ctx, dut.o))

    run_simulation(dut, line, reader, name="uart_rx_err", deadline_cycles=400)
    assert got == [0x34, 1]


def test_rx_overrun_keeps_the_newest_byte():
    divisor = 4
    dut = UARTRx(divisor=divisor)
    seen = {}

    async def line(ctx):
        await drive_line(ctx, dut.rx, frame_bits(0x01) + frame_bits(0x02), divisor)
        await ctx.tick().repeat(divisor)
        seen["overrun"] = ctx.get(dut.overrun)
        seen["byte"] = await stream_get(ctx, dut.o)

    run_simulation(dut, line, name="uart_rx_overrun", deadline_cycles=400)
    assert seen == {"overrun": 1, "byte": 0x02}


def test_loopback_tx_into_rx_at_the_smallest_divisor():
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor=4)
    m.submodules.rx = rx = UARTRx(divisor=4)
    m.d.comb += rx.rx.eq(tx.tx)
    payload = list(range(0, 256, 37))
    got = []

    async def sender(ctx):
        for byte in payload:
            await stream_put(ctx, tx.i, byte)

    async def reader(ctx):
        for _ in payload:
            got.append(await stream_get(ctx, rx.o))

    run_simulation(m, sender, reader, name="uart_loop", deadline_cycles=2000)
    assert got == payload


def test_divisor_and_arguments_are_checked():
    assert uart_divisor(100e6, 115200) == 868
    assert uart_divisor(12e6, 115200) == 104
    with pytest.raises(ValueError, match="too fast"):
        uart_divisor(12e6, 6_000_000)
    with pytest.raises(ValueError, match="off by"):
        uart_divisor(10e6, 1_800_000)     # 5.56 cycles per bit: 10 % off at 6
    with pytest.raises(ValueError, match="UART divisor must be at least 4, not 3"):
        UARTTx(divisor=3)
    with pytest.raises(TypeError, match="UART divisor must be an integer"):
        UARTRx(divisor=4.0)
