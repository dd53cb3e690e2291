"""Board tops: the NPU system behind a UART, on the ULX3S (ECP5-85F) and the iCEBreaker
(iCE40UP5K), through amaranth-boards.

Each board is described once in :data:`BOARDS` (platform, clock, the NPU configuration that
fits it, and the names of its resources in nextpnr's report); :class:`BoardTop` builds the
gateware for any of them, and ``build.py`` runs the toolchain.
"""

from dataclasses import dataclass, field

from amaranth import ClockDomain, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.utils import exact_log2
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from npu.rtl.config import NPUConfig

from .system import NPUSystem
from .uart import UARTRx, UARTTx, uart_divisor

__all__ = ["BOARDS", "Board", "BoardTop", "board_config", "ecp5_pll_params"]

DEFAULT_BAUD = 115200


@dataclass(frozen=True)
class Board:
    """What the build needs to know about one board.

    Attributes
    ----------
    name : str
        As given to ``--board``.
    platform : type
        The amaranth-boards platform class.
    family : str
        ``"ecp5"`` or ``"ice40"``.
    clock_hz : float
        Default target clock of the NPU.
    board_clock_hz : float
        Frequency of the oscillator on the board.
    defaults : dict
        NPUConfig fields (other than cores / rows / cols) and ``mem_bytes`` that fit the part.
    dsp_cell : str
        nextpnr bel type of a multiplier.
    dsp_count : int
        Multipliers on the part (what ``pe_mult="auto"`` budgets against).
    dsp_sites : tuple of tuple of str
        The multipliers' sites as nextpnr names them, one tuple per row of DSP blocks, in the
        order they lie along it (where ``synth.floorplan`` pins the PEs' DSPs); empty: the
        placer places them.
    lut_cell, ff_cell : str
        nextpnr bel types counted as LUTs and flip-flops.
    ram_cells : tuple of str
        nextpnr bel types counted as block / single-port RAM.
    spram : bool
        The board memory is built from SPRAM blocks.
    """

    name: str
    platform: type
    family: str
    clock_hz: float
    board_clock_hz: float
    defaults: dict = field(default_factory=dict)
    dsp_cell: str = ""
    dsp_count: int = 0
    dsp_sites: tuple = ()
    lut_cell: str = ""
    ff_cell: str = ""
    ram_cells: tuple = ()
    spram: bool = False


BOARDS = {
    "ulx3s-85f": Board(
        name="ulx3s-85f", platform=ULX3S_85F_Platform, family="ecp5",
        clock_hz=100e6, board_clock_hz=25e6,
        # The FPGA register stages (``retime``) and a one-line zero lookahead: the clock is
        # what the ECP5 build is for.
        defaults={"bus_width": 64, "scratchpad_bytes": 16384, "acc_rows": 512,
                  "param_slots": 16, "retime": True, "zero_lookahead": 1,
                  "mem_bytes": 65536},
        dsp_cell="MULT18X18D", dsp_count=156,
        # The LFE5U-85F: three rows of 13 DSP blocks (from nextpnr's placement of a design
        # that uses them all), each block with MULT18_0, _1, _4 and _5 at X0 + 0, 1, 4, 5.
        dsp_sites=tuple(tuple(f"X{x0 + k}/Y{y}/MULT18_{k}"
                              for x0 in (4, 13, 22, 31, 40, 49, 58, 69, 78, 87, 96, 105, 114)
                              for k in (0, 1, 4, 5))
                        for y in (10, 34, 58)),
        lut_cell="TRELLIS_COMB", ff_cell="TRELLIS_FF", ram_cells=("DP16KD",)),
    "icebreaker": Board(
        name="icebreaker", platform=ICEBreakerPlatform, family="ice40",
        clock_hz=12e6, board_clock_hz=12e6,
        # The memory goes to SPRAM (4 x 32 KB); the cores' own memories to the 30 BRAMs.
        # Short queues, the sequential requantiser, no zero skipping and 8-bit event counters
        # (cycles keeps 32 bits): logic cells are what the UP5K lacks most (5280 LUT4 + FF
        # cells; this fits in ~5150); dispatch takes 4 cycles per instruction anyway, and the
        # board is for trying the NPU out, not for its speed.
        defaults={"bus_width": 32, "scratchpad_bytes": 256, "acc_rows": 64,
                  "param_slots": 1, "fetch_depth": 1, "unit_queue_depth": 1,
                  "requant_sequential": True, "load_queue_depth": 1,
                  "store_queue_depth": 1, "zero_skip": False, "zero_lookahead": 1,
                  "counter_width": 8, "mem_bytes": 65536},
        dsp_cell="ICESTORM_DSP", dsp_count=8,
        lut_cell="ICESTORM_LC", ff_cell="ICESTORM_LC",
        ram_cells=("ICESTORM_RAM", "ICESTORM_SPRAM"),
        spram=True),
}


def _board(name):
    if name not in BOARDS:
        raise ValueError(f"Board must be one of {', '.join(map(repr, BOARDS))}, not {name!r}")
    return BOARDS[name]


def board_config(board, *, cores, rows, cols, **overrides):
    """The NPUConfig and memory size for ``board``: its defaults, then ``overrides``.

    The address width is the memory's (at least 16 bits): the NPU cannot reach further, and
    narrower address arithmetic is cheaper.
    """
    board = _board(board)
    fields = {**board.defaults, **{k: v for k, v in overrides.items() if v is not None}}
    mem_bytes = fields.pop("mem_bytes")
    if isinstance(mem_bytes, bool) or not isinstance(mem_bytes, int) or mem_bytes < 4096 \
            or mem_bytes & (mem_bytes - 1):
        raise ValueError(f"Memory size must be a power of two of at least 4096, not {mem_bytes!r}")
    fields.setdefault("addr_width", max(16, exact_log2(mem_bytes)))
    config = NPUConfig(cores=cores, rows=rows, cols=cols, **fields)
    return config, mem_bytes


def ecp5_pll_params(f_in, f_out):
    """EHXPLLL dividers for ``f_out`` from ``f_in`` with CLKOP fed back.

    ``f_out = f_in * CLKFB_DIV / CLKI_DIV``, with the PFD (``f_in / CLKI_DIV``) in
    3.125..400 MHz and the VCO (``f_out * CLKOP_DIV``) in 400..800 MHz (ECP5 datasheet);
    returns ``(clki_div, clkfb_div, clkop_div, achieved_hz)`` closest to ``f_out``, preferring
    a VCO near 600 MHz.
    """
    best = None
    for clki in range(1, 129):
        pfd = f_in / clki
        if not 3.125e6 <= pfd <= 400e6:
            continue
        for clkfb in range(1, 81):
            out = pfd * clkfb
            for clkop in range(1, 129):
                vco = out * clkop
                if not 400e6 <= vco <= 800e6:
                    continue
                key = (abs(out - f_out), abs(vco - 600e6))
                if best is None or key < best[0]:
                    best = (key, (clki, clkfb, clkop, out))
    if best is None:
        raise ValueError(f"no ECP5 PLL setting makes {f_out / 1e6:g} MHz from "
                         f"{f_in / 1e6:g} MHz")
    return best[1]


class BoardTop(Elaboratable):
    """The NPU system with a UART host bridge, clocked at ``clock_hz``, for ``board``.

    Parameters
    ----------
    board : str
        A key of :data:`BOARDS`.
    config : NPUConfig
    mem_bytes : int
        On-chip memory for the NPU's programs and data.
    clock_hz : float, optional
        NPU clock; the board's default if None. The ECP5 gets it from a PLL; the iCE40 runs
        at its 12 MHz oscillator.
    baud : int
        UART rate.

    Attributes
    ----------
    system : NPUSystem
    rx_phy, tx_phy : UARTRx, UARTTx
        The UART; without a platform their ``rx`` / ``tx`` lines are free for a testbench.
    divisor : int
        Clock cycles per UART bit.
    clock_hz : float
        The clock actually made (the PLL's nearest setting).
    """

    #: Bytes of buffer between the UART receiver and the bridge (no flow control on the wire).
    RX_BUFFER = 16

    def __init__(self, board, config, *, mem_bytes, clock_hz=None, baud=DEFAULT_BAUD):
        self.board = _board(board)
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, not {config!r}")
        self.config = config
        self.mem_bytes = mem_bytes
        target = self.board.clock_hz if clock_hz is None else float(clock_hz)
        self.pll = None
        if target == self.board.board_clock_hz:
            self.clock_hz = target
        elif self.board.family == "ecp5":
            self.pll = ecp5_pll_params(self.board.board_clock_hz, target)
            self.clock_hz = self.pll[3]
        else:
            raise ValueError(f"{self.board.name} runs at its {self.board.board_clock_hz / 1e6:g}"
                             f" MHz oscillator, not {target / 1e6:g} MHz")
        self.baud = baud
        self.divisor = uart_divisor(self.clock_hz, baud)
        # A frame is dropped after 64 silent byte times.
        self.system = NPUSystem(config, mem_bytes=mem_bytes, timeout=64 * 10 * self.divisor,
                                spram=self.board.spram)
        self.rx_phy = UARTRx(divisor=self.divisor)
        self.tx_phy = UARTTx(divisor=self.divisor)

    def elaborate(self, platform):
        m = Module()
        if self.pll is not None:
            self._ecp5_pll(m, platform)

        m.submodules.system = system = self.system
        m.submodules.rx = rx = self.rx_phy
        m.submodules.tx = tx = self.tx_phy
        m.submodules.rx_buffer = rx_buffer = SyncFIFOBuffered(width=8, depth=self.RX_BUFFER)
        wiring.connect(m, rx.o, rx_buffer.w_stream)
        wiring.connect(m, rx_buffer.r_stream, system.rx)
        wiring.connect(m, system.tx, tx.i)

        heartbeat = Signal(26)
        m.d.sync += heartbeat.eq(heartbeat + 1)
        if platform is not None:
            uart = platform.request("uart", 0, dir="-")
            m.submodules.uart_rx = uart_rx = io.Buffer("i", uart.rx)
            m.submodules.uart_tx = uart_tx = io.Buffer("o", uart.tx)
            m.d.comb += [rx.rx.eq(uart_rx.i), uart_tx.o.eq(tx.tx)]
            for i, value in enumerate((system.irq, heartbeat[-1])):
                m.submodules[f"led{i}"] = led = io.Buffer("o", platform.request("led", i,
                                                                                dir="-"))
                m.d.comb += led.o.eq(value)
        return m

    def _ecp5_pll(self, m, platform):
        clki_div, clkfb_div, clkop_div, out = self.pll
        m.domains.sync = cd_sync = ClockDomain("sync")
        locked = Signal()
        clk_in = Signal()
        if platform is not None:
            clk25 = platform.request(platform.default_clk, dir="-")
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk25)
            m.d.comb += clk_in.eq(clk_buf.i)
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{self.board.board_clock_hz / 1e6:g}",
            a_FREQUENCY_PIN_CLKOP=f"{out / 1e6:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
            p_CLKI_DIV=clki_div, p_CLKFB_DIV=clkfb_div,
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=clkop_div, p_CLKOP_CPHASE=clkop_div // 2,
            p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            i_CLKI=clk_in, i_CLKFB=cd_sync.clk, i_RST=0, i_STDBY=0,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=cd_sync.clk, o_LOCK=locked,
        )
        # nextpnr derives the 100 MHz constraint from the FREQUENCY_PIN attributes.
        # The reset is synchronised in a domain of its own on the same clock, then reaches
        # the design through a DCCA: nextpnr puts a DCCA's output on a global network, so
        # that one flip-flop by the PLL does not drive the reset logic of every unit across
        # the die through the general routing (nextpnr promotes only clocks by itself).
        m.domains.reset = cd_reset = ClockDomain("reset", local=True)
        cd_reset.clk = cd_sync.clk
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="reset")
        m.submodules.reset_buf = Instance("DCCA", i_CLKI=ResetSignal("reset"), i_CE=1,
                                          o_CLKO=cd_sync.rst)
