"""Where an ECP5 build pins its PE multipliers (a floorplan of the array's DSPs;
``python -m npu.synth.build ... --pin-dsps``, off by default).

When the processing elements take every multiplier the DSP budget leaves (``pe_mult``
``"mixed"``: the largest arrays), their DSPs fill the die's DSP rows from end to end, and
nextpnr's analytic placer, left to itself, legalises each PE's DSP to whichever site is free:
a PE's DSP ends up ~50 tiles from its own fabric in a placed 16x16 (median), and the DSP's
product crosses the die every cycle. Pinned, the DSPs keep the array's shape and pull their
fabric with them (a median 5 tiles), though nextpnr's estimates of the pinned builds are lower
(docs/architecture.md):

- each core gets a vertical strip of the die: the same share of every DSP row;
- a core's DSP-mapped PEs (the first ones in row-major order) are split across the DSP rows in
  row-major order, in proportion to the sites each row has: the partial sums flow down a
  column from one DSP row to the next, as they flow down the array;
- within a DSP row a core's PEs are ordered by column, then row, and spread evenly over its
  sites: the few PEs of one column that share a DSP row are neighbours (their partial sum
  passes from one to the next), and the next column follows (the activations pass along a
  row).

The build pins a DSP by setting nextpnr's ``BEL`` attribute on the PE's MULT18X18D instance
(``npu.rtl.ecp5.registered_multiply``), before synthesis (:func:`pin_script`); the other
DSPs (requantisers, the dispatch's span) take the sites left over.
"""

__all__ = ["PE_MODULE", "pe_dsp_sites", "pin_script"]

#: The RTLIL module of a board top's processing element (``core`` and ``row`` / ``col`` may be
#: Yosys selection patterns, e.g. ``*``); its DSP instance is ``mult/dsp`` below it.
PE_MODULE = "top.system.npu.core{core}.execute.array.pe_{row}_{col}"


def pe_dsp_sites(site_rows, *, cores, rows, cols, on_dsp):
    """``{(core, row, col): site}`` for the first ``on_dsp`` PEs (row-major) of each of
    ``cores`` arrays of ``rows`` x ``cols``. ``site_rows`` lists the die's DSP rows, each a
    sequence of nextpnr BEL names in the order they lie along the row."""
    if on_dsp < 0 or on_dsp > rows * cols:
        raise ValueError(f"on_dsp must be 0 to {rows * cols} (rows x cols), not {on_dsp!r}")
    strips = []
    for core in range(cores):
        strips.append([row[core * len(row) // cores:(core + 1) * len(row) // cores]
                       for row in site_rows])
    need = cores * on_dsp
    have = sum(len(s) for strip in strips for s in strip)
    if need > have:
        raise ValueError(f"{cores} x {on_dsp} PE multipliers do not fit {have} DSP sites")
    pes = [(r, c) for r in range(rows) for c in range(cols)][:on_dsp]
    placed = {}
    for core, strip in enumerate(strips):
        total = sum(len(s) for s in strip)
        if on_dsp > total:
            raise ValueError(f"Core {core}'s {on_dsp} PE multipliers do not fit its "
                             f"{total} DSP sites")
        start, seen = 0, 0
        for sites in strip:
            seen += len(sites)
            end = on_dsp * seen // total            # in proportion to the sites
            group = sorted(pes[start:end], key=lambda p: (p[1], p[0]))
            for i, (r, c) in enumerate(group):
                placed[(core, r, c)] = sites[i * len(sites) // len(group)]
            start = end
    return placed


def pin_script(placed):
    """Yosys commands that pin each PE's DSP instance (``placed`` as from
    :func:`pe_dsp_sites`) to its site, by nextpnr's ``BEL`` attribute; run after
    ``hierarchy``, before synthesis flattens the design."""
    return [f'setattr -set BEL "{site}" {PE_MODULE.format(core=core, row=r, col=c)}.mult/dsp'
            for (core, r, c), site in sorted(placed.items())]
