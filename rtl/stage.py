"""Optional pipeline stages: the register stages that ``NPUConfig.retime`` adds.

A stage is written once, as the signals that enter it; whether it is a register (a cycle late)
or a pass-through is a flag, so the retimed and the plain build share one description.
"""

from amaranth import Signal


def stage_if(m, registered, target, value):
    """Drive ``target`` with ``value``: registered (a cycle late) if ``registered``, else
    combinationally."""
    domain = m.d.sync if registered else m.d.comb
    domain += target.eq(value)


def staged(m, registered, prefix, **values):
    """The ``values`` (signals, views, expressions, or lists of them) as a dictionary, each
    registered a cycle late if ``registered`` (registers named ``<prefix>_<key>``), else the
    values themselves."""
    if not registered:
        return dict(values)

    def register(name, value):
        reg = Signal.like(value, name=name)
        stage_if(m, True, reg, value)
        return reg

    return {key: ([register(f"{prefix}_{key}{i}", v) for i, v in enumerate(value)]
                  if isinstance(value, (list, tuple)) else register(f"{prefix}_{key}", value))
            for key, value in values.items()}
