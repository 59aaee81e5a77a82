"""Exhaustive-style cocotb check of ``hw.softmax.LisCode``, the per-key code logic of the softmax.

Streaming a million keys through the whole unit would take far longer than its minute of
simulation, so this testbench drives the combinational code logic directly: ``LisCodeLanes``
instantiates ``lanes`` copies of ``LisCode`` for each LIS rule, sized for the largest rows
(1024 keys of 16-bit table values) and sharing one row sum. For every sum in ``SUMS`` (every power
of two from 2**15 to 2**25, each with its two neighbours, and the largest sum a 16-bit table can
give) it applies every e in 0..2**15 and compares each code where e <= sum (every e an exp table
can produce with that sum, and more) with ``calib.intref.softmax.lis_codes``.
"""

import json
import os
from dataclasses import asdict, dataclass

import cocotb
import numpy as np
import torch
from amaranth import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from calib.intref.softmax import EXP_BITS, LIS_RULES, lis_codes
from hw.softmax import CODE_BITS, MAX_KEYS, TABLE_BITS, LisCode, den_sum_bits
from sim.scoreboard import assert_bit_exact

SUM_BITS = (MAX_KEYS * (2**TABLE_BITS - 1)).bit_length()
SUMS = sorted({s for k in range(EXP_BITS, 26) for s in (2**k - 1, 2**k, 2**k + 1)} | {MAX_KEYS * (2**TABLE_BITS - 1)})
E_MAX = 2**EXP_BITS
# The reference runs many small batches: intra-op threads only contend for the cores with the simulator.
torch.set_num_threads(1)


@dataclass(frozen=True)
class LisCodeLanesConfig:
    lanes: int = 16

    @property
    def name(self) -> str:
        return f"lis_code_lanes_{self.lanes}"

    def to_dict(self) -> dict:
        return asdict(self)


class LisCodeLanes(wiring.Component):
    """Test harness: `lanes` LisCodes per rule on one row sum (``code_<rule>[i]`` for ``e[i]``)."""

    def __init__(self, config: LisCodeLanesConfig):
        self.config = config
        codes = {f"code_{rule}": Out(data.ArrayLayout(CODE_BITS, config.lanes)) for rule in LIS_RULES}
        super().__init__({"total": In(SUM_BITS), "e": In(data.ArrayLayout(TABLE_BITS, config.lanes)), **codes})

    def elaborate(self, platform):
        m = Module()
        for rule, (_, den) in LIS_RULES.items():
            for lane in range(self.config.lanes):
                m.submodules[f"{rule}_{lane}"] = code = LisCode(rule, den_sum_bits(rule, MAX_KEYS))
                m.d.comb += [code.den_sum.eq(self.total * den), code.e.eq(self.e[lane]),
                             getattr(self, f"code_{rule}")[lane].eq(code.code)]
        return m


def reference_codes(rule: str) -> torch.Tensor:
    """lis_codes of every (sum, e) in SUMS x 0..E_MAX ([sums, E_MAX + 1]; -1 where e > sum).

    Each pair is one four-key row of ``lis_codes`` whose exponentials are (0, e, offset, base) with
    ``offset + base = sum - e``: the anchor (x = 255, the row max; table entry 0 = 0), the key under
    test, and two keys that make up the sum. One table serves a chunk of consecutive e
    values for every sum: entries 1.. hold the chunk, then the offsets 0..chunk-1, then one base
    per sum.
    """
    chunk = (255 - len(SUMS)) // 2
    sums = torch.tensor(SUMS, dtype=torch.int64)[:, None]
    out = torch.full((len(SUMS), E_MAX + 1), -1, dtype=torch.int64)
    for first in range(0, E_MAX + 1, chunk):
        es = torch.arange(first, min(first + chunk, E_MAX + 1), dtype=torch.int64)
        bases = (sums - first - (chunk - 1)).clamp(min=0)  # [sums, 1]
        offsets = sums - es[None, :] - bases  # [sums, es]: in 0..chunk-1 wherever e <= sum
        valid = offsets >= 0
        table = torch.zeros(256, dtype=torch.int64)
        table[1:1 + len(es)] = es
        table[1 + chunk:1 + 2 * chunk] = torch.arange(chunk)
        table[1 + 2 * chunk:1 + 2 * chunk + len(SUMS)] = bases[:, 0]
        d = torch.stack(torch.broadcast_tensors(
            torch.zeros_like(offsets), 1 + torch.arange(len(es))[None, :],
            1 + chunk + offsets.clamp(min=0), 1 + 2 * chunk + torch.arange(len(SUMS))[:, None]), dim=-1)
        codes = lis_codes(255 - d.reshape(-1, 4), table, LIS_RULES[rule])[:, 1].reshape(len(SUMS), len(es))
        out[:, first:first + len(es)] = torch.where(valid, codes, -1)
    return out


def pack(values: np.ndarray, width: int) -> int:
    bits = ((values[:, None].astype(np.int64) >> np.arange(width)) & 1).astype(np.uint8)
    return int.from_bytes(np.packbits(bits.reshape(-1), bitorder="little").tobytes(), "little")


def unpack(words: list[int], width: int, count: int) -> np.ndarray:
    """[len(words), count] fields of `width` bits from words packed by the port order."""
    nbytes = (width * count + 7) // 8
    raw = np.frombuffer(b"".join(w.to_bytes(nbytes, "little") for w in words), dtype=np.uint8)
    bits = np.unpackbits(raw.reshape(len(words), nbytes), axis=1, bitorder="little")[:, :width * count]
    return bits.reshape(len(words), count, width).astype(np.int64) @ (1 << np.arange(width))


@cocotb.test()
async def every_e_at_every_power_of_two_sum(dut):
    from cocotb.triggers import Timer

    lanes = LisCodeLanesConfig(**json.loads(os.environ.get("LIS_CODE_LANES", "{}"))).lanes
    steps = -(-(E_MAX + 1) // lanes)
    # e = 0..E_MAX in steps of `lanes`, the same words for every sum (lanes past E_MAX repeat 0..)
    e_words = [pack(np.arange(i * lanes, (i + 1) * lanes) % (E_MAX + 1), TABLE_BITS) for i in range(steps)]
    ports = {rule: getattr(dut, f"code_{rule}") for rule in LIS_RULES}
    raw = {rule: [] for rule in LIS_RULES}
    for total in SUMS:
        dut.total.value = total
        for word in e_words:
            dut.e.value = word
            await Timer(1, unit="ns")
            for rule, port in ports.items():
                raw[rule].append(port.value.to_unsigned())
    checked = 0
    for rule in LIS_RULES:
        codes = unpack(raw[rule], CODE_BITS, lanes).reshape(len(SUMS), steps * lanes)
        want = reference_codes(rule)
        got = torch.from_numpy(codes[:, :E_MAX + 1])
        got = torch.where(want >= 0, got, -1)  # e > sum cannot happen

        def explain(idx, rule=rule):
            s, e = idx
            return f"rule {rule}: sum={SUMS[s]} e={e}"

        assert_bit_exact(f"LisCode {rule}", got, want, explain)
        checked += int((want >= 0).sum())
    dut._log.info("LisCode: %d (sum, e) pairs over %d sums, both rules, all equal to lis_codes", checked, len(SUMS))
