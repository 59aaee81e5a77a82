"""cocotb testbench of the GELU lookup (``hw.gelu``), compared with ``calib.intref.gelu``.

Run through ``sim.toolchain`` (see ``tests/test_epilogue_units_sim.py``); the configuration comes in
``$GELU_CONFIG`` as JSON. Every table is written through ``params``, then looked up with all 256
codes (in random order, in ragged rows) and compared element for element with the reference.
"""

import json
import os

import cocotb
import numpy as np
import torch

from calib.intref.gelu import gelu, gelu_table
from hw.gelu import GeluConfig
from hw.payload import PayloadCodec
from sim.scoreboard import assert_bit_exact
from sim.tb.common import seeded, start
from sim.tb.epilogue import Digits, check_unstalled_timing, from_lanes, lane_beats, layer_job, run_layers
from sim.tb.jobs import Job

CFG = GeluConfig(**json.loads(os.environ.get("GELU_CONFIG", "{}")))
IN_CODEC = OUT_CODEC = PayloadCodec(CFG.stream_layout)
PARAM_CODEC = PayloadCodec(CFG.param_layout)


def table_words(table: torch.Tensor) -> list[int]:
    return PARAM_CODEC.encode({"index": np.arange(256), "value": table.numpy()})


def layer(what: str, table: torch.Tensor, codes: torch.Tensor) -> Job:
    """Look up `codes` [N, C] in `table`."""
    fields = lane_beats(codes, CFG.lanes)

    def check(out):
        got = from_lanes(out["data"], codes.shape[1])
        assert_bit_exact(f"{CFG.name} {what}", got, gelu(codes, table),
                         lambda idx: f"code {int(codes[idx])}, table[code] {int(table[codes[idx]])}")

    return layer_job(table_words(table), fields, IN_CODEC.encode(fields), check)


def every_code(gen: torch.Generator, channels: int) -> torch.Tensor:
    """All 256 codes in random order, then random codes up to whole rows of `channels`."""
    rows = -(-256 // channels)
    extra = torch.randint(0, 256, (rows * channels - 256,), generator=gen)
    return torch.cat([torch.randperm(256, generator=gen), extra]).reshape(rows, channels)


def tables(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Tables of typical fc1/GELU quantizers, a saturating one, and a permutation (every entry distinct)."""
    return {
        "gelu_table(0.05, 140, 0.02, 9)": gelu_table(0.05, 140, 0.02, 9),
        "gelu_table(0.1, 200, 0.03, 30)": gelu_table(0.1, 200, 0.03, 30),
        "gelu_table(0.5, 0, 0.001, 255)": gelu_table(0.5, 0, 0.001, 255),  # clamps at 255
        "permutation": torch.randperm(256, generator=gen),
    }


@cocotb.test()
async def exhaustive_tables_with_stalls(dut):
    """Every code through several tables, rewritten between layers, with gaps and back-pressure."""
    seed, gen = seeded()
    layers = [layer(what, table, every_code(gen, channels))
              for channels in (2 * CFG.lanes + 1, CFG.lanes) for what, table in tables(gen).items()]
    clock = await start(dut)
    for idle in (0.3, 0.6):
        await run_layers(dut, clock, layers, OUT_CODEC, idle, seed)


@cocotb.test()
async def digits_model_fc1_codes(dut):
    """The digits model's first GELU: its table and its real fc1 output codes, against the trace."""
    digits = Digits()
    trace = digits.trace
    table, fc1 = digits.t("blocks.0.mlp.gelu"), trace["blocks.0.mlp.fc1"]
    assert torch.equal(gelu(fc1, table), trace["blocks.0.mlp.gelu"]), "reference disagrees with the trace"
    seed, gen = seeded()
    layers = [layer("digits blocks.0.mlp.gelu, every code", table, every_code(gen, fc1.shape[-1])),
              layer("digits blocks.0.mlp.gelu, fc1 trace", table, fc1.reshape(-1, fc1.shape[-1]))]
    clock = await start(dut)
    await run_layers(dut, clock, layers, OUT_CODEC, 0.3, seed)


@cocotb.test()
async def published_latency_and_full_throughput(dut):
    """Unstalled: table written one entry per cycle, one beat per cycle, each `LATENCY` cycles later."""
    seed, gen = seeded()
    only = layer("unstalled", torch.randperm(256, generator=gen), every_code(gen, 4 * CFG.lanes))
    clock = await start(dut)
    run = await run_layers(dut, clock, [only], OUT_CODEC, 0.0, seed)
    check_unstalled_timing(run, CFG.LATENCY)
