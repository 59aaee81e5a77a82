"""The attention x V cocotb testbench (``sim.tb.attnv``) in Verilator: the default (8 lanes, one
requantizer) and an odd lane count whose requantizers do not divide it (3 lanes, 2 requantizers:
a padded second issue) and whose last chunk of the digits model's 16 columns is one column wide."""

import json

import pytest
import torch

from hw.attnv import AttnV, AttnVConfig
from rtl_gen import generate
from sim import toolchain
from sim.tb.attnv import digits_attnv_vectors

pytestmark = pytest.mark.sim

CONFIGS = [AttnVConfig(), AttnVConfig(lanes=3, requant_lanes=2, max_keys=197)]


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    """The real rows in a small file, so the simulator need not load the model."""
    path = tmp_path_factory.mktemp("attnv") / "digits_attnv.pt"
    torch.save(digits_attnv_vectors(), path)
    return path


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_attnv_in_verilator(config, digits_file, tmp_path):
    generated = generate(AttnV(config), "attnv", config.timing())
    compiled = toolchain.build(generated.verilog, generated.name)
    env = {"ATTNV_CONFIG": json.dumps(config.to_dict()), "ATTNV_DIGITS": str(digits_file)}
    toolchain.run_tests(compiled, "sim.tb.attnv", extra_env=env, seed=2000 + config.lanes, test_dir=tmp_path)


LINT_CONFIGS = CONFIGS + [AttnVConfig(lanes=8, requant_lanes=8), AttnVConfig(lanes=1, max_keys=1)]


@pytest.mark.parametrize("config", LINT_CONFIGS, ids=[c.name for c in LINT_CONFIGS])
def test_attnv_verilog_is_lint_clean(config, tmp_path):
    """Plain `verilator --lint-only`, including one requant issue per row (no step counter)."""
    generated = generate(AttnV(config), "attnv", config.timing())
    path = tmp_path / f"{generated.name}.v"
    path.write_text(generated.verilog)
    toolchain.lint(path)
