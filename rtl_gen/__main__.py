"""``python -m rtl_gen``: write a unit's Verilog and JSON manifest.

    python -m rtl_gen --rows 8 --cols 8 --out build/rtl             # the systolic array
    python -m rtl_gen --unit layernorm --set max_channels=768       # any unit, config fields by name
    python -m rtl_gen --unit top --rows 8 --cols 8                  # the accelerator top
    python -m rtl_gen --all --out build/rtl                         # every unit, default configs
    python -m rtl_gen --unit top --target ecp5                      # multipliers as ECP5 MULT18X18D primitives
    python -m rtl_gen --unit top --synth ecp5 --json report.json    # resources and fmax on an LFE5U-85F

Without --out the files go to the cache's rtl/ folder (python -m sw.cache shows where).
"""

import argparse
import dataclasses
import json
import sys

from fqvit import cache
from fqvit.cli import arg_type, guarded, number, writable_file, writable_folder
from hw.systolic import SystolicConfig
from rtl_gen import TARGETS, config_class, generate_unit, unit_names


def build_config(unit: str, settings: list[str], rows: int, cols: int):
    """The unit's config from `key=value` settings, converted to each field's declared type."""
    cls = config_class(unit)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {"rows": rows, "cols": cols} if unit in ("systolic", "top") else {}
    for item in settings:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        kind = fields[key].type if isinstance(fields[key].type, type) else {"int": int, "str": str, "float": float,
                                                                            "bool": bool}.get(str(fields[key].type), str)
        try:
            values[key] = kind(text)
        except ValueError:
            raise ValueError(f"--set {key}: expected {kind.__name__}, got {text!r}") from None
    return cls(**values)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtl_gen", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--unit", default="systolic", choices=unit_names(), help="which unit (default systolic)")
    parser.add_argument("--all", action="store_true", help="every unit with its default config (and --rows/--cols)")
    dimension = number(int, 1, SystolicConfig.MAX_DIM)
    parser.add_argument("--rows", type=dimension, default=8, help="systolic array rows R (default 8)")
    parser.add_argument("--cols", type=dimension, default=8, help="systolic array columns C (default 8)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a config field of --unit")
    parser.add_argument("--out", type=arg_type(writable_folder), default=None,
                        help="output folder, created if missing (default: the cache's rtl/)")
    parser.add_argument("--target", choices=list(TARGETS), help="generic RTL (default) or ecp5: multipliers as "
                        "MULT18X18D primitives with their own registers (same cycle behaviour)")
    parser.add_argument("--synth", choices=["ecp5"], help="also synthesize, place and route for an LFE5U-85F "
                        "(minutes; implies --target ecp5)")
    parser.add_argument("--json", type=arg_type(writable_file), help="with --synth: write the resource and fmax report here")
    parser.add_argument("--seeds", type=number(int, 1, 10), default=1,
                        help="with --synth: place and route with nextpnr seeds 1..N (fmax_mhz: seed 1; fmax_best_mhz)")
    cache.add_argument(parser)
    args = parser.parse_args(argv)
    cache.apply(args)
    if args.json and not args.synth:
        parser.error("--json needs --synth ecp5")
    if args.synth and args.all:
        parser.error("--synth takes one --unit; `python -m rtl_gen.synth` reports every unit")
    if args.synth and args.target == "generic":
        parser.error("--synth ecp5 synthesizes the ecp5 target; leave out --target generic")
    target = args.target or ("ecp5" if args.synth else "generic")
    return guarded(lambda: run(parser, args, target))


def run(parser: argparse.ArgumentParser, args, target: str) -> int:
    out = args.out or cache.part("rtl")
    try:
        units = unit_names() if args.all else [args.unit]
        generated = [generate_unit(u, build_config(u, [] if args.all else args.set, args.rows, args.cols), target)
                     for u in units]
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for g in generated:
            (out / f"{g.name}.v").write_text(g.verilog)
            (out / f"{g.name}.json").write_text(json.dumps(g.manifest, indent=2) + "\n")
    except OSError as err:
        parser.exit(2, f"{parser.prog}: error: cannot write to {out}: {err.strerror}\n")
    for g in generated:
        print(f"wrote {out / g.name}.v and .json (timing {g.manifest['timing']})")
    if args.synth:
        from rtl_gen.synth import report

        print(f"synthesizing, placing and routing {generated[0].name} for the LFE5U-85F ...", flush=True)
        try:
            result = report(args.unit, build_config(args.unit, args.set, args.rows, args.cols), seeds=args.seeds)
        except RuntimeError as err:
            parser.exit(1, f"{parser.prog}: error: {err}\n")
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
