"""The host bridge end to end: the board backend drives the board's bridge, memory and NPU in
the Amaranth simulator through a simulated serial link."""

import dataclasses

import numpy as np
import pytest

from npu.firmware.asm import Program
from npu.firmware.device import build_gemm_image
from npu.rtl.config import NPUConfig
from npu.rtl.control import NPU_ID, RegisterMap
from npu.rtl.isa import CoreState
from npu.sim.backend import NPUTimeout
from npu.sim.board_backend import BoardBackend, BridgeClient, BridgeError, SimulatedSerial
from npu.sim.golden_backend import GoldenBackend
from npu.synth.bridge import Command

# Small enough to simulate quickly; a 64-bit bus so that 32-bit bridge words are half beats.
CONFIG = NPUConfig(rows=2, cols=2, cores=2, bus_width=64, addr_width=16, scratchpad_bytes=256,
                   acc_rows=64, param_slots=1)
#: One core for the tests that only exercise the bridge: half the simulation work.
CONFIG1 = NPUConfig(rows=2, cols=2, cores=1, bus_width=64, addr_width=16,
                    scratchpad_bytes=256, acc_rows=64, param_slots=1)
MEM_BYTES = 32768


def random_int8(rng, shape):
    return rng.integers(-128, 128, size=shape).astype(np.int8)


@pytest.mark.slow   # about 40 s: a 16 KiB image goes over the bridge both ways
@pytest.mark.parametrize("retime", [False, True])
def test_gemm_through_the_board_backend_matches_numpy_and_golden(retime):
    rng = np.random.default_rng(7)
    a, b = random_int8(rng, (6, 4)), random_int8(rng, (4, 3))
    config = dataclasses.replace(CONFIG, retime=retime)
    image = build_gemm_image(config, a, b, raw=True)
    backend = BoardBackend(config, serial=SimulatedSerial(config, mem_bytes=MEM_BYTES))
    seen = []
    result = backend.run(image.memory, image.starts, progress=lambda d, n: seen.append((d, n)))
    assert all(c.state == CoreState.DONE for c in result.cores)
    np.testing.assert_array_equal(image.read_output(result.memory), a.astype(np.int64) @ b)
    # The whole memory read back equals the golden model's.
    gold = GoldenBackend(CONFIG).run(image.memory, image.starts)
    np.testing.assert_array_equal(result.memory, gold.memory)
    assert [c.counters["macs"] for c in result.cores] == [c.counters["macs"] for c in gold.cores]
    assert result.cycles == max(c.counters["cycles"] for c in result.cores) > 0
    assert seen[-1] == (len(image.starts), len(image.starts))


@pytest.fixture(params=[False, True], ids=["plain", "retimed"])
def link(request):
    # Retimed, the system has AXI4 register slices before and after its arbiter.
    config = dataclasses.replace(CONFIG1, retime=request.param)
    return SimulatedSerial(config, mem_bytes=MEM_BYTES, timeout=200, timeout_cycles=2000)


def test_register_and_memory_frames_round_trip(link):
    client = BridgeClient(link, chunk_words=5)
    assert client.info() == MEM_BYTES
    assert client.csr_read(RegisterMap.ID) == NPU_ID
    addr = RegisterMap.core(0, RegisterMap.PROG_ADDR)
    client.csr_write(addr, 0x1234_5670)
    assert client.csr_read(addr) == 0x1234_5670
    # 13 words from an odd word address: both halves of the 64-bit beats, and three frames.
    data = np.random.default_rng(1).integers(0, 256, 52, dtype=np.uint8).tobytes()
    client.mem_write(0x104, data)
    assert client.mem_read(0x104, 52) == data
    assert client.mem_read(0x100, 4) == bytes(4)
    assert client.mem_read(0x104 + 52, 4) == bytes(4)


def test_bridge_reports_bus_errors_and_unknown_commands(link):
    client = BridgeClient(link)
    with pytest.raises(BridgeError, match=r"MEM_READ: bus error \(AXI response 2\)"):
        client.mem_read(MEM_BYTES, 4)
    with pytest.raises(BridgeError, match="CSR_WRITE: bus error"):
        client.csr_write(RegisterMap.ID, 0)            # read-only register
    link.write(b"\x00")
    assert link.read(2) == bytes([0x00, 0x80])
    assert client.info() == MEM_BYTES                  # and the link is still in step


def test_half_frame_is_dropped_after_the_timeout(link):
    client = BridgeClient(link)
    link.write(bytes([Command.CSR_WRITE.value, 0x00, 0x01]))   # 2 of 8 argument bytes
    assert link.read(1) == b""                                   # no answer; time passes
    assert client.csr_read(RegisterMap.ID) == NPU_ID


def test_short_answer_raises(link):
    client = BridgeClient(link)
    # A lone CSR_READ command byte makes the board take INFO's byte as an argument.
    link.write(bytes([Command.CSR_READ.value]))
    with pytest.raises(BridgeError, match="INFO: the board answered 0 of 6 bytes"):
        client.info()


def test_board_built_for_another_configuration_is_refused(link):
    other = NPUConfig(rows=4, cols=4, cores=2, addr_width=16)
    backend = BoardBackend(other, serial=link)
    with pytest.raises(ValueError, match=r"the board's NPU is 2x2 with 1 core\(s\) and a 64-bit"):
        backend.run(np.zeros(4096, np.uint8), [0])


@pytest.mark.parametrize("retime", [False, True])
def test_cycle_budget_raises_npu_timeout_with_core_state(retime):
    program = Program()
    for _ in range(8):
        program.nop()
    program.end()
    memory = np.zeros(256, np.uint8)
    code = np.frombuffer(program.to_bytes(), np.uint8)
    memory[:len(code)] = code
    config = dataclasses.replace(CONFIG1, retime=retime)
    backend = BoardBackend(config, serial=SimulatedSerial(config, mem_bytes=MEM_BYTES))
    assert backend.run(memory, [0]).cores[0].state == CoreState.DONE
    with pytest.raises(NPUTimeout, match="did not finish within 5 cycles") as info:
        backend.run(memory, [0], max_cycles=5)
    assert info.value.cores[0]["counters"]["cycles"] > 5


def test_backend_needs_exactly_one_link():
    with pytest.raises(ValueError, match="exactly one of port="):
        BoardBackend(CONFIG)
