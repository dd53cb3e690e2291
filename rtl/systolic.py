"""Weight-stationary systolic array of int8 x int8 -> int32 processing elements.

Dataflow (R rows x C columns, see docs/architecture.md):

* PE(i, j) holds weight W[i, j] -- row i is the reduction index k, column j the output
  channel n.  Each PE holds two weight banks so the next tile's weights load while the current
  tile streams; every activation carries the bank it must be multiplied with, so the switch
  travels with the wavefront and no pass is drained early.
* An activation vector a[0..R-1] enters skewed: lane i is delayed i cycles and then moves one
  PE to the right per cycle.  Partial sums move one PE down per cycle; column j leaves the
  bottom as sum_i a[i] * W[i, j] and is delayed C-1-j cycles so that the C results of one
  vector leave together.
* The whole array is one stall-able pipeline: it advances when its output is taken or empty.
  From a vector accepted on ``a`` to its result valid on ``o`` is exactly
  ``latency = R + C - 1`` cycles; ``R + C + 1`` with ``config.retime``, whose PEs multiply in
  two registered stages before the add.
"""

from amaranth import Cat, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .config import NPUConfig
from .ecp5 import DSP_PRODUCTS, registered_multiply
from .stage import replica, staged

__all__ = ["ProcessingElement", "SystolicArray", "psum_bits", "radix4_product"]


def psum_bits(products):
    """Bits of a signed sum of ``products`` int8 x int8 products, each in [-16256, 16384]."""
    return Shape.cast(range(-16256 * products, 16384 * products + 1)).width


def radix4_product(a, w, w3, wn):
    """``a * w`` (int8 x int8) as ``lo + (hi << 4)``; returns ``(lo, hi)``, each in 12 signed bits.

    ``a = q0 + 4 q1 + 16 q2 + 64 q3`` with ``qk = a[2k] + 2 a[2k+1]`` (0..3) for k < 3 and
    ``q3 = a[6] - 2 a[7]`` (-2..1): each partial product ``qk * w`` is a 4:1 choice between
    multiples of the weight (0, w, 2w, 3w; the top one 0, w, -2w, -w), so given ``w3 = 3 * w``
    and ``wn = -w`` (a weight-stationary PE computes them once, when the weight is written)
    no partial product needs an adder or a sign correction. ``lo = p0 + 4 p1`` and
    ``hi = p2 + 4 p3``: two adds, then one more for the product.
    """
    def choose(q1, q0, one, two, three):
        return Mux(q1, Mux(q0, three, two), Mux(q0, one, 0))

    p = [choose(a[2 * k + 1], a[2 * k], w, w << 1, w3) for k in range(3)]
    p.append(choose(a[7], a[6], w, wn << 1, wn))
    return p[0] + (p[1] << 2), p[2] + (p[3] << 2)


class ProcessingElement(wiring.Component):
    """One multiply-accumulate cell with two weight banks.

    Ports
    -----
    en : In(1)
        Pipeline advance; registers hold when low (weight writes are not gated).
    a_in, a_bank_in : In
        Activation and the weight bank it uses, from the left neighbour.
    a_out, a_bank_out : Out
        The same, registered, to the right neighbour.
    psum_in : In(signed(psum_width))
        Partial sum from the PE above (0 on the top row).
    psum_out : Out(signed(psum_width))
        ``psum_in + a_in * W[a_bank_in]``, registered.
    w_we, w_bank, w_data : In
        Write ``w_data`` into weight bank ``w_bank`` (with ``product_stages`` of 2, a cycle
        later).

    Parameters
    ----------
    psum_width : int
        Bits of the partial sums: row ``i`` of an array needs ``psum_bits(i + 1)``, which holds
        any sum of ``i + 1`` int8 x int8 products exactly.
    product_stages : int
        Registers between the operands and the add: 0 (multiply and add in one cycle), 1 (the
        product registered) or 2 (two stages of the multiply registered: on a DSP its operands,
        then its product; in logic the two halves of ``radix4_product``, then their sum).
        ``psum_in`` is expected that many cycles later too.
    ecp5_dsp : bool
        With ``product_stages`` of 1 or 2: the multiply and its registers are one ECP5
        MULT18X18D (``registered_multiply``), whose output register is the product register
        and, with 2 stages, whose input registers are the operand registers; the route into the
        DSP then ends at a register, wherever the placer puts the PE's fabric logic. None of
        them is reset with the unit (a product only reaches a result with the partial sums of
        its own vector). For synthesis: the simulators cannot run the instance (the tests swap
        in ``sim.ecp5``'s model of it).

    With ``product_stages`` of 2 (a retimed array) the PE also registers its weight write
    (``w_we``, ``w_bank``, ``w_data``) before it writes, and its registers that equal other
    PEs' (that write, and the bank an activation carries, which is the same on an array's
    whole anti-diagonal) are replicas (``stage.replica``): each is placed by its own PE
    instead of one register driving a row, a column or an anti-diagonal across the die.
    """

    def __init__(self, *, psum_width=32, product_stages=0, ecp5_dsp=False):
        if product_stages not in (0, 1, 2):
            raise ValueError(f"product_stages must be 0, 1 or 2, not {product_stages!r}")
        if ecp5_dsp and not product_stages:
            raise ValueError("An ECP5 DSP product needs a product register (retime)")
        if psum_width < psum_bits(1):
            raise ValueError(f"psum_width must be at least {psum_bits(1)} (one product), "
                             f"not {psum_width}")
        self.product_stages = product_stages
        self.ecp5_dsp = ecp5_dsp
        super().__init__({
            "en": In(1),
            "a_in": In(signed(8)), "a_bank_in": In(1),
            "a_out": Out(signed(8)), "a_bank_out": Out(1),
            "psum_in": In(signed(psum_width)), "psum_out": Out(signed(psum_width)),
            "w_we": In(1), "w_bank": In(1), "w_data": In(signed(8)),
        })

    def elaborate(self, platform):
        m = Module()
        # No register here is reset: a PE's contents only reach a result together with a
        # valid bit that travels beside the array (and a program loads the weights it uses).
        stages = self.product_stages
        # Retimed, a logic PE splits its multiply across its two stages (`radix4_product`);
        # it keeps the weight's multiples it needs, 3w and -w, beside the weight in each bank.
        split = stages == 2 and not self.ecp5_dsp
        multiples = {"w": signed(8), **({"w3": signed(10), "wn": signed(9)} if split else {})}
        banks = [{k: Signal(shape, name=f"{k}{b}", reset_less=True)
                  for k, shape in multiples.items()} for b in range(2)]
        # Retimed, not reset either: a write in flight when a run starts lands a cycle later,
        # in a bank the new run loads before it uses.
        write = staged(m, stages == 2, "w_reg", replicas=("we", "bank", "data"),
                       we=self.w_we, bank=self.w_bank, data=self.w_data)
        w_we, w_bank, w_data = write["we"], write["bank"], write["data"]
        values = {"w": w_data, "w3": w_data + (w_data << 1), "wn": -w_data}
        with m.If(w_we):
            for b in range(2):
                with m.If(w_bank == b):
                    m.d.sync += [banks[b][k].eq(values[k]) for k in multiples]
        bank = {k: Mux(self.a_bank_in, banks[1][k], banks[0][k]) for k in multiples}
        weight = bank["w"]
        # int8 x int8 fits 16 bits; the partial sum is wide enough never to wrap. Each stage
        # delays the product a cycle, and psum_in with it (every row above is as late).
        if self.ecp5_dsp:
            product = Signal(signed(16))
            m.submodules.mult = registered_multiply(self.a_in, weight, product, self.en,
                                                    input_registers=stages == 2)
        elif split:
            # Stage 1 registers two sums of two of the activation's radix-4 partial products,
            # stage 2 the product: no multiplier between two registers (on an FPGA's logic
            # the whole 8 x 8 multiply did not fit one cycle).
            halves = radix4_product(self.a_in, bank["w"], bank["w3"], bank["wn"])
            held = [Signal(signed(12), name=f"half{h}", reset_less=True) for h in range(2)]
            product = Signal(signed(16), name="registered", reset_less=True)
            with m.If(self.en):
                m.d.sync += [held[h].eq(halves[h]) for h in range(2)]
                m.d.sync += product.eq(held[0] + (held[1] << 4))
        else:
            product = self.a_in * weight
            if stages:
                registered = Signal(signed(16), reset_less=True)
                with m.If(self.en):
                    m.d.sync += registered.eq(product)
                product = registered
        a_out = Signal.like(self.a_out, reset_less=True)
        a_bank_out = (replica(self.a_bank_out, name="a_bank_reg") if stages == 2 else
                      Signal.like(self.a_bank_out, reset_less=True))
        psum_out = Signal.like(self.psum_out, reset_less=True)
        with m.If(self.en):
            m.d.sync += [
                a_out.eq(self.a_in),
                a_bank_out.eq(self.a_bank_in),
                psum_out.eq(self.psum_in + product),
            ]
        m.d.comb += [self.a_out.eq(a_out), self.a_bank_out.eq(a_bank_out),
                     self.psum_out.eq(psum_out)]
        return m


class SystolicArray(wiring.Component):
    """R x C weight-stationary array with a stream in, a stream out and a weight-load port.

    Parameters
    ----------
    config : NPUConfig
        ``rows`` and ``cols`` give R and C.
    tag_shape : shape, optional
        Side information carried with each vector from ``a`` to ``o`` (the core uses it for the
        accumulator address). Defaults to 1 bit.

    Ports
    -----
    a : In(stream)
        ``data``: R int8 lanes, ``bank``: weight bank, ``tag``.
    o : Out(stream)
        ``data``: C int32 lanes, ``tag``.
    w : In(stream)
        ``row`` (0..R-1), ``bank``, ``data``: C int8 lanes; one row per cycle. Not ready while
        a vector that uses ``bank`` is offered or still in the array, so a weight write can
        never corrupt a pass in flight. With ``config.retime`` a row is written two cycles
        after it is taken, and ``a`` is not ready for a vector of that bank meanwhile.
    bank_busy : Out(2)
        Bit b is set while any vector using bank b is offered or in flight.
    """

    def __init__(self, config, *, tag_shape=1):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, not {config!r}")
        self.config = config
        self.rows = config.rows
        self.cols = config.cols
        # Retimed, every PE registers its operands and its product (two stages).
        self.product_stages = 2 if config.retime else 0
        self.latency = self.rows + self.cols - 1 + self.product_stages
        self.tag_shape = tag_shape
        super().__init__({
            "a": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(8), self.rows),
                "bank": unsigned(1),
                "tag": tag_shape,
            }))),
            "o": Out(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(32), self.cols),
                "tag": tag_shape,
            }))),
            "w": In(stream.Signature(data.StructLayout({
                "row": unsigned(max(1, ceil_log2(self.rows))),
                "bank": unsigned(1),
                "data": data.ArrayLayout(signed(8), self.cols),
            }))),
            "bank_busy": Out(2),
        })

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols

        en = Signal()
        m.d.comb += [
            en.eq(self.o.ready | ~self.o.valid),
            self.a.ready.eq(en),
            self.w.ready.eq(~self.bank_busy.bit_select(self.w.p.bank, 1)),
        ]

        on_dsp = getattr(platform, DSP_PRODUCTS, 0) if self.config.retime else 0
        # Row i's partial sums hold i + 1 products: narrower than int32 (sign-extended at the
        # bottom), so its adders and registers are too.
        pes = [[ProcessingElement(psum_width=psum_bits(i + 1),
                                  product_stages=self.product_stages,
                                  ecp5_dsp=i * C + j < on_dsp) for j in range(C)]
               for i in range(R)]
        # A weight row taken is written into its PEs; retimed, a cycle later from registers
        # (the row comes from block RAM and fans out to a whole row of PEs). Either way a
        # vector taken after the row is multiplied with it.
        write = staged(m, self.config.retime, "w", reset=("we",),
                       we=Cat(self.w.valid & self.w.ready & (self.w.p.row == i)
                              for i in range(R)),
                       bank=self.w.p.bank, data=self.w.p.data)
        w_we, w_bank, w_data = write["we"], write["bank"], write["data"]
        if self.config.retime:
            # The PEs register the write again (a row is written two cycles after it is
            # taken). Not ready for a vector whose bank is being written from either register:
            # PE(0, 0) would multiply it with the old weight. (The core offers a tile's first
            # vector cycles after its last row, so it never sees this.)
            in_pes = staged(m, True, "w_pe", reset=("we",), we=w_we != 0, bank=w_bank)
            with m.If(((w_we != 0) & (w_bank == self.a.p.bank))
                      | (in_pes["we"] & (in_pes["bank"] == self.a.p.bank))):
                m.d.comb += self.a.ready.eq(0)
        for i in range(R):
            for j in range(C):
                m.submodules[f"pe_{i}_{j}"] = pes[i][j]
                pe = pes[i][j]
                m.d.comb += [
                    pe.en.eq(en),
                    pe.w_we.eq(w_we[i]),
                    pe.w_bank.eq(w_bank),
                    pe.w_data.eq(w_data[j]),
                ]

        # Input skew: lane i waits i cycles. Bubbles enter as zeros so idle PEs do not toggle;
        # retimed, the lanes enter as offered (a bubble's products are dropped with its valid
        # bit), so that the handshake, which a weight write can hold back, does not reach
        # every lane's first register: on an FPGA a DSP's input register, anywhere on the die.
        taken = Signal()
        m.d.comb += taken.eq(self.a.valid & self.a.ready)
        for i in range(R):
            a = Signal(signed(8), name=f"skew_a{i}_0")
            bank = Signal(name=f"skew_b{i}_0")
            m.d.comb += [
                a.eq(self.a.p.data[i] if self.config.retime else Mux(taken, self.a.p.data[i], 0)),
                bank.eq(self.a.p.bank),
            ]
            for d in range(i):
                a_next = Signal(signed(8), name=f"skew_a{i}_{d + 1}", reset_less=True)
                bank_next = Signal(name=f"skew_b{i}_{d + 1}", reset_less=True)
                with m.If(en):
                    m.d.sync += [a_next.eq(a), bank_next.eq(bank)]
                a, bank = a_next, bank_next
            m.d.comb += [pes[i][0].a_in.eq(a), pes[i][0].a_bank_in.eq(bank)]

        for i in range(R):
            for j in range(1, C):
                m.d.comb += [
                    pes[i][j].a_in.eq(pes[i][j - 1].a_out),
                    pes[i][j].a_bank_in.eq(pes[i][j - 1].a_bank_out),
                ]
        for j in range(C):
            m.d.comb += pes[0][j].psum_in.eq(0)
            for i in range(1, R):
                m.d.comb += pes[i][j].psum_in.eq(pes[i - 1][j].psum_out)

        # Output de-skew: column j waits C-1-j cycles.
        for j in range(C):
            s = pes[R - 1][j].psum_out
            for d in range(C - 1 - j):
                s_next = Signal.like(s, name=f"deskew{j}_{d + 1}", reset_less=True)
                with m.If(en):
                    m.d.sync += s_next.eq(s)
                s = s_next
            m.d.comb += self.o.p.data[j].eq(s)

        # Valid, bank and tag travel beside the array in a delay line of the same length; a
        # bank is busy while any stage (or the offered input) holds a vector that uses it.
        valid, bank, tag = taken, self.a.p.bank, self.a.p.tag
        busy = [self.a.valid & (bank == b) for b in range(2)]
        for d in range(self.latency):
            valid_next = Signal(name=f"valid_{d + 1}")
            bank_next = Signal(name=f"bank_{d + 1}", reset_less=True)    # used when valid
            tag_next = Signal(self.tag_shape, name=f"tag_{d + 1}", reset_less=True)
            with m.If(en):
                m.d.sync += [valid_next.eq(valid), bank_next.eq(bank), tag_next.eq(tag)]
            valid, bank, tag = valid_next, bank_next, tag_next
            busy = [busy[b] | (valid & (bank == b)) for b in range(2)]
        m.d.comb += [
            self.o.valid.eq(valid),
            self.o.p.tag.eq(tag),
            self.bank_busy.eq(busy[0] | (busy[1] << 1)),
        ]
        return m
