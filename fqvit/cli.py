"""What every command line of the project shares, torch-free so that ``--help`` answers at once.

* ``number(...)``: an argparse type for a numeric option, refusing values out of range (and NaN or
  infinity) with the range it expects.
* ``writable_file`` / ``writable_folder``: an output path checked when the arguments are parsed,
  before any work, so that a long run cannot lose its results at the end. An output file's missing
  folder is refused, not created: a typo should not quietly scatter folders.
* ``arg_type(parse)``: an argparse type from a parser that raises ``ValueError`` (argparse would
  otherwise replace the message with "invalid value").
* ``guarded(work)``: runs a CLI's work; Ctrl-C prints one line and exits 130.
* ``add_report_arguments`` / ``report_paths``: a generated page's ``--out`` and its numbers' ``--json``
  (beside the page by default, since the page is re-rendered from them).
"""

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["INTERRUPTED", "number", "writable_file", "writable_folder", "arg_type", "guarded", "add_report_arguments",
           "report_paths"]

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def arg_type(parse: Callable):
    """`parse` as an argparse type: its ValueError message becomes the usage error."""

    def convert(text):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = parse.__name__
    return convert


def number(kind: type = int, low: float | None = None, high: float | None = None, *, low_open: bool = False):
    """An argparse type: an int (or a finite float) in [low, high]; with `low_open`, above `low`.
    Either bound may be None (unbounded)."""
    noun = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        expected = f"{noun} > {low} and <= {high}" if low_open else f"{noun} in {low}..{high}"
    elif low is not None:
        expected = f"{noun} {'>' if low_open else '>='} {low}"
    else:
        expected = noun if high is None else f"{noun} <= {high}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        if (isinstance(value, float) and not math.isfinite(value)) or (
                low is not None and (value <= low if low_open else value < low)) or (
                high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {value}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _check_folder(folder: Path, what: str) -> None:
    if not folder.exists():
        raise ValueError(f"folder {folder} does not exist; create it first or choose another {what}")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder, so {what} cannot be written there")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"folder {folder} is not writable")


def writable_file(text: str | os.PathLike) -> Path:
    """`text` as a file path that can be written now: not a folder, in an existing writable folder,
    and writable if it exists (it will be replaced). ValueError says what is wrong."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected a file name")
    _check_folder(path.parent, "output file")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{path} exists and is not writable")
    return path


def writable_folder(text: str | os.PathLike) -> Path:
    """`text` as an output folder: an existing writable folder, or one that can be created with its
    parents (like ``mkdir -p``: a folder named for output is the user's intent, unlike a file's folder)
    because its nearest existing ancestor is a writable folder."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; expected a folder")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{ancestor} is a file, so folder {path} cannot be created")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"folder {ancestor} is not writable")
    return path


def guarded(work: Callable[[], int]) -> int:
    """`work()`'s exit code; on Ctrl-C one line on stderr and INTERRUPTED (the caches recover from
    an interrupted write on their own)."""
    try:
        return work()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def add_report_arguments(parser: argparse.ArgumentParser, default_out: str, from_json: bool = True) -> None:
    """``--out`` (the Markdown page), ``--json`` (its numbers; default: the page with .json) and, with
    `from_json`, ``--from-json`` (re-render the page from them); call `report_paths` after parsing."""
    parser.add_argument("--out", type=arg_type(writable_file), default=default_out,
                        help=f"Markdown page to write (default {default_out})")
    parser.add_argument("--json", type=arg_type(writable_file), default=None,
                        help="the page's numbers as JSON (default: --out with .json)")
    if from_json:
        parser.add_argument("--from-json", action="store_true", help="only rewrite --out from the numbers in --json")


def report_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill in the default ``--json`` and refuse ``--from-json`` without its numbers (a usage error)."""
    if args.json is None:
        try:
            args.json = writable_file(args.out.with_suffix(".json"))
        except ValueError as err:
            parser.error(f"--json: {err}")
    if getattr(args, "from_json", False) and not args.json.is_file():
        parser.error(f"--from-json: {args.json} does not exist (run {parser.prog} without --from-json first)")
