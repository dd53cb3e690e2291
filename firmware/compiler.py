"""The tiling compiler: INT8 GEMM -> one command stream per core.

Memory layout
-------------
The driver stores operands in layouts that make every DMA row start on a bus-word boundary,
whatever the array size (``R`` x ``C`` array, ``G`` = ``sparse_group``, ``B`` = bus bytes):

* activations ``A[M, K]``: K-group ``q`` (``G * R`` columns, one scratchpad line per row) is a
  contiguous ``M x a_pitch`` slab, ``a_pitch = roundup(G * R, B)``; row m of group q is at
  ``a_addr + (q * M + m) * a_pitch``.
* weights: a list of *tiles*, each ``R + 1`` rows of ``w_pitch = roundup(max(C, R), B)`` bytes:
  R weight rows (``C`` int8 each) and a metadata row of R gather indices. Tile rows are the
  non-zero K-rows of one K-group for one N-block (``C`` columns), packed in order: a K-group
  whose rows are all non-zero gives ``G`` dense tiles; a quarter-dense one a single tile (with
  the lane gather, ``config.gather == "lane"``, K-row ``g * R + i`` of a group only ever goes
  to tile row i, so a quarter-dense group packs into one tile when each of its R lanes keeps
  one of its G K-rows). This is the sparse unit's compressed weight format; the gather indices
  say which activation byte of the line each array row multiplies.
* output ``Y[M, N]`` (int8, or int32 for raw results): N-block ``nb`` is an ``M x o_pitch`` slab,
  ``o_pitch = roundup(C * element bytes, B)``.
* requantisation parameters: one LOADP record per N-block, ``param_pitch`` bytes apart.

Schedule (per core)
-------------------
A core computes a band of output rows (or of N-blocks). The band is cut into *chunks* of ``mt``
rows; for each chunk, *groups* of N-blocks accumulate their tiles into one accumulator region
(a chunk's first group may hold several blocks side by side, the rest one); regions alternate
so the stores of one group overlap the compute of the next. A *step* is one tile: LOAD its
weights (and, streamed, its activations), then a MATMUL that loads them into the idle weight
bank first.

* ``resident`` mode keeps a chunk's activations for all K-groups in the scratchpad (two chunk
  buffers when the band has several chunks, so the next chunk loads while this one computes);
  each K-group is loaded with the first step that needs it.
* ``streamed`` mode (when K is too large for that) loads each step's activations with it.

Tokens: steps go in *windows* of ``WINDOW_STEPS`` (the first step alone); the load unit pushes
one token per window (load -> execute); the execute unit gives one back when the window's
last MATMUL has read its lines (``PIPELINE_DEPTH`` steps of buffers, two windows, are in
flight); execute -> store when a block's last step is in the accumulator; store -> execute when
a group's region has been read. Instructions are emitted in an order where every token a unit waits
for was emitted earlier, so no queue depth can deadlock a program.
"""

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from npu.rtl.isa import INSTR_BYTES, param_slot_bytes

from .asm import Program, pack_param_slot

__all__ = ["GemmLayout", "GemmPlan", "WeightTiles", "compile_gemm", "layout_sizes", "pack_a",
           "pack_params", "pack_weights", "plan_gemm", "roundup", "unpack_out"]

#: Steps in flight between the load and execute units (buffers per kind).
PIPELINE_DEPTH = 8
#: Steps per token: the load unit fills (and the execute unit frees) this many buffers at once.
WINDOW_STEPS = 4
#: Most N-blocks accumulated side by side (one accumulator region of ``GROUP_BLOCKS * mt`` rows).
GROUP_BLOCKS = 8
#: Gather index of an array row that has no weights (padding of a packed tile): reads zero.
NO_ROW = 0xFF


def roundup(value, multiple):
    return -(-value // multiple) * multiple


def cdiv(a, b):
    return -(-a // b)


@dataclass(frozen=True)
class GemmLayout:
    """Where a GEMM's operands live in memory (byte addresses) and their pitches."""
    a_addr: int
    w_addr: int
    out_addr: int
    param_addr: int
    a_pitch: int
    w_pitch: int
    o_pitch: int
    param_pitch: int


@dataclass
class WeightTiles:
    """The packed weights: ``blob`` (bytes for memory) and, per N-block, its tiles as
    ``(k_group, tile_index)`` in order. ``dense_tiles`` is what packing nothing would take."""
    blob: np.ndarray
    per_block: list
    dense_per_block: list

    @property
    def tiles(self):
        return sum(len(t) for t in self.per_block)

    @property
    def dense_tiles(self):
        return sum(self.dense_per_block)


@dataclass
class GemmPlan:
    """How a GEMM is split: per core a band of rows (or of N-blocks), chunk size and mode."""
    M: int
    K: int
    N: int
    raw: bool
    nQ: int
    nN: int
    bands: list = field(default_factory=list)   # per core: (m0, m1, nb0, nb1)
    mt: int = 0
    resident: bool = True
    a_buffers: int = 2


def layout_sizes(config, M, K, N, raw):
    """Bytes of each operand's layout and the pitches, for the driver (weights: per tile)."""
    B = config.bus_bytes
    R, C = config.rows, config.cols
    GR = config.gather_bytes
    nQ, nN = cdiv(K, GR), cdiv(N, C)
    a_pitch = roundup(GR, B)
    w_pitch = roundup(max(C, R), B)
    o_pitch = roundup(C * (4 if raw else 1), B)
    param_pitch = roundup(param_slot_bytes(C), B)
    return dict(a_bytes=nQ * M * a_pitch, tile_bytes=(R + 1) * w_pitch,
                o_bytes=nN * M * o_pitch, p_bytes=0 if raw else nN * param_pitch,
                a_pitch=a_pitch, w_pitch=w_pitch, o_pitch=o_pitch, param_pitch=param_pitch)


def pack_a(config, a):
    """int8 [M, K] -> the K-grouped activation layout (bytes)."""
    M, K = a.shape
    GR, B = config.gather_bytes, config.bus_bytes
    nQ, pitch = cdiv(K, GR), roundup(GR, B)
    out = np.zeros((nQ, M, pitch), np.uint8)
    for q in range(nQ):
        blk = a[:, q * GR:(q + 1) * GR]
        out[q, :, :blk.shape[1]] = blk.view(np.uint8)
    return out.reshape(-1)


def pack_weights(config, w, *, sparse=True):
    """int8 [K, N] -> packed weight tiles.

    With ``sparse``, K-rows that are zero for a whole N-block are left out and the rest of
    each K-group packed R to a tile (with the lane gather, each into the tile row of its
    lane); without, every K-group gives ``ceil(rows / R)`` dense tiles. Either way the gather
    indices make the result exactly ``A @ w``.
    """
    K, N = w.shape
    R, C, B = config.rows, config.cols, config.bus_bytes
    GR = config.gather_bytes
    nQ, nN = cdiv(K, GR), cdiv(N, C)
    pitch = roundup(max(C, R), B)
    tiles, per_block, dense = [], [], []
    for nb in range(nN):
        cols = w[:, nb * C:(nb + 1) * C]
        mine = []
        dense.append(0)
        for q in range(nQ):
            ks = np.arange(q * GR, min((q + 1) * GR, K))
            dense[-1] += cdiv(len(ks), R)
            if sparse:
                ks = ks[cols[ks].any(axis=1)]
            for rows in _tile_rows(config, ks - q * GR):
                tile = np.zeros((R + 1, pitch), np.uint8)
                used = rows != NO_ROW
                tile[:R][used, :cols.shape[1]] = cols[q * GR + rows[used]].view(np.uint8)
                tile[R, :R] = rows
                mine.append((q, len(tiles)))
                tiles.append(tile)
        if not mine:
            # An all-zero block still has to write zeros: one empty tile does that.
            tile = np.zeros((R + 1, pitch), np.uint8)
            tile[R, :R] = NO_ROW
            mine.append((0, len(tiles)))
            tiles.append(tile)
        per_block.append(mine)
    blob = np.concatenate([t.reshape(-1) for t in tiles]) if tiles else np.zeros(0, np.uint8)
    return WeightTiles(blob=blob, per_block=per_block, dense_per_block=dense)


def _tile_rows(config, offsets):
    """The packed tiles of one K-group: per tile, the K-row offset (within the group) each
    array row multiplies, ``NO_ROW`` for an empty row. ``offsets`` are the group's K-rows to
    keep, in order. The crossbar gather takes them R to a tile in order; the lane gather
    keeps offset ``g * R + i`` in row i, so the group takes as many tiles as its busiest row
    has offsets."""
    R = config.rows
    if config.gather == "crossbar":
        chunks = [offsets[p:p + R] for p in range(0, len(offsets), R)]
        return [np.concatenate([c, np.full(R - len(c), NO_ROW)]) for c in chunks]
    per_row = [offsets[offsets % R == i] for i in range(R)]
    depth = max(len(k) for k in per_row)
    return [np.array([k[t] if t < len(k) else NO_ROW for k in per_row]) for t in range(depth)]


def unpack_out(config, raw_bytes, M, N, raw):
    """The blocked output layout -> int8 or int32 [M, N]."""
    C, B = config.cols, config.bus_bytes
    es = 4 if raw else 1
    nN, pitch = cdiv(N, C), roundup(C * es, B)
    blocks = np.asarray(raw_bytes, np.uint8)[:nN * M * pitch].reshape(nN, M, pitch)
    cols = blocks[:, :, :C * es].copy()
    if raw:
        vals = cols.view("<i4").reshape(nN, M, C)
    else:
        vals = cols.view(np.int8).reshape(nN, M, C)
    return np.concatenate(list(vals), axis=1)[:, :N]


def pack_params(config, bias, multiplier, shift, zero_point, act_min, act_max):
    """Per-channel parameters (length N) -> one LOADP record per N-block, padded."""
    C, B = config.cols, config.bus_bytes
    N = len(bias)
    pitch = roundup(param_slot_bytes(C), B)
    out = np.zeros((cdiv(N, C), pitch), np.uint8)
    for nb in range(cdiv(N, C)):
        sl = slice(nb * C, (nb + 1) * C)
        rec = pack_param_slot(C, bias=bias[sl], multiplier=multiplier[sl], shift=shift[sl],
                              zero_point=zero_point, act_min=act_min, act_max=act_max)
        out[nb, :len(rec)] = np.frombuffer(rec, np.uint8)
    return out.reshape(-1)


def plan_gemm(config, M, K, N, *, raw, cores=None, split="auto"):
    """Split an M x K x N GEMM over the cores and choose the chunking.

    ``split`` is "rows" (each core a band of output rows), "cols" (each core a band of
    N-blocks) or "auto": rows unless that leaves cores without a useful band; and with 4 or
    more cores, a grid of row bands x N-block bands when it reads a fifth less from memory
    (every core reads the weights of all its N-blocks once per chunk, so with many cores the
    row split reads the weights many times over).
    """
    if split not in ("auto", "rows", "cols"):
        raise ValueError(f"split must be 'auto', 'rows' or 'cols', not {split!r}")
    R, C = config.rows, config.cols
    cores = config.cores if cores is None else cores
    nQ, nN = cdiv(K, config.gather_bytes), cdiv(N, C)
    plan = GemmPlan(M=M, K=K, N=N, raw=raw, nQ=nQ, nN=nN)
    if _free_lines(config) < PIPELINE_DEPTH:
        raise ValueError(f"the scratchpad ({config.scratchpad_bytes} bytes) is too small "
                         f"for a {R}x{C} array")
    if split == "auto":
        split = "rows" if (M >= cores * min(M, R) or nN < cores) else "cols"
        if split == "rows" and cores >= 4:
            rows = _grid(M, nN, min(cores, M), 1)
            grids = [_grid(M, nN, pr, cores // pr) for pr in range(2, cores // 2 + 1)
                     if cores % pr == 0 and pr <= M and cores // pr <= nN]
            best = min(grids, key=lambda g: _read_bytes(config, g, K), default=None)
            if best and _read_bytes(config, best, K) < 0.8 * _read_bytes(config, rows, K):
                split, plan.bands = "grid", best
    if split == "rows":
        plan.bands = _grid(M, nN, min(cores, M), 1)
    elif split == "cols":
        plan.bands = _grid(M, nN, 1, min(cores, nN))
    band_rows = max(m1 - m0 for m0, m1, _, _ in plan.bands)
    plan.mt, plan.resident, plan.a_buffers = _chunking(config, band_rows, nQ)
    return plan


def _grid(M, nN, pr, pc):
    """Bands of a ``pr`` x ``pc`` grid: row bands (outer) x N-block bands."""
    rows = [M * i // pr for i in range(pr + 1)]
    cols = [nN * j // pc for j in range(pc + 1)]
    return [(rows[i], rows[i + 1], cols[j], cols[j + 1]) for i in range(pr) for j in range(pc)]


def _chunking(config, band_rows, nQ):
    """(mt, resident, a_buffers) for a band of ``band_rows`` rows."""
    D = PIPELINE_DEPTH
    acc_limit = config.acc_rows // 2
    sp_free = _free_lines(config)
    # Resident: one chunk buffer if the whole band fits, else two (double-buffered).
    if band_rows <= min(acc_limit, sp_free // nQ):
        return band_rows, True, 1
    mt_max = min(band_rows, acc_limit, sp_free // (2 * nQ))
    # Resident unless the chunks would be too short to hide a step's dispatch and weights.
    if mt_max >= min(band_rows, 16):
        return cdiv(band_rows, cdiv(band_rows, mt_max)), True, 2
    mt_max = min(band_rows, acc_limit, sp_free // D)
    return cdiv(band_rows, cdiv(band_rows, mt_max)), False, D


def _read_bytes(config, bands, K):
    """Estimated bytes all cores read for ``bands`` (dense weights): activations, weight
    tiles once per chunk, and the instructions of each step (a MATMUL, a share of a LOAD)."""
    R, C, B = config.rows, config.cols, config.bus_bytes
    GR = config.gather_bytes
    nQ = cdiv(K, GR)
    tiles = sum(cdiv(min(GR, K - q * GR), R) for q in range(nQ))
    tile_bytes = (R + 1) * roundup(max(C, R), B)
    step_instr = INSTR_BYTES * (1 + 1 / WINDOW_STEPS)
    total = 0
    for m0, m1, nb0, nb1 in bands:
        mt, resident, _ = _chunking(config, m1 - m0, nQ)
        steps = cdiv(m1 - m0, mt) * (nb1 - nb0) * tiles
        a = (m1 - m0) * nQ if resident else steps * mt
        total += a * roundup(GR, B) + steps * (tile_bytes + step_instr)
    return total


def compile_gemm(config, plan, layout, weights, *, barrier_after=False):
    """Emit one Program per core band of ``plan`` (without END; the caller appends it)."""
    while True:
        try:
            programs = [_compile_band(config, plan, layout, weights, band)
                        for band in plan.bands]
            break
        except _ChunksTooShort:
            # Chunks of so few steps that a buffer comes round again before the tokens can
            # show its previous chunk done: more (and shorter) chunk buffers.
            _more_chunk_buffers(config, plan)
    # Requantised output needs parameter slots; a band with more N-blocks than slots reloads
    # them in one stream when it can, else runs in passes separated by barriers, and every
    # core must pass the same number of barriers.
    most = max(n for _, n in programs)
    out = []
    for prog, n in programs:
        for _ in range(most - n):
            prog.barrier()
        if barrier_after:
            prog.barrier()
        out.append(prog)
    return out


class _ChunksTooShort(Exception):
    """A chunk's activations cannot be loaded after the chunk that last used its buffer is
    done and before they are needed: the chunks are too short for the tokens' reach."""


def _more_chunk_buffers(config, plan):
    band_rows = max(m1 - m0 for m0, m1, _, _ in plan.bands)
    buffers = plan.a_buffers + 1
    mt_max = min(band_rows, config.acc_rows // 2, _free_lines(config) // (buffers * plan.nQ))
    if mt_max < 1:
        raise ValueError(f"no schedule keeps a {plan.M}x{plan.K}x{plan.N} GEMM's activations "
                         f"in the {config.scratchpad_bytes}-byte scratchpad")
    plan.a_buffers = buffers
    plan.mt = cdiv(band_rows, cdiv(band_rows, mt_max))


def _free_lines(config):
    """Scratchpad lines left for activations after the weight buffers."""
    return config.sp_lines - PIPELINE_DEPTH * (config.rows + 1)


def _schedule_activation_loads(steps, chunks, nQ, earliest, slice_rows):
    """Attach each resident chunk's K-group loads, in slices of ``slice_rows`` rows, to steps
    of the load stream. The load unit is one in-order stream, so a long load would hold up the
    weight tiles behind it: slices are spread a few per step.

    Chunk 0: group 0 with the first step; group q+1 spread over the steps of group q, so a
    group loads while the previous one computes. Chunk c > 0: prefetched during chunk c-1,
    spread over its steps from ``earliest[c]`` on (the first step whose loads the tokens
    order after every step of the chunk that used the buffer before). A slice is never
    attached after the step that first needs its group. When ``earliest[c]`` comes after the
    middle of chunk c-1 (its buffer is freed too late to load during chunk c-1), raises
    :class:`_ChunksTooShort`.
    """
    first_use = {}
    for t, st in enumerate(steps):
        first_use.setdefault((st["ci"], st["q"]), t)
    chunk_steps = [[t for t, st in enumerate(steps) if st["ci"] == c]
                   for c in range(len(chunks))]

    def slices(c, q):
        c0, c1 = chunks[c]
        return [(c, q, r, min(r + slice_rows, c1)) for r in range(c0, c1, slice_rows)]

    def spread(items, hosts):
        for i, item in enumerate(items):
            t = min(hosts[i * len(hosts) // len(items)], first_use[item[:2]])
            if t < earliest[item[0]]:
                raise _ChunksTooShort
            steps[t]["a_loads"].append(item)

    for c in range(len(chunks)):
        groups = sorted({q for (ci, q) in first_use if ci == c})
        if c == 0:
            for i, q in enumerate(groups):
                if i == 0:
                    steps[first_use[(c, q)]]["a_loads"].extend(slices(c, q))
                else:
                    prev = groups[i - 1]
                    hosts = [t for t in chunk_steps[c]
                             if first_use[(c, prev)] <= t < first_use[(c, q)]]
                    spread(slices(c, q), hosts or [first_use[(c, q)]])
            continue
        if earliest[c] > chunk_steps[c - 1][len(chunk_steps[c - 1]) // 2]:
            # It could load during less than half of the chunk before it.
            raise _ChunksTooShort
        hosts = [t for t in chunk_steps[c - 1] if t >= earliest[c]]
        spread([sl for q in groups for sl in slices(c, q)], hosts)


def _first_group_blocks(config, plan, layout, weights):
    """How many N-blocks a chunk's first group takes, from the memory traffic of all cores.

    While one block computes (``tiles x mt`` cycles) the cores fetch their chunks'
    activations (``mt x nQ`` lines); grouping F blocks spreads that over F times as many
    cycles: F is chosen to keep it to half the read port. But a group's stores only start
    after its last step, so when stores keep the write port busy (int32 results from many
    cores) bunching them costs more than it saves, and blocks go one at a time.
    """
    B = config.bus_bytes
    cores = len(plan.bands)
    block_cycles = max(1, weights.tiles // max(1, plan.nN)) * plan.mt
    reads = cores * plan.mt * plan.nQ * cdiv(layout.a_pitch, B) / block_cycles
    writes = cores * plan.mt * (layout.o_pitch // B) / block_cycles
    if writes >= 0.5:
        return 1
    return max(1, min(GROUP_BLOCKS, int(np.ceil(2 * reads))))


def _compile_band(config, plan, layout, weights, band):
    R, C = config.rows, config.cols
    GR = config.gather_bytes
    D = PIPELINE_DEPTH
    m0, m1, nb0, nb1 = band
    nQ, mt = plan.nQ, plan.mt
    slots = config.param_slots
    tile_bytes = (R + 1) * layout.w_pitch

    chunks = [(c0, min(c0 + mt, m1)) for c0 in range(m0, m1, mt)]
    nbs = list(range(nb0, nb1))
    if plan.raw:
        passes = [nbs]
    else:
        passes = [nbs[i:i + slots] for i in range(0, len(nbs), slots)]

    # Scratchpad map (lines).
    if plan.resident:
        a_buf = [b * mt * nQ for b in range(plan.a_buffers)]
        w_base = plan.a_buffers * mt * nQ
    else:
        a_buf = [s * mt for s in range(D)]
        w_base = D * mt
    w_buf = [w_base + s * (R + 1) for s in range(D)]

    def a_load(sp_addr, q, c0, rows):
        return dict(sp_addr=sp_addr, rows=rows, row_bytes=min(GR, plan.K - q * GR),
                    stride=layout.a_pitch,
                    addr=layout.a_addr + (q * plan.M + c0) * layout.a_pitch)

    def emit_segment(prog, pass_index, pass_nbs):
        """Emit the steps of ``pass_nbs`` into ``prog``. Without a barrier between passes,
        a parameter slot is reloaded once the store of its previous N-block has finished;
        returns False when the schedule leaves no room for that (the caller then falls back
        to one pass per barrier)."""

        # One step per weight tile. A block is one (chunk, N-block) pair; a group is up to
        # `F` blocks of a chunk that accumulate side by side in one accumulator region, their
        # steps ordered K-group first, so a K-group of activations serves F blocks' tiles
        # before the next one is needed (a chunk's activations arrive over F times as many
        # steps as with one block at a time: what lets several cores share the memory).
        F = max(1, min(_first_group_blocks(config, plan, layout, weights),
                       (config.acc_rows // 2) // mt, len(pass_nbs)))
        steps = []
        blocks = []
        group_size = []     # blocks (stores) per group
        # Only a chunk's first group needs F blocks (its activations are still arriving);
        # later blocks go one at a time, so stores are not bunched.
        sizes = [F] + [1] * (len(pass_nbs) - F)
        for ci in range(len(chunks)):
            for g0, size in zip(np.cumsum([0] + sizes[:-1]).tolist(), sizes):
                members = pass_nbs[g0:g0 + size]
                j = len(group_size)
                group_size.append(len(members))
                first_step = len(steps)
                order = sorted((q, f, p, index)
                               for f, nb in enumerate(members)
                               for p, (q, index) in enumerate(weights.per_block[nb]))
                count = [len(weights.per_block[nb]) for nb in members]
                for q, f, p, index in order:
                    steps.append(dict(ci=ci, nb=members[f], q=q, index=index, first=p == 0,
                                      last=p == count[f] - 1, block=len(blocks) + f,
                                      group=j, slot_offset=f * mt,
                                      opens_group=len(steps) == first_step, a_loads=[]))
                blocks.extend((ci, nb, j, f) for f, nb in enumerate(members))
        T = len(steps)
        # Steps go in windows of E: one token each way per window, and the weight tiles of
        # a window's consecutive steps that lie next to each other in memory (a K-group's
        # tiles of one N-block) come in one LOAD: fewer instructions to fetch.
        E = WINDOW_STEPS
        ahead = D // E
        # The first step has a window of its own, so the array starts after one tile.
        edges = sorted({0, min(1, T), *range(E, T, E), T})
        windows = [list(range(a, b)) for a, b in pairwise(edges)]
        window_of = {t: w for w, ts in enumerate(windows) for t in ts}
        nW = len(windows)

        if plan.resident and (pass_index == 0 or len(chunks) > plan.a_buffers):
            # The loads of window k follow the token of window k - ahead: everything up to
            # its end is done. Chunk c's buffer was last used by chunk c - a_buffers.
            last_of = {}
            for t, st in enumerate(steps):
                last_of[st["ci"]] = t
            earliest = []
            for c in range(len(chunks)):
                prev = c - plan.a_buffers
                if prev < 0:
                    earliest.append(0)
                    continue
                k = next((k for k in range(ahead, nW)
                          if windows[k - ahead][-1] >= last_of[prev]), nW)
                earliest.append(windows[k][0] if k < nW else T)
            # Slices of about one step's worth of beats: the load unit runs a step ahead.
            # (Later passes find every chunk still resident when each has its own buffer.)
            beats = cdiv(min(GR, plan.K), config.bus_bytes)
            _schedule_activation_loads(steps, chunks, nQ, earliest, max(1, mt // beats))


        def emit_loads(w):
            ts = windows[w]
            # Loads a step of this window needs go before its token; prefetches for later
            # windows after it, so they do not hold this window up.
            needs = {(steps[t]["ci"], steps[t]["q"]) for t in ts}
            before, after = [], []
            for t in ts:
                st = steps[t]
                c0, c1 = chunks[st["ci"]]
                if plan.resident:
                    for ci, q, r0, r1 in st["a_loads"]:
                        g0 = chunks[ci][0]
                        load = a_load(a_buf[ci % plan.a_buffers] + q * mt + (r0 - g0), q, r0,
                                      r1 - r0)
                        (before if (ci, q) in needs else after).append(load)
                else:
                    before.append(a_load(a_buf[t % D], st["q"], c0, c1 - c0))
            tiles = []
            for t in ts:
                index = steps[t]["index"]
                if tiles and tiles[-1][1] + tiles[-1][2] == index:
                    tiles[-1][2] += 1
                else:
                    tiles.append([t, index, 1])
            before += [dict(sp_addr=w_buf[t % D], rows=n * (R + 1), row_bytes=max(C, R),
                            stride=layout.w_pitch, addr=layout.w_addr + index * tile_bytes)
                       for t, index, n in tiles]
            before = [dict(slot=nb % slots, addr=layout.param_addr + nb * layout.param_pitch)
                      for nb in late.get(w, ())] + before
            for i, f in enumerate(before + after):
                deps = []
                if i == 0 and w >= ahead:
                    deps.append("pop_next")
                if i == len(before) - 1:
                    deps.append("push_next")
                (prog.loadp if "slot" in f else prog.load)(**f, deps=tuple(deps))

        def emit_exec(t):
            st = steps[t]
            c0, c1 = chunks[st["ci"]]
            j = st["group"]
            w = window_of[t]
            if plan.resident:
                sp = a_buf[st["ci"] % plan.a_buffers] + st["q"] * mt
            else:
                sp = a_buf[t % D]
            deps = []
            if t == windows[w][-1] and w + ahead < nW:
                deps.append("push_prev")
            if st["last"]:
                deps.append("push_next")
            if st["opens_group"] and j >= 2:
                deps.append("pop_next")
            if t == windows[w][0]:
                deps.append("pop_prev")
            prog.matmul(sp, (j % 2) * F * mt + st["slot_offset"], c1 - c0,
                        accumulate=not st["first"], load_weights=True,
                        w_sp_addr=w_buf[t % D], deps=tuple(deps))

        stored = [0] * len(group_size)

        def emit_store(b):
            ci, nb, j, f = blocks[b]
            c0, c1 = chunks[ci]
            stored[j] += 1
            deps = ["pop_prev"]
            # The group's last store frees its region for group j + 2.
            if stored[j] == group_size[j] and j + 2 < len(group_size):
                deps.append("push_prev")
            prog.store((j % 2) * F * mt + f * mt, c1 - c0, min(C, plan.N - nb * C),
                       layout.o_pitch, layout.out_addr + (nb * plan.M + c0) * layout.o_pitch,
                       raw=plan.raw, slot=0 if plan.raw else nb % slots, deps=tuple(deps))

        # Parameter records: the first `slots` before every step's token (a STORE may
        # follow the first step); a later one (one stream over more N-blocks than slots) in
        # the loads of the first window whose token proves that the store of the slot's
        # previous N-block has finished: that store frees its group's region, the execute
        # unit takes that token at the first step of the group after next, and the load
        # unit gets it back `ahead` windows later. It must still come before the token of
        # the window holding the last step of its own N-block.
        late = {}
        if not plan.raw:
            for nb in pass_nbs[:slots]:
                prog.loadp(nb % slots, layout.param_addr + nb * layout.param_pitch)
            opens = {st["group"]: t for t, st in enumerate(steps) if st["opens_group"]}
            group_of = {nb: j for (_, nb, j, _) in blocks}
            last_step = {st["nb"]: t for t, st in enumerate(steps) if st["last"]}
            for i in range(slots, len(pass_nbs)):
                freed = opens.get(group_of[pass_nbs[i - slots]] + 2)
                if freed is None:
                    return False
                x = window_of[freed] + ahead
                if x > window_of[last_step[pass_nbs[i]]]:
                    return False
                late.setdefault(x, []).append(pass_nbs[i])
        for w in range(min(ahead, nW)):
            emit_loads(w)
        for w in range(nW):
            for t in windows[w]:
                emit_exec(t)
                if steps[t]["last"]:
                    emit_store(steps[t]["block"])
            if w + ahead < nW:
                emit_loads(w + ahead)
        return True

    # Requantised output with more N-blocks than parameter slots: when the activations stay
    # resident, one stream reloads each slot as soon as its last store is done; else passes
    # separated by barriers.
    if len(passes) > 1 and plan.resident and len(chunks) == 1:
        prog = Program()
        if emit_segment(prog, 0, nbs):
            return prog, 1
    prog = Program()
    for pass_index, pass_nbs in enumerate(passes):
        if pass_index:
            prog.barrier()
        emit_segment(prog, pass_index, pass_nbs)
    return prog, len(passes)
