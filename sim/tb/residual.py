"""cocotb testbench of the residual adder (``hw.residual``), compared with ``calib.intref.residual``.

Run through ``sim.toolchain`` (see ``tests/test_epilogue_units_sim.py``); the configuration comes in
``$RESIDUAL_CONFIG`` as JSON. Each layer writes its per-channel multipliers (in random order)
through ``params`` and streams token rows of two code tensors; every output code is compared with
``add_requant``.
"""

import json
import os

import cocotb
import numpy as np
import torch

from calib.intref.residual import add_multipliers, add_requant
from hw.payload import PayloadCodec
from hw.residual import ResidualConfig
from sim.scoreboard import assert_bit_exact
from sim.tb.common import seeded, start
from sim.tb.epilogue import (Digits, bank_addresses, check_unstalled_timing, from_lanes, lane_beats, layer_job,
                             run_layers)
from sim.tb.jobs import Job

CFG = ResidualConfig(**json.loads(os.environ.get("RESIDUAL_CONFIG", "{}")))
IN_CODEC = PayloadCodec(CFG.in_layout)
OUT_CODEC = PayloadCodec(CFG.out_layout)
PARAM_CODEC = PayloadCodec(CFG.param_layout)


def layer(what: str, a, z_a: int, ma, b, z_b: int, mb, shift: int, z_o: int, gen: torch.Generator) -> Job:
    """add_requant of code rows a, b [N, C] with per-channel ma, mb [C]."""
    channels = a.shape[1]
    order = torch.randperm(channels, generator=gen).numpy()  # the banks do not care in which order
    params = {key: value[order] for key, value in bank_addresses(channels, CFG.lanes).items()}
    params.update(ma=ma.numpy()[order], mb=mb.numpy()[order])
    fields = lane_beats(a, CFG.lanes)
    beats = len(fields["data"])
    fields.update(a=fields.pop("data"), b=lane_beats(b, CFG.lanes)["data"], a_zero=np.full(beats, z_a),
                  b_zero=np.full(beats, z_b), zero=np.full(beats, z_o), shift=np.full(beats, shift))

    def check(out):
        got = from_lanes(out["data"], channels)
        want = add_requant(a, z_a, ma, b, z_b, mb, shift, z_o)

        def explain(idx):
            c = idx[1]
            return (f"a {int(a[idx])} (z {z_a}) x ma {int(ma[c])} + b {int(b[idx])} (z {z_b}) x mb {int(mb[c])}, "
                    f"shift {shift}, z_o {z_o}")

        assert_bit_exact(f"{CFG.name} {what}", got, want, explain)

    return layer_job(PARAM_CODEC.encode(params), fields, IN_CODEC.encode(fields), check)


def codes(gen, shape):
    return torch.randint(0, 256, shape, generator=gen)


def ptf_multipliers(gen: torch.Generator, channels: int, b_ptf: bool):
    """(ma, mb, shift) of a residual stream a (PTF: base scale * 2**alpha[c]) plus b (PTF or per
    tensor) into a PTF output."""
    def log_uniform(lo, hi):
        return float(2.0 ** (lo + (hi - lo) * torch.rand((), generator=gen)))

    def alpha():
        return 2.0 ** torch.randint(0, 4, (channels,), generator=gen).double()

    s_o = log_uniform(-6, -2) * alpha()
    s_a = log_uniform(-6, -2) * alpha()
    s_b = log_uniform(-6, -2) * (alpha() if b_ptf else 1.0)
    return add_multipliers(s_a / s_o, s_b / s_o)


def zero_points(gen: torch.Generator) -> list[int]:
    return [int(z) for z in torch.randint(0, 256, (3,), generator=gen)]


def ptf_layer(gen: torch.Generator, tokens: int, channels: int, b_ptf: bool) -> Job:
    ma, mb, shift = ptf_multipliers(gen, channels, b_ptf)
    z_a, z_b, z_o = zero_points(gen)
    return layer(f"PTF layer {tokens}x{channels} shift {shift}", codes(gen, (tokens, channels)), z_a, ma,
                 codes(gen, (tokens, channels)), z_b, mb, shift, z_o, gen)


def extreme_layer(gen: torch.Generator, shift: int, z_a: int, z_b: int, z_o: int) -> Job:
    """Codes 0/255 (and a few others), multipliers 0, 1, 2**15 and 2**16-1 in every combination."""
    mults = torch.tensor([0, 1, 2**15, 2**16 - 1])
    ma, mb = mults.repeat_interleave(4), mults.repeat(4)  # 16 channels: every (ma, mb) pair
    pick = torch.tensor([0, 255, 0, 255, 1, 128, 254])
    rows = 12
    a = pick[torch.randint(0, len(pick), (rows, 16), generator=gen)]
    b = pick[torch.randint(0, len(pick), (rows, 16), generator=gen)]
    return layer(f"extremes shift {shift} z=({z_a},{z_b},{z_o})", a, z_a, ma, b, z_b, mb, shift, z_o, gen)


@cocotb.test()
async def random_ptf_layers_with_stalls(dut):
    """Random PTF-like multipliers, ragged channel counts, random zero points, stalled."""
    seed, gen = seeded()
    shapes = [(20, 3 * CFG.lanes + 2, True), (15, CFG.lanes, False), (20, 1, True), (10, 5 * CFG.lanes - 1, False)]
    layers = [ptf_layer(gen, *shape) for shape in shapes]
    clock = await start(dut)
    for idle in (0.3, 0.6):
        await run_layers(dut, clock, layers, OUT_CODEC, idle, seed)


@cocotb.test()
async def zero_points_and_shift_change_every_row(dut):
    """One layer's multipliers, then rows back to back that each bring their own zero points and
    shift (they travel in the beat and must stay with it through the pipeline)."""
    seed, gen = seeded()
    channels = 2 * CFG.lanes + 1
    ma, mb, shift = ptf_multipliers(gen, channels, True)
    layers = []
    for _ in range(24):
        a, b = codes(gen, (1, channels)), codes(gen, (1, channels))
        z_a, z_b, z_o = zero_points(gen)
        row_shift = shift + int(torch.randint(-2, 3, (), generator=gen))
        layers.append(layer(f"row shift {row_shift} z=({z_a},{z_b},{z_o})", a, z_a, ma, b, z_b, mb, row_shift, z_o,
                            gen))
    for row in layers[1:]:
        row.params = []  # the multipliers are written once
    clock = await start(dut)
    await run_layers(dut, clock, layers, OUT_CODEC, 0.3, seed)


@cocotb.test()
async def extreme_codes_multipliers_and_shifts(dut):
    """Both clamps, every extreme multiplier pair, zero points 0/255, shifts 1..62."""
    seed, gen = seeded()
    layers = [extreme_layer(gen, shift, z_a, z_b, z_o)
              for shift, (z_a, z_b, z_o) in [(1, (0, 255, 0)), (1, (255, 0, 255)), (8, (0, 0, 128)),
                                             (16, (255, 255, 0)), (17, (0, 255, 255)), (24, (128, 0, 77)),
                                             (40, (255, 0, 0)), (62, (0, 255, 200))]]
    clock = await start(dut)
    await run_layers(dut, clock, layers, OUT_CODEC, 0.3, seed)


@cocotb.test()
async def digits_model_first_residual(dut):
    """resid.0 + blocks.0.attn.proj -> resid.1 of the digits model, against the trace."""
    im = Digits()
    trace = im.trace
    a, b = trace["resid.0"], trace["blocks.0.attn.proj"]
    z_a, ma, z_b, mb = im.zero("resid.0"), im.t("resid.1.ma"), im.zero("blocks.0.attn.proj"), im.t("resid.1.mb")
    shift, z_o = im.i("resid.1.shift"), im.zero("resid.1")
    assert torch.equal(add_requant(a, z_a, ma, b, z_b, mb, shift, z_o), trace["resid.1"]), \
        "reference disagrees with the trace"
    channels = a.shape[-1]
    seed, gen = seeded()
    only = layer("digits resid.1", a.reshape(-1, channels), z_a, ma, b.reshape(-1, channels), z_b, mb, shift, z_o, gen)
    clock = await start(dut)
    await run_layers(dut, clock, [only], OUT_CODEC, 0.3, seed)


@cocotb.test()
async def published_latency_and_full_throughput(dut):
    """Unstalled: multipliers written one channel per cycle, one beat every `share` cycles, each
    `LATENCY` cycles later."""
    seed, gen = seeded()
    only = ptf_layer(gen, 6, 3 * CFG.lanes + 1, True)
    clock = await start(dut)
    run = await run_layers(dut, clock, [only], OUT_CODEC, 0.0, seed)
    check_unstalled_timing(run, CFG.LATENCY, CFG.share)
