"""cocotb testbench of the Requantizer (``hw.requant``), compared with ``calib.intref.requant``.

Run through ``sim.toolchain`` (see ``tests/test_epilogue_units_sim.py``); the configuration comes in
``$REQUANT_CONFIG`` as JSON. Each layer writes its per-channel (bias, mult, shift) in random order
through ``params`` and streams rows of int32 accumulators; every output is compared with
``requantize(acc + bias, mult, shift, zero)`` (uint8 mode) or the same with the int32 range and
zero 0 (wide mode, the classifier's logits).
"""

import json
import os

import cocotb
import numpy as np
import torch

from calib.intref.linear import INT32_RANGE, linear_acc
from calib.intref.requant import dyadic, requantize
from hw.payload import PayloadCodec
from hw.requant import RequantConfig
from sim.scoreboard import assert_bit_exact
from sim.tb.common import seeded, start
from sim.tb.epilogue import (Digits, bank_addresses, check_unstalled_timing, from_lanes, lane_beats, layer_job,
                             run_layers)
from sim.tb.jobs import Job

CFG = RequantConfig(**json.loads(os.environ.get("REQUANT_CONFIG", "{}")))
IN_CODEC = PayloadCodec(CFG.in_layout)
OUT_CODEC = PayloadCodec(CFG.out_layout)
PARAM_CODEC = PayloadCodec(CFG.param_layout)
INT32_MIN, INT32_MAX = INT32_RANGE


def layer(what: str, acc, bias, mult, shift, zero: int, wide: bool, gen: torch.Generator, keep=None) -> Job:
    """Requantize accumulator rows `acc` [N, C] with per-channel bias, mult, shift [C].

    `keep` (one mask per beat) replaces the ragged-edge masks: the unit passes it through untouched.
    """
    channels = acc.shape[1]
    order = torch.randperm(channels, generator=gen).numpy()  # the banks do not care in which order
    params = {key: value[order] for key, value in bank_addresses(channels, CFG.lanes).items()}
    params.update(bias=bias.numpy()[order], mult=mult.numpy()[order], shift=shift.numpy()[order])
    fields = lane_beats(acc, CFG.lanes)
    beats = len(fields["data"])
    fields.update(zero=np.full(beats, zero), wide=np.full(beats, int(wide)))
    if keep is not None:
        fields["keep"] = keep
    lo, hi = INT32_RANGE if wide else (0, 255)

    def check(out):
        got = from_lanes(out["data"], channels)
        want = requantize(acc + bias, mult, shift, zero, lo, hi)

        def explain(idx):
            c = idx[1]
            return (f"acc {int(acc[idx])} + bias {int(bias[c])}, mult {int(mult[c])}, shift {int(shift[c])}, "
                    f"zero {zero}, {'wide' if wide else 'uint8'}")

        assert_bit_exact(f"{CFG.name} {what}", got, want, explain)

    return layer_job(PARAM_CODEC.encode(params), fields, IN_CODEC.encode(fields), check)


def int32s(gen: torch.Generator, shape, top_bit: int = 31) -> torch.Tensor:
    """Signed values with log-uniform magnitudes up to 2**top_bit (so every output range is hit),
    plus the int32 extremes."""
    bits = torch.randint(0, top_bit + 1, shape, generator=gen)
    magnitude = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2.0 ** bits).to(torch.int64)
    values = torch.where(torch.rand(shape, generator=gen) < 0.5, -magnitude, magnitude)
    extremes = torch.tensor([INT32_MIN, INT32_MAX, 0, -1, 1, INT32_MIN + 1])
    pick = torch.rand(shape, generator=gen) < 0.03
    values[pick] = extremes[torch.randint(0, len(extremes), (int(pick.sum()),), generator=gen)]
    return values.clamp(INT32_MIN, INT32_MAX)


def realistic_multipliers(gen: torch.Generator, channels: int, lo_exp: float, hi_exp: float):
    real = 2.0 ** (lo_exp + (hi_exp - lo_exp) * torch.rand(channels, generator=gen, dtype=torch.float64))
    return dyadic(real.numpy())


def random_layer(gen, tokens, channels, wide: bool, keep_random=False) -> Job:
    # uint8 outputs: s_x s_w / s_out around 2**-12..2**-4; logits: s_w[c] / min s_w in 1..8
    mult, shift = realistic_multipliers(gen, channels, *((0, 3) if wide else (-12, -4)))
    zero = 0 if wide else int(torch.randint(0, 256, (), generator=gen))
    acc = int32s(gen, (tokens, channels))
    bias = int32s(gen, (channels,), 24)
    keep = None
    if keep_random:
        beats = tokens * -(-channels // CFG.lanes)
        keep = torch.randint(0, 2**CFG.lanes, (beats,), generator=gen).numpy()
    return layer(f"random {'wide' if wide else 'uint8'} {tokens}x{channels}", acc, bias, mult, shift, zero, wide,
                 gen, keep)


def extreme_layer(gen, wide: bool) -> Job:
    """Shifts 1 and 62 with mults 2**15 and 2**16-1 in every combination, bias and accumulators at the
    int32 extremes (their sum leaves int32: the unit keeps the carry)."""
    mult = torch.tensor([2**15, 2**16 - 1, 2**15, 2**16 - 1, 2**15 + 1, 40000, 2**15, 2**16 - 1])
    shift = torch.tensor([1, 1, 62, 62, 31, 16, 47, 48])
    bias = torch.tensor([INT32_MIN, INT32_MAX, 0, -1, INT32_MAX, INT32_MIN, 12345, -99999])
    acc = torch.cat([torch.tensor([INT32_MIN, INT32_MAX, 0, -1, 1]).repeat_interleave(2)[:, None].expand(-1, 8),
                     int32s(gen, (6, 8))])
    zero = 0 if wide else 255
    return layer(f"extremes {'wide' if wide else 'uint8'}", acc, bias, mult, shift, zero, wide, gen)


@cocotb.test()
async def random_accumulators_with_stalls(dut):
    """Accumulators over the whole int32 range, realistic per-channel multipliers, both modes,
    ragged and random keep masks, stalled."""
    seed, gen = seeded()
    layers = [random_layer(gen, 20, 3 * CFG.lanes + 2, False), random_layer(gen, 15, CFG.lanes, True),
              random_layer(gen, 12, 2 * CFG.lanes - 1, False, keep_random=True), random_layer(gen, 20, 1, False),
              random_layer(gen, 10, 4 * CFG.lanes + 1, True, keep_random=True)]
    clock = await start(dut)
    for idle in (0.3, 0.6):
        await run_layers(dut, clock, layers, OUT_CODEC, idle, seed)


@cocotb.test()
async def zero_point_and_mode_change_every_row(dut):
    """One layer's parameters, then rows back to back that each bring their own zero point and
    mode (they travel in the beat and must stay with it through the pipeline)."""
    seed, gen = seeded()
    channels = 2 * CFG.lanes + 1
    mult, shift = realistic_multipliers(gen, channels, -12, -4)
    bias = int32s(gen, (channels,), 24)
    layers = []
    for _ in range(24):
        wide = bool(torch.randint(0, 2, (), generator=gen))
        zero = 0 if wide else int(torch.randint(0, 256, (), generator=gen))
        acc = int32s(gen, (1, channels), 24)
        layers.append(layer(f"row {'wide' if wide else f'uint8 zero {zero}'}", acc, bias, mult, shift, zero, wide, gen))
    for row in layers[1:]:
        row.params = []  # the parameters are written once
    clock = await start(dut)
    await run_layers(dut, clock, layers, OUT_CODEC, 0.3, seed)


@cocotb.test()
async def extreme_multipliers_and_shifts(dut):
    """Shift 1 and 62, mult 2**15 and 2**16-1, int32-extreme accumulators and biases, both modes."""
    seed, gen = seeded()
    layers = [extreme_layer(gen, False), extreme_layer(gen, True)]
    clock = await start(dut)
    await run_layers(dut, clock, layers, OUT_CODEC, 0.3, seed)


@cocotb.test()
async def digits_model_fc1_and_head(dut):
    """blocks.0.mlp.fc1 (uint8) and the head (int32 logits) of the digits model, against the trace."""
    im = Digits()
    trace = im.trace
    seed, gen = seeded()
    layers = []
    for name, x, in_point, out_point in [("blocks.0.mlp.fc1", trace["blocks.0.norm2"], "blocks.0.norm2",
                                          "blocks.0.mlp.fc1"),
                                         ("head", trace["norm"][:, 0], "norm", None)]:
        w, bias, mult, shift = (im.t(f"{name}.{k}") for k in ("w", "b", "mult", "shift"))
        acc = linear_acc(x, w, im.zero(in_point), None)
        acc = acc.reshape(-1, acc.shape[-1])
        wide = out_point is None
        zero = 0 if wide else im.zero(out_point)
        want = trace["logits" if wide else out_point]
        lo, hi = INT32_RANGE if wide else (0, 255)
        assert torch.equal(requantize(acc + bias, mult, shift, zero, lo, hi).reshape(want.shape), want.to(torch.int64)), \
            f"reference disagrees with the trace at {name}"
        layers.append(layer(f"digits {name}", acc, bias, mult, shift, zero, wide, gen))
    clock = await start(dut)
    await run_layers(dut, clock, layers, OUT_CODEC, 0.3, seed)


@cocotb.test()
async def published_latency_and_full_throughput(dut):
    """Unstalled: parameters written one channel per cycle, one beat every `share` cycles, each
    `LATENCY` cycles later."""
    seed, gen = seeded()
    only = random_layer(gen, 6, 3 * CFG.lanes + 1, False)
    clock = await start(dut)
    run = await run_layers(dut, clock, [only], OUT_CODEC, 0.0, seed)
    check_unstalled_timing(run, CFG.LATENCY, CFG.share)
