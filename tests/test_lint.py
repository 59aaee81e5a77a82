"""Every generated design passes a plain `verilator --lint-only` (Verilator's default warnings):
each unit at its default config (the top at 8x8), the top at a non-square shape, and the top for
the ecp5 target together with the model of the primitive it instantiates, with the units'
multipliers in DSP blocks and in LUTs."""

import pytest

from hw.top import TopConfig
from rtl_gen import config_class, generate_unit, unit_names
from sim import toolchain

DESIGNS = {
    **{unit: (unit, config_class(unit)(), "generic") for unit in unit_names()},
    "top_4x6": ("top", TopConfig(rows=4, cols=6), "generic"),
    "top_ecp5": ("top", TopConfig(), "ecp5"),
    "top_lut_ecp5": ("top", TopConfig(rows=4, cols=6, dsp_budget=24), "ecp5"),  # the units' products in LUTs
}


@pytest.mark.parametrize("design", DESIGNS)
def test_generated_verilog_is_lint_clean(design, tmp_path):
    unit, config, target = DESIGNS[design]
    generated = generate_unit(unit, config, target)
    path = tmp_path / f"{generated.name}.v"
    path.write_text(generated.verilog)
    toolchain.lint(path, target)  # raises with Verilator's report


def test_lint_reports_a_default_warning(tmp_path):
    """The check above can fail: a `case` without `default` that leaves values out (what the top's
    command dispatch used to be) is reported."""
    path = tmp_path / "incomplete.v"
    path.write_text("module incomplete(input [1:0] s, input a, output reg y);\n"
                    "  always @* begin\n    y = 1'b0;\n    case (s)\n      2'd1: y = a;\n    endcase\n  end\n"
                    "endmodule\n")
    with pytest.raises(toolchain.ToolchainError, match="CASEINCOMPLETE"):
        toolchain.lint(path)
