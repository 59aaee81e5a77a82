"""The LayerNorm unit: config validation, and a short run in Amaranth's simulator against the reference."""

import numpy as np
import pytest
import torch

from calib.intref.layernorm import affine_params, layernorm
from hw.layernorm import B_BITS, LayerNormConfig, LayerNormUnit, saturate_beta
from hw.payload import PayloadCodec
from sim.pysim import StreamBench


@pytest.mark.parametrize("value", [0, -1, 4097, 2.0, True, "8", None])
def test_config_refuses_bad_max_channels(value):
    with pytest.raises(ValueError, match=rf"layernorm max_channels must be an integer in 1\.\.4096, got {value!r}"):
        LayerNormConfig(max_channels=value)


def test_config_timing_and_name():
    cfg = LayerNormConfig()
    assert cfg.max_channels == 1024 and cfg.name == "layernorm_1024c"
    assert cfg.sqrt_bits == 20  # D <= 1024 * 1020 < 2**20
    assert LayerNormConfig(4096).sqrt_bits == 22
    timing = cfg.timing()
    assert timing["latency"] == cfg.latency and timing["beats_per_cycle"] == 1
    assert cfg.to_dict() == {"max_channels": 1024, "lut_multipliers": False}
    assert LayerNormConfig(lut_multipliers=True).name == "layernorm_1024c_lut"


def test_saturated_beta_gives_the_same_output():
    """B beyond the 49-bit field saturates the output, and so does the clamped B."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randint(0, 256, (64, 16), generator=gen)
    alpha = torch.randint(0, 4, (16,), generator=gen)
    G = torch.randint(-2**15, 2**15 + 1, (16,), generator=gen)
    huge = torch.tensor([2**48, -2**48 - 1, 2**62, -2**62] * 4)
    for fg in (0, 17, 30):
        for z_out in (0, 255):
            want = layernorm(q, 100, alpha, G, huge, fg, z_out)
            assert torch.equal(want, layernorm(q, 100, alpha, G, torch.from_numpy(saturate_beta(huge)), fg, z_out))
            assert set(want[:, 0::2].unique().tolist()) == {255} and set(want[:, 1::2].unique().tolist()) == {0}
    assert int(saturate_beta(2**60)) == 2 ** (B_BITS - 1) - 1


def test_param_fields_refuse_bad_lengths():
    cfg = LayerNormConfig(8)
    with pytest.raises(ValueError, match=r"one entry per channel, 1\.\.8"):
        cfg.param_fields(0, 0, 0, [0] * 9, [0] * 9, [0] * 9)
    with pytest.raises(ValueError, match="one entry per channel"):
        cfg.param_fields(0, 0, 0, [0] * 4, [0] * 3, [0] * 4)


def run_pysim(cfg, params, tokens, stall, seed):
    """Write `params`, stream the tokens (code arrays, `last` on each one's final beat) back to
    back; return the output (q, last) fields."""
    dut = LayerNormUnit(cfg)
    icodec, ocodec = PayloadCodec(cfg.in_layout), PayloadCodec(cfg.out_layout)
    words = icodec.encode({"q": np.concatenate(tokens),
                           "last": np.concatenate([np.arange(len(t)) == len(t) - 1 for t in tokens])})
    bench = StreamBench(dut, seed)
    bench.send([(dut.params, params), (dut.inp, words)], idle=stall)
    sink = bench.receive(dut.out, len(words), idle=stall, drain=cfg.latency + cfg.stats_cycles)
    bench.run()
    return ocodec.decode(sink.words)


@pytest.mark.parametrize("lut", [False, True])
def test_pysim_matches_reference(lut):
    """Tokens of 1..max_channels back to back, without and with stalls on both streams."""
    cfg = LayerNormConfig(max_channels=12, lut_multipliers=lut)
    gen = torch.Generator().manual_seed(1)
    C = cfg.max_channels
    alpha = torch.randint(0, 4, (C,), generator=gen)
    G, B, fg = affine_params(torch.rand(C, generator=gen).numpy() * 2, torch.randn(C, generator=gen).numpy(), 0.03)
    z, z_out = 97, 130
    tokens = [torch.randint(0, 256, (c,), generator=gen) for c in (12, 1, 5, 2, 12, 7)]
    # q = z (zero variance), equal codes under different shifts, the extreme codes
    tokens += [torch.full((9,), z), torch.full((4,), 3), torch.tensor([0, 255] * 6)]
    alpha[1::2] = 3
    params = PayloadCodec(cfg.param_layout).encode(cfg.param_fields(z, z_out, fg, alpha, G, B))
    for stall in (0.0, 0.4):
        fields = run_pysim(cfg, params, tokens, stall, seed=7)
        start = 0
        for i, token in enumerate(tokens):
            c = len(token)
            want = layernorm(token[None], z, alpha[:c], G[:c], B[:c], fg, z_out)[0]
            got = torch.from_numpy(fields["q"][start:start + c])
            assert torch.equal(got, want), \
                f"token {i} {token.tolist()}: hardware {got.tolist()}, reference {want.tolist()}"
            assert fields["last"][start:start + c].tolist() == [0] * (c - 1) + [1]
            start += c


def test_pysim_ends_an_overlong_token_at_max_channels():
    """A run of more than max_channels beats is cut into tokens of max_channels."""
    cfg = LayerNormConfig(max_channels=5)
    gen = torch.Generator().manual_seed(2)
    alpha = torch.randint(0, 4, (5,), generator=gen)
    G, B, fg = affine_params(torch.rand(5, generator=gen).numpy(), torch.randn(5, generator=gen).numpy(), 0.02)
    params = PayloadCodec(cfg.param_layout).encode(cfg.param_fields(3, 120, fg, alpha, G, B))
    codes = torch.randint(0, 256, (13,), generator=gen)
    fields = run_pysim(cfg, params, [codes.numpy()], 0.0, seed=3)
    assert fields["last"].tolist() == [0, 0, 0, 0, 1] * 2 + [0, 0, 1]
    for start, stop in ((0, 5), (5, 10), (10, 13)):
        c = stop - start
        want = layernorm(codes[None, start:stop], 3, alpha[:c], G[:c], B[:c], fg, 120)[0]
        assert fields["q"][start:stop].tolist() == want.tolist()


@pytest.mark.parametrize("channels", [1, 5, 24])
def test_pysim_published_timing(channels):
    """Unstalled, as the Verilator bench checks it at every width: a lone token's first output
    `latency` cycles after its last input, tokens streamed without gaps, and two tokens every
    `pair_cycles(C)`; here in the Amaranth simulator, so that a latency change in the pipelines the
    unit is built from shows without a Verilator build."""
    cfg = LayerNormConfig(max_channels=24)
    gen = torch.Generator().manual_seed(channels)
    alpha = torch.randint(0, 4, (channels,), generator=gen)
    G, B, fg = affine_params(torch.rand(channels, generator=gen).numpy(), torch.randn(channels, generator=gen).numpy(),
                             0.05)
    params = PayloadCodec(cfg.param_layout).encode(cfg.param_fields(20, 128, fg, alpha, G, B))
    codec = PayloadCodec(cfg.in_layout)
    for count in (1, 6):
        tokens = [torch.randint(0, 256, (channels,), generator=gen).numpy() for _ in range(count)]
        words = codec.encode({"q": np.concatenate(tokens), "last": np.tile(np.arange(channels) == channels - 1, count)})
        dut = LayerNormUnit(cfg)
        bench = StreamBench(dut, seed=channels)
        source = bench.send([(dut.params, params), (dut.inp, words)])
        sink = bench.receive(dut.out, len(words), drain=cfg.latency + cfg.stats_cycles)
        bench.run()
        accepted, received = source.accepted_at(dut.inp), sink.received_at
        for t in range(count):
            for cycles in (accepted[t * channels:(t + 1) * channels], received[t * channels:(t + 1) * channels]):
                assert cycles == list(range(cycles[0], cycles[0] + channels)), f"token {t} has gaps"
        if count == 1:
            assert received[0] - accepted[-1] == cfg.latency
        else:
            first = received[::channels]
            assert {b - a for a, b in zip(first, first[2:])} == {cfg.pair_cycles(channels)}


def test_pysim_single_channel_unit():
    """max_channels = 1: every beat is a token of one channel (zero variance: the quantized beta)."""
    cfg = LayerNormConfig(max_channels=1)
    params = PayloadCodec(cfg.param_layout).encode(cfg.param_fields(9, 30, 20, [2], [-31000], [-7 << 29]))
    codes = np.array([0, 9, 255, 128])
    fields = run_pysim(cfg, params, [codes[:1], codes[1:2], codes[2:]], 0.3, seed=4)
    assert fields["last"].tolist() == [1, 1, 1, 1]
    want = layernorm(torch.from_numpy(codes)[:, None], 9, torch.tensor([2]), torch.tensor([-31000]),
                     torch.tensor([-7 << 29]), 20, 30)[:, 0]
    assert fields["q"].tolist() == want.tolist() == [30 - 3] * 4  # -3.5 rounds half up
