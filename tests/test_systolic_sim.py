"""The systolic array's cocotb testbench (``sim.tb.systolic``) in Verilator, per array shape."""

import json

import pytest

from hw.systolic import SystolicConfig
from rtl_gen import generate_systolic, generate_unit
from sim import toolchain

pytestmark = pytest.mark.sim

# Square and non-square (both ways), the smallest and the largest shipped size.
SHAPES = [(2, 2), (4, 6), (6, 3), (8, 8), (16, 16)]
# sw.run_matmul's job runner, which skips itself unless it is given a job
NOT_REGRESSION_TESTS = ("matmul_job",)


@pytest.mark.parametrize("rows,cols", SHAPES, ids=[f"{r}x{c}" for r, c in SHAPES])
def test_systolic_in_verilator(rows, cols, tmp_path):
    config = SystolicConfig(rows, cols)
    generated = generate_systolic(config)
    compiled = toolchain.build(generated.verilog, generated.name)
    toolchain.run_tests(compiled, "sim.tb.systolic", extra_env={"SYSTOLIC_CONFIG": json.dumps(config.to_dict())},
                        seed=1000 + rows * 32 + cols, test_dir=tmp_path, may_skip=NOT_REGRESSION_TESTS)


def test_systolic_lowered_to_ecp5_dsp_blocks_in_verilator(tmp_path):
    """The Verilog synthesis uses (multipliers as MULT18X18D with their own registers) behaves
    exactly like the generic RTL: the same testbench, its timing checks included, on the primitive's model."""
    config = SystolicConfig(8, 8)
    generated = generate_unit("systolic", config, target="ecp5")
    assert generated.verilog.count("MULT18X18D #(") == 64
    compiled = toolchain.build(generated.verilog + toolchain.primitive_models("ecp5"), generated.name)
    toolchain.run_tests(compiled, "sim.tb.systolic", extra_env={"SYSTOLIC_CONFIG": json.dumps(config.to_dict())},
                        seed=2024, test_dir=tmp_path, may_skip=NOT_REGRESSION_TESTS)
