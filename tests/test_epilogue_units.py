"""The GELU lookup, the residual adder and the Requantizer: configs, and a short check of each in
Amaranth's own simulator against calib.intref (the Verilator testbenches go much further)."""

import numpy as np
import pytest
import torch

from calib.intref.gelu import gelu, gelu_table
from calib.intref.linear import INT32_RANGE
from calib.intref.requant import requantize
from calib.intref.residual import add_multipliers, add_requant
from hw.gelu import Gelu, GeluConfig
from hw.lanes import bank_addresses, from_lanes, lane_beats
from hw.payload import PayloadCodec
from hw.requant import RequantConfig, Requantizer
from hw.residual import ResidualAdder, ResidualConfig
from sim.pysim import StreamBench


def codec(dut, port: str) -> PayloadCodec:
    return PayloadCodec(dut.signature.members[port].signature.members["payload"].shape)


def run_pysim(dut, layers, stall: float, seed: int) -> dict[str, np.ndarray]:
    """Write each layer's parameter words, then stream its input words; gaps and back-pressure with
    probability `stall`. Returns the decoded output fields of all beats."""
    bench = StreamBench(dut, seed)
    source = bench.send([step for params, words in layers for step in ((dut.params, params), (dut.inp, words))],
                        idle=stall)
    sink = bench.receive(dut.out, sum(len(words) for _, words in layers), idle=stall)
    bench.run()
    assert source.waited(dut.params) == 0, "params must always be ready"
    return codec(dut, "out").decode(sink.words)


# --- configs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 33, -1, 2.0, True, "8"])
@pytest.mark.parametrize("config", [GeluConfig, ResidualConfig, RequantConfig])
def test_configs_refuse_bad_lanes(config, value):
    unit = config.__name__.removesuffix("Config").lower()
    with pytest.raises(ValueError, match=f"{unit} lanes must be an integer in 1..32, got {value!r}"):
        config(lanes=value)


@pytest.mark.parametrize("value", [0, 16385, 1.5, False])
@pytest.mark.parametrize("config", [ResidualConfig, RequantConfig])
def test_configs_refuse_bad_max_channels(config, value):
    unit = config.__name__.removesuffix("Config").lower()
    with pytest.raises(ValueError, match=f"{unit} max_channels must be an integer in 1..16384, got {value!r}"):
        config(max_channels=value)


@pytest.mark.parametrize("value", [0, 9, 1.5, True])
@pytest.mark.parametrize("config", [ResidualConfig, RequantConfig])
def test_configs_refuse_a_share_beyond_their_lanes(config, value):
    unit = config.__name__.removesuffix("Config").lower()
    with pytest.raises(ValueError, match=f"{unit} share must be an integer in 1..8, got {value!r}"):
        config(lanes=8, share=value)


def test_config_names_timing_and_layouts():
    gelu_cfg, res_cfg = GeluConfig(3), ResidualConfig(3, 100)
    assert (gelu_cfg.name, gelu_cfg.timing()) == ("gelu_3l", {"latency": 4, "beats_per_cycle": 1})
    assert GeluConfig(2, side_bits=64).name == "gelu_2l_64s" and GeluConfig(2, side_bits=64).in_layout.size == 2 * 8 + 2 + 1 + 64
    assert (res_cfg.name, res_cfg.timing()) == ("residual_3l_100c", {"latency": 18, "beats_per_cycle": 1})
    assert res_cfg.groups == 34 and res_cfg.to_dict() == {"lanes": 3, "max_channels": 100, "lut_multipliers": False,
                                                          "share": 1}
    assert ResidualConfig(3, 100, lut_multipliers=True).name == "residual_3l_100c_lut"
    assert ResidualConfig(12, 100, lut_multipliers=True, share=3).name == "residual_12l_100c_lut_s3"
    assert RequantConfig(3, 100, lut_multipliers=True).name == "requant_3l_100c_lut"
    shared = RequantConfig(12, 100, lut_multipliers=True, share=3)
    assert (shared.name, shared.physical_lanes) == ("requant_12l_100c_lut_s3", 4)
    assert shared.timing() == {"latency": RequantConfig().LATENCY + 2, "cycles_per_beat": 3}
    assert gelu_cfg.stream_layout.size == 3 * 8 + 3 + 1
    # a, b, keep, last, group (6 bits), three zero points, shift
    assert res_cfg.in_layout.size == 2 * 3 * 8 + 3 + 1 + 6 + 3 * 8 + 6


# --- Amaranth simulation ---------------------------------------------------------------------------

@pytest.mark.parametrize("lanes", [3, 8])
def test_gelu_pysim_every_code(lanes):
    cfg = GeluConfig(lanes)
    dut = Gelu(cfg)
    gen = torch.Generator().manual_seed(lanes)
    tables = [gelu_table(0.05, 140, 0.02, 9), torch.randperm(256, generator=gen)]
    codes = torch.cat([torch.randperm(256, generator=gen), torch.randint(0, 256, (10,), generator=gen)]).reshape(-1, 7)
    layers, fields = [], lane_beats(codes, lanes)
    for table in tables:
        layers.append((codec(dut, "params").encode({"index": np.arange(256), "value": table.numpy()}),
                       codec(dut, "inp").encode(fields)))
    out = run_pysim(dut, layers, 0.3, seed=lanes)
    beats = len(fields["data"])
    for i, table in enumerate(tables):
        part = out["data"][i * beats:(i + 1) * beats]
        assert torch.equal(torch.from_numpy(from_lanes(part, 7)), gelu(codes, table))
    assert np.array_equal(out["keep"], np.tile(fields["keep"], 2))
    assert np.array_equal(out["last"], np.tile(fields["last"], 2))


@pytest.mark.parametrize("lanes,lut,share", [(3, False, 1), (8, False, 1), (3, True, 1), (5, True, 2)])
def test_residual_pysim_ptf_and_extremes(lanes, lut, share):
    cfg = ResidualConfig(lanes, 64, lut_multipliers=lut, share=share)
    dut = ResidualAdder(cfg)
    gen = torch.Generator().manual_seed(lanes)
    channels, tokens = 2 * lanes + 1, 5
    alpha = 2.0 ** torch.randint(0, 4, (channels,), generator=gen).double()
    ma, mb, shift = add_multipliers(0.7 * alpha, 0.05 / alpha)
    cases = [  # (a, z_a, ma, b, z_b, mb, shift, z_o)
        (torch.randint(0, 256, (tokens, channels), generator=gen), 120, ma,
         torch.randint(0, 256, (tokens, channels), generator=gen), 37, mb, shift, 131),
        (torch.tensor([0, 255]).repeat(channels).reshape(2, channels), 0,
         torch.full((channels,), 2**16 - 1), torch.full((2, channels), 255), 0, torch.arange(channels) * 4000, 1, 255),
        (torch.full((2, channels), 255), 0, torch.full((channels,), 2**16 - 1),
         torch.zeros((2, channels), dtype=torch.int64), 255, torch.full((channels,), 2**16 - 1), 62, 200),
    ]
    layers = []
    for a, z_a, ma_, b, z_b, mb_, sh, z_o in cases:
        params = {**bank_addresses(channels, lanes), "ma": ma_.numpy(), "mb": mb_.numpy()}
        fields = lane_beats(a, lanes)
        n = len(fields["data"])
        fields.update(a=fields.pop("data"), b=lane_beats(b, lanes)["data"], a_zero=np.full(n, z_a),
                      b_zero=np.full(n, z_b), zero=np.full(n, z_o), shift=np.full(n, sh))
        layers.append((codec(dut, "params").encode(params), codec(dut, "inp").encode(fields)))
    out = run_pysim(dut, layers, 0.3, seed=lanes)
    first = 0
    for a, z_a, ma_, b, z_b, mb_, sh, z_o in cases:
        n = a.shape[0] * -(-channels // lanes)
        got = torch.from_numpy(from_lanes(out["data"][first:first + n], channels))
        assert torch.equal(got, add_requant(a, z_a, ma_, b, z_b, mb_, sh, z_o)), f"shift {sh}"
        first += n


@pytest.mark.parametrize("lanes,lut,share", [(3, False, 1), (8, False, 1), (3, True, 1), (7, False, 3), (4, True, 2)])
def test_requant_pysim_both_modes(lanes, lut, share):
    """With `share`, lanes 7 in 3 slices of 3 (two lanes of padding) and 4 in 2 of 2."""
    cfg = RequantConfig(lanes, 64, lut_multipliers=lut, share=share)
    dut = Requantizer(cfg)
    gen = torch.Generator().manual_seed(lanes)
    channels = lanes + 2
    lo32, hi32 = INT32_RANGE
    acc = torch.cat([torch.randint(-(2**20), 2**20, (3, channels), generator=gen),
                     torch.tensor([lo32, hi32, 0, -1, 5000]).repeat(channels)[:2 * channels].reshape(2, channels)])
    bias = torch.randint(-(2**16), 2**16, (channels,), generator=gen)
    bias[0], bias[-1] = hi32, lo32
    mult = torch.randint(2**15, 2**16, (channels,), generator=gen)
    mult[0], mult[1] = 2**15, 2**16 - 1
    shift = torch.randint(14, 28, (channels,), generator=gen)
    shift[0], shift[1] = 1, 62
    cases = [(0, 0, 255, 77), (1, *INT32_RANGE, 0)]  # (wide, lo, hi, zero)
    layers = []
    for wide, _, _, zero in cases:
        params = {**bank_addresses(channels, lanes), "bias": bias.numpy(), "mult": mult.numpy(), "shift": shift.numpy()}
        fields = lane_beats(acc, lanes)
        n = len(fields["data"])
        fields.update(zero=np.full(n, zero), wide=np.full(n, wide))
        layers.append((codec(dut, "params").encode(params), codec(dut, "inp").encode(fields)))
    out = run_pysim(dut, layers, 0.3, seed=lanes)
    n = acc.shape[0] * -(-channels // lanes)
    for i, (wide, lo, hi, zero) in enumerate(cases):
        got = torch.from_numpy(from_lanes(out["data"][i * n:(i + 1) * n], channels))
        assert torch.equal(got, requantize(acc + bias, mult, shift, zero, lo, hi)), "wide" if wide else "uint8"

