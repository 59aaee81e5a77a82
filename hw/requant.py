"""Requantization in hardware: ``clamp(zero + round_shift(acc * mult, shift), lo, hi)``.

``round_stages`` is the one hardware statement of calib/intref/requant.py's rule (round half up
by adding ``2**(shift-1)`` before an arithmetic shift, then offset and clamp); ``requant_stages``
puts the product in front of it. The Requantizer below, attention x V and the LayerNorm use
``requant_stages``, the residual adder ``round_stages``. The Requantizer is the epilogue on the
systolic array's result stream: per output channel an int32 bias, a 16-bit multiplier and a shift,
held in one parameter memory bank per lane (``param_banks``: channel n lives in bank n % lanes at
index n // lanes, so a result row of column tile g reads index g in every bank at once).
"""

from dataclasses import asdict, dataclass
from typing import ClassVar

from amaranth import Cat, Module, Mux, Value, signed, unsigned
from amaranth.lib import data
from amaranth.utils import bits_for, ceil_log2

from fqvit.contract import ACC_BITS, INT32_MAX, INT32_MIN, MULT_BITS, SHIFT_BITS

from .unit import StreamUnit
from .bram import Bram
from .config import check_bool, check_int
from .dsp import PRODUCT_LATENCY, signed_width, wide_product
from .pipeline import CreditPipeline
from .share import SharedLanes, gather, slices

__all__ = ["MULT_BITS", "SHIFT_BITS", "SHIFT_STEPS", "ROUND_LATENCY", "REQUANT_LATENCY", "READ_LATENCY",
           "requant_stages", "round_stages", "param_banks", "RequantConfig", "Requantizer"]

SHIFT_STEPS = -(-SHIFT_BITS // 2)  # the shift, two bits of its amount per stage
ROUND_LATENCY = SHIFT_STEPS + 3  # round_stages: the shift, rounding and the compares, their outcome, the clamp
REQUANT_LATENCY = PRODUCT_LATENCY + ROUND_LATENCY  # requant_stages: the product, round_stages
READ_LATENCY = 1 + Bram.LATENCY  # param_banks: the address copied beside each bank, then the read


def requant_stages(pipe: CreditPipeline, acc, mult, shift, zero, lo, hi, name: str, lut: bool = False):
    """REQUANT_LATENCY pipeline stages: the product (hw.dsp.wide_product), then round_stages.
    Returns the result (signed, as wide as [lo, hi] needs) that many stages after `acc`. `acc`
    signed, `mult` unsigned (or a constant); `shift` >= 1, `zero`, `lo` and `hi` are read one
    stage after `acc`. `lut`: the product in LUTs, not DSP blocks (hw.dsp.wide_product)."""
    prod = wide_product(pipe.m, acc, mult, f"{name}_prod", lut)
    # read at stage 1, wanted the stage before the product's (PRODUCT_LATENCY)
    shift, zero, lo, hi = (pipe.delay(v, PRODUCT_LATENCY - 2, f"{name}_{tag}")
                           for v, tag in ((shift, "shift"), (zero, "zero"), (lo, "lo"), (hi, "hi")))
    return round_stages(pipe, prod, shift, zero, lo, hi, name)


def round_stages(pipe: CreditPipeline, value, shift, zero, lo, hi, name: str):
    """ROUND_LATENCY pipeline stages: ``clamp(zero + round_shift(value, shift), lo, hi)``, the
    shift in SHIFT_STEPS stages, then rounding, offset and the clamp's compares, their outcome, and
    the clamp.
    Returns the result (signed, as wide as [lo, hi] needs) that many stages after `value`.
    `value` signed, a register (the first shift stage has no time for logic in front); `shift` >= 1,
    `zero`, `lo` and `hi` are read one stage before `value`.

    Built in a pipeline part of its own (`slice_<name>`): every operand the caller shares between
    lanes (zero point, range, shift) is copied into each lane, so no net fans out across lanes.
    Each stage is one short step at 160 MHz on an ECP5: a variable shift of a 48-bit product
    followed by rounding, offset and clamp took ~20 ns in one cycle, ~12 ns as one stage for the
    shift and one for the rest, and a shift by 0..7 (three levels of 2:1 multiplexers) still 7 ns."""
    lane = pipe.part(name)
    # ((x >> (n-1)) + 1) >> 1 equals (x + 2**(n-1)) >> n for every n >= 1, without a
    # product-wide rounding constant and adder (a third of the unit's LUTs on ECP5).
    amount = lane.reg((shift - 1).as_unsigned()[:SHIFT_BITS], f"{name}_amount")
    shifted = value
    for low in reversed(range(2, SHIFT_BITS, 2)):  # a 4:1 multiplexer per bit: two LUT4s and their PFUMX
        shifted = lane.reg(shifted >> (amount[low:low + 2] << low), f"{name}_shift{low}")
        amount = lane.reg(amount[:low], f"{name}_amount{low}")
    # The last shift stage is built twice, once in a part of its own: one copy feeds the rounding
    # adder, the other the clamp's two compares (one register feeding all three carry chains was
    # the critical path, 2.5-4 ns of routing into them).
    compare = lane.part(f"{name}_compare")
    to_round = lane.reg(shifted >> amount, f"{name}_shifted")
    shifted = compare.reg(shifted >> amount, f"{name}_shifted")
    zero, lo, hi = (lane.delay(v, SHIFT_STEPS, f"{name}_{tag}") for v, tag in ((zero, "zero"), (lo, "lo"), (hi, "hi")))
    # With s = shifted, the result is r = (s + 2 * zero + 1) >> 1 (that is ((s + 1) >> 1) + zero),
    # and r < lo iff s < below, r > hi iff s > above: the rounding adder and both compares start
    # from s in parallel, against bounds registered the stage before.
    rounding = (zero << 1) | 1
    below, above = (lo << 1) - rounding, (hi - zero) << 1  # one carry chain each
    rounding = lane.delay(rounding, 1, f"{name}_rounding")
    lo, hi = lane.delay(lo, 3, f"{name}_clamp_lo"), lane.delay(hi, 3, f"{name}_clamp_hi")
    # r only counts inside [lo, hi]: its low out_width bits suffice (a short carry chain).
    out_width = max(signed_width(lo), signed_width(hi))
    rounded = lane.delay((to_round[:out_width + 1] + rounding)[1:out_width + 1].as_signed(), 2, f"{name}_rounded")
    # The bounds fit `width` bits signed, so an s outside that range lies beyond both on its sign's
    # side: the compares take s's low `width` bits, and its upper bits only say whether they are all
    # sign bits (a LUT tree beside the carry chains; a compare over the whole product took 9 ns).
    # The compares are unsigned >= of the values offset by 2**(width-1): the carry out of the chain
    # is the answer, where a signed compare adds a LUT after it and a > an equality tree.
    width = max(signed_width(below), signed_width(above))
    if len(shifted) < width:  # narrower than the bounds: sign-extended, it always fits
        shifted = Cat(shifted, shifted[-1].replicate(width - len(shifted))).as_signed()
    upper = shifted[width - 1:]
    fits = compare.reg(upper.all() | ~upper.any(), f"{name}_fits")
    negative = compare.reg(shifted[-1], f"{name}_negative")
    s = _offset(shifted, width)
    below, above = (compare.delay(_offset(v, width), 1, f"{name}_{tag}")
                    for v, tag in ((below, "below"), (above, "above")))
    not_low, not_high = compare.reg(s >= below, f"{name}_not_low"), compare.reg(above >= s, f"{name}_not_high")
    # The outcome gets a stage of its own: as a LUT in front of the clamp's multiplexers it reached
    # them over 5 ns of routing; after the carry chains it would lengthen those.
    low = lane.reg(Mux(fits, ~not_low, negative), f"{name}_low")
    high = lane.reg(Mux(fits, ~not_high, ~negative), f"{name}_high")
    return lane.reg(Mux(low, lo, Mux(high, hi, rounded)), f"{name}_out", signed(out_width))


def _offset(value, width: int):
    """`value` + 2**(width-1) as `width` bits unsigned, for a `value` that fits `width` bits signed:
    the order of signed values as unsigned ones. For a Value, its sign bit flipped (no adder)."""
    if isinstance(value, int):
        return value + (1 << (width - 1))
    return Value.cast(value)[:width] ^ (1 << (width - 1))


def param_banks(pipe: CreditPipeline, params, group, entry: data.StructLayout, lanes: int, depth: int,
                share: int = 1, phase=0) -> list:
    """Per lane a bank of `depth` words of per-channel parameters (`entry`, hw.bram), and its word at
    index `group`, READ_LATENCY stages later. A `params` beat writes its `entry` fields at its
    `group` in bank `lane`; it takes effect one cycle after its handshake, as a read's address
    does, so a write accepted before a beat is seen by it.

    With `share` > 1 the banks serve a unit whose `lanes` physical lanes each take `share` logical
    lanes, one a cycle (`phase`, a signal: logical lane ``phase * lanes + bank``): a `params` beat's
    logical lane L goes to bank L % lanes at index ``group * 2**phase_bits + L // lanes``, so the
    read address is the phase and the group side by side, with no adder in front of the bank.

    Each bank is a pipeline part with its own registered copy of the write and the read address:
    one input register driving every lane's blocks took 5.7 ns of routing."""
    phase_bits = ceil_log2(share)
    words = []
    for lane in range(lanes):
        part = pipe.part(f"params{lane}")
        part.m.submodules.mem = mem = Bram(shape=entry, depth=depth << phase_bits)
        wp, rp = mem.write_port(), mem.read_port()
        logical = params.payload.lane
        write = part.reg(params.valid & (logical % lanes == lane if share > 1 else logical == lane), f"write_{lane}")
        w = part.reg(params.payload, f"w_{lane}")
        w_addr = Cat((w.lane // lanes)[:phase_bits], w.group) if share > 1 else w.group
        r_addr = Cat(Value.cast(phase)[:phase_bits], group) if share > 1 else group
        part.m.d.comb += [wp.en.eq(write), wp.addr.eq(w_addr), rp.addr.eq(part.reg(r_addr, f"group_{lane}")),
                          *(wp.data[k].eq(w[k]) for k in entry.members)]
        words.append(rp.data)
    return words


@dataclass(frozen=True)
class RequantConfig(SharedLanes):
    """lanes: the array's columns; max_channels: output channels of the widest layer;
    lut_multipliers: the products in LUTs instead of DSP blocks (same timing); share: logical lanes
    per physical lane.

    With `share` > 1 the unit builds ``ceil(lanes / share)`` lanes of arithmetic and takes a beat
    every `share` cycles (hw/share.py). A beat every 3 cycles is what the 12x12 array gives when its
    tiles are at least 3 rows' worth of steps deep (K >= 3R: every ViT GEMM but the attention logits
    of heads narrower than 3R, which then wait on the epilogue)."""

    lanes: int = 8
    max_channels: int = 4096
    lut_multipliers: bool = False
    share: int = 1

    STAGES: ClassVar[int] = READ_LATENCY + 1 + REQUANT_LATENCY  # param read, bias add, requant_stages

    def __post_init__(self):
        check_int("requant", "lanes", self.lanes, 1, 32)
        check_int("requant", "max_channels", self.max_channels, 1, 16384)
        check_bool("requant", "lut_multipliers", self.lut_multipliers)
        check_int("requant", "share", self.share, 1, self.lanes)

    @property
    def groups(self) -> int:
        return -(-self.max_channels // self.lanes)

    @property
    def name(self) -> str:
        return (f"requant_{self.lanes}l_{self.max_channels}c" + ("_lut" if self.lut_multipliers else "")
                + self.share_suffix)

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
        m.d.comb += self.params.ready.eq(1)
        lanes, share = cfg.physical_lanes, cfg.share
        beats, phase = (self.inp, 0) if share == 1 else slices(m, self.inp, lanes, share, ("data",))
        pipe = CreditPipeline(m, beats, self.out, cfg.STAGES, "rq")
        inp = beats.payload

        # stages 1-3: parameters arrive from their banks; operands wait beside them. The zero point
        # and output range are read one stage after the sum.
        banks = param_banks(pipe, self.params, inp.group, entry, lanes, cfg.groups, share, phase)
        acc = pipe.delay(inp.data, READ_LATENCY, "data")
        zero, wide = pipe.delay(inp.zero, READ_LATENCY + 2, "zero"), pipe.delay(inp.wide, READ_LATENCY + 2, "wide")
        lo = Mux(wide, INT32_MIN, 0)
        hi = Mux(wide, INT32_MAX, 255)
        outs = []
        for lane, param in enumerate(banks):
            # stage 4: acc + bias (33 bits: the reference guarantees it fits int32, we keep the carry)
            total = pipe.reg(acc[lane] + param.bias, f"sum_{lane}")
            mult, shift = pipe.reg(param.mult, f"mult_{lane}"), pipe.delay(param.shift, 2, f"shift_{lane}")
            # stages 5-: requant_stages
            outs.append(requant_stages(pipe, total, mult, shift, zero, lo, hi, f"lane{lane}", cfg.lut_multipliers))
        if share > 1:
            outs = gather(m, pipe, phase, outs, share)
        for lane in range(cfg.lanes):
            m.d.comb += pipe.result.data[lane].eq(outs[lane])
        m.d.comb += [pipe.result.keep.eq(pipe.delay(inp.keep, cfg.STAGES, "keep")),
                     pipe.result.last.eq(pipe.delay(inp.last, cfg.STAGES, "last"))]
        return m
