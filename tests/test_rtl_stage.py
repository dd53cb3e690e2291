"""The optional register stages of rtl/stage.py: pass-through or registered, and which of a
stage's registers a reset reaches."""

import pytest
from amaranth import Fragment, Module, ResetInserter, Signal

from npu.rtl.stage import staged
from npu.sim.amaranth_sim import run_simulation


def _stage(registered, reset=("valid",)):
    m = Module() if registered else None     # unregistered, a stage adds nothing to m
    valid, data, lanes = Signal(), Signal(8), [Signal(4), Signal(4)]
    out = staged(m, registered, "st", reset=reset, valid=valid, data=data, lanes=lanes)
    return m, (valid, data, lanes), out


def test_unregistered_stage_passes_the_values_through():
    _, (valid, data, lanes), out = _stage(False)
    assert out == {"valid": valid, "data": data, "lanes": lanes}


def test_a_reset_clears_only_the_registers_named_in_reset():
    m, (valid, data, lanes), out = _stage(True)
    clear = Signal()
    top = Module()
    top.submodules.stage = ResetInserter(clear)(m)
    seen = {}

    async def bench(ctx):
        ctx.set(valid, 1)
        ctx.set(data, 0xA5)
        ctx.set(lanes[1], 9)
        await ctx.tick()
        seen["before"] = (ctx.get(out["valid"]), ctx.get(out["data"]), ctx.get(out["lanes"][1]))
        ctx.set(valid, 1)
        ctx.set(data, 0x5A)
        ctx.set(clear, 1)          # a reset wins over the stage's input
        await ctx.tick()
        seen["after"] = (ctx.get(out["valid"]), ctx.get(out["data"]), ctx.get(out["lanes"][1]))

    run_simulation(top, bench, name="stage_reset")
    assert seen["before"] == (1, 0xA5, 9)
    # The valid bit is reset; the data registers take their inputs as if there were no reset.
    assert seen["after"] == (0, 0x5A, 9)


def test_reset_must_name_values_of_the_stage():
    with pytest.raises(ValueError, match=r"reset names \['vald'\], which are not among"):
        staged(None, True, "st", reset=("vald",), valid=Signal(), data=Signal(8))


def test_a_replica_is_a_reset_less_signal_marked_for_synthesis_to_keep():
    from npu.rtl.stage import REPLICA_ATTR, replica

    port = Signal(8, name="w_data")
    copy = replica(port, name="w_data_reg")
    bit = replica(1, name="newer0")
    for sig, width in ((copy, 8), (bit, 1)):
        assert len(sig) == width and sig.reset_less and sig.attrs == {REPLICA_ATTR: 1}
    assert copy.name == "w_data_reg" and bit.name == "newer0"


def test_a_stage_makes_the_registers_named_in_replicas_replicas():
    from npu.rtl.stage import REPLICA_ATTR

    m = Module()
    valid, sel = Signal(), Signal()
    out = staged(m, True, "wr", reset=("valid",), replicas=("sel",), valid=valid,
                 sel=[sel] * 3)
    assert not out["valid"].reset_less and out["valid"].attrs == {}
    assert [s.name for s in out["sel"]] == ["wr_sel0", "wr_sel1", "wr_sel2"]
    for copy in out["sel"]:
        assert copy.reset_less and copy.attrs == {REPLICA_ATTR: 1}
    # Unregistered, a replicated value is the list of the value itself.
    assert staged(m, False, "wr", replicas=("sel",), sel=[sel] * 3)["sel"] == [sel] * 3
    Fragment.get(m, None)                     # the registers elaborate


def test_replicas_must_name_values_of_the_stage_and_are_never_reset():
    with pytest.raises(ValueError, match=r"replicas names \['sell'\], which are not among"):
        staged(None, True, "st", replicas=("sell",), sel=Signal())
    with pytest.raises(ValueError, match=r"\['sel'\] cannot be both reset and replicas"):
        staged(None, True, "st", reset=("sel",), replicas=("sel",), sel=Signal())
