import gc
import random
import re
from functools import partial

import pytest
from amaranth import ClockDomain, Module, Signal
from amaranth.back import rtlil

from npu.rtl.bus import AXI4Signature
from npu.rtl.interconnect import _AXI4_CHANNELS, AXI4Arbiter, AXI4RegisterSlice
from npu.sim.amaranth_sim import run_simulation

ADDR_W, DATA_W, ID_W = 16, 32, 2


def make(managers, id_width=ID_W):
    return AXI4Arbiter(managers=managers, addr_width=ADDR_W, data_width=DATA_W,
                       id_width=id_width)


def simulate(dut, *testbenches, name, deadline_cycles=20000):
    # With one manager the arbiter is wires and has no clock domain of its own.
    top = Module()
    top.submodules.dut = dut
    top.domains.sync = ClockDomain()
    run_simulation(top, *testbenches, name=name, deadline_cycles=deadline_cycles)


async def handshake(ctx, ready, limit=1000):
    """Wait for the clock edge at which ``ready`` is high (the caller holds ``valid``).

    A bounded poll rather than ``ctx.tick().until(...)``: a broken design then fails with a
    message instead of leaving testbenches suspended when the simulation stops."""
    for _ in range(limit):
        _, _, value = await ctx.tick().sample(ready)
        if value:
            return
    raise AssertionError(f"no handshake on {ready.name} within {limit} cycles")


# Bursts are named by their address: manager in [15:12], sequence number in [11:4]. Beat b of a
# burst carries data (addr << 8) | b, so a beat anywhere tells whose burst it belongs to.

def burst_addr(manager, seq):
    return manager << 12 | seq << 4


def beat_data(addr, beat):
    return addr << 8 | beat


def owner(data):
    return data >> 20


def strobe_of(addr):
    return (addr >> 4) & 0xF | 1


def bresp_of(addr):
    return (addr >> 4) & 3


def random_bursts(rng, manager, count):
    return [(rng.randrange(1 << ID_W), burst_addr(manager, seq), rng.randrange(4))
            for seq in range(count)]


def run_traffic(managers, seed, *, reads=10, writes=10, busy=0.3):
    """Every manager issues random read and write bursts (random IDs, lengths and gaps); a
    subordinate with random ready / valid answers them, out of order across IDs. Returns what
    each side saw."""
    dut = make(managers)
    rng = random.Random(seed)
    plan = [{"reads": random_bursts(rng, i, reads), "writes": random_bursts(rng, i, writes)}
            for i in range(managers)]
    total_reads = managers * reads
    total_writes = managers * writes
    total_w_beats = sum(ln + 1 for p in plan for _, _, ln in p["writes"])
    seen = {"ar": [], "aw": [], "w": [], "r": [[] for _ in range(managers)],
            "b": [[] for _ in range(managers)]}

    def gap(r):
        return r.random() < busy

    # Managers.
    async def ar_driver(ctx, i):
        r = random.Random(seed * 100 + i)
        mgr = dut.managers[i]
        for arid, addr, ln in plan[i]["reads"]:
            while gap(r):
                await ctx.tick()
            ctx.set(mgr.arid, arid)
            ctx.set(mgr.araddr, addr)
            ctx.set(mgr.arlen, ln)
            ctx.set(mgr.arsize, 2)
            ctx.set(mgr.arburst, 1)
            ctx.set(mgr.arvalid, 1)
            await handshake(ctx, mgr.arready)
            ctx.set(mgr.arvalid, 0)

    async def r_receiver(ctx, i):
        r = random.Random(seed * 100 + 10 + i)
        mgr = dut.managers[i]
        beats = sum(ln + 1 for _, _, ln in plan[i]["reads"])
        got = seen["r"][i]
        while len(got) < beats:
            ready = not gap(r)
            ctx.set(mgr.rready, ready)
            _, _, valid, rid, rdata, rlast, rresp = await ctx.tick().sample(
                mgr.rvalid, mgr.rid, mgr.rdata, mgr.rlast, mgr.rresp)
            if valid:
                assert owner(rdata) == i, f"manager {i} offered a beat of manager {owner(rdata)}"
                if ready:
                    got.append((rid, rdata, rlast, rresp))
        ctx.set(mgr.rready, 0)

    async def aw_driver(ctx, i):
        r = random.Random(seed * 100 + 20 + i)
        mgr = dut.managers[i]
        for awid, addr, ln in plan[i]["writes"]:
            while gap(r):
                await ctx.tick()
            ctx.set(mgr.awid, awid)
            ctx.set(mgr.awaddr, addr)
            ctx.set(mgr.awlen, ln)
            ctx.set(mgr.awsize, 2)
            ctx.set(mgr.awburst, 1)
            ctx.set(mgr.awvalid, 1)
            await handshake(ctx, mgr.awready)
            ctx.set(mgr.awvalid, 0)

    async def w_driver(ctx, i):
        # Independent of AW: data may be offered before its address has been granted.
        r = random.Random(seed * 100 + 30 + i)
        mgr = dut.managers[i]
        for _, addr, ln in plan[i]["writes"]:
            for beat in range(ln + 1):
                while gap(r):
                    await ctx.tick()
                ctx.set(mgr.wdata, beat_data(addr, beat))
                ctx.set(mgr.wstrb, strobe_of(addr))
                ctx.set(mgr.wlast, beat == ln)
                ctx.set(mgr.wvalid, 1)
                await handshake(ctx, mgr.wready)
                ctx.set(mgr.wvalid, 0)

    async def b_receiver(ctx, i):
        r = random.Random(seed * 100 + 40 + i)
        mgr = dut.managers[i]
        got = seen["b"][i]
        while len(got) < writes:
            ready = not gap(r)
            ctx.set(mgr.bready, ready)
            _, _, valid, bid, bresp = await ctx.tick().sample(mgr.bvalid, mgr.bid, mgr.bresp)
            if valid and ready:
                got.append((bid, bresp))
        ctx.set(mgr.bready, 0)

    # Subordinate.
    out = dut.out
    address_fields = ("id", "addr", "len", "size", "burst")

    async def address_acceptor(ctx, ch, total):
        r = random.Random(seed * 100 + (50 if ch == "ar" else 60))
        fields = [getattr(out, f"{ch}{f}") for f in address_fields]
        offered = None
        while len(seen[ch]) < total:
            ready = not gap(r)
            ctx.set(getattr(out, f"{ch}ready"), ready)
            _, _, valid, *payload = await ctx.tick().sample(getattr(out, f"{ch}valid"), *fields)
            if offered is not None:
                assert valid and payload == offered, f"{ch} offer withdrawn or changed"
            offered = None
            if valid and ready:
                seen[ch].append(tuple(payload[:3]))
            elif valid:
                offered = payload
        ctx.set(getattr(out, f"{ch}ready"), 0)

    async def w_acceptor(ctx):
        r = random.Random(seed * 100 + 70)
        offered = None
        while len(seen["w"]) < total_w_beats:
            ready = not gap(r)
            ctx.set(out.wready, ready)
            _, _, valid, *payload = await ctx.tick().sample(out.wvalid, out.wdata, out.wstrb,
                                                            out.wlast)
            if offered is not None:
                assert valid and payload == offered, "w offer withdrawn or changed"
            offered = None
            if valid and ready:
                seen["w"].append(tuple(payload))
            elif valid:
                offered = payload
        ctx.set(out.wready, 0)

    async def respond(ctx, r, pending, total, ch, beat):
        """Answer the bursts ``pending()`` lists (it grows as they arrive) one beat at a time,
        choosing among IDs at random but keeping each ID's order, as AXI4 requires."""
        sent = 0
        progress = {}
        while sent < total:
            heads = {}
            for k, (xid, _, ln) in enumerate(pending()):
                if progress.get(k, 0) <= ln and xid not in heads:
                    heads[xid] = k
            if not heads or gap(r):
                await ctx.tick()
                continue
            k = heads[r.choice(sorted(heads))]
            xid, addr, ln = pending()[k]
            b = progress.get(k, 0)
            beat(xid, addr, ln, b)
            ctx.set(getattr(out, f"{ch}valid"), 1)
            await handshake(ctx, getattr(out, f"{ch}ready"))
            ctx.set(getattr(out, f"{ch}valid"), 0)
            progress[k] = b + 1
            sent += 1

    async def r_responder(ctx):
        def beat(rid, addr, ln, b):
            ctx.set(out.rid, rid)
            ctx.set(out.rdata, beat_data(addr, b))
            ctx.set(out.rlast, b == ln)
            ctx.set(out.rresp, bresp_of(addr))
        total = sum(ln + 1 for p in plan for _, _, ln in p["reads"])
        await respond(ctx, random.Random(seed * 100 + 80), lambda: seen["ar"], total, "r", beat)

    def completed_writes():
        """Write bursts whose address and all data beats have arrived, as (bid, addr, 0)."""
        done = []
        beats = 0
        for bid, addr, ln in seen["aw"]:
            beats += ln + 1
            if len(seen["w"]) < beats:
                break
            done.append((bid, addr, 0))
        return done

    async def b_responder(ctx):
        def beat(bid, addr, ln, b):
            ctx.set(out.bid, bid)
            ctx.set(out.bresp, bresp_of(addr))
        await respond(ctx, random.Random(seed * 100 + 90), completed_writes, total_writes, "b",
                      beat)

    testbenches = []
    for i in range(managers):
        for f in (ar_driver, r_receiver, aw_driver, w_driver, b_receiver):
            testbenches.append(partial(f, i=i))
    testbenches += [partial(address_acceptor, ch="ar", total=total_reads),
                    partial(address_acceptor, ch="aw", total=total_writes),
                    w_acceptor, r_responder, b_responder]
    simulate(dut, *testbenches, name=f"arbiter_traffic_{managers}_{seed}")
    return plan, seen


@pytest.mark.parametrize("managers", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [1, 2])
def test_arbiter_random_traffic_routes_every_beat_to_its_manager(managers, seed):
    plan, seen = run_traffic(managers, seed)
    # Downstream IDs carry the manager index above the manager's ID.
    for ch, key in (("ar", "reads"), ("aw", "writes")):
        for xid, addr, _ in seen[ch]:
            manager = addr >> 12
            assert xid >> ID_W == manager
        for i in range(managers):
            # Each manager's bursts arrive once each, in its own order, ID bits intact.
            mine = [(xid & (1 << ID_W) - 1, addr, ln) for xid, addr, ln in seen[ch]
                    if addr >> 12 == i]
            assert mine == plan[i][key]
    # W beats follow AW order, burst by burst.
    expected_w = [(beat_data(addr, b), strobe_of(addr), int(b == ln))
                  for _, addr, ln in seen["aw"] for b in range(ln + 1)]
    assert seen["w"] == expected_w
    for i in range(managers):
        # R: per ID, the manager's bursts complete in order, each beat intact.
        for xid in range(1 << ID_W):
            want = [(xid, beat_data(addr, b), int(b == ln), bresp_of(addr))
                    for rid, addr, ln in plan[i]["reads"] if rid == xid for b in range(ln + 1)]
            assert [beat for beat in seen["r"][i] if beat[0] == xid] == want
            want_b = [(xid, bresp_of(addr)) for bid, addr, _ in plan[i]["writes"] if bid == xid]
            assert [b for b in seen["b"][i] if b[0] == xid] == want_b


def test_arbiter_address_and_response_channels_cross_in_zero_cycles():
    dut = make(3)

    async def tb(ctx):
        m0, m1, m2, out = dut.m0, dut.m1, dut.m2, dut.out
        for ch, resp in (("ar", "r"), ("aw", "b")):
            def sig(port, name, ch=ch):
                return getattr(port, f"{ch}{name}")
            # An offer from manager 2 is downstream at once, ID widened by its index...
            ctx.set(sig(m2, "id"), 3)
            ctx.set(sig(m2, "addr"), 0xBEE0)
            ctx.set(sig(m2, "len"), 5)
            ctx.set(sig(m2, "valid"), 1)
            assert ctx.get(sig(out, "valid")) == 1
            assert ctx.get(sig(out, "id")) == 3 | 2 << ID_W
            assert ctx.get(sig(out, "addr")) == 0xBEE0
            assert ctx.get(sig(out, "len")) == 5
            # ...and so is the subordinate's ready, to manager 2 only.
            assert ctx.get(sig(m2, "ready")) == 0
            ctx.set(sig(out, "ready"), 1)
            assert [ctx.get(sig(m, "ready")) for m in (m0, m1, m2)] == [0, 0, 1]
            await ctx.tick()
            ctx.set(sig(m2, "valid"), 0)
            ctx.set(sig(out, "ready"), 0)
            assert ctx.get(sig(out, "valid")) == 0
            # A response goes to the manager its upper ID bits name, with them stripped.
            ctx.set(getattr(out, f"{resp}id"), 1 | 1 << ID_W)
            ctx.set(getattr(out, f"{resp}resp"), 2)
            ctx.set(getattr(out, f"{resp}valid"), 1)
            assert [ctx.get(getattr(m, f"{resp}valid")) for m in (m0, m1, m2)] == [0, 1, 0]
            assert ctx.get(getattr(m1, f"{resp}id")) == 1
            assert ctx.get(getattr(m1, f"{resp}resp")) == 2
            assert ctx.get(getattr(out, f"{resp}ready")) == 0
            ctx.set(getattr(m0, f"{resp}ready"), 1)
            ctx.set(getattr(m2, f"{resp}ready"), 1)
            assert ctx.get(getattr(out, f"{resp}ready")) == 0
            ctx.set(getattr(m1, f"{resp}ready"), 1)
            assert ctx.get(getattr(out, f"{resp}ready")) == 1
            ctx.set(getattr(out, f"{resp}valid"), 0)
            for m in (m0, m1, m2):
                ctx.set(getattr(m, f"{resp}ready"), 0)
            await ctx.tick()
        ctx.set(out.rdata, 0x1234_5678)
        ctx.set(out.rlast, 1)
        assert ctx.get(m0.rdata) == 0x1234_5678 and ctx.get(m0.rlast) == 1

    simulate(dut, tb, name="arbiter_zero_latency")


def test_arbiter_write_data_follows_aw_order_one_cycle_after_aw_without_gaps():
    """Both managers offer a 2-beat burst, AW and W at once, into an always-ready subordinate:
    AWs are granted on consecutive cycles (0 then 1), the first W beat crosses the cycle after
    the first AW, and the four beats follow each other without a gap, in AW order."""
    dut = make(2)
    trace = []

    async def manager(ctx, i):
        mgr = dut.managers[i]
        ctx.set(mgr.awid, i)
        ctx.set(mgr.awaddr, burst_addr(i, 0))
        ctx.set(mgr.awlen, 1)
        ctx.set(mgr.awvalid, 1)
        ctx.set(mgr.wvalid, 1)
        for beat in range(2):
            ctx.set(mgr.wdata, beat_data(burst_addr(i, 0), beat))
            ctx.set(mgr.wlast, beat == 1)
            while True:
                _, _, awready, wready = await ctx.tick().sample(mgr.awready, mgr.wready)
                if awready:
                    ctx.set(mgr.awvalid, 0)
                if wready:
                    break
        ctx.set(mgr.wvalid, 0)

    async def subordinate(ctx):
        ctx.set(dut.out.awready, 1)
        ctx.set(dut.out.wready, 1)
        for _ in range(6):
            _, _, awvalid, awid, wvalid, wdata, wlast = await ctx.tick().sample(
                dut.out.awvalid, dut.out.awid, dut.out.wvalid, dut.out.wdata, dut.out.wlast)
            trace.append((awid >> ID_W if awvalid else None,
                          (owner(wdata), wdata & 0xFF, wlast) if wvalid else None))

    simulate(dut, partial(manager, i=0), partial(manager, i=1), subordinate,
             name="arbiter_w_order")
    assert trace == [
        (0, None),
        (1, (0, 0, 0)),
        (None, (0, 1, 1)),
        (None, (1, 0, 0)),
        (None, (1, 1, 1)),
        (None, None),
    ]


@pytest.mark.parametrize("managers", [2, 3, 4])
@pytest.mark.parametrize("ch", ["ar", "aw"])
def test_arbiter_grants_rotate_every_cycle_when_all_managers_request(managers, ch):
    dut = make(managers)
    grants = []
    window = 12 * managers

    async def manager(ctx, i):
        # Always requesting, a new burst after each grant; single-beat writes always ready.
        mgr = dut.managers[i]
        ctx.set(getattr(mgr, f"{ch}valid"), 1)
        ctx.set(mgr.wvalid, 1)
        ctx.set(mgr.wlast, 1)
        seq = 0
        while len(grants) < window:
            ctx.set(getattr(mgr, f"{ch}addr"), burst_addr(i, seq))
            _, _, ready = await ctx.tick().sample(getattr(mgr, f"{ch}ready"))
            seq += ready

    async def subordinate(ctx):
        ctx.set(getattr(dut.out, f"{ch}ready"), 1)
        ctx.set(dut.out.wready, 1)
        for _ in range(window):
            _, _, valid, xid = await ctx.tick().sample(getattr(dut.out, f"{ch}valid"),
                                                       getattr(dut.out, f"{ch}id"))
            grants.append(xid >> ID_W if valid else None)

    simulate(dut, subordinate, *[partial(manager, i=i) for i in range(managers)],
             name=f"arbiter_fair_{ch}_{managers}")
    # One grant per cycle (no bubble), strictly in turn.
    assert grants == [k % managers for k in range(window)]


def test_arbiter_one_manager_alone_gets_a_grant_every_cycle():
    dut = make(4)
    grants = []

    async def manager(ctx):
        ctx.set(dut.m2.arvalid, 1)
        for seq in range(10):
            ctx.set(dut.m2.araddr, burst_addr(2, seq))
            await handshake(ctx, dut.m2.arready)
        ctx.set(dut.m2.arvalid, 0)

    async def subordinate(ctx):
        ctx.set(dut.out.arready, 1)
        for _ in range(12):
            _, _, valid, addr = await ctx.tick().sample(dut.out.arvalid, dut.out.araddr)
            grants.append(addr if valid else None)

    simulate(dut, manager, subordinate, name="arbiter_alone")
    assert grants == [burst_addr(2, seq) for seq in range(10)] + [None, None]


def test_arbiter_holds_an_offer_that_is_not_taken():
    """Manager 0 is offered while the subordinate is not ready; manager 1, which would win the
    round robin, asks meanwhile; the offer stays manager 0's until taken."""
    dut = make(2)
    trace = []

    async def tb(ctx):
        out = dut.out
        m0, m1 = dut.m0, dut.m1
        ctx.set(out.arready, 1)
        ctx.set(m0.araddr, 0x100)
        ctx.set(m0.arvalid, 1)
        await ctx.tick()             # manager 0 granted: manager 1 has priority next
        ctx.set(out.arready, 0)
        ctx.set(m0.araddr, 0x200)    # a second burst of manager 0, alone at first
        await ctx.tick()
        ctx.set(m1.araddr, 0x300)
        ctx.set(m1.arvalid, 1)
        for cycle in range(4):
            if cycle == 2:
                ctx.set(out.arready, 1)
            _, _, valid, addr, ready0, ready1 = await ctx.tick().sample(
                out.arvalid, out.araddr, m0.arready, m1.arready)
            trace.append((valid, addr, ready0, ready1))
            if ready0:
                ctx.set(m0.arvalid, 0)
            if ready1:
                ctx.set(m1.arvalid, 0)

    simulate(dut, tb, name="arbiter_hold")
    assert trace == [
        (1, 0x200, 0, 0),
        (1, 0x200, 0, 0),
        (1, 0x200, 1, 0),
        (1, 0x300, 0, 1),
    ]


def test_arbiter_w_order_queue_throttles_aw_when_full():
    """With W stalled, only WRITE_ORDER_DEPTH AWs are accepted; the next waits for a burst's
    data to finish."""
    dut = make(2)
    depth = AXI4Arbiter.WRITE_ORDER_DEPTH
    accepted = []

    async def tb(ctx):
        ctx.set(dut.out.awready, 1)
        ctx.set(dut.m0.awvalid, 1)
        ctx.set(dut.m1.awvalid, 1)
        for _ in range(depth + 3):
            _, _, valid = await ctx.tick().sample(dut.out.awvalid)
            accepted.append(valid)
        assert ctx.get(dut.out.wvalid) == 0  # managers offer no data yet
        ctx.set(dut.m0.wvalid, 1)
        ctx.set(dut.m0.wlast, 1)
        ctx.set(dut.out.wready, 1)
        _, _, wvalid, awvalid = await ctx.tick().sample(dut.out.wvalid, dut.out.awvalid)
        assert wvalid and not awvalid
        assert ctx.get(dut.out.awvalid) == 1

    simulate(dut, tb, name="arbiter_w_queue")
    assert accepted == [1] * depth + [0] * 3


def test_arbiter_port_widths():
    for managers, extra in [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3)]:
        dut = make(managers)
        assert dut.out.signature == AXI4Signature(addr_width=ADDR_W, data_width=DATA_W,
                                                  id_width=ID_W + extra)
        assert dut.out_id_width == ID_W + extra
        assert len(dut.managers) == managers
        for i, port in enumerate(dut.managers):
            assert port is getattr(dut, f"m{i}")
            assert port.signature == AXI4Signature(addr_width=ADDR_W, data_width=DATA_W,
                                                   id_width=ID_W).flip()
        rtlil.convert(dut)
    rtlil.convert(make(3, id_width=0))


# The half-built component is dropped unused; that is the point.
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
@pytest.mark.parametrize("kwargs, exc, message", [
    ({"managers": 0}, ValueError, "Arbiter manager count must be a positive integer, not 0"),
    ({"managers": 2.0}, TypeError, "Arbiter manager count must be a positive integer, not 2.0"),
    ({"managers": True}, TypeError,
     "Arbiter manager count must be a positive integer, not True"),
    ({"addr_width": 0}, ValueError, "Arbiter address width must be an integer in [1, 64], not 0"),
    ({"addr_width": 65}, ValueError,
     "Arbiter address width must be an integer in [1, 64], not 65"),
    ({"addr_width": "32"}, TypeError,
     "Arbiter address width must be an integer in [1, 64], not '32'"),
    ({"data_width": 48}, ValueError, "Arbiter data width must be 32, 64, 128 or 256, not 48"),
    ({"id_width": -1}, ValueError, "Arbiter ID width must be a non-negative integer, not -1"),
    ({"id_width": None}, TypeError,
     "Arbiter ID width must be a non-negative integer, not None"),
])
def test_arbiter_constructor_rejects_bad_parameters(kwargs, exc, message):
    args = {"managers": 2, "addr_width": 32, "data_width": 64, "id_width": 4, **kwargs}
    with pytest.raises(exc, match="^" + re.escape(message) + "$"):
        AXI4Arbiter(**args)
    gc.collect()  # the object sits in a cycle with the traceback; warn (ignored) here


@pytest.mark.parametrize("p_valid, p_ready", [(1.0, 1.0), (0.6, 0.5), (0.3, 0.9)])
def test_register_slice_passes_every_beat_once_in_order_on_every_channel(p_valid, p_ready):
    dut = AXI4RegisterSlice(AXI4Signature(addr_width=ADDR_W, data_width=DATA_W, id_width=ID_W))
    beats = 40
    rng = random.Random(int(p_valid * 10 + p_ready * 100))
    sent = {valid: [] for valid, *_ in _AXI4_CHANNELS}
    got = {valid: [] for valid, *_ in _AXI4_CHANNELS}

    def ports(direction):
        return (dut.up, dut.down) if direction == "down" else (dut.down, dut.up)

    def producer(valid, ready, members, direction):
        async def tb(ctx):
            src, _ = ports(direction)
            for n in range(beats):
                while rng.random() >= p_valid:
                    await ctx.tick()
                values = {name: rng.getrandbits(len(getattr(src, name))) for name in members}
                for name, value in values.items():
                    ctx.set(getattr(src, name), value)
                ctx.set(getattr(src, valid), 1)
                while True:
                    _, _, taken = await ctx.tick().sample(getattr(src, ready))
                    if taken:
                        break
                # (the cycle of the handshake: the counter has just stepped past it)
                sent[valid].append((values, ctx.get(cycle) - 1))
                ctx.set(getattr(src, valid), 0)
        return tb

    def consumer(valid, ready, members, direction):
        async def tb(ctx):
            _, dst = ports(direction)
            held = None
            while len(got[valid]) < beats:
                take = rng.random() < p_ready
                ctx.set(getattr(dst, ready), take)
                await ctx.delay(1e-9)
                if ctx.get(getattr(dst, valid)):
                    values = {name: ctx.get(getattr(dst, name)) for name in members}
                    # AXI: a beat offered and not taken stays, unchanged.
                    assert held is None or values == held
                    held = None if take else values
                    if take:
                        got[valid].append((values, ctx.get(cycle)))
                else:
                    assert held is None, "valid dropped before the beat was taken"
                await ctx.tick()
        return tb

    cycle = Signal(16)
    top = Module()
    top.submodules.dut = dut
    top.d.sync += cycle.eq(cycle + 1)
    benches = []
    for channel in _AXI4_CHANNELS:
        benches += [producer(*channel), consumer(*channel)]
    run_simulation(top, *benches, name="axi_slice", deadline_cycles=5000)
    for valid, *_ in _AXI4_CHANNELS:
        assert [v for v, _ in got[valid]] == [v for v, _ in sent[valid]], valid
        if p_valid == p_ready == 1.0:
            # One cycle through the slice, a beat every cycle.
            taken_at = [c for _, c in sent[valid]]
            out_at = [c for _, c in got[valid]]
            assert out_at == [c + 1 for c in taken_at] and taken_at == list(
                range(taken_at[0], taken_at[0] + beats)), valid


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_register_slice_rejects_a_non_axi4_signature():
    with pytest.raises(TypeError, match=r"^signature must be an AXI4Signature, not 3$"):
        AXI4RegisterSlice(3)
    gc.collect()
