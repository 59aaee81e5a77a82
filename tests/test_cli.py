"""What every command line does before and around its work (issue 12): --help and usage errors
without torch, every numeric option validated, output paths refused up front, Ctrl-C as one line
and exit 130."""

import importlib
import importlib.machinery
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from calib.config import OBSERVER_NAMES
from calib.observers import OBSERVERS
from fqvit.cli import INTERRUPTED
from hw.systolic import SystolicConfig, parse_array

ROOT = Path(__file__).resolve().parent.parent

# How each CLI starts, run inside `python -c` (sw/run_vit.py as the script it is).
START = {
    "sw/run_vit.py": "runpy.run_path('sw/run_vit.py', run_name='__main__')",
    "calib": "runpy.run_module('calib', run_name='__main__', alter_sys=True)",
    "calib.results": "runpy.run_module('calib.results', run_name='__main__', alter_sys=True)",
    "sw.bench": "runpy.run_module('sw.bench', run_name='__main__', alter_sys=True)",
    "sw.run_matmul": "runpy.run_module('sw.run_matmul', run_name='__main__', alter_sys=True)",
    "rtl_gen": "runpy.run_module('rtl_gen', run_name='__main__', alter_sys=True)",
    "rtl_gen.synth": "runpy.run_module('rtl_gen.synth', run_name='__main__', alter_sys=True)",
    "rtl_gen.timing": "runpy.run_module('rtl_gen.timing', run_name='__main__', alter_sys=True)",
}


def without_torch(cli: str, *argv: str) -> subprocess.CompletedProcess:
    """Run `cli` with `argv` in a fresh interpreter where importing torch fails."""
    code = (f"import runpy, sys; sys.modules['torch'] = None; sys.argv = [{cli!r}, *{list(argv)!r}]; "
            + START[cli])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize("cli", START)
def test_help_and_usage_errors_do_not_need_torch(cli):
    helped = without_torch(cli, "--help")
    assert helped.returncode == 0 and "usage:" in helped.stdout, helped.stderr
    wrong = without_torch(cli, "--no-such-option")
    assert wrong.returncode == 2 and "unrecognized arguments: --no-such-option" in wrong.stderr
    assert "Traceback" not in helped.stderr + wrong.stderr


@pytest.mark.parametrize("cli, argv, message", [
    ("sw/run_vit.py", ["--clock-mhz", "-5"], "--clock-mhz: must be a number > 0, got -5.0"),
    ("sw/run_vit.py", ["--clock-mhz", "0"], "--clock-mhz: must be a number > 0, got 0.0"),
    ("sw/run_vit.py", ["--clock-mhz", "nan"], "--clock-mhz: must be a number > 0, got nan"),
    ("sw/run_vit.py", ["--clock-mhz", "inf"], "--clock-mhz: must be a number > 0, got inf"),
    ("sw/run_vit.py", ["--images", "0"], "--images: must be an integer >= 1, got 0"),
    ("sw/run_vit.py", ["--images", "two"], "--images: must be an integer >= 1, got 'two'"),
    ("sw/run_vit.py", ["--layers", "-1"], "--layers: must be an integer >= 1, got -1"),
    ("sw/run_vit.py", ["--act-kib", "0"], "--act-kib: must be an integer >= 1, got 0"),
    ("sw/run_vit.py", ["--weight-kib", "1.5"], "--weight-kib: must be an integer >= 1, got '1.5'"),
    ("sw/run_vit.py", ["--array", "33x8"], "--array: array rows must be in 1..32, got 33"),
    ("sw/run_vit.py", ["--array", "8by8"], "--array: array must be RxC"),
    ("calib", ["--calib-images", "0"], "--calib-images: must be an integer >= 1, got 0"),
    ("calib", ["--calib-batch", "-2"], "--calib-batch: must be an integer >= 1, got -2"),
    ("calib", ["--images", "0"], "--images: must be an integer >= 1, got 0"),
    ("calib", ["--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
    ("sw.bench", ["--repeat", "0"], "--repeat: must be an integer >= 1, got 0"),
    ("sw.run_matmul", ["--seed", "-1"], "--seed: must be an integer >= 0, got -1"),
    ("sw.run_matmul", ["--array", "0x4"], "--array: array rows must be in 1..32, got 0"),
    ("sw.run_matmul", ["--shape", "8x0x8"], "--shape: shape must be MxKxN"),
    ("rtl_gen", ["--rows", "0"], "--rows: must be an integer in 1..32, got 0"),
    ("rtl_gen", ["--cols", "33"], "--cols: must be an integer in 1..32, got 33"),
    ("rtl_gen.synth", ["--jobs", "0"], "--jobs: must be an integer >= 1, got 0"),
    ("rtl_gen.synth", ["--seeds", "0"], "--seeds: must be an integer in 1..10, got 0"),
    ("rtl_gen.synth", ["--array", "8by8"], "--array: array must be RxC"),
    ("rtl_gen.synth", ["--unit", "top", "--array", "4x4"], "docs/synthesis.md has no top of array 4x4"),
])
def test_numeric_options_are_validated_before_any_work(cli, argv, message):
    proc = without_torch(cli, *argv)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# (CLI, output option): every option naming a file the CLI writes.
OUTPUT_FILES = [("sw/run_vit.py", "--json"), ("calib", "--json"), ("calib", "--export"), ("calib.results", "--out"),
                ("calib.results", "--json"), ("sw.bench", "--out"), ("sw.bench", "--json"),
                ("sw.run_matmul", "--json"), ("rtl_gen", "--json"), ("rtl_gen.synth", "--out"),
                ("rtl_gen.synth", "--json")]


@pytest.mark.parametrize("cli, option", OUTPUT_FILES)
def test_output_files_are_checked_before_any_work(cli, option, tmp_path):
    missing = tmp_path / "no-such-folder" / "out.json"
    proc = without_torch(cli, option, str(missing))
    assert proc.returncode == 2 and f"folder {missing.parent} does not exist" in proc.stderr, proc.stderr
    assert not missing.parent.exists()  # refused, not created
    proc = without_torch(cli, option, str(tmp_path))
    assert proc.returncode == 2 and f"{tmp_path} is a folder; expected a file name" in proc.stderr
    (tmp_path / "file").write_text("")
    proc = without_torch(cli, option, str(tmp_path / "file" / "out.json"))
    assert proc.returncode == 2 and f"{tmp_path / 'file'} is not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
@pytest.mark.parametrize("cli, option", [("sw/run_vit.py", "--json"), ("calib", "--export")])
def test_an_output_file_in_a_read_only_folder_is_refused(cli, option, tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    proc = without_torch(cli, option, str(tmp_path / "ro" / "out.json"))
    assert proc.returncode == 2 and f"folder {tmp_path / 'ro'} is not writable" in proc.stderr


def test_rtl_gen_output_folder(tmp_path):
    """An output folder is created with its parents (mkdir -p), but not under a file."""
    (tmp_path / "file").write_text("")
    proc = without_torch("rtl_gen", "--out", str(tmp_path / "file"))
    assert proc.returncode == 2 and f"{tmp_path / 'file'} is a file; expected a folder" in proc.stderr
    proc = without_torch("rtl_gen", "--out", str(tmp_path / "file" / "rtl"))
    assert proc.returncode == 2 and f"{tmp_path / 'file'} is a file, so folder" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "rtl_gen", "--rows", "2", "--cols", "2", "--out",
                           str(tmp_path / "a" / "b")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and (tmp_path / "a" / "b" / "systolic_2x2.v").is_file(), proc.stderr


def test_bench_from_json_needs_its_json(tmp_path):
    proc = without_torch("sw.bench", "--from-json", "--out", str(tmp_path / "p.md"))
    assert proc.returncode == 2 and f"{tmp_path / 'p.json'} does not exist" in proc.stderr


# (module, function the CLI's work runs in, arguments that get there)
WORK = [("calib.__main__", "run", []), ("sw.run_vit", "run", []), ("sw.bench", "measure", ["--out", "{tmp}/p.md"]),
        ("sw.run_matmul", "run", []), ("rtl_gen.__main__", "run", ["--out", "{tmp}/rtl"]),
        ("rtl_gen.synth", "run", ["--out", "{tmp}/s.md"]), ("calib.results", "run_all", ["--out", "{tmp}/r.md"])]


@pytest.mark.parametrize("module_name, function, argv", WORK, ids=[w[0] for w in WORK])
def test_ctrl_c_prints_one_line_and_exits_130(module_name, function, argv, monkeypatch, tmp_path, capsys):
    module = importlib.import_module(module_name)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, function, interrupted)
    # sw.bench refuses to start without matplotlib (its plot comes at the end); the test extra lacks it
    plotting = types.ModuleType("matplotlib")
    plotting.__spec__ = importlib.machinery.ModuleSpec("matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib", plotting)
    assert module.main([a.format(tmp=tmp_path) for a in argv]) == INTERRUPTED
    assert capsys.readouterr().err == "interrupted\n"


def test_parse_array():
    assert parse_array("8x8") == (8, 8) and parse_array("4X6") == (4, 6)
    for text, message in (("8", "array must be RxC"), ("8x8x8", "array must be RxC"), ("axb", "array must be RxC"),
                          (f"1x{SystolicConfig.MAX_DIM + 1}", f"array cols must be in 1..{SystolicConfig.MAX_DIM}"),
                          ("-1x4", "array rows must be in 1..")):
        with pytest.raises(ValueError, match=message):
            parse_array(text)


def test_the_observer_names_are_the_observers():
    assert OBSERVER_NAMES == tuple(OBSERVERS)
