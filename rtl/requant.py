"""The requantiser: int32 accumulators -> int8 activations, bit-exact with TFLite's integer rules.

Per lane (output channel) ``c`` of a beat::

    x = wrap32(acc[c] + bias[c])
    y = MultiplyByQuantizedMultiplier(x, multiplier[c], shift[c])     # "double" or "single"
    o[c] = min(max(y + zero_point, act_min), act_max)

``npu.firmware.quant`` holds the same rules written straight from the rule text; the tests hold
the two against each other. The gateware uses two identities that are cheaper than the text:

* gemmlowp's ``SaturatingRoundingDoublingHighMul`` nudges by ``2**30`` (``a*b >= 0``) or
  ``1 - 2**30`` (``a*b < 0``) and then truncates toward zero; both cases equal
  ``(a*b + 2**30) >> 31`` with an arithmetic shift, so no sign-dependent nudge is needed;
* ``RoundingDivideByPOT(y, e)`` (ties away from zero) is ``(y + 2**(e-1) - [y < 0]) >> e`` for
  ``e >= 1``, and single rounding's ``(p + 2**(t-1)) >> t`` is ``((p >> (t-1)) + 1) >> 1``, so
  neither needs a variable-width mask or a 64-bit rounding constant.

Results are specified for ``shift`` in ``[-31, 30]`` (what the host produces and checks); the
other two codes of the 6-bit field give unspecified (but deterministic) results.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import NPUConfig
from .ecp5 import DSP_PARTIAL_PRODUCTS, registered_multiply

__all__ = ["Requantiser", "SequentialRequantiser", "SerialRequantiser"]

_INT32_MAX = 2**31 - 1


class Requantiser(wiring.Component):
    """Pipelined, lane-parallel requantiser with stall-on-backpressure.

    The whole pipeline advances in a cycle when ``o.ready | ~o.valid``; ``i.ready`` is that same
    condition (combinationally dependent on ``o.ready``, never on ``i.valid``). A beat offered in
    cycle ``c`` while ``i.ready`` is high is on ``o`` (``o.valid`` high) in cycle
    ``c + latency`` if ``o`` never stalls in between. Stages:

    1. ``x = wrap32(acc + bias)``; double rounding also shifts left by ``max(shift, 0)``
       (wrapping, as the compiled C++ does) and decodes the right shift;
    2. the signed 32x32 product as four 17x17 partial products (one DSP each);
    3. the partial products summed to 64 bits (plus ``2**30``, the SRDHM nudge, for double);
    4. double: ``>> 31`` with saturation, plus the RoundingDivideByPOT constant;
       single: arithmetic ``>> (30 - shift)``;
    5. the final right shift, ``+ zero_point``, the clamp to ``[act_min, act_max]``.

    With ``config.retime`` the bias add, each add of the 64-bit sum, the saturation, the final
    shift and the zero point get stages of their own (11 in all).

    Parameters
    ----------
    config : NPUConfig
        Supplies the rounding mode (hardware for only that mode is elaborated) and the default
        lane count ``config.cols``.
    lanes : int or None
        Channels per beat; ``None`` means ``config.cols``.
    stall : bool
        With False the pipeline never stalls: ``i.ready`` is always high and a result must be
        taken the cycle it is valid (``o.ready`` is not looked at). For a consumer that keeps
        room for every beat it lets in, such as the store unit with its row credits: no
        enable then fans out to every pipeline register.

    Attributes
    ----------
    i : In(stream.Signature(Requantiser.input_layout(lanes)))
        ``acc``, ``bias``, ``multiplier``, ``shift`` per lane (int32, int32, int32, int6) and
        ``zero_point``, ``act_min``, ``act_max`` for the whole beat (int8).
    o : Out(stream.Signature(Requantiser.output_layout(lanes)))
        The int8 results, one per lane.
    latency : int
        Pipeline depth in cycles (5; 11 with ``config.retime``).
    lanes : int
    rounding : str
    """

    #: Cycles from a beat accepted on ``i`` to the same beat valid on ``o`` (no stalls).
    LATENCY = 5
    #: The same with ``config.retime``: the bias add, the 64-bit sum (three adds), the SRDHM
    #: saturation and the final shift, zero point and clamp each get a stage of their own.
    RETIMED_LATENCY = 11

    @staticmethod
    def latency_for(config):
        """Pipeline depth of a :class:`Requantiser` built for ``config``."""
        return Requantiser.RETIMED_LATENCY if config.retime else Requantiser.LATENCY

    @staticmethod
    def input_layout(lanes):
        """Payload layout of ``i``: what other gateware fills in to requantise one beat."""
        return data.StructLayout({
            "acc":        data.ArrayLayout(signed(32), lanes),
            "bias":       data.ArrayLayout(signed(32), lanes),
            "multiplier": data.ArrayLayout(signed(32), lanes),
            "shift":      data.ArrayLayout(signed(6), lanes),
            "zero_point": signed(8),
            "act_min":    signed(8),
            "act_max":    signed(8),
        })

    @staticmethod
    def output_layout(lanes):
        """Payload layout of ``o``: one int8 per lane."""
        return data.ArrayLayout(signed(8), lanes)

    def __init__(self, config, *, lanes=None, stall=True):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"Requantiser config must be an NPUConfig, not {config!r}")
        if lanes is None:
            lanes = config.cols
        if isinstance(lanes, bool) or not isinstance(lanes, int):
            raise TypeError(f"Requantiser lanes must be a positive integer, not {lanes!r}")
        if lanes < 1:
            raise ValueError(f"Requantiser lanes must be a positive integer, not {lanes}")
        self._lanes = lanes
        self._rounding = config.rounding
        self._retime = config.retime
        self._stall = stall
        super().__init__({
            "i": In(stream.Signature(self.input_layout(lanes))),
            "o": Out(stream.Signature(self.output_layout(lanes))),
        })

    @property
    def lanes(self):
        return self._lanes

    @property
    def rounding(self):
        return self._rounding

    @property
    def latency(self):
        return self.RETIMED_LATENCY if self._retime else self.LATENCY

    def elaborate(self, platform):
        m = Module()
        double = self._rounding == "double"
        p_in = self.i.payload
        latency = self.latency

        advance = Signal()
        m.d.comb += [
            advance.eq(self.o.ready | ~self.o.valid if self._stall else 1),
            self.i.ready.eq(advance),
        ]

        # Valid bits, one per stage; the last one is o.valid.
        valid = [Signal(name=f"s{n}_valid") for n in range(1, latency + 1)]
        # Per-beat fields travel alongside the data (zero point and clamp used at the end).
        beat_fields = ("zero_point", "act_min", "act_max")
        # Only the valid bits are reset: the data registers are used only behind them.
        beat = [{f: Signal(signed(8), name=f"s{n}_{f}", reset_less=True) for f in beat_fields}
                for n in range(1, latency)]

        with m.If(advance):
            m.d.sync += valid[0].eq(self.i.valid)
            m.d.sync += [valid[n].eq(valid[n - 1]) for n in range(1, latency)]
            m.d.sync += [beat[0][f].eq(p_in[f]) for f in beat_fields]
            m.d.sync += [beat[n][f].eq(beat[n - 1][f])
                         for n in range(1, len(beat)) for f in beat_fields]
        m.d.comb += self.o.valid.eq(valid[-1])

        dsp = self._retime and getattr(platform, DSP_PARTIAL_PRODUCTS, False)
        for lane in range(self._lanes):
            self._elaborate_lane(m, lane, advance, beat, double, dsp)
        return m

    def _elaborate_lane(self, m, k, advance, beat, double, dsp):
        p_in = self.i.payload
        retime = self._retime

        def reg(value, what, shape=None):
            """``value`` registered (the pipeline advancing)."""
            sig = Signal(shape if shape is not None else Value.cast(value).shape(),
                         name=f"{what}{k}", reset_less=True)
            with m.If(advance):
                m.d.sync += sig.eq(value)
            return sig

        def retimed(value, what, shape=None):
            """``value`` registered only when retiming: an extra stage."""
            return reg(value, what, shape) if retime else value

        # Stage 1: bias add (int32 wrap); double rounding also applies the left shift.
        x = retimed((p_in.acc[k] + p_in.bias[k])[:32].as_signed(), "s0_x", signed(32))
        shift = retimed(p_in.shift[k], "s0_shift")
        multiplier = retimed(p_in.multiplier[k], "s0_m")
        if double:
            left = Mux(shift > 0, shift, 0)[:5]
            x_next = (x << left)[:32].as_signed()
            # e: double: right shift 0..31; single: 30 - shift, 0..61.
            e_next = Mux(shift < 0, -shift, 0)[:6]
        else:
            x_next = x
            e_next = (30 - shift)[:6]
        s1_x = reg(x_next, "s1_x", signed(32))
        s1_m = reg(multiplier, "s1_m", signed(32))
        e = reg(e_next, "s1_e", unsigned(6))

        # Stage 2: x * M as four partial products: a = aH * 2**16 + aL with aL unsigned.
        a_lo, a_hi = s1_x[:16], s1_x[16:].as_signed()
        b_lo, b_hi = s1_m[:16], s1_m[16:].as_signed()
        if dsp:
            def product(a, b, what, shape):
                p = Signal(shape, name=f"{what}{k}")
                m.submodules[f"{what}{k}"] = registered_multiply(a, b, p, advance)
                return p
        else:
            def product(a, b, what, shape):
                return reg(a * b, what, shape)
        ll = product(a_lo, b_lo, "s2_pp_ll", unsigned(32))
        hl = product(a_hi, b_lo, "s2_pp_hl", signed(33))
        lh = product(a_lo, b_hi, "s2_pp_lh", signed(33))
        hh = product(a_hi, b_hi, "s2_pp_hh", signed(32))
        e = reg(e, "s2_e")

        # Stage 3: the 64-bit product; for double rounding plus SRDHM's 2**30 (see module doc).
        nudge = 2**30 if double else 0
        if retime:
            # One carry chain per stage.
            mid = reg(hl + lh, "s3a_mid", signed(34))
            ll = reg(ll + nudge, "s3a_ll", unsigned(33))
            hh = reg(hh, "s3a_hh")
            e = reg(e, "s3a_e")
            low = reg(ll + (mid << 16), "s3b_low", signed(52))
            hh = reg(hh, "s3b_hh")
            e = reg(e, "s3b_e")
            product = low + (hh << 32)
        else:
            product = ll + ((hl + lh) << 16) + (hh << 32) + nudge
        s3_p = reg(product, "s3_p", signed(64))
        s3_e = reg(e, "s3_e")

        # Stage 4.
        if double:
            # SRDHM = p >> 31 (33 bits); only INT32_MIN * INT32_MIN exceeds int32: saturate.
            high = s3_p[31:].as_signed()
            srdhm = Mux(high > _INT32_MAX, _INT32_MAX, high[:32]).as_signed()
            # RoundingDivideByPOT(y, e) = (y + 2**(e-1) - [y < 0]) >> e for e >= 1; y for e = 0.
            half = (Const(1, 1) << s3_e)[1:33]  # 2**(e-1), or 0 for e = 0
            neg = srdhm[31] & (s3_e != 0)
            srdhm = retimed(srdhm, "s4a_srdhm", signed(32))
            half = retimed(half, "s4a_half", unsigned(32))
            neg = retimed(neg, "s4a_neg", unsigned(1))
            z_next = srdhm + half - neg
            z_shape = signed(34)
        else:
            # (p + 2**(t-1)) >> t == ((p >> (t-1)) + 1) >> 1, with t - 1 = 30 - shift = e.
            z_next = retimed(s3_p, "s4a_p") >> retimed(s3_e, "s4a_e")
            z_shape = signed(64)
        s4_z = reg(z_next, "s4_z", z_shape)
        s4_e = reg(retimed(s3_e, "s4a_e2") if double else s3_e, "s4_e")

        # Stage 5: final shift, zero point (exact, no wrap), clamp in TFLite's order.
        y = (s4_z >> s4_e) if double else ((s4_z + 1) >> 1)
        if retime:
            y = reg(y, "s5a_y")
            v = reg(y + beat[-2]["zero_point"], "s5b_v")
        else:
            v = y + beat[-1]["zero_point"]
        lo, hi = beat[-1]["act_min"], beat[-1]["act_max"]
        # min(max(v, lo), hi) with both comparisons on v, side by side.
        below, above = v < lo, v > hi
        clamped = Mux(below, Mux(lo > hi, hi, lo), Mux(above, hi, v))
        m.d.comb += self.o.payload[k].eq(reg(clamped[:8], "out", signed(8)))


class SerialRequantiser(wiring.Component):
    """A whole row of ``config.cols`` channels through a :class:`Requantiser` of
    ``config.requant_lanes`` lanes, one group of lanes per cycle.

    Same ports as ``Requantiser(config, lanes=config.cols)``. A row offered on ``i`` enters the
    lane pipeline group by group (``i.ready`` rises with the last group, ``config.requant_groups``
    cycles after the first if nothing stalls); the results of the earlier groups wait in a
    register and the row is offered on ``o`` with its last group's, so the whole row leaves
    ``Requantiser.LATENCY + requant_groups - 1`` cycles after its first group entered. It takes
    a row every ``requant_groups`` cycles: for a small FPGA, where multipliers are scarce and a
    stored row's bus beats take longer than that anyway.

    Parameters
    ----------
    config : NPUConfig
        ``cols``, ``requant_lanes`` and ``rounding``.
    stall : bool
        As for :class:`Requantiser`.
    """

    def __init__(self, config, *, stall=True):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"SerialRequantiser config must be an NPUConfig, not {config!r}")
        self._config = config
        self._stall = stall
        super().__init__({
            "i": In(stream.Signature(Requantiser.input_layout(config.cols))),
            "o": Out(stream.Signature(Requantiser.output_layout(config.cols))),
        })

    @property
    def groups(self):
        return self._config.requant_groups

    @property
    def latency(self):
        """Cycles from a row's first group accepted to the row valid on ``o`` (no stalls)."""
        return Requantiser.latency_for(self._config) + self.groups - 1

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        G = self.groups
        K = cfg.cols // G
        m.submodules.lanes = rq = Requantiser(cfg, lanes=K, stall=self._stall)

        # Issue: group `gi` of the offered row; the row is taken with its last group.
        gi = Signal(range(G))
        last_in = gi == G - 1
        m.d.comb += [
            rq.i.valid.eq(self.i.valid),
            self.i.ready.eq(rq.i.ready & last_in),
            rq.i.p.zero_point.eq(self.i.p.zero_point),
            rq.i.p.act_min.eq(self.i.p.act_min),
            rq.i.p.act_max.eq(self.i.p.act_max),
        ]
        # Group 0 goes to the lanes straight from the row; each later group from `ahead`,
        # loaded with it as the group before is taken (the row stays offered until its last
        # group is). The lanes' first adder then sees a 2:1 select on a register of its own
        # (`first`), not the decode of `gi` and a G:1 multiplexer on the far side of the row.
        fields = ("acc", "bias", "multiplier", "shift")
        first = Signal(init=1)                  # gi == 0
        ahead = Signal(Requantiser.input_layout(K), reset_less=True)   # data
        for k in range(K):
            for name in fields:
                m.d.comb += rq.i.p[name][k].eq(Mux(first, self.i.p[name][k], ahead[name][k]))
        with m.If(rq.i.valid & rq.i.ready):
            m.d.sync += [gi.eq(Mux(last_in, 0, gi + 1)), first.eq(last_in)]
            with m.Switch(gi):
                for g in range(G - 1):
                    with m.Case(g):
                        m.d.sync += [ahead[name][k].eq(self.i.p[name][(g + 1) * K + k])
                                     for name in fields for k in range(K)]

        # Collect: the earlier groups into `held`, the last one straight through.
        go = Signal(range(G))
        last_out = go == G - 1
        held = Signal(data.ArrayLayout(signed(8), cfg.cols - K), reset_less=True)
        m.d.comb += [
            self.o.valid.eq(rq.o.valid & last_out),
            rq.o.ready.eq(self.o.ready | ~last_out),
            self.o.payload.eq(Cat(held, rq.o.payload)),
        ]
        with m.If(rq.o.valid & rq.o.ready):
            m.d.sync += go.eq(Mux(last_out, 0, go + 1))
            with m.Switch(go):
                for g in range(G - 1):
                    with m.Case(g):
                        m.d.sync += [held[g * K + k].eq(rq.o.payload[k]) for k in range(K)]
        return m


class SequentialRequantiser(wiring.Component):
    """A whole row of ``config.cols`` channels, one channel at a time, with no multiplier: for
    the smallest FPGAs (``config.requant_sequential``).

    Same ports and results as ``Requantiser(config, lanes=config.cols)``; the row offered on
    ``i`` must stay there until taken (the stream rule), as it is read channel by channel, and
    is taken when its last channel is done, as the row is offered on ``o``. A new row starts
    only once ``o`` has been taken. Per channel, one register ``P = hi * 2**32 + lo`` (65 bits)
    does everything by shifting:

    1. ``lo = wrap32(acc + bias)``, ``hi`` = SRDHM's nudge ``2**30`` (double) or 0;
    2. double: ``lo <<= 1``, ``max(shift, 0)`` times (the wrapping left shift);
    3. 32 shift-and-add steps: ``P = (P + lo[0] * ±M * 2**32) >> 1`` (``-M`` for the sign bit
       of ``x``), which leave ``P = x * M + hi``;
    4. double: ``P >>= 31`` (SRDHM; its one saturating case, ``INT32_MIN * INT32_MIN``, only
       differs by one from the saturated value and is clamped to ``act_max`` either way),
       then ``P >>= e`` with ``e = max(-shift, 0)``, rounding up when the last bit shifted out
       is set and ``P >= 0`` or a bit before it was set (RoundingDivideByPOT); single:
       ``P >>= 31 - shift``, rounding up when the last bit shifted out is set;
    5. ``+ zero_point`` and the clamp, on 12 bits (a ``P`` outside 10 bits clamps to one end).

    About ``40 + |shift|`` cycles per channel for double rounding, ``65 - shift`` for single.

    Parameters
    ----------
    config : NPUConfig
        ``cols`` and ``rounding``.
    """

    def __init__(self, config):
        if not isinstance(config, NPUConfig):
            raise TypeError(
                f"SequentialRequantiser config must be an NPUConfig, not {config!r}")
        self._config = config
        super().__init__({
            "i": In(stream.Signature(Requantiser.input_layout(config.cols))),
            "o": Out(stream.Signature(Requantiser.output_layout(config.cols))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        C = cfg.cols
        double = cfg.rounding == "double"
        p_in = self.i.payload

        # The channel being requantised, read from the row on `i`.
        ch = Signal(range(C))
        acc, bias, mult = (Signal(signed(32), name=n) for n in ("acc", "bias", "mult"))
        shift = Signal(signed(6))
        with m.Switch(ch):
            for c in range(C):
                with m.Case(c):
                    m.d.comb += [acc.eq(p_in.acc[c]), bias.eq(p_in.bias[c]),
                                 mult.eq(p_in.multiplier[c]), shift.eq(p_in.shift[c])]

        hi = Signal(signed(33))
        lo = Signal(32)
        count = Signal(range(65))
        last_out = Signal()       # the last bit shifted out while rounding
        sticky = Signal()         # any bit shifted out before it

        def shift_right():
            m.d.sync += [lo.eq(Cat(lo[1:], hi[0])), hi.eq(hi >> 1)]

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM(name="requant"):
            with m.State("IDLE"), m.If(self.i.valid & ~self.o.valid):
                m.d.sync += [lo.eq((acc + bias)[:32]), hi.eq(2**30 if double else 0)]
                if double:
                    m.d.sync += count.eq(Mux(shift > 0, shift, 0)[:5])
                    m.next = "LEFT"
                else:
                    m.d.sync += count.eq(31)
                    m.next = "MUL"
            if double:
                with m.State("LEFT"):
                    with m.If(count != 0):
                        m.d.sync += [lo.eq(lo << 1), count.eq(count - 1)]
                    with m.Else():
                        m.d.sync += count.eq(31)
                        m.next = "MUL"
            with m.State("MUL"):
                # Step k = 31 - count consumes bit k of x; bit 31 weighs -2**31.
                addend = Mux(lo[0], Mux(count == 0, -mult, mult), 0)
                total = Signal(signed(34))
                m.d.comb += total.eq(hi + addend)
                m.d.sync += [lo.eq(Cat(lo[1:], total[0])), hi.eq(total[1:]),
                             count.eq(count - 1)]
                with m.If(count == 0):
                    if double:
                        m.d.sync += count.eq(31)
                        m.next = "SRDHM"
                    else:
                        m.d.sync += count.eq((31 - shift)[:7])
                        m.next = "ROUND"
                    m.d.sync += [last_out.eq(0), sticky.eq(0)]
            if double:
                with m.State("SRDHM"):
                    shift_right()
                    m.d.sync += count.eq(count - 1)
                    with m.If(count == 1):
                        m.d.sync += count.eq(Mux(shift < 0, -shift, 0)[:6])
                        m.next = "ROUND"
            with m.State("ROUND"):
                with m.If(count != 0):
                    shift_right()
                    m.d.sync += [count.eq(count - 1), last_out.eq(lo[0]),
                                 sticky.eq(sticky | last_out)]
                with m.Else():
                    m.next = "OUT"
            with m.State("OUT"):
                value = Cat(lo, hi).as_signed()
                negative = hi[-1]
                fits = Signal()
                m.d.comb += fits.eq(~value[9:].any() | value[9:].all())
                if double:
                    up = last_out & (~negative | sticky)
                else:
                    up = last_out
                v = Signal(signed(12))
                m.d.comb += v.eq(Mux(fits, value[:10].as_signed() + up + p_in.zero_point,
                                     Mux(negative, -1024, 1023)))
                lo_c, hi_c = p_in.act_min, p_in.act_max
                floored = Mux(v < lo_c, lo_c, v)
                clamped = Mux(floored > hi_c, hi_c, floored)
                m.d.sync += self.o.payload[ch].eq(clamped[:8])
                with m.If(ch == C - 1):
                    m.d.comb += self.i.ready.eq(1)
                    m.d.sync += [self.o.valid.eq(1), ch.eq(0)]
                with m.Else():
                    m.d.sync += ch.eq(ch + 1)
                m.next = "IDLE"
        return m
