"""The LayerNorm testbench (``sim.tb.layernorm``) in Verilator: the default configuration and a small,
non-power-of-two one (its buffer halves do not start at a power of two)."""

import json

import pytest
import torch

from hw.layernorm import LayerNormConfig, LayerNormUnit
from rtl_gen import generate
from sim import toolchain

pytestmark = pytest.mark.sim

CONFIGS = [LayerNormConfig(), LayerNormConfig(24)]


@pytest.fixture(scope="module")
def digits_cases(tmp_path_factory):
    """The digits model's LayerNorm inputs and outputs, saved for the testbench (loading the model
    inside the simulator process is slow)."""
    from sim.tb.layernorm import digits_cases

    path = tmp_path_factory.mktemp("layernorm") / "digits_cases.pt"
    torch.save(digits_cases(), path)
    return str(path)


@pytest.mark.parametrize("config", CONFIGS, ids=[config.name for config in CONFIGS])
def test_layernorm_in_verilator(config, digits_cases, tmp_path):
    generated = generate(LayerNormUnit(config), "layernorm", config.timing())
    assert generated.manifest["timing"]["latency"] == config.latency
    (tmp_path / f"{generated.name}.v").write_text(generated.verilog)
    toolchain.lint(tmp_path / f"{generated.name}.v")
    compiled = toolchain.build(generated.verilog, generated.name)
    # the digits model's LayerNorms run on the units they fit (48 channels: not on the 24-channel one)
    fits = any(case["x"].shape[-1] <= config.max_channels for case in torch.load(digits_cases, weights_only=True))
    toolchain.run_tests(compiled, "sim.tb.layernorm",
                        extra_env={"LAYERNORM_CONFIG": json.dumps(config.to_dict()), "LAYERNORM_DIGITS": digits_cases},
                        seed=5000 + config.max_channels, test_dir=tmp_path,
                        may_skip=() if fits else ("digits_model_layernorms",))
