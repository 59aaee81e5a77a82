"""Where the project keeps what it builds: one per-user cache root.

Trained embedded models, exported integer models, test vectors and Verilator builds all live under
``cache_root()``, so a run from any folder finds them. The root is, in order of precedence:
``set_root(path)`` (the CLIs' ``--cache-dir``), ``$FQVIT_CACHE_DIR``, ``$XDG_CACHE_HOME/fqvit-accel``,
``~/.cache/fqvit-accel``. ``python -m sw.cache`` shows its size and clears it.
"""

import argparse
import os
from pathlib import Path

__all__ = ["ENV_VAR", "PARTS", "cache_root", "set_root", "part", "add_argument", "apply"]

ENV_VAR = "FQVIT_CACHE_DIR"

# The cache's folders (each a `part`), with what fills them. Every entry is keyed by what produced it,
# so clearing a part only costs the time to rebuild what is asked for next.
PARTS = {
    "models": "trained embedded models (calib.digits)",
    "exports": "integer model files python -m calib writes without --export",
    "vectors": "test vectors of the digits model for the testbenches (sim.vectors)",
    "sim": "Verilator builds, one per design and build options (sim.toolchain)",
    "rtl": "Verilog and manifests python -m rtl_gen writes without --out, the sim backend's tops (sw.driver)",
}


def cache_root() -> Path:
    """The cache root (absolute; not created here)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "fqvit-accel").resolve()


def set_root(path: str | Path) -> Path:
    """Make `path` the cache root for this process and every process it starts (cocotb runs)."""
    os.environ[ENV_VAR] = str(Path(path).expanduser().resolve())
    return cache_root()


def part(name: str) -> Path:
    """The folder of one part of the cache (a key of PARTS; not created here)."""
    if name not in PARTS:
        raise ValueError(f"unknown cache part {name!r}; expected one of {', '.join(PARTS)}")
    return cache_root() / name


def _folder(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    return path


def add_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--cache-dir``, whose help says where the cache is now; call `apply` after parsing."""
    now = str(cache_root()).replace("%", "%%")  # argparse formats help with %
    parser.add_argument("--cache-dir", type=_folder, metavar="DIR",
                        help=f"cache of trained models, exports, test vectors and Verilator builds (default: "
                             f"${ENV_VAR}, else ~/.cache/fqvit-accel; now {now}; python -m sw.cache shows or clears it)")


def apply(args: argparse.Namespace) -> None:
    """Make the parsed ``--cache-dir`` (if given) the cache root."""
    if args.cache_dir is not None:
        set_root(args.cache_dir)
