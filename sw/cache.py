"""``python -m sw.cache``: where the per-user cache is, the size of each part, and clearing it.

Examples:

    python -m sw.cache                # the root and the size of each part (one line per Verilator build)
    python -m sw.cache --clear sim    # delete the Verilator builds (or models, exports, vectors)
    python -m sw.cache --clear        # delete every part

Everything in the cache is rebuilt on demand. Imports nothing heavy, so it answers at once.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fqvit import cache

__all__ = ["size", "entries", "clear", "main"]


def size(folder: Path) -> int:
    """Bytes of the files under `folder` (0 if there is none; links are not followed)."""
    total = 0
    for parent, _, files in os.walk(folder):
        total += sum(os.lstat(os.path.join(parent, name)).st_size for name in files)
    return total


def entries() -> list[tuple[str, Path, int]]:
    """(label, path, bytes) for each part, and for each Verilator build of the ``sim`` part."""
    rows = []
    for name in cache.PARTS:
        folder = cache.part(name)
        # One line per Verilator build (the lock files beside them hold nothing).
        builds = sorted(p for p in folder.iterdir() if p.is_dir()) if name == "sim" and folder.is_dir() else []
        rows += [(f"sim/{b.name}", b, size(b)) for b in builds] or [(name, folder, size(folder))]
    return rows


def clear(parts) -> list[Path]:
    """Delete the named parts (keys of cache.PARTS); the folders that were there."""
    removed = []
    for name in parts:
        folder = cache.part(name)
        if folder.exists():
            shutil.rmtree(folder)
            removed.append(folder)
    return removed


def _human(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sw.cache", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Show where the per-user cache is and the size of each part, or clear it.",
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--clear", nargs="?", const="all", choices=["all", *cache.PARTS], metavar="PART",
                   help=f"delete one part ({', '.join(cache.PARTS)}) or, without PART, all of them")
    cache.add_argument(p)
    args = p.parse_args(argv)
    cache.apply(args)
    console = Console()
    if args.clear:
        removed = clear(list(cache.PARTS) if args.clear == "all" else [args.clear])
        console.print(f"cache {cache.cache_root()}: removed " + (", ".join(str(f) for f in removed) or "nothing"))
        return 0
    rows = entries()
    table = Table()
    table.add_column("part")
    table.add_column("holds")
    table.add_column("size", justify="right")
    for label, _, n in rows:
        table.add_row(label, cache.PARTS.get(label, "a Verilator build"), _human(n))
    table.add_row("total", "", _human(sum(n for *_, n in rows)), style="bold")
    console.print(f"cache {cache.cache_root()}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
