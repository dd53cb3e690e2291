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
from amaranth.hdl import ValueCastable

#: The attribute that marks a replica (see ``replica``); the FPGA build's synthesis script
#: keeps the registers that drive such signals from being merged.
REPLICA_ATTR = "keep"


def stage_if(m, registered, target, value):
    """Drive ``target`` with ``value``: registered (a cycle late) if ``registered``, else
    combinationally."""
    domain = m.d.sync if registered else m.d.comb
    domain += target.eq(value)


def staged(m, registered, prefix, *, reset=(), replicas=(), **values):
    """The ``values`` (signals, views, expressions, or lists of them) as a dictionary, each
    registered a cycle late if ``registered`` (registers named ``<prefix>_<key>``), else the
    values themselves.

    Only the registers of the keys named in ``reset`` (the stage's valid bits and the
    controls that act without them) are reset; the others hold data that nothing uses unless
    a valid bit says so, and are left off the reset net (thousands of flip-flops in a large
    array, which the FPGA would otherwise route a reset to).

    The registers of the keys named in ``replicas`` are replicas (see ``replica``): kept
    apart by synthesis from the registers that equal them. A list of one value repeated,
    ``key=[value] * n``, makes ``n`` copies of one register, each to be placed by its own
    loads."""
    for name, keys in (("reset", reset), ("replicas", replicas)):
        unknown = set(keys) - set(values)
        if unknown:
            raise ValueError(f"{name} names {sorted(unknown)}, which are not among the "
                             f"stage's values {sorted(values)}")
    both = set(reset) & set(replicas)
    if both:
        raise ValueError(f"{sorted(both)} cannot be both reset and replicas (a replica is "
                         f"never reset)")
    if not registered:
        return dict(values)

    def register(name, value, key):
        if key in replicas:
            reg = replica(value, name=name)
        else:
            reg = Signal.like(value, name=name, reset_less=key not in reset)
        stage_if(m, True, reg, value)
        return reg

    return {key: ([register(f"{prefix}_{key}{i}", v, key) for i, v in enumerate(value)]
                  if isinstance(value, (list, tuple))
                  else register(f"{prefix}_{key}", value, key))
            for key, value in values.items()}


def replica(shape, *, name):
    """A ``reset_less`` signal of ``shape`` (or shaped like a value or view), for a register
    that may equal others (the same value, registered from the same signal): synthesis keeps
    it apart from its twins instead of merging them into one register, so that each copy is
    placed by its own loads. Yosys merges equal flip-flops unless the cell is marked
    ``keep``; Amaranth puts a signal's attributes on the wire, so the build moves the mark
    from the wire to the flip-flop that drives it (``synth.build``). In simulation it is an
    ordinary register."""
    if isinstance(shape, (Value, ValueCastable)):
        return Signal.like(shape, name=name, reset_less=True, attrs={REPLICA_ATTR: 1})
    return Signal(shape, name=name, reset_less=True, attrs={REPLICA_ATTR: 1})
