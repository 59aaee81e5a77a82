"""rtl_gen: deterministic Verilog, manifest, lint-clean output, and refusal of bad parameters."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hw.systolic import SystolicConfig
from rtl_gen import generate_systolic
from sim import toolchain


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rtl_gen", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_writes_lint_clean_verilog_and_manifest(tmp_path):
    proc = run_cli("--rows", "8", "--cols", "8", "--out", str(tmp_path / "rtl"))
    assert proc.returncode == 0, proc.stderr
    verilog = tmp_path / "rtl" / "systolic_8x8.v"
    manifest = json.loads((tmp_path / "rtl" / "systolic_8x8.json").read_text())
    assert "module systolic_8x8(" in verilog.read_text()
    assert manifest["config"] == {"rows": 8, "cols": 8}
    assert manifest["timing"]["latency"] == SystolicConfig(8, 8).latency
    ports = {p["name"]: p for p in manifest["ports"]}
    assert ports["operands__payload"]["width"] == SystolicConfig(8, 8).operand_layout.size
    assert ports["results__ready"]["direction"] == "in"
    toolchain.lint(verilog)


def test_verilog_is_deterministic():
    config = SystolicConfig(3, 5)
    first, second = generate_systolic(config), generate_systolic(config)
    assert first.verilog == second.verilog
    assert "src =" not in first.verilog  # no source locations: the text is independent of the checkout


@pytest.mark.parametrize("args,message", [
    (["--rows", "0"], "--rows: must be an integer in 1..32, got 0"),
    (["--cols", "-3"], "--cols: must be an integer in 1..32, got -3"),
    (["--rows", "2.5"], "--rows: must be an integer in 1..32, got '2.5'"),
    (["--cols", "33"], "--cols: must be an integer in 1..32, got 33"),
])
def test_cli_refuses_bad_parameters(args, message, tmp_path):
    proc = run_cli(*args, "--out", str(tmp_path))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_cli_generates_every_unit(tmp_path):
    proc = run_cli("--all", "--rows", "2", "--cols", "3", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    from rtl_gen import unit_names
    manifests = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert sorted(m["unit"] for m in manifests) == sorted(unit_names())
    for m in manifests:
        assert m["timing"] and m["ports"] and m["payloads"]


@pytest.mark.parametrize("args,message", [
    (["--unit", "layernorm", "--set", "max_channels=0"], "max_channels"),
    (["--unit", "softmax", "--set", "rule=round"], "rule"),
    (["--unit", "gelu", "--set", "lanes=x"], "--set lanes: expected int, got 'x'"),
    (["--unit", "gelu", "--set", "width=3"], "expected FIELD=VALUE with FIELD one of lanes"),
])
def test_cli_refuses_bad_unit_parameters(args, message, tmp_path):
    proc = run_cli(*args, "--out", str(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_ecp5_target_lowers_multipliers_to_dsp_primitives(tmp_path):
    """Generic RTL infers its multipliers; the ecp5 target instantiates MULT18X18D with the input and
    output registers clocked (the systolic sim test runs that Verilog against the generic timing)."""
    for target, count in (("generic", 0), ("ecp5", 4)):
        proc = run_cli("--rows", "2", "--cols", "2", "--target", target, "--out", str(tmp_path / target))
        assert proc.returncode == 0, proc.stderr
        text = (tmp_path / target / "systolic_2x2.v").read_text()
        assert text.count("MULT18X18D #(") == count
        assert json.loads((tmp_path / target / "systolic_2x2.json").read_text())["target"] == target
    assert text.count('.REG_INPUTA_CLK("CLK0")') == text.count('.REG_OUTPUT_CLK("CLK0")') == 4
    from rtl_gen.synth import synthesize
    assert synthesize("systolic", SystolicConfig(2, 2))["DSP (MULT18X18D)"] == 4


def test_synthesis_report_counts_cells():
    from rtl_gen.synth import synthesize
    row = synthesize("gelu")
    assert row["module"] == "gelu_8l" and row["BRAM (DP16KD)"] == 8 and row["LUT4"] > 0
    assert row["LUT-RAM (DPR16X4)"] > 0  # the output FIFO's distributed RAM


def test_synthesis_page_shows_fixed_seed_best_seed_and_device_use():
    from rtl_gen.synth import markdown

    row = {"unit": "top", "top": "fqvit_top_8x8_x", "yosys": "pyosys", "luts": 1, "ffs": 2, "carry": 3, "dsp": 4,
           "bram": 5, "lutram": 6, "fits": True, "fmax_mhz": 151.2, "fmax_best_mhz": 158.0,
           "fmax_by_seed": {"1": 151.2, "2": 158.0, "3": 149.9}, "critical_path": "a -> b",
           "device_use": {"luts": [8364, 83640], "dsp": [78, 156]}}
    page = markdown([row])
    assert "| top | `fqvit_top_8x8_x` | 1 | 2 | 3 | 4 | 5 | 6 | 151.2 | 158.0 (151.2, 158.0, 149.9) | - |" in page
    assert "| `abc1234+` |" in markdown([dict(row, revision="abc1234+")])
    assert "best of the seeds run" in page
    assert "| `fqvit_top_8x8_x` | 8364 / 83640 (10 %) | - | 78 / 156 (50 %) | - | - |" in page


def test_synthesis_rows_name_the_commit_they_measured():
    import re

    from rtl_gen.synth import source_revision

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
    assert re.fullmatch(re.escape(head) + r"\+?", source_revision())


def test_synthesis_runs_choose_designs_by_unit_and_array():
    from argparse import Namespace

    from rtl_gen.synth import _chosen, targets

    def chosen(unit=None, array=None):
        return [(u, getattr(c, "rows", None)) for u, c in targets() if _chosen(u, c, Namespace(unit=unit, array=array))]

    assert len(chosen()) == len(targets())
    assert ("top", 12) not in chosen(array=[(8, 8)]) and ("top", 8) in chosen(array=[(8, 8)])
    assert ("gelu", None) in chosen(array=[(8, 8)])  # a unit without an array is not filtered by it
    assert chosen(unit=["systolic"], array=[(12, 12)]) == [("systolic", 12)]


@pytest.mark.parametrize("args,message", [
    (["--json", "r.json"], "--json needs --synth ecp5"),
    (["--all", "--synth", "ecp5"], "--synth takes one --unit"),
    (["--synth", "vivado"], "invalid choice"),
    (["--synth", "ecp5", "--target", "generic"], "--synth ecp5 synthesizes the ecp5 target"),
    (["--target", "xilinx"], "invalid choice"),
])
def test_cli_refuses_bad_synthesis_requests(args, message, tmp_path):
    proc = run_cli(*args, "--out", str(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_timing_shell_registers_every_port():
    from amaranth.back import verilog

    from hw.gelu import Gelu, GeluConfig
    from rtl_gen.shell import TimingShell

    text = verilog.convert(TimingShell(Gelu(GeluConfig(lanes=2))), name="gelu_shell", emit_src=False)
    header = text[text.index("module gelu_shell("):].split(";")[0]
    assert sorted(p.strip() for p in header[header.index("(") + 1:header.index(")")].split(",")) == \
        ["clk", "load", "rst", "si", "so"]


def test_published_unit_timing_matches_the_hardware():
    """docs/architecture.md's timing table is every unit's `timing()` (which the unstalled cocotb
    tests check against the RTL), so a latency change that skips the page fails here."""
    from rtl_gen.timing import DOC, documented, table

    assert documented(DOC.read_text()) == table(), "run `python -m rtl_gen.timing --write`"
