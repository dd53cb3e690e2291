"""ECP5 DSP primitives for the retimed builds (synthesis only).

Yosys maps an inferred product onto a MULT18X18D without its registers, so the multiplier's
delay and the routes into and out of the DSP make one path. Instantiated here, the register
that follows a product is the DSP's own output register. The simulators cannot run the
instance; ``npu.sim.ecp5.MULT18X18DModel`` stands in for it in the tests.
"""

from amaranth import ClockSignal, Const, Instance, Module, Signal, signed
from amaranth.hdl import Shape, Value

__all__ = ["DSP_PARTIAL_PRODUCTS", "DSP_PRODUCTS", "DSP_SPAN", "fits_dsp_input",
           "registered_multiply"]

#: The platform attribute an ECP5 build sets to the number of PEs per array (the first ones in
#: row-major order) whose multiply and product register are one MULT18X18D, the register being
#: the DSP's output register (retimed arrays only). Unset, every product is inferred.
DSP_PRODUCTS = "npu_dsp_products"

#: The platform attribute an ECP5 build sets (true) so that a retimed requantiser's four
#: partial products are MULT18X18Ds whose output registers are the stage-2 registers. Unset,
#: the products are inferred (and an ECP5 build's DSPs then have no registers).
DSP_PARTIAL_PRODUCTS = "npu_dsp_partial_products"

#: The platform attribute an ECP5 build sets (true) so that a retimed core's dispatch takes
#: the rows x stride product of a fetched instruction (the span its DMA window check needs)
#: from a MULT18X18D's output register, when both factors fit 17 bits. Unset, or wider, the
#: product is inferred and registered in the fabric.
DSP_SPAN = "npu_dsp_span"


def fits_dsp_input(value):
    """Whether ``value`` fits a MULT18X18D's signed 18-bit operand (signed up to 18 bits,
    unsigned up to 17)."""
    shape = Shape.cast(Value.cast(value).shape())
    return shape.width <= (18 if shape.signed else 17)


def registered_multiply(a, b, p, ce, *, input_registers=False):
    """A MULT18X18D whose output register is ``p``: ``p <= a * b`` (its low ``len(p)`` bits)
    when ``ce``, on the ``sync`` clock; not reset. ``a`` and ``b`` must fit a signed 18-bit
    operand (signed up to 18 bits, unsigned up to 17). With ``input_registers`` the operands
    go through the DSP's input registers first (also clocked when ``ce``): ``p`` is then the
    product of the operands of two ``ce`` cycles before, and the route into the DSP ends at
    a register instead of passing through the multiplier."""
    for name, value in (("a", a), ("b", b)):
        if not fits_dsp_input(value):
            raise ValueError(f"Operand {name} ({Value.cast(value).shape()}) does not fit a "
                             f"signed 18-bit DSP input")
    if len(p) > 36:
        raise ValueError(f"A MULT18X18D product has 36 bits, not {len(p)}")
    ports = {"p_REG_OUTPUT_CLK": "CLK0", "p_REG_OUTPUT_CE": "CE0", "p_REG_OUTPUT_RST": "RST0",
             "p_GSR": "DISABLED", "p_RESETMODE": "SYNC",
             "i_CLK0": ClockSignal("sync"), "i_CE0": ce, "i_RST0": Const(0, 1),
             "i_SIGNEDA": Const(1, 1), "i_SIGNEDB": Const(1, 1),
             "i_SOURCEA": Const(0, 1), "i_SOURCEB": Const(0, 1)}
    if input_registers:
        for port in ("A", "B"):
            ports.update({f"p_REG_INPUT{port}_CLK": "CLK0", f"p_REG_INPUT{port}_CE": "CE0",
                          f"p_REG_INPUT{port}_RST": "RST0"})
    wide_a, wide_b = Signal(signed(18)), Signal(signed(18))
    wide_p = Signal(36)
    for i in range(18):
        ports[f"i_A{i}"] = wide_a[i]
        ports[f"i_B{i}"] = wide_b[i]
        ports[f"i_C{i}"] = Const(0, 1)
    for i in range(36):
        ports[f"o_P{i}"] = wide_p[i]
    m = Module()
    m.submodules.dsp = Instance("MULT18X18D", **ports)
    m.d.comb += [wide_a.eq(a), wide_b.eq(b), p.eq(wide_p[:len(p)])]
    return m
