"""A UART PHY (8N1) between the board's serial lines and byte streams.

The host bridge (``bridge.py``) works on ``amaranth.lib.stream`` bytes; these two blocks put
it on the wire. Both run in the ``sync`` domain with a fixed clock divisor, so the whole board
design stays in one clock domain.
"""

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "uart_divisor"]

#: Fewest clock cycles per bit the receiver samples reliably (it samples mid-bit).
MIN_DIVISOR = 4


def _check_divisor(divisor):
    if isinstance(divisor, bool) or not isinstance(divisor, int):
        raise TypeError(f"UART divisor must be an integer, not {divisor!r}")
    if divisor < MIN_DIVISOR:
        raise ValueError(f"UART divisor must be at least {MIN_DIVISOR}, not {divisor}")


def uart_divisor(clk_hz, baud):
    """Clock cycles per bit for ``baud`` at ``clk_hz``; raises if the error exceeds 2 %."""
    divisor = round(clk_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"{baud} baud is too fast for a {clk_hz / 1e6:g} MHz clock")
    error = abs(clk_hz / divisor - baud) / baud
    if error > 0.02:
        raise ValueError(f"{baud} baud at {clk_hz / 1e6:g} MHz is off by {error:.1%}")
    return divisor


class UARTTx(wiring.Component):
    """Serialises bytes from ``i`` onto ``tx``: a start bit, 8 data bits LSB first, a stop bit.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit.

    Ports
    -----
    i : In(stream.Signature(8))
    tx : Out(1)
        Idles high.
    """

    def __init__(self, *, divisor):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        shreg = Signal(10, init=0x3FF)      # stop, data[7:0], start; shifted out LSB first
        bits = Signal(range(11))
        timer = Signal(range(self.divisor))
        # The next byte is taken as the stop bit ends, so frames follow back to back.
        m.d.comb += [self.tx.eq(shreg[0]),
                     self.i.ready.eq((bits == 0) | ((bits == 1) & (timer == 0)))]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shreg.eq(Cat(0, self.i.payload, 1)), bits.eq(10),
                         timer.eq(self.divisor - 1)]
        with m.Elif(bits != 0):
            with m.If(timer == 0):
                m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), bits.eq(bits - 1),
                             timer.eq(self.divisor - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m


class UARTRx(wiring.Component):
    """Deserialises ``rx`` into bytes on ``o``.

    A byte is offered on ``o`` from the middle of its stop bit until taken. There is no flow
    control on the wire: a byte that completes while the previous one is still offered replaces
    it and sets ``overrun``; a byte whose stop bit is low is dropped and sets ``frame_error``.
    Both flags stay set until reset.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit.

    Ports
    -----
    rx : In(1)
    o : Out(stream.Signature(8))
    overrun, frame_error : Out(1)
    """

    def __init__(self, *, divisor):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "overrun": Out(1),
            "frame_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(self.divisor))
        bits = Signal(range(9))
        shreg = Signal(8)

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"), m.If(~rx):
                m.d.sync += timer.eq(self.divisor // 2 - 1)
                m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    m.next = "IDLE"          # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(self.divisor - 1), bits.eq(8)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), bits.eq(bits - 1),
                                 timer.eq(self.divisor - 1)]
                    with m.If(bits == 1):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    with m.If(rx):
                        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                        with m.If(self.o.valid & ~self.o.ready):
                            m.d.sync += self.overrun.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += self.frame_error.eq(1)
                        m.next = "BREAK"
            # A low stop bit: wait for the line to go idle before looking for a start bit.
            with m.State("BREAK"), m.If(rx):
                m.next = "IDLE"
        return m
