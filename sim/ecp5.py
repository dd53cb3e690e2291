"""Simulation stand-ins for the ECP5 primitives the retimed builds instantiate.

The Amaranth simulator (and Verilator, without the vendor library) cannot run a MULT18X18D
instance. :class:`MULT18X18DModel` is the primitive as Lattice documents it (TN1267, sysDSP:
``P = A x B``, A and B signed as SIGNEDA / SIGNEDB say, the input registers and the output
register each clocked by the CLKn / CEn / RSTn that its ``REG_..._CLK`` names, or none); it
refuses parameters and wirings it does not model. :func:`use_mult18x18d_model` swaps it in for the instances that
``npu.rtl.ecp5`` makes; :class:`OnPlatform` elaborates a design for a platform object (the
simulator elaborates for none), so that the platform attributes which ask for the instances
can be set.
"""

from amaranth import Cat, ClockSignal, Const, Elaboratable, Fragment, Module, Signal

__all__ = ["MULT18X18DModel", "OnPlatform", "use_mult18x18d_model"]

#: The registers modelled (each clocked or not); the pipeline register is not.
_REGISTERS = ("REG_INPUTA", "REG_INPUTB", "REG_OUTPUT")
_PARAMETERS = ({f"{reg}_{what}" for reg in _REGISTERS for what in ("CLK", "CE", "RST")}
               | {"REG_PIPELINE_CLK", "GSR", "RESETMODE"})


class MULT18X18DModel(Elaboratable):
    """A MULT18X18D with parallel (not shifted-in) inputs, each input register and the output
    register used or not, and no pipeline register. Takes the arguments of
    ``Instance("MULT18X18D", ...)``."""

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
        if self.p.get("REG_PIPELINE_CLK", "NONE") != "NONE":
            raise ValueError("MULT18X18D REG_PIPELINE_CLK is not modelled (only NONE)")

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
        a = self._register(m, "REG_INPUTA", a)
        b = self._register(m, "REG_INPUTB", b)
        a = a.as_signed() if self._const("SIGNEDA") else a
        b = b.as_signed() if self._const("SIGNEDB") else b
        p = self._register(m, "REG_OUTPUT", (a * b)[:36])
        m.d.comb += [self.o[f"P{k}"].eq(p[k]) for k in range(36)]
        return m

    def _register(self, m, reg, value):
        """``value`` through register ``reg`` (``REG_INPUTA`` ...), or as it is if unclocked."""
        clk = self.p.get(f"{reg}_CLK", "NONE")
        if clk == "NONE":
            return value
        n = clk[-1]
        if (self.p.get(f"{reg}_CE"), self.p.get(f"{reg}_RST")) != (f"CE{n}", f"RST{n}"):
            raise ValueError(f"The {reg} register's CE and RST must be CE{n} and RST{n}")
        if self.p.get("RESETMODE") != "SYNC":
            raise ValueError("Only RESETMODE SYNC is modelled")
        clock = self.i.get(f"CLK{n}")
        if not (isinstance(clock, ClockSignal) and clock.domain == "sync"):
            raise ValueError(f"CLK{n} must be the sync clock, not {clock!r}")
        r = Signal(len(value), name=reg.lower())
        with m.If(self.i[f"RST{n}"]):
            m.d.sync += r.eq(0)
        with m.Elif(self.i[f"CE{n}"]):
            m.d.sync += r.eq(value)
        return r


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
