"""The ``npu`` command line: info, gemm, disasm, verilog, demo, bench."""

import argparse
import sys

import numpy as np

__all__ = ["main"]


def _config_args(parser):
    parser.add_argument("--cores", type=int, default=1, help="cores (1..8)")
    parser.add_argument("--rows", type=int, default=8, help="array rows")
    parser.add_argument("--cols", type=int, default=8, help="array columns")


def _config(args):
    from npu.rtl.config import NPUConfig
    return NPUConfig(cores=args.cores, rows=args.rows, cols=args.cols)


def cmd_info(args):
    cfg = _config(args)
    print("NPU configuration")
    for name in ("cores", "rows", "cols", "scratchpad_bytes", "acc_rows", "param_slots",
                 "bus_width", "addr_width", "rounding"):
        print(f"  {name:<17} {getattr(cfg, name)}")
    print(f"  {'peak MACs/cycle':<17} {cfg.macs_per_cycle}")
    print(f"  {'peak ops/cycle':<17} {2 * cfg.macs_per_cycle}  (multiply + add)")
    return 0


def cmd_gemm(args):
    from npu.firmware.device import Device
    a, b = np.load(args.a), np.load(args.b)
    dev = Device(backend=args.backend, config=_config(args), progress=True)
    y = dev.gemm(a, b)
    np.save(args.output, y)
    s = dev.stats
    print(f"{args.a} {a.shape} @ {args.b} {b.shape} -> {args.output} {y.shape} {y.dtype}")
    if s["cycles"] is not None:
        print(f"cycles {s['cycles']}, MACs {s['macs']}, utilisation {s['utilization']:.1%}")
    else:
        print(f"MACs {s['macs']} (the golden backend has no timing)")
    return 0


def cmd_disasm(args):
    from npu.firmware.asm import disassemble
    if args.program:
        with open(args.program, "rb") as f:
            data = f.read()
        print(disassemble(data, base=args.base))
        return 0
    if not args.gemm:
        print("npu disasm: give a program file or --gemm M,K,N", file=sys.stderr)
        return 2
    from npu.firmware.device import Device
    M, K, N = (int(v) for v in args.gemm.split(","))
    dev = Device(backend="golden", config=_config(args))
    rng = np.random.default_rng(0)
    dev.gemm(rng.integers(-128, 128, (M, K)).astype(np.int8),
             rng.integers(-128, 128, (K, N)).astype(np.int8))
    print(dev.disassemble())
    return 0


def cmd_verilog(args):
    from npu.synth.export import main as export_main
    return export_main(["--cores", str(args.cores), "--rows", str(args.rows),
                        "--cols", str(args.cols), "-o", args.output]) or 0


def cmd_demo(args):
    from npu.firmware.demo import run_demo
    return run_demo(images=args.images, cores=args.cores, backend=args.backend)


def cmd_bench(args):
    from npu.firmware.bench import run_bench
    sections = tuple(args.only.split(",")) if args.only else None
    kwargs = {"sections": sections} if sections else {}
    return run_bench(quick=args.quick, **kwargs)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="npu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="the configuration and its peak MACs per cycle")
    _config_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("gemm", help="int8 A.npy @ B.npy -> int32 C.npy on the NPU")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--backend", default="golden", choices=("golden", "amaranth", "verilator"))
    _config_args(p)
    p.set_defaults(func=cmd_gemm)

    p = sub.add_parser("disasm", help="disassemble a program file, or the program of a GEMM")
    p.add_argument("program", nargs="?")
    p.add_argument("--base", type=lambda v: int(v, 0), default=0)
    p.add_argument("--gemm", help="M,K,N: compile this GEMM and print its programs")
    _config_args(p)
    p.set_defaults(func=cmd_disasm)

    p = sub.add_parser("verilog", help="write the NPU top as one Verilog file")
    p.add_argument("-o", "--output", default="build/npu.v")
    _config_args(p)
    p.set_defaults(func=cmd_verilog)

    p = sub.add_parser("demo", help="digits CNN and an attention head on the simulated NPU")
    p.add_argument("--images", type=int, default=4,
                   help="test images to run cycle-exactly on the gateware")
    p.add_argument("--cores", type=int, default=1)
    p.add_argument("--backend", default="amaranth", choices=("amaranth", "verilator"))
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="performance benchmarks (long)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument("--only", help="comma-separated sections: utilization, scaling, "
                   "memory_wall, sparse, speed (the others keep their last results)")
    p.set_defaults(func=cmd_bench)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"npu {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
