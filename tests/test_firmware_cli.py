import subprocess
import sys

import numpy as np

from npu.firmware.cli import main


def test_info_prints_the_configuration_and_peak(capsys):
    assert main(["info", "--cores", "2", "--rows", "4", "--cols", "8"]) == 0
    out = capsys.readouterr().out
    assert "peak MACs/cycle   64" in out and "rounding          double" in out


def test_gemm_reads_and_writes_npy_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (5, 7)).astype(np.int8)
    b = rng.integers(-128, 128, (7, 3)).astype(np.int8)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    assert main(["gemm", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "-o",
                 str(tmp_path / "c.npy"), "--cores", "2"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), a.astype(np.int64) @ b)


def test_gemm_with_a_bad_file_is_a_clear_error(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.zeros((2, 2), np.float32))
    rc = main(["gemm", str(tmp_path / "a.npy"), str(tmp_path / "a.npy"), "-o",
               str(tmp_path / "c.npy")])
    assert rc == 2
    assert "a must have dtype int8, not float32" in capsys.readouterr().err


def test_disasm_of_a_compiled_gemm_and_of_a_file(tmp_path, capsys):
    assert main(["disasm", "--gemm", "16,8,8", "--cores", "2"]) == 0
    text = capsys.readouterr().out
    assert text.count("END") == 2 and "load_weights=1" in text
    from npu.firmware.asm import Program
    p = Program()
    p.matmul(0, 0, 4, accumulate=True)
    p.end()
    (tmp_path / "p.bin").write_bytes(p.to_bytes())
    assert main(["disasm", str(tmp_path / "p.bin"), "--base", "0x100"]) == 0
    assert "0x00000100: MATMUL sp_addr=0 acc_addr=0 rows=4 accumulate=1" in capsys.readouterr().out


def test_console_script_is_installed():
    exe = __import__("shutil").which("npu", path=str(__import__("pathlib").Path(sys.executable)
                                                        .parent))
    assert exe is not None
    out = subprocess.run([exe, "info"], capture_output=True, text=True, check=True).stdout
    assert "peak MACs/cycle" in out
