"""Optional pipeline stages: the register stages that ``NPUConfig.retime`` adds.

A stage is written once, as the signals that enter it; whether it is a register (a cycle late)
or a pass-through is a flag, so the retimed and the plain build share one description.

Data registers (here and in the array, the requantiser and the write-back) are ``reset_less``:
the units' reset at a run start, and the board's reset, reach only the valid bits and the
control state, never a register whose contents are used without a valid bit. A run therefore
starts with whatever the last one left in the data registers, and the tests restart cores on
purpose with data left in flight.
"""

from amaranth import Signal, Value

#: The attribute that marks a replica (see ``replica``); the FPGA build's synthesis script
#: keeps the registers that drive such signals from being merged.
REPLICA_ATTR = "keep"


def stage_if(m, registered, target, value):
    """Drive ``target`` with ``value``: registered (a cycle late) if ``registered``, else
    combinationally."""
    domain = m.d.sync if registered else m.d.comb
    domain += target.eq(value)


def staged(m, registered, prefix, *, reset=(), **values):
    """The ``values`` (signals, views, expressions, or lists of them) as a dictionary, each
    registered a cycle late if ``registered`` (registers named ``<prefix>_<key>``), else the
    values themselves.

    Only the registers of the keys named in ``reset`` (the stage's valid bits and the
    controls that act without them) are reset; the others hold data that nothing uses unless
    a valid bit says so, and are left off the reset net (thousands of flip-flops in a large
    array, which the FPGA would otherwise route a reset to)."""
    unknown = set(reset) - set(values)
    if unknown:
        raise ValueError(f"reset names {sorted(unknown)}, which are not among the stage's "
                         f"values {sorted(values)}")
    if not registered:
        return dict(values)

    def register(name, value, reset_less):
        reg = Signal.like(value, name=name, reset_less=reset_less)
        stage_if(m, True, reg, value)
        return reg

    return {key: ([register(f"{prefix}_{key}{i}", v, key not in reset)
                   for i, v in enumerate(value)]
                  if isinstance(value, (list, tuple))
                  else register(f"{prefix}_{key}", value, key not in reset))
            for key, value in values.items()}


def replica(shape, *, name):
    """A ``reset_less`` signal of ``shape`` (or shaped like a signal), for a register that
    may equal others (the same value, registered from the same signal): synthesis keeps it
    apart from its twins instead of merging them into one register, so that each copy is
    placed by its own loads. Yosys merges equal flip-flops unless the cell is marked
    ``keep``; Amaranth puts a signal's attributes on the wire, so the build moves the mark
    from the wire to the flip-flop that drives it (``synth.build``). In simulation it is an
    ordinary register."""
    if isinstance(shape, Value):
        return Signal.like(shape, name=name, reset_less=True, attrs={REPLICA_ATTR: 1})
    return Signal(shape, name=name, reset_less=True, attrs={REPLICA_ATTR: 1})
