"""The residual adder: two uint8 code streams at different per-channel scales, one rounding.

    out[c] = clamp(z_o + round_shift(ma[c] * (a[c] - z_a) + mb[c] * (b[c] - z_b), shift), 0, 255)

(calib/intref/residual.py). Per channel two 16-bit multipliers, held like the Requantizer's
parameters in one memory bank per lane (channel n in bank n % lanes at index n // lanes, so a beat
of column group g reads index g in every bank at once). The zero points and the layer's shift
travel in the beat. The sum is rounded, offset and clamped by ``hw.requant.round_stages``.
"""

from dataclasses import asdict, dataclass
from typing import ClassVar

from amaranth import Module, signed, unsigned
from amaranth.lib import data
from amaranth.utils import bits_for, ceil_log2

from fqvit.contract import MULT_BITS, SHIFT_BITS

from .unit import StreamUnit
from .config import check_bool, check_int
from .pipeline import CreditPipeline
from .dsp import PRODUCT_LATENCY, wide_product
from .requant import READ_LATENCY, ROUND_LATENCY, param_banks, round_stages
from .share import SharedLanes, gather, slices

__all__ = ["ResidualConfig", "ResidualAdder"]

CODE_BITS = 8
CENTERED_BITS = CODE_BITS + 1  # code - zero point, both uint8: exact in 9-bit signed


@dataclass(frozen=True)
class ResidualConfig(SharedLanes):
    """lanes: channels per beat; max_channels: channels of the widest residual stream;
    lut_multipliers: the products in LUTs instead of DSP blocks (same timing); share: logical lanes
    per physical lane (a beat every `share` cycles, hw/share.py)."""

    lanes: int = 8
    max_channels: int = 4096
    lut_multipliers: bool = False
    share: int = 1

    # param read, products, their sum, round_stages
    STAGES: ClassVar[int] = READ_LATENCY + PRODUCT_LATENCY + 1 + ROUND_LATENCY

    def __post_init__(self):
        check_int("residual", "lanes", self.lanes, 1, 32)
        check_int("residual", "max_channels", self.max_channels, 1, 16384)
        check_bool("residual", "lut_multipliers", self.lut_multipliers)
        check_int("residual", "share", self.share, 1, self.lanes)

    @property
    def groups(self) -> int:
        return -(-self.max_channels // self.lanes)

    @property
    def name(self) -> str:
        return (f"residual_{self.lanes}l_{self.max_channels}c" + ("_lut" if self.lut_multipliers else "")
                + self.share_suffix)

    @property
    def in_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "a": data.ArrayLayout(unsigned(CODE_BITS), self.lanes),
            "b": data.ArrayLayout(unsigned(CODE_BITS), self.lanes),
            "keep": unsigned(self.lanes),
            "last": unsigned(1),
            "group": unsigned(max(1, ceil_log2(self.groups))),  # channels group*lanes + lane
            "a_zero": unsigned(CODE_BITS),
            "b_zero": unsigned(CODE_BITS),
            "zero": unsigned(CODE_BITS),  # of the output
            "shift": unsigned(SHIFT_BITS),  # the layer's shared shift, 1..62
        })

    @property
    def out_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "data": data.ArrayLayout(unsigned(CODE_BITS), self.lanes),
            "keep": unsigned(self.lanes),
            "last": unsigned(1),
        })

    @property
    def param_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "lane": unsigned(bits_for(self.lanes - 1)),
            "group": unsigned(max(1, ceil_log2(self.groups))),
            "ma": unsigned(MULT_BITS),
            "mb": unsigned(MULT_BITS),
        })

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualAdder(StreamUnit):
    """Two uint8 code streams (same channels, lane for lane) -> their requantized sum (uint8).

    ``params`` writes one channel's (ma, mb); always ready. Write all channels of a layer before
    its codes arrive.
    """

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        entry = data.StructLayout({"ma": unsigned(MULT_BITS), "mb": unsigned(MULT_BITS)})
        lanes, share = cfg.physical_lanes, cfg.share
        beats, phase = (self.inp, 0) if share == 1 else slices(m, self.inp, lanes, share, ("a", "b"))
        pipe = CreditPipeline(m, beats, self.out, cfg.STAGES, "res")
        m.d.comb += self.params.ready.eq(1)
        inp = beats.payload

        # round_stages reads the zero point and shift one stage before the sum of the products
        zero, shift = (pipe.delay(getattr(inp, k), READ_LATENCY + PRODUCT_LATENCY, k) for k in ("zero", "shift"))

        def centred(code, zero_point, name):  # registered, then waiting beside the multipliers' read
            return pipe.delay(pipe.reg(code - zero_point, name, signed(CENTERED_BITS)), READ_LATENCY - 1, name)

        outs = []
        for lane, mults in enumerate(param_banks(pipe, self.params, inp.group, entry, lanes, cfg.groups, share, phase)):
            # stages 1-3: multipliers arrive from their bank; the centred operands wait beside them
            ca, cb = centred(inp.a[lane], inp.a_zero, f"ca_{lane}"), centred(inp.b[lane], inp.b_zero, f"cb_{lane}")
            # two 16 x 9-bit products (25-bit signed), their 26-bit sum, then round_stages: the one
            # rounding of the sum by the layer's shift, the output zero point and the uint8 clamp
            pa, pb = (wide_product(m, c, mult, f"{tag}_{lane}", cfg.lut_multipliers)
                      for c, mult, tag in ((ca, mults.ma, "pa"), (cb, mults.mb, "pb")))
            outs.append(round_stages(pipe, pipe.reg(pa + pb, f"sum_{lane}"), shift, zero, 0, 255, f"lane{lane}"))
        if share > 1:
            outs = gather(m, pipe, phase, outs, share)
        m.d.comb += [pipe.result.data[lane].eq(outs[lane]) for lane in range(cfg.lanes)]
        m.d.comb += [pipe.result.keep.eq(pipe.delay(inp.keep, cfg.STAGES, "keep")),
                     pipe.result.last.eq(pipe.delay(inp.last, cfg.STAGES, "last"))]
        return m
