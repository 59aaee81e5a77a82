"""Log-Int-Softmax over attention rows: uint8 logit codes in, 4-bit log2 codes (+ zero state) out.

The unit computes ``calib.intref.softmax.lis_codes`` one row (one query, all its keys) at a time,
one key per cycle in each of three passes:

* **load**: take the row's keys from ``inp``, store ``{x, mask}`` in a row buffer, keep the max of
  the unmasked keys and count the keys;
* **exp**: read the row back, look up ``e = EXP[max - x]`` (0 for masked keys) in the 256-entry
  table, store ``e`` in a second buffer and add it to the row sum;
* **code**: read ``e`` back and emit ``code = #{t in 0..15 : DEN*sum >= NUM*e*2**t}`` (``LisCode``),
  with back-pressure.

No pass can start a row before the previous pass has seen all of it (the max, then the sum), but
the passes work on different rows at once, each from its own part of the buffers: while row r is
coded, row r+1 is exponentiated and row r+2 loaded. A stream of rows of N keys therefore runs at
one row per N + 1 cycles, not 3N. The buffers and the table are ``hw.bram.Bram``s: a read takes
two cycles and its data comes from a register (on ECP5 the block RAM's own, about 1 ns from the
clock instead of 6), so logic may follow it directly. Timing and widths: ``SoftmaxConfig``.
"""

from dataclasses import asdict, dataclass
from typing import ClassVar

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, ceil_log2

from fqvit.contract import (CODE_BITS, DEFAULT_LIS_RULE, LIS_RULES, LOGIT_BITS, MAX_KEYS, TABLE_BITS, ZERO_CODE,
                            check_lis_rule)

from .bram import Bram
from .unit import StreamUnit
from .config import check_int
from .pipeline import CreditPipeline

__all__ = ["CODE_BITS", "TABLE_BITS", "MAX_KEYS", "SoftmaxConfig", "LisCode", "LisSoftmax"]


def den_sum_bits(rule: str, max_keys: int) -> int:
    """Width of ``DEN * sum`` for rows of up to `max_keys` keys of any 16-bit table value."""
    _, den = LIS_RULES[rule]
    return bits_for(den * max_keys * (2**TABLE_BITS - 1))


@dataclass(frozen=True)
class SoftmaxConfig:
    """max_keys: longest row (keys per query) the row buffers hold; rule: the LIS rounding rule
    (a ``fqvit.contract.LIS_RULES`` name), fixed at build time; the table port takes any 16-bit
    value, not only the EXP entries (<= 2**15)."""

    max_keys: int = 256
    rule: str = DEFAULT_LIS_RULE

    # Cycles, unstalled, for rows of N keys (see `latency` and `row_interval`).
    LATENCY_OFFSET: ClassVar[int] = 12 + CreditPipeline.FIFO_LATENCY
    ROW_OVERHEAD: ClassVar[int] = 1
    MIN_ROW_INTERVAL: ClassVar[int] = 6

    def __post_init__(self):
        check_int("softmax", "max_keys", self.max_keys, 1, MAX_KEYS)
        check_lis_rule(self.rule, "softmax rule")

    @property
    def name(self) -> str:
        return f"lis_softmax_{self.max_keys}k_{self.rule}"

    @property
    def num_den(self) -> tuple[int, int]:
        return LIS_RULES[self.rule]

    @property
    def index_bits(self) -> int:
        """Key index bits of a buffer address (the row number mod 2 or mod 4 sits above them)."""
        return ceil_log2(self.max_keys)

    @property
    def sum_bits(self) -> int:
        """Row sum of up to max_keys 16-bit values: 24 bits at 256 keys, 26 at 1024."""
        return bits_for(self.max_keys * (2**TABLE_BITS - 1))

    @property
    def den_sum_bits(self) -> int:
        return den_sum_bits(self.rule, self.max_keys)

    def latency(self, keys: int) -> int:
        """Cycles from the handshake of a row's last input beat to its first code, unit idle."""
        return keys + self.LATENCY_OFFSET

    def row_interval(self, keys: int) -> int:
        """Cycles per row in a stream of rows of `keys` keys: each pass spends one cycle between
        rows; rows shorter than the exp pipeline (5 keys) wait for the previous row's sum."""
        return max(keys + self.ROW_OVERHEAD, self.MIN_ROW_INTERVAL)

    def timing(self) -> dict:
        return {
            "keys_per_cycle": 1,
            "latency": f"N + {self.LATENCY_OFFSET}",
            "latency_offset": self.LATENCY_OFFSET,
            "row_interval": f"max(N + {self.ROW_OVERHEAD}, {self.MIN_ROW_INTERVAL})",
            "row_interval_offset": self.ROW_OVERHEAD,
            "min_row_interval": self.MIN_ROW_INTERVAL,
            "single_row": f"3N + {self.LATENCY_OFFSET - 1}",
        }

    @property
    def in_layout(self) -> data.StructLayout:
        return data.StructLayout({"x": unsigned(LOGIT_BITS), "mask": unsigned(1), "last": unsigned(1)})

    @property
    def out_layout(self) -> data.StructLayout:
        return data.StructLayout({"code": unsigned(CODE_BITS), "last": unsigned(1)})

    @property
    def param_layout(self) -> data.StructLayout:
        return data.StructLayout({"addr": unsigned(LOGIT_BITS), "value": unsigned(TABLE_BITS)})

    def to_dict(self) -> dict:
        return asdict(self)


def times(value, k: int):
    """`value * k` for a small constant k as shifts and adds (Yosys would spend a DSP multiplier)."""
    return sum(value << i for i in range(k.bit_length()) if k >> i & 1)


class _Thresholds(wiring.Component):
    """LisCode's thresholds t = first .. first + count - 1: ``passed[i]`` for t = first + i.

    Each is an 18-bit compare of the shifted sum's low bits against ``NUM * e``, or'ed with "its
    high bits are not all zero". Pipelined, this group registers its own ``NUM * e`` and the
    ``den_sum`` bits its compares read, then the compares: no register feeds more than this
    group's few compares, where one copy for all sixteen cost 3.7 ns of routing. (Its module name,
    ``slice_<g>``, keeps it a module through synthesis, rtl_gen.synth's YOSYS_PREP, so yosys does not
    merge the groups' copies back into one.)
    """

    def __init__(self, num: int, den_sum_bits: int, first: int, count: int, pipelined: bool):
        self._num, self._first, self._pipelined = num, first, pipelined
        super().__init__({"den_sum": In(unsigned(den_sum_bits)), "e": In(unsigned(TABLE_BITS)),
                          "passed": Out(unsigned(count))})

    def elaborate(self, platform):
        m = Module()

        def stage(value, name):
            if not self._pipelined:
                return value
            reg = Signal.like(value, name=name)
            m.d.sync += reg.eq(value)
            return reg

        scaled_e = Signal(unsigned(bits_for(self._num * (2**TABLE_BITS - 1))))
        m.d.comb += scaled_e.eq(times(self.e, self._num))
        low, first, count = len(scaled_e), self._first, len(self.passed)
        window = Signal(low + count - 1)  # the den_sum bits the low-part compares read
        high = Signal(count)  # threshold first + i: den_sum's bits from first + i + low up are not all 0
        m.d.comb += [window.eq(self.den_sum[first:]),
                     high.eq(Cat(*[self.den_sum[first + i + low:].any() for i in range(count)]))]
        scaled_e, window, high = stage(scaled_e, "scaled_e"), stage(window, "window"), stage(high, "high")
        passed = Cat(*[high[i] | (window[i:i + low] >= scaled_e) for i in range(count)])
        if self._pipelined:
            m.d.sync += self.passed.eq(passed)
        else:
            m.d.comb += self.passed.eq(passed)
        return m


class LisCode(wiring.Component):
    """LIS code of one key: ``#{t in 0..15 : den_sum >= NUM * e * 2**t}``.

    No divider and no 33-bit product: for integers, ``A >= B * 2**t`` exactly when
    ``floor(A / 2**t) >= B``, so the sixteen thresholds are sixteen compares of the shifted
    ``den_sum`` (at most 28 bits) against ``NUM * e`` (18 bits), in groups of GROUP (``_Thresholds``).
    They form a thermometer (each holds whenever a larger t does), whose length is the code;
    ``e = 0`` passes all 16 (zero state).

    Combinational by default (the exhaustive testbench drives it so); ``pipelined`` registers
    ``NUM * e`` with the sum's bits, then the compares, so the code leaves LATENCY cycles after
    its inputs and no cycle holds more than one carry chain.
    """

    LATENCY = 2  # when pipelined
    GROUP = 4  # thresholds per _Thresholds

    def __init__(self, rule: str, den_sum_bits: int, pipelined: bool = False):
        self.num, _ = LIS_RULES[rule]  # DEN is already in den_sum
        self._pipelined = pipelined
        super().__init__({
            "den_sum": In(unsigned(den_sum_bits)),
            "e": In(unsigned(TABLE_BITS)),
            "code": Out(unsigned(CODE_BITS)),
        })

    def elaborate(self, platform):
        m = Module()
        groups = []
        for g, first in enumerate(range(0, ZERO_CODE, self.GROUP)):
            m.submodules[f"slice_{g}"] = group = _Thresholds(self.num, len(self.den_sum), first,
                                                             min(self.GROUP, ZERO_CODE - first), self._pipelined)
            m.d.comb += [group.den_sum.eq(self.den_sum), group.e.eq(self.e)]
            groups.append(group.passed)
        passed = Signal(ZERO_CODE)
        m.d.comb += passed.eq(Cat(*groups))
        # exactly[k]: the first k thresholds pass and the next does not, i.e. code == k (one-hot)
        edges = Cat(Const(1), passed, Const(0))
        exactly = Signal(ZERO_CODE + 1)
        m.d.comb += exactly.eq(edges[:-1] & ~edges[1:])
        m.d.comb += self.code.eq(Cat(*[
            Cat(*[exactly[k] for k in range(ZERO_CODE + 1) if k >> b & 1]).any() for b in range(CODE_BITS)
        ]))
        return m


class LisSoftmax(StreamUnit):
    """Log-Int-Softmax over rows of uint8 logit codes.

    ``params`` writes entry ``addr`` of the exp table (``calib.intref.softmax.exp_table``); always
    ready. Write the whole table before a layer's rows arrive: a write while rows are in flight
    changes their exponentials.

    ``inp``: one key per beat, ``x`` (uint8 logit code), ``mask`` (1: the key takes no part, e = 0),
    ``last`` (the row's last key). A row ends at its ``last`` beat or at its ``max_keys``-th beat,
    whichever comes first.

    ``out``: one code per beat in key order, ``code`` (0..15: probability 2**-code, 16: zero) and
    ``last`` (the row's last key).
    """

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        _, den = cfg.num_den
        ib = cfg.index_bits

        def delayed(value, name):
            reg = Signal.like(value, name=name)
            m.d.sync += reg.eq(value)
            return reg

        # A row's number mod 4 travels with it through the passes: its low bit picks the half of
        # the key buffer, both bits the quarter of the exp buffer. The load pass writes one half
        # while the exp pass reads the other. The exp pass can be two rows ahead of the code
        # pass (one row's sum waiting in the result register, the next row issued up to its last
        # key, which waits for that register), so the exp buffer needs three slots; four keep the
        # address a concatenation.
        m.submodules.table = table = Bram(shape=unsigned(TABLE_BITS), depth=2**LOGIT_BITS)
        m.submodules.keys = keys = Bram(shape=data.StructLayout({"x": unsigned(LOGIT_BITS), "mask": unsigned(1)}),
                                        depth=2 << ib)
        m.submodules.exps = exps = Bram(shape=unsigned(TABLE_BITS), depth=4 << ib)

        table_w = table.write_port()
        m.d.comb += [table_w.addr.eq(self.params.payload.addr), table_w.data.eq(self.params.payload.value),
                     table_w.en.eq(self.params.valid), self.params.ready.eq(1)]

        # -- load pass ----------------------------------------------------------------------------
        l_row = Signal(2)
        l_count = Signal(range(cfg.max_keys + 1))
        l_max = Signal(LOGIT_BITS)
        l_full = Signal()  # a whole row is loaded and waits for the exp pass
        inp = self.inp.payload
        keys_w = keys.write_port()
        accept = self.inp.valid & self.inp.ready
        m.d.comb += [self.inp.ready.eq(~l_full), keys_w.addr.eq(Cat(l_count[:ib], l_row[0])),
                     keys_w.data.x.eq(inp.x), keys_w.data.mask.eq(inp.mask), keys_w.en.eq(accept)]
        with m.If(accept):
            m.d.sync += l_count.eq(l_count + 1)
            with m.If(~inp.mask & (inp.x > l_max)):
                m.d.sync += l_max.eq(inp.x)
            with m.If(inp.last | (l_count == cfg.max_keys - 1)):
                m.d.sync += l_full.eq(1)

        # -- exp pass: issue; key buffer; table; exp buffer and sum. It never stalls. -------------
        # A key carries its row's max, number and its own index down the pipeline, so the next
        # row is issued while this one drains. The sum goes to the result register when a row's
        # last key arrives; that key is only issued once the register is sure to be free by then.
        e_issuing = Signal()
        e_row = Signal(2)
        e_max = Signal(LOGIT_BITS)
        e_index = Signal(range(max(cfg.max_keys, 2)))  # one bit at least: no zero-width Verilog
        e_last = Signal.like(e_index)  # the row's last key index (a register: no subtraction on the issue path)
        acc = Signal(cfg.sum_bits)
        r_full = Signal()  # result register: a row's sum, last key index and number, for the code pass
        r_sum = Signal(cfg.sum_bits)
        r_last = Signal.like(e_index)
        r_row = Signal(2)
        to_code = Signal()

        key_layout = data.StructLayout({"valid": 1, "last": 1, "index": len(e_index), "row": 2, "max": LOGIT_BITS})
        stages = [Signal(key_layout, name="key_0")]
        for i in range(1, 6):
            stages.append(delayed(stages[-1], f"key_{i}"))
        issued, key2, key5 = stages[0], stages[2], stages[5]
        # a row's last key is in stages 1-5: a register, not an OR of the stages (key_5's valid
        # already drives the whole sum); at most one is, as the next waits for it
        last_in_flight = Signal()
        with m.If(issued.valid & issued.last):
            m.d.sync += last_in_flight.eq(1)
        with m.Elif(key5.valid & key5.last):
            m.d.sync += last_in_flight.eq(0)
        issue_last = e_index == e_last
        m.d.comb += [issued.valid.eq(e_issuing & (~issue_last | (~last_in_flight & (~r_full | to_code)))),
                     issued.last.eq(issue_last), issued.index.eq(e_index), issued.row.eq(e_row), issued.max.eq(e_max)]
        with m.If(issued.valid):
            m.d.sync += e_index.eq(e_index + 1)
            with m.If(issue_last):
                m.d.sync += e_issuing.eq(0)
        keys_r = keys.read_port()
        m.d.comb += keys_r.addr.eq(Cat(e_index[:ib], e_row[0]))
        # stage 2: the key leaves its buffer's output register; its distance to the max addresses
        # the table (a masked key's distance is meaningless: its e is forced to 0)
        x2 = keys_r.data
        table_r = table.read_port()
        m.d.comb += table_r.addr.eq(key2.max - x2.x)
        # stage 4: the exponential leaves the table's output register; stage 5: registered (0 if
        # masked), stored and summed
        e5 = delayed(Mux(delayed(delayed(x2.mask, "mask_3"), "mask_4"), 0, table_r.data), "e_5")
        exps_w = exps.write_port()
        m.d.comb += [exps_w.addr.eq(Cat(key5.index[:ib], key5.row)), exps_w.data.eq(e5), exps_w.en.eq(key5.valid)]

        # -- code pass: a credit pipeline from a read counter to `out` --------------------------------
        c_busy = Signal()
        c_row = Signal(2)
        c_index = Signal(range(max(cfg.max_keys, 2)))  # one bit at least: no zero-width Verilog
        c_last = Signal.like(c_index)
        c_den_sum = Signal(cfg.den_sum_bits)
        reads = stream.Signature(data.StructLayout({"last": 1})).create()
        code_stages = Bram.LATENCY + LisCode.LATENCY
        pipe = CreditPipeline(m, reads, self.out, code_stages, "code")
        m.d.comb += [reads.valid.eq(c_busy), reads.payload.last.eq(c_index == c_last)]
        with m.If(reads.valid & reads.ready):
            m.d.sync += c_index.eq(c_index + 1)
            with m.If(reads.payload.last):
                m.d.sync += c_busy.eq(0)
        exps_r = exps.read_port()
        m.d.comb += exps_r.addr.eq(Cat(c_index[:ib], c_row))
        # stage 2: e leaves its buffer's output register (the row's DEN * sum travels with it: the
        # next row's may already be in c_den_sum); stages 3-4: LisCode; its code enters the FIFO
        m.submodules.lis_code = lis_code = LisCode(cfg.rule, cfg.den_sum_bits, pipelined=True)
        m.d.comb += [lis_code.den_sum.eq(pipe.delay(c_den_sum, Bram.LATENCY, "den_sum")), lis_code.e.eq(exps_r.data),
                     pipe.result.code.eq(lis_code.code),
                     pipe.result.last.eq(pipe.delay(reads.payload.last, code_stages, "last"))]

        # -- hand-offs ------------------------------------------------------------------------------
        m.d.comb += to_code.eq(r_full & ~c_busy)
        with m.If(to_code):
            m.d.sync += [c_busy.eq(1), c_index.eq(0), c_last.eq(r_last), c_row.eq(r_row),
                         c_den_sum.eq(times(r_sum, den)), r_full.eq(0)]
        with m.If(key5.valid):  # after the hand-off: a row's last key may refill the register it frees
            with m.If(key5.last):
                m.d.sync += [acc.eq(0), r_full.eq(1), r_sum.eq(acc + e5), r_last.eq(key5.index),
                             r_row.eq(key5.row)]
            with m.Else():
                m.d.sync += acc.eq(acc + e5)
        with m.If(l_full & ~e_issuing):
            m.d.sync += [e_issuing.eq(1), e_index.eq(0), e_last.eq(l_count - 1), e_max.eq(l_max), e_row.eq(l_row),
                         l_full.eq(0), l_count.eq(0), l_max.eq(0), l_row.eq(l_row + 1)]
        return m
