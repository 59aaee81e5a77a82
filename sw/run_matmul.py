"""Run one (M x K) @ (K x N) int8 matmul through the Verilated systolic array.

    python -m sw.run_matmul --array 8x8 --shape 197x192x576

Generates the array's Verilog, builds it with Verilator (cached), streams random uint8 x int8
codes through it with the cocotb testbench, compares every element with the integer reference
and reports cycles, MAC utilization and simulation speed.
"""

# Only light modules at the top: --help and usage errors answer at once.
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from fqvit import cache
from fqvit.cli import arg_type, guarded, number, writable_file


def shape(text: str) -> tuple[int, int, int]:
    """``MxKxN`` as (M, K, N), each a positive integer."""
    try:
        values = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"shape must be MxKxN, three positive integers joined by 'x', got {text!r}")
    return values


def array_size(text: str) -> tuple[int, int]:
    from hw.systolic import parse_array  # Amaranth, loaded only when --array is given

    return parse_array(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sw.run_matmul", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--array", default=(8, 8), type=arg_type(array_size), help="RxC (default 8x8)")
    parser.add_argument("--shape", default=(197, 192, 576), type=arg_type(shape),
                        help="MxKxN (default 197x192x576: DeiT-Tiny's qkv projection)")
    parser.add_argument("--seed", type=number(int, 0), default=0, help="seed of the random codes (default 0)")
    parser.add_argument("--json", type=arg_type(writable_file), help="also write the report here")
    cache.add_argument(parser)
    args = parser.parse_args(argv)
    cache.apply(args)
    return guarded(lambda: run(args))


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from hw.systolic import SystolicConfig
    from rtl_gen import generate_systolic
    from sim import toolchain

    console = Console()
    config = SystolicConfig(*args.array)
    m, k, n = args.shape

    try:
        with console.status(f"Generating and building {config.name} with Verilator (cached after the first run)"):
            generated = generate_systolic(config)
            compiled = toolchain.build(generated.verilog, generated.name)
        log = compiled.directory / "run_matmul.log"
        with tempfile.TemporaryDirectory() as tmp, console.status(
                f"Simulating {m}x{k} @ {k}x{n} on the {config.rows}x{config.cols} array"):
            started = time.perf_counter()
            report_path = Path(tmp) / "report.json"
            job = {"m": m, "k": k, "n": n, "seed": args.seed, "report": str(report_path)}
            toolchain.run_tests(compiled, "sim.tb.systolic", testcase="matmul_job", test_dir=Path(tmp), log_file=log,
                                extra_env={"SYSTOLIC_CONFIG": json.dumps(config.to_dict()),
                                           "MATMUL_JOB": json.dumps(job)})
            report = json.loads(report_path.read_text())
            report["wall_s"] = time.perf_counter() - started
    except (toolchain.ToolchainError, ValueError, RuntimeError) as err:
        console.print(f"[red]error:[/red] {err}")
        return 2

    table = Table(title=f"{m}x{k} @ {k}x{n} on a {config.rows}x{config.cols} systolic array (Verilator)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("bit-exact vs integer reference", str(report["bit_exact"]).lower())
    table.add_row("mismatching elements", f"{report['mismatches']} of {m * n}")
    table.add_row("output tiles", str(report["tiles"]))
    table.add_row("cycles", f"{report['cycles']:,}")
    table.add_row("MAC utilization", f"{100 * report['mac_utilization']:.1f} %")
    table.add_row("simulation speed", f"{report['sim_cycles_per_s']:,.0f} cycles/s")
    table.add_row("wall time (simulator run)", f"{report['wall_s']:.1f} s")
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["bit_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
