"""Simulation stand-ins for the ECP5 primitives the retimed builds instantiate.

The Amaranth simulator (and Verilator, without the vendor library) cannot run a MULT18X18D
instance. :class:`MULT18X18DModel` is the primitive as Lattice documents it (TN1267, sysDSP:
``P = A x B``, A and B signed as SIGNEDA / SIGNEDB say, the output register clocked by the
CLKn / CEn / RSTn that ``REG_OUTPUT_CLK`` names, or none); it refuses parameters and wirings
it does not model. :func:`use_mult18x18d_model` swaps it in for the instances that
``npu.rtl.ecp5`` makes; :class:`OnPlatform` elaborates a design for a platform object (the
simulator elaborates for none), so that the platform attributes which ask for the instances
can be set.
"""

from amaranth import Cat, ClockSignal, Const, Elaboratable, Fragment, Module, Signal

__all__ = ["MULT18X18DModel", "OnPlatform", "use_mult18x18d_model"]

_PARAMETERS = {"REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_PIPELINE_CLK", "REG_OUTPUT_CLK",
               "REG_OUTPUT_CE", "REG_OUTPUT_RST", "GSR", "RESETMODE"}


class MULT18X18DModel(Elaboratable):
    """A MULT18X18D with parallel (not shifted-in) inputs, unregistered inputs, and an output
    register or none. Takes the arguments of ``Instance("MULT18X18D", ...)``."""

    def __init__(self, kind, **ports):
        if kind != "MULT18X18D":
            raise ValueError(f"Only MULT18X18D is modelled, not {kind}")
        self.p = {k[2:]: v for k, v in ports.items() if k.startswith("p_")}
        self.i = {k[2:]: v for k, v in ports.items() if k.startswith("i_")}
        self.o = {k[2:]: v for k, v in ports.items() if k.startswith("o_")}
        unknown = set(self.p) - _PARAMETERS
        if unknown:
            raise ValueError(f"MULT18X18D parameters not modelled: {sorted(unknown)}")
        if set(self.o) != {f"P{k}" for k in range(36)}:
            raise ValueError("A MULT18X18D instance must connect all of P0..P35")
        for reg in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_PIPELINE_CLK"):
            if self.p.get(reg, "NONE") != "NONE":
                raise ValueError(f"MULT18X18D {reg} is not modelled (only NONE)")

    def _const(self, name):
        value = self.i.get(name)
        if not isinstance(value, Const):
            raise TypeError(f"MULT18X18D {name} must be tied to a constant here, not {value!r}")
        return value.value

    def elaborate(self, platform):
        m = Module()
        if self._const("SOURCEA") or self._const("SOURCEB"):
            raise ValueError("MULT18X18D shifted-in operands (SOURCEA / SOURCEB) are not modelled")
        a = Cat(self.i[f"A{k}"] for k in range(18))
        b = Cat(self.i[f"B{k}"] for k in range(18))
        a = a.as_signed() if self._const("SIGNEDA") else a
        b = b.as_signed() if self._const("SIGNEDB") else b
        p = Signal(36)
        clk = self.p.get("REG_OUTPUT_CLK", "NONE")
        if clk == "NONE":
            m.d.comb += p.eq(a * b)
        else:
            n = clk[-1]
            if (self.p.get("REG_OUTPUT_CE"), self.p.get("REG_OUTPUT_RST")) != (f"CE{n}",
                                                                                f"RST{n}"):
                raise ValueError(f"The output register's CE and RST must be CE{n} and RST{n}")
            if self.p.get("RESETMODE") != "SYNC":
                raise ValueError("Only RESETMODE SYNC is modelled")
            clock = self.i.get(f"CLK{n}")
            if not (isinstance(clock, ClockSignal) and clock.domain == "sync"):
                raise ValueError(f"CLK{n} must be the sync clock, not {clock!r}")
            with m.If(self.i[f"RST{n}"]):
                m.d.sync += p.eq(0)
            with m.Elif(self.i[f"CE{n}"]):
                m.d.sync += p.eq(a * b)
        m.d.comb += [self.o[f"P{k}"].eq(p[k]) for k in range(36)]
        return m


class OnPlatform(Elaboratable):
    """Elaborates ``inner`` for ``platform``."""

    def __init__(self, inner, platform):
        self.inner, self.platform = inner, platform

    def elaborate(self, platform):
        return Fragment.get(self.inner, self.platform)


def use_mult18x18d_model(monkeypatch):
    """Make ``npu.rtl.ecp5`` build :class:`MULT18X18DModel` instead of the instance (with
    pytest's ``monkeypatch``); returns a list that grows by one per model made."""
    from npu.rtl import ecp5
    made = []

    def make(kind, **ports):
        made.append(kind)
        return MULT18X18DModel(kind, **ports)

    monkeypatch.setattr(ecp5, "Instance", make)
    return made
