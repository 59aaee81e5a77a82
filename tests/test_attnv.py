"""Attention x V in Amaranth's own simulator (small configurations) and its config."""

import random
import re

import pytest
import torch

from calib.intref.softmax import ZERO_CODE
from hw.attnv import AttnV, AttnVConfig
from hw.payload import PayloadCodec
from sim.pysim import StreamBench
from sim.tb.attnv import Head, random_head, requant_for, row_starts, shift_ladder_heads


def run_pysim(cfg: AttnVConfig, heads: list[Head], stall: float, seed: int):
    """Stream the heads back to back with random stalls on both sides; return the output fields
    and the cycles of the input and output handshakes."""
    dut = AttnV(cfg)
    in_codec, out_codec = PayloadCodec(cfg.in_layout), PayloadCodec(cfg.out_layout)
    words = [w for head in heads for w in in_codec.encode(head.key_fields(cfg))]
    rows = sum(head.out_words(cfg) for head in heads)
    bench = StreamBench(dut, seed)
    source = bench.send([(dut.inp, words)], idle=stall)
    sink = bench.receive(dut.out, rows, idle=stall)
    bench.run()
    fields = out_codec.decode(sink.words)
    parts, r = [], 0
    for head in heads:
        n = head.out_words(cfg)
        parts.append({k: value[r:r + n] for k, value in fields.items()})
        r += n
    return parts, source.accepted_at(dut.inp), sink.received_at


def small_heads(cfg: AttnVConfig, seed: int) -> list[Head]:
    gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    heads = [random_head(gen, rng, nq, nk, d, f"random {nq}x{nk}x{d}")
             for nq, nk, d in ((8, 1, cfg.lanes), (2, 5, 2 * cfg.lanes + 1), (2, 17, cfg.lanes - 1 or 1))]
    # the zero state only (out = z_out), and one key of code 0 with extreme V and zero point
    heads.append(Head(torch.full((2, 4), ZERO_CODE), torch.randint(0, 256, (4, cfg.lanes), generator=gen),
                      17, 201, *requant_for(1 << 15, rng), label="zero states"))
    one = torch.tensor([[ZERO_CODE, 0, ZERO_CODE]])
    heads.append(Head(one, torch.full((3, cfg.lanes), 0), 255, 128, *requant_for(255 << 15, rng), label="extreme"))
    return heads + shift_ladder_heads(gen, cfg.lanes)


@pytest.mark.parametrize("lanes,requant_lanes,lut", [(1, 1, False), (3, 3, False), (3, 2, False), (8, 1, False),
                                                     (3, 2, True)])
def test_pysim_matches_reference(lanes, requant_lanes, lut):
    cfg = AttnVConfig(lanes=lanes, requant_lanes=requant_lanes, max_keys=32, lut_multipliers=lut)
    heads = small_heads(cfg, seed=lanes)
    for stall in (0.0, 0.4):
        parts, _, _ = run_pysim(cfg, heads, stall, seed=lanes)
        for head, fields in zip(heads, parts):
            head.check(cfg, fields)


def test_pysim_latency_and_throughput():
    """Rows of at least `steps` keys: one key per cycle, a row's first word after the published
    latency and its other words one per cycle; one-key rows: one row per `steps` cycles."""
    cfg = AttnVConfig(lanes=5, requant_lanes=2, max_keys=32)
    gen, rng = torch.Generator().manual_seed(5), random.Random(5)
    heads = [random_head(gen, rng, 3, nk, cfg.lanes + 1, f"{nk} keys") for nk in (cfg.steps, 7)]
    _, accepted_at, received_at = run_pysim(cfg, heads, 0.0, seed=5)
    assert accepted_at == list(range(accepted_at[0], accepted_at[0] + len(accepted_at))), "inp stalled"
    last_keys = [i for i, last in enumerate(k for h in heads for k in h.key_fields(cfg)["last"]) if last]
    first, words = row_starts(cfg, heads)
    assert {received_at[w] - accepted_at[k] for w, k in zip(first, last_keys, strict=True)} == {cfg.latency}
    assert [received_at[w + n - 1] - received_at[w] for w, n in zip(first, words)] == [n - 1 for n in words]
    short = [random_head(gen, rng, 5, 1, cfg.lanes, "one key")]
    _, _, received_at = run_pysim(cfg, short, 0.0, seed=5)
    starts = [received_at[w] for w in row_starts(cfg, short)[0]]
    assert {b - a for a, b in zip(starts, starts[1:])} == {cfg.steps}


@pytest.mark.parametrize("field,value,bound", [
    ("lanes", 0, "1..64"), ("lanes", 65, "1..64"), ("lanes", 2.0, "1..64"), ("lanes", True, "1..64"),
    ("lanes", "8", "1..64"), ("requant_lanes", 0, "1..lanes (8)"), ("requant_lanes", 9, "1..lanes (8)"),
    ("max_keys", 0, "1..4096"), ("max_keys", 4097, "1..4096"),
])
def test_config_refuses_bad_values(field, value, bound):
    message = f"attnv {field} must be an integer in {bound}, got {value!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        AttnVConfig(**{field: value})


def test_config_accumulator_and_timing():
    # any codes on max_keys keys: max_keys * 255 * 2**15 plus a sign bit; never below the LIS bound
    assert AttnVConfig(max_keys=256).acc_bits == 32
    assert AttnVConfig(max_keys=257).acc_bits == 32
    assert AttnVConfig(max_keys=258).acc_bits == 33
    assert AttnVConfig(max_keys=49).acc_bits == 30
    assert AttnVConfig(max_keys=1).acc_bits == 25
    cfg = AttnVConfig(lanes=3, requant_lanes=2, max_keys=197)
    assert cfg.name == "attnv_3l_2r_197k"
    assert cfg.timing() == {"latency": 18, "keys_per_cycle": 1, "min_row_cycles": 2}
    assert AttnVConfig().timing() == {"latency": 18, "keys_per_cycle": 1, "min_row_cycles": 8}
    assert AttnVConfig(lanes=8, requant_lanes=8).timing()["latency"] == 18
    assert cfg.to_dict() == {"lanes": 3, "requant_lanes": 2, "max_keys": 197, "lut_multipliers": False}
    assert AttnVConfig(lut_multipliers=True).name == "attnv_8l_1r_256k_lut"
