"""``python -m rtl_gen --rows R --cols C --out DIR``: write a unit's Verilog and JSON manifest."""

import argparse
import json
import sys
from pathlib import Path

from hw.systolic import SystolicConfig
from rtl_gen import generate_systolic


def dimension(text: str) -> int:
    limit = f"an integer in 1..{SystolicConfig.MAX_DIM}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {limit}, got {text!r}") from None
    if not 1 <= value <= SystolicConfig.MAX_DIM:
        raise argparse.ArgumentTypeError(f"must be {limit}, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtl_gen", description=__doc__)
    parser.add_argument("--rows", type=dimension, default=8, help="systolic array rows R (default 8)")
    parser.add_argument("--cols", type=dimension, default=8, help="systolic array columns C (default 8)")
    parser.add_argument("--out", type=Path, default=Path("build/rtl"), help="output folder (default build/rtl)")
    args = parser.parse_args(argv)

    generated = generate_systolic(SystolicConfig(args.rows, args.cols))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{generated.name}.v").write_text(generated.verilog)
        (args.out / f"{generated.name}.json").write_text(json.dumps(generated.manifest, indent=2) + "\n")
    except OSError as err:
        parser.exit(2, f"{parser.prog}: error: cannot write to {args.out}: {err.strerror}\n")
    print(f"wrote {args.out / generated.name}.v and .json "
          f"(latency {generated.manifest['timing']['latency']} cycles)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
