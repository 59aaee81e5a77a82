"""Requantization in hardware: ``clamp(zero + round_shift(acc * mult, shift), lo, hi)``.

``requant_stages`` is the one hardware statement of calib/intref/requant.py's rule (round half up
by adding ``2**(shift-1)`` before an arithmetic shift); the Requantizer below, attention x V and
the residual adder all use it. The Requantizer is the epilogue on the systolic array's result
stream: per output channel an int32 bias, a 16-bit multiplier and a shift, held in one parameter
memory bank per lane (channel n lives in bank n % lanes at index n // lanes, so a result row of
column tile g reads index g in every bank at once).
"""

from dataclasses import asdict, dataclass
from typing import ClassVar

from amaranth import Module, Mux, signed, unsigned
from amaranth.lib import data
from amaranth.lib.memory import Memory
from amaranth.utils import bits_for, ceil_log2

from fqvit.contract import ACC_BITS, INT32_MAX, INT32_MIN, MULT_BITS, SHIFT_BITS

from .unit import StreamUnit
from .config import check_int
from .dsp import PRODUCT_LATENCY, wide_product
from .pipeline import CreditPipeline

__all__ = ["MULT_BITS", "SHIFT_BITS", "REQUANT_LATENCY", "requant_stages", "RequantConfig", "Requantizer"]

REQUANT_LATENCY = PRODUCT_LATENCY + 2  # requant_stages: the product, the shift, round/offset/clamp


def requant_stages(pipe: CreditPipeline, acc, mult, shift, zero, lo, hi, name: str):
    """REQUANT_LATENCY pipeline stages: the product (hw.dsp.wide_product), the shift, then round,
    offset and clamp. Returns the result (signed, wide enough for [lo, hi]) that many stages after
    `acc`. `acc` signed, `mult` unsigned (or a constant); `shift` >= 1, `zero`, `lo` and `hi` are
    read one stage after `acc`. A variable shift of the 48-bit product followed by rounding,
    offset and clamp was the critical path of every unit at ~20 ns on an ECP5, hence a stage of
    its own; the product had been a multiplier cascade in one cycle (12 ns)."""

    prod = wide_product(pipe.m, acc, mult, f"{name}_prod")
    # ((x >> (n-1)) + 1) >> 1 equals (x + 2**(n-1)) >> n for every n >= 1, without a
    # product-wide rounding constant and adder (a third of the unit's LUTs on ECP5).
    shift = pipe.delay(shift, PRODUCT_LATENCY - 1, f"{name}_shift")
    shifted = pipe.reg(prod >> (shift - 1).as_unsigned()[:SHIFT_BITS], f"{name}_shifted")
    zero, lo, hi = (pipe.delay(v, PRODUCT_LATENCY, f"{name}_{tag}") for v, tag in ((zero, "zero"), (lo, "lo"), (hi, "hi")))
    # ((s + 1) >> 1) + zero == (s + 2 * zero + 1) >> 1: one carry chain before the clamp, not two
    rounded = (shifted + ((zero << 1) | 1)) >> 1
    return pipe.reg(Mux(rounded < lo, lo, Mux(rounded > hi, hi, rounded)), f"{name}_out", signed(ACC_BITS + 1))


@dataclass(frozen=True)
class RequantConfig:
    """lanes: the array's columns; max_channels: output channels of the widest layer."""

    lanes: int = 8
    max_channels: int = 4096

    STAGES: ClassVar[int] = 2 + REQUANT_LATENCY  # param read, bias add, requant_stages
    LATENCY: ClassVar[int] = STAGES + CreditPipeline.FIFO_LATENCY  # accept -> out

    def __post_init__(self):
        check_int("requant", "lanes", self.lanes, 1, 32)
        check_int("requant", "max_channels", self.max_channels, 1, 16384)

    def timing(self) -> dict:
        return {"latency": self.LATENCY, "beats_per_cycle": 1}

    @property
    def groups(self) -> int:
        return -(-self.max_channels // self.lanes)

    @property
    def name(self) -> str:
        return f"requant_{self.lanes}l_{self.max_channels}c"

    @property
    def in_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "data": data.ArrayLayout(signed(ACC_BITS), self.lanes),
            "keep": unsigned(self.lanes),
            "last": unsigned(1),
            "group": unsigned(max(1, ceil_log2(self.groups))),  # column tile: channels group*lanes + lane
            "zero": unsigned(8),
            "wide": unsigned(1),  # 1: int32 output (logits), 0: uint8 codes
        })

    @property
    def out_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "data": data.ArrayLayout(signed(ACC_BITS), self.lanes),
            "keep": unsigned(self.lanes),
            "last": unsigned(1),
        })

    @property
    def param_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "lane": unsigned(bits_for(self.lanes - 1)),
            "group": unsigned(max(1, ceil_log2(self.groups))),
            "bias": signed(ACC_BITS),
            "mult": unsigned(MULT_BITS),
            "shift": unsigned(SHIFT_BITS),
        })

    def to_dict(self) -> dict:
        return asdict(self)


class Requantizer(StreamUnit):
    """int32 accumulators + bias -> uint8 (or int32) codes, per-channel dyadic multipliers.

    ``params`` writes one channel's (bias, mult, shift); always ready. Write all channels of a layer
    before its results arrive.
    """

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        entry = data.StructLayout({"bias": signed(ACC_BITS), "mult": unsigned(MULT_BITS), "shift": unsigned(SHIFT_BITS)})
        pipe = CreditPipeline(m, self.inp, self.out, cfg.STAGES, "rq")
        p = self.params.payload
        m.d.comb += self.params.ready.eq(1)
        inp = self.inp.payload

        # stage 1: parameters arrive from memory; operands wait beside them. The zero point and
        # output range are read one stage after the sum (stage 3).
        acc = pipe.reg(inp.data, "s1_data")
        zero, wide = pipe.delay(inp.zero, 3, "zero"), pipe.delay(inp.wide, 3, "wide")
        lo = Mux(wide, INT32_MIN, 0)
        hi = Mux(wide, INT32_MAX, 255)
        for lane in range(cfg.lanes):
            mem = Memory(shape=entry, depth=cfg.groups, init=[])
            m.submodules[f"params_{lane}"] = mem
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(p.group), wp.data.bias.eq(p.bias), wp.data.mult.eq(p.mult), wp.data.shift.eq(p.shift),
                         wp.en.eq(self.params.valid & (p.lane == lane))]
            rp = mem.read_port()
            m.d.comb += rp.addr.eq(inp.group)
            # stage 2: acc + bias (33 bits: the reference guarantees it fits int32, we keep the carry)
            total = pipe.reg(acc[lane] + rp.data.bias, f"sum_{lane}")
            mult, shift = pipe.reg(rp.data.mult, f"mult_{lane}"), pipe.reg(rp.data.shift, f"shift_{lane}")
            # stages 3-: requant_stages
            out = requant_stages(pipe, total, mult, pipe.reg(shift, f"shift3_{lane}"), zero, lo, hi, f"lane{lane}")
            m.d.comb += pipe.result.data[lane].eq(out)
        m.d.comb += [pipe.result.keep.eq(pipe.delay(inp.keep, cfg.STAGES, "keep")),
                     pipe.result.last.eq(pipe.delay(inp.last, cfg.STAGES, "last"))]
        return m
