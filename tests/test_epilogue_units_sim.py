"""The GELU lookup, residual adder and Requantizer testbenches (``sim.tb.gelu/residual/requant``) in
Verilator. One configuration per unit keeps the three builds near a minute: 8 lanes (the default
array width) and an odd lane count with ragged channel groups, the latter with its products in LUTs
(hw.dsp.wide_product's other form) and its lanes shared, as the 12x12 top builds them (hw/share.py:
the residual adder's 3 columns on 2 lanes, a Requantizer's 7 on 3). tests/test_epilogue_units.py
runs every unit at both lane counts, shared and not, in Amaranth's simulator."""

import json

import pytest

from hw.gelu import Gelu, GeluConfig
from hw.requant import RequantConfig, Requantizer
from hw.residual import ResidualAdder, ResidualConfig
from rtl_gen import generate
from sim import toolchain
from sim.tb.epilogue import DIGITS_ENV, save_digits

pytestmark = pytest.mark.sim

CASES = [  # (unit, component, config, config variable, testbench)
    ("gelu", Gelu, GeluConfig(8), "GELU_CONFIG", "sim.tb.gelu"),
    ("residual", ResidualAdder, ResidualConfig(3, 192, lut_multipliers=True, share=2), "RESIDUAL_CONFIG", "sim.tb.residual"),
    ("requant", Requantizer, RequantConfig(8), "REQUANT_CONFIG", "sim.tb.requant"),
    ("requant", Requantizer, RequantConfig(7, 192, lut_multipliers=True, share=3), "REQUANT_CONFIG", "sim.tb.requant"),
]


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    """The digits model's tensors for the testbenches, saved here so no simulation calibrates a model."""
    path = tmp_path_factory.mktemp("digits") / "digits.pt"
    save_digits(path)
    return str(path)


@pytest.mark.parametrize("unit,component,config,variable,testbench", CASES, ids=[case[2].name for case in CASES])
def test_epilogue_unit_in_verilator(unit, component, config, variable, testbench, digits_file, tmp_path):
    generated = generate(component(config), unit, config.timing())
    compiled = toolchain.build(generated.verilog, generated.name)
    toolchain.lint(compiled.verilog)
    toolchain.run_tests(compiled, testbench, extra_env={variable: json.dumps(config.to_dict()), DIGITS_ENV: digits_file},
                        seed=4000 + config.lanes, test_dir=tmp_path)
