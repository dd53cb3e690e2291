"""cocotb tests run inside the Verilator simulator by :mod:`npu.sim.verilator_backend`.

Each test reads its job from the JSON file named by ``NPU_JOB`` and writes ``result.json``
(and any arrays as ``.npy``) next to it; on an exception it writes ``{"error": ...}``.

* ``run_job`` drives the harness (``npu_tb``: NPU + AXI4MemoryHDL, clock inside the
  simulation). Its host replays :class:`~npu.sim.amaranth_backend.AmaranthBackend`'s host edge
  for edge, so the cores see the same register writes in the same cycles.
* ``axiram_job`` drives the plain NPU top (``npu``, AXI-convention port names) with someone
  else's AXI models: memory from cocotbext-axi's ``AxiRam``, registers through its
  ``AxiLiteMaster``. Its timing is theirs, so only results are compared.

Timing convention of ``run_job``: the design's outputs are read at falling edges (stable, and
equal to what the next rising edge samples) and its inputs are written right after rising
edges, so they are seen by the next one. With that, :func:`_tick_sample` behaves like
Amaranth's ``ctx.tick().sample(...)``.
"""

import json
import os
import time
import traceback
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.result import SimTimeoutError
from cocotb.triggers import FallingEdge, First, RisingEdge, Timer, with_timeout

from npu.rtl.control import COUNTERS, NPU_ID, RegisterMap

__all__ = ["axiram_job", "run_job"]


def _job():
    path = Path(os.environ["NPU_JOB"])
    return path.parent, json.loads(path.read_text())


def _write_result(folder, result):
    (folder / "result.json").write_text(json.dumps(result))


def _guarded(test):
    """Record an exception in result.json, so the backend can report it."""
    async def wrapper(dut):
        folder, job = _job()
        try:
            await test(dut, folder, job)
        except Exception:
            _write_result(folder, {"error": traceback.format_exc()})
            raise
    wrapper.__name__ = test.__name__
    wrapper.__qualname__ = test.__qualname__
    wrapper.__doc__ = test.__doc__
    return wrapper


class _Host:
    """The AXI4-Lite manager of ``sim/axil.py`` (same signals, same cycles) in cocotb."""

    def __init__(self, dut):
        self.dut = dut
        self.clk = dut.clk

    async def tick_sample(self, *signals):
        """Wait for the next rising edge; return the values ``signals`` had at it."""
        await FallingEdge(self.clk)
        values = [int(s.value) for s in signals]
        await RisingEdge(self.clk)
        return values

    async def write(self, addr, value, strb=0xF):
        d = self.dut
        d.s_axil_awaddr.value = addr
        d.s_axil_awprot.value = 0
        d.s_axil_awvalid.value = 1
        d.s_axil_wdata.value = value
        d.s_axil_wstrb.value = strb
        d.s_axil_wvalid.value = 1
        d.s_axil_bready.value = 1
        aw_pending = w_pending = True
        while True:
            awready, wready, bvalid, bresp = await self.tick_sample(
                d.s_axil_awready, d.s_axil_wready, d.s_axil_bvalid, d.s_axil_bresp)
            if bvalid:
                assert not (aw_pending or w_pending), \
                    "B response before the write address and data were accepted"
                d.s_axil_bready.value = 0
                return bresp
            if aw_pending and awready:
                aw_pending = False
                d.s_axil_awvalid.value = 0
            if w_pending and wready:
                w_pending = False
                d.s_axil_wvalid.value = 0

    async def read(self, addr):
        d = self.dut
        d.s_axil_araddr.value = addr
        d.s_axil_arprot.value = 0
        d.s_axil_arvalid.value = 1
        d.s_axil_rready.value = 1
        ar_pending = True
        while True:
            arready, rvalid, rdata, rresp = await self.tick_sample(
                d.s_axil_arready, d.s_axil_rvalid, d.s_axil_rdata, d.s_axil_rresp)
            if rvalid:
                assert not ar_pending, "R response before the read address was accepted"
                d.s_axil_rready.value = 0
                return rdata, rresp
            if ar_pending and arready:
                ar_pending = False
                d.s_axil_arvalid.value = 0

    async def until_irq(self):
        """Amaranth's ``ctx.tick().until(irq)``: return after the first rising edge at which
        ``irq`` is high, sleeping in the simulator (not per cycle in Python) until then."""
        await FallingEdge(self.clk)
        if not int(self.dut.irq.value):
            await RisingEdge(self.dut.irq)  # irq rose after an edge: the next edge samples it
        await RisingEdge(self.clk)

    async def read_core(self, i):
        status, _ = await self.read(RegisterMap.core(i, RegisterMap.STATUS))
        pc, _ = await self.read(RegisterMap.core(i, RegisterMap.PC))
        counters = 0
        for k, name in enumerate(COUNTERS):
            value, _ = await self.read(RegisterMap.counter(i, name))
            counters |= value << (32 * k)
        return {"state": status & 3, "error": (status >> 4) & 0xF, "pc": pc,
                "counters": counters}


def _words(image, bus_bytes):
    padded = np.zeros(-(-len(image) // bus_bytes) * bus_bytes, np.uint8)
    padded[:len(image)] = image
    return padded.view(f"<u{bus_bytes}") if bus_bytes <= 8 else padded.reshape(-1, bus_bytes)


def _word_int(words, i):
    w = words[i]
    return int(w) if words.ndim == 1 else int.from_bytes(w.tobytes(), "little")


@cocotb.test()
@_guarded
async def run_job(dut, folder, job):
    """Load the image, run the programs like AmaranthBackend's host, read everything back."""
    clk = dut.clk
    image = np.load(job["image"])
    bb = job["bus_bytes"]
    n = len(job["programs"])
    period = job["period_ns"]
    timing = {}

    dut.rst.value = 1
    for name in ("awaddr", "awprot", "awvalid", "wdata", "wstrb", "wvalid", "bready",
                 "araddr", "arprot", "arvalid", "rready"):
        getattr(dut, f"s_axil_{name}").value = 0
    dut.mem_size.value = len(image)
    dut.mem_bd_we.value = 0
    dut.mem_bd_addr.value = 0
    dut.mem_bd_wdata.value = 0

    # Load through the backdoor while the NPU is held in reset. The memory starts at zero, so
    # only non-zero words are written.
    t0 = time.monotonic()
    words = _words(image, bb)
    nonzero = np.flatnonzero(words if words.ndim == 1 else words.any(axis=1))
    await FallingEdge(clk)
    for i in nonzero:
        dut.mem_bd_addr.value = int(i)
        dut.mem_bd_wdata.value = _word_int(words, i)
        dut.mem_bd_we.value = 1
        await FallingEdge(clk)
    dut.mem_bd_we.value = 0
    timing["load"] = time.monotonic() - t0

    await RisingEdge(clk)
    dut.rst.value = 0  # the next rising edge is the Amaranth simulation's edge 0
    host = _Host(dut)
    out = {"finished": []}

    async def drive():
        all_bits = (1 << n) - 1
        await host.write(RegisterMap.IRQ_ENABLE, all_bits)
        for i, (prog, (base, limit)) in enumerate(zip(job["programs"], job["windows"])):
            await host.write(RegisterMap.core(i, RegisterMap.PROG_ADDR), prog)
            await host.write(RegisterMap.core(i, RegisterMap.WIN_BASE), base)
            await host.write(RegisterMap.core(i, RegisterMap.WIN_LIMIT), limit)
        for i in range(n):
            await host.write(RegisterMap.core(i, RegisterMap.CTRL), 1)
        finished = 0
        while finished != all_bits:
            await host.until_irq()
            status, _ = await host.read(RegisterMap.IRQ_STATUS)
            finished |= status
            await host.write(RegisterMap.IRQ_STATUS, status)
            out["finished"].append(finished.bit_count())
        out["cores"] = [await host.read_core(i) for i in range(n)]

    # AmaranthBackend's watchdog samples the cores at edge max_cycles - 1: here, the falling
    # edge just before it.
    t0 = time.monotonic()
    sim_t0 = cocotb.utils.get_sim_time("ns")
    task = cocotb.start_soon(drive())
    await First(task.join(), Timer(job["max_cycles"] * period - period // 2, "ns"))
    timing["run"] = time.monotonic() - t0
    timing["cycles"] = int((cocotb.utils.get_sim_time("ns") - sim_t0) // period)
    if not task.done():
        task.kill()
        snapshot = []
        for i in range(n):
            snapshot.append({name: int(getattr(dut, f"cores_{i}_{name}").value)
                             for name in ("state", "error", "pc", "counters")})
        _write_result(folder, {"timeout": snapshot, "timing": timing})
        return

    # Read back the words the bus wrote; the rest is the image as loaded.
    t0 = time.monotonic()
    memory = image.copy()
    if int(dut.mem_written.value):
        lo, hi = int(dut.mem_written_lo.value), int(dut.mem_written_hi.value)
        back = bytearray()
        await FallingEdge(clk)
        for i in range(lo, hi + 1):
            dut.mem_bd_addr.value = i
            await FallingEdge(clk)
            back += int(dut.mem_bd_rdata.value).to_bytes(bb, "little")
        start = lo * bb
        end = min(len(memory), (hi + 1) * bb)
        memory[start:end] = np.frombuffer(bytes(back), np.uint8)[:end - start]
    timing["readback"] = time.monotonic() - t0
    assert not int(dut.mem_protocol_error.value), "the NPU broke an AXI rule the memory checks"
    np.save(job["memory_out"], memory)
    _write_result(folder, {**out, "timing": timing})


@cocotb.test()
@_guarded
async def axiram_job(dut, folder, job):
    """Run the programs on the plain NPU top against cocotbext-axi's AxiRam and AxiLiteMaster."""
    from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

    image = np.load(job["image"])
    # Look every port up by name before cocotb-bus lists the top (it matches names case-
    # insensitively through dir(), which discovers the handles by VPI iteration): with
    # cocotb 1.8.1 and Verilator 5.006, writes through handles found that way never reach the
    # model, and the AXI models would wait forever.
    for name in job["ports"]:
        getattr(dut, name)
    cocotb.start_soon(Clock(dut.clk, job["period_ns"], units="ns").start())
    dut.rst.value = 1
    ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=len(image))
    ram.write(0, image.tobytes())
    csr = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
    for _ in range(4):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    for _ in range(2):
        await RisingEdge(dut.clk)

    # One budget for the whole run, register accesses included: a bus that never answers
    # fails the test instead of hanging it.
    budget = job["max_cycles"] * job["period_ns"]
    try:
        cores = await with_timeout(_drive_with(csr, dut, job), budget, "ns")
    except SimTimeoutError:
        raise AssertionError(f"the NPU did not finish in {job['max_cycles']} cycles") from None
    memory = np.frombuffer(ram.read(0, len(image)), np.uint8)
    np.save(job["memory_out"], memory)
    _write_result(folder, {"cores": cores})


async def _drive_with(csr, dut, job):
    """The host sequence of run_job through cocotbext-axi's AxiLiteMaster (its own timing)."""
    n = len(job["programs"])
    all_bits = (1 << n) - 1
    await csr.write_dword(RegisterMap.IRQ_ENABLE, all_bits)
    for i, (prog, (base, limit)) in enumerate(zip(job["programs"], job["windows"])):
        await csr.write_dword(RegisterMap.core(i, RegisterMap.PROG_ADDR), prog)
        await csr.write_dword(RegisterMap.core(i, RegisterMap.WIN_BASE), base)
        await csr.write_dword(RegisterMap.core(i, RegisterMap.WIN_LIMIT), limit)
    assert await csr.read_dword(RegisterMap.ID) == NPU_ID
    for i in range(n):
        await csr.write_dword(RegisterMap.core(i, RegisterMap.CTRL), 1)
    finished = 0
    while finished != all_bits:
        if not int(dut.irq.value):
            await RisingEdge(dut.irq)
        status = await csr.read_dword(RegisterMap.IRQ_STATUS)
        finished |= status
        await csr.write_dword(RegisterMap.IRQ_STATUS, status)
    cores = []
    for i in range(n):
        status = await csr.read_dword(RegisterMap.core(i, RegisterMap.STATUS))
        pc = await csr.read_dword(RegisterMap.core(i, RegisterMap.PC))
        counters = 0
        for k, name in enumerate(COUNTERS):
            counters |= await csr.read_dword(RegisterMap.counter(i, name)) << (32 * k)
        cores.append({"state": status & 3, "error": (status >> 4) & 0xF, "pc": pc,
                      "counters": counters})
    return cores
