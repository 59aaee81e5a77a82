"""The LIS softmax testbenches (``sim.tb.softmax``, ``sim.tb.softmax_code``) in Verilator."""

import json

import pytest
import torch

from hw.softmax import LisSoftmax, SoftmaxConfig
from rtl_gen import generate
from sim import toolchain
from sim.tb.softmax_code import LisCodeLanes, LisCodeLanesConfig
from sim.vectors import digits_vectors

pytestmark = pytest.mark.sim

# The default (DeiT rows of 197 keys fit) with FQ-ViT's rule, and a Swin-sized buffer with the other rule.
CONFIGS = [SoftmaxConfig(256, "fqvit"), SoftmaxConfig(64, "nearest")]


def digits_rows(path):
    """Save the softmax inputs, exp tables and LIS codes of the digits model's first and last
    attention layers to `path`."""
    im, trace, _ = digits_vectors()
    attention = sorted((k.removesuffix(".logits") for k in trace if k.endswith(".attn.logits")),
                       key=lambda name: int(name.split(".")[1]))
    layers = {}
    for name in dict.fromkeys((attention[0], attention[-1])):
        layers[name] = {"logits": trace[f"{name}.logits"], "table": im.t(f"{name}.softmax.exp"),
                        "codes": trace[f"{name}.softmax"]}
    rule = (im.i(f"{attention[0]}.softmax.num"), im.i(f"{attention[0]}.softmax.den"))
    torch.save({"rule": rule, "layers": layers}, path)
    return path


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_softmax_in_verilator(config, tmp_path):
    generated = generate(LisSoftmax(config), "softmax", config.timing())
    compiled = toolchain.build(generated.verilog, generated.name)
    toolchain.lint(compiled.verilog)
    env = {"SOFTMAX_CONFIG": json.dumps(config.to_dict()),
           "SOFTMAX_VECTORS": str(digits_rows(tmp_path / "digits_rows.pt"))}
    toolchain.run_tests(compiled, "sim.tb.softmax", extra_env=env, seed=4000 + config.max_keys, test_dir=tmp_path)


def test_lis_code_every_e_in_verilator(tmp_path):
    config = LisCodeLanesConfig()
    generated = generate(LisCodeLanes(config), "lis_code_lanes", {})
    compiled = toolchain.build(generated.verilog, generated.name)
    toolchain.run_tests(compiled, "sim.tb.softmax_code", extra_env={"LIS_CODE_LANES": json.dumps(config.to_dict())},
                        seed=4999, test_dir=tmp_path)


@pytest.mark.parametrize("config", [SoftmaxConfig(1), SoftmaxConfig(197, "fqvit"), SoftmaxConfig(1024, "fqvit")],
                         ids=["1k", "197k", "1024k"])
def test_other_sizes_lint_clean(config, tmp_path):
    generated = generate(LisSoftmax(config), "softmax", config.timing())
    verilog = tmp_path / f"{generated.name}.v"
    verilog.write_text(generated.verilog)
    toolchain.lint(verilog)
