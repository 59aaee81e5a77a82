"""hw.dsp: wide_product's two forms (DSP blocks, LUTs) against Python's product, and the DSP-block
count that moves a top's unit multipliers to LUTs."""

import dataclasses
import random

import pytest
from amaranth import Module, Signal, signed, unsigned
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from hw.attnv import AttnV, AttnVConfig
from hw.dsp import PRODUCT_LATENCY, dsp_blocks, wide_product
from hw.layernorm import LayerNormConfig, LayerNormUnit
from hw.requant import RequantConfig, Requantizer
from hw.residual import ResidualAdder, ResidualConfig
from hw.top import TopConfig


def extremes(width: int, is_signed: bool) -> list[int]:
    return [-(1 << (width - 1)), (1 << (width - 1)) - 1, -1, 0] if is_signed else [0, 1, (1 << width) - 1]


@pytest.mark.parametrize("lut", [False, True], ids=["dsp", "lut"])
@pytest.mark.parametrize("a_shape, b_shape", [
    (signed(33), unsigned(16)),  # the requantizer: acc + bias times the multiplier
    (signed(9), unsigned(16)),  # the residual adder: a centred code times a multiplier
    (unsigned(12), unsigned(12)),  # LayerNorm's X**2
    (signed(20), signed(18)),  # the widest b, signed
    (unsigned(5), signed(3)),
], ids=str)
def test_wide_product_is_the_product_after_its_latency(lut, a_shape, b_shape):
    m = Module()
    a, b = Signal(a_shape), Signal(b_shape)
    p = wide_product(m, a, b, "p", lut)
    rng = random.Random(len(a) * 100 + len(b))

    def draw(shape):
        lo, hi = (-(1 << (shape.width - 1)), 1 << (shape.width - 1)) if shape.signed else (0, 1 << shape.width)
        return rng.randrange(lo, hi)

    pairs = [(x, y) for x in extremes(a_shape.width, a_shape.signed) for y in extremes(b_shape.width, b_shape.signed)]
    pairs += [(draw(a_shape), draw(b_shape)) for _ in range(300)]
    got = []

    async def bench(ctx):
        for x, y in pairs + [(0, 0)] * PRODUCT_LATENCY:
            ctx.set(a, x)
            ctx.set(b, y)
            await ctx.tick()
            got.append(ctx.get(p))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    # the value set before tick i appears after tick i + PRODUCT_LATENCY - 1
    assert got[PRODUCT_LATENCY - 1:PRODUCT_LATENCY - 1 + len(pairs)] == [x * y for x, y in pairs]


def test_wide_product_refuses_a_b_wider_than_a_dsp_operand():
    m = Module()
    with pytest.raises(ValueError, match="b must fit 18 bits signed"):
        wide_product(m, Signal(8), Signal(18), "p")
    Fragment.get(m, None)  # used: Amaranth warns about a module that never is


@pytest.mark.parametrize("config, unit, blocks", [
    (RequantConfig(3, 64), Requantizer, 6),  # acc + bias is 33 bits: two 17-bit chunks a lane
    (ResidualConfig(3, 64), ResidualAdder, 6),  # two products of a 9-bit operand a lane
    (AttnVConfig(lanes=4, requant_lanes=2), AttnV, 4),
    (LayerNormConfig(), LayerNormUnit, 11),
], ids=lambda v: getattr(v, "name", None))
def test_lut_multipliers_take_no_dsp_blocks(config, unit, blocks):
    assert dsp_blocks(unit(config)) == blocks
    assert dsp_blocks(unit(dataclasses.replace(config, lut_multipliers=True))) == 0


@pytest.mark.parametrize("config", [RequantConfig, ResidualConfig, LayerNormConfig, AttnVConfig])
def test_configs_refuse_a_lut_choice_that_is_not_a_bool(config):
    with pytest.raises(ValueError, match=r"lut_multipliers must be True or False, got 1"):
        config(lut_multipliers=1)


def test_top_moves_unit_multipliers_to_luts_only_when_the_device_runs_out():
    small, large = TopConfig(8, 8), TopConfig(12, 12)
    assert small.lut_units == () and small.dsp_blocks == 64 + 16 + 16 + 4 * 2 + 11  # attention x V: 4 requantizers
    # 144 in the array leave 12: LayerNorm's 11 fit, the per-lane units' products go to LUTs
    assert large.lut_units == ("requant", "residual", "attnv") and large.dsp_blocks == 144 + 11 <= 156
    assert large.units()["requant"].lut_multipliers and not large.units()["layernorm"].lut_multipliers
    assert TopConfig(12, 12, dsp_budget=150).dsp_blocks == 144  # LayerNorm's too
    assert TopConfig(8, 8, dsp_budget=0).dsp_blocks == 64  # the array alone: generated, reported as not fitting
