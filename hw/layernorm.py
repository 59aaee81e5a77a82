"""Integer LayerNorm on PTF codes, one channel per cycle (``calib/intref/layernorm.py``, bit for bit).

A token is a run of input beats (one uint8 code each) that ends with ``last``; its channel count C
is the number of beats. Three engines work on different tokens at once:

* the **loader** centres and shifts each code, ``X = (q - z) << alpha[c]`` (alpha from a parameter
  memory), writes X into one half of a two-token buffer and accumulates ``M1 = sum X`` and
  ``M2 = sum X**2`` (X**2 in a multiplier; M2 in two halves with a registered carry); at the
  token's end it leaves (M1, M2, C) for the statistics engine;
* the **statistics engine** computes ``V = C*M2 - M1**2`` (multipliers, then the sum and the
  difference in halves), ``D = isqrt(V)`` digit by digit (one result bit per cycle, no multiplier;
  the bit length ``k`` and ``2**(k-1)`` fall out of the same loop), and ``R = floor(2**(15+k) / D)``
  by division (17 quotient bits, one per cycle), both non-restoring: one carry chain per cycle;
* the **output pipeline** reads X back and computes ``n = round_shift((C*X - M1) * R, k + 5)`` and
  ``out = clamp(z_out + round_shift(G*n + B, 10 + fg), 0, 255)``: ``OUT_DEPTH`` stages of a credit
  pipeline, both roundings through ``requant_stages``, one beat per cycle with full back-pressure.

Built for 160 MHz on an ECP5: every memory is a ``Bram`` (its read data registered in the block),
and between two registers the unit's own logic (``wide_product`` and ``requant_stages`` aside) is
at most one carry chain of up to 26 bits and a LUT or two.

The buffer holds two tokens, so the next token loads while the current one is normalized and
emitted; see ``LayerNormConfig`` for the exact timing. Widths are in ``docs/numerics.md``; the
hardware additionally holds G as 17-bit signed (``affine_params`` rounds a largest |G| just below
2**15 up to +2**15) and B as 49-bit signed (``saturate_beta`` below: any wider B saturates the
output exactly as the clamped one does).
"""

from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream
from amaranth.utils import bits_for, ceil_log2

from fqvit.contract import FN, LN_RECIP_BITS, MAX_CHANNELS, MAX_FG, PTF_MAX_ALPHA

from .unit import StreamUnit
from .config import check_bool, check_int
from .pipeline import CreditPipeline, delayed
from .bram import Bram
from .dsp import DSP_WIDTH, PRODUCT_LATENCY, wide_product
from .requant import REQUANT_LATENCY, requant_stages

__all__ = ["FN", "G_BITS", "B_BITS", "ParamKind", "saturate_beta", "LayerNormConfig", "LayerNormUnit"]

R_BITS = LN_RECIP_BITS + 2  # R in (2**15, 2**16]
X_BITS = 12  # X = (q - z) << alpha
X_MAX = 255 << PTF_MAX_ALPHA  # |X| <= X_MAX
X_SPAN = 255 << PTF_MAX_ALPHA  # and all X of a token lie in an interval this wide (one z, alpha <= 3)
N_BITS = 18  # |n| <= sqrt(C-1) * (sqrt(V) / D) * 2**10 + 1/2 < 66 * 2**10 for C <= 4096
G_BITS = 17  # 16-bit G plus the one value +2**15 that affine_params' rounding can produce
B_BITS = 49
FG_BITS = bits_for(MAX_FG)  # fg in 0..30 (31 works too)
CODE_BITS = 8
TOTAL_LOW_BITS = 25  # G*n + B (50 bits) is added in two halves
READ_LATENCY = Bram.LATENCY  # a block-RAM read port: address -> data


class ParamKind(enum.Enum, shape=1):
    CHANNEL = 0  # alpha, g, b of channel `channel`
    LAYER = 1  # the layer's scalars z, z_out, fg


def saturate_beta(B) -> np.ndarray:
    """B (int64 array-like) clamped to the hardware's 49-bit field, without changing any output.

    |G * n| < 2**32 and the rounding shift is at most 10 + 30, so a B at or beyond +-2**48 puts
    round_shift(G*n + B) at or beyond +-256 and the output at 255 (or 0) whatever z_out; the
    clamped value does the same.
    """
    return np.clip(np.asarray(B, dtype=np.int64), -(2 ** (B_BITS - 1)), 2 ** (B_BITS - 1) - 1)


@dataclass(frozen=True)
class LayerNormConfig:
    """max_channels: the widest token (channel count C) the unit accepts; sizes the memories.

    Timing, unstalled, in cycles between stream handshakes:

    * ``latency``: a token's first output beat follows its last input beat by this much when the
      unit is otherwise idle (load pipeline, statistics, the cycle the output side starts the
      token, output pipeline and FIFO);
    * within a token, one beat per cycle on both streams;
    * back to back, every two tokens of C channels take ``pair_cycles(C)`` =
      ``max(2*C + pair_overhead, 2*stats_cycles)``. A token starts loading only once the token two
      places ahead of it has been read out of the buffer (it has two halves), and its statistics
      start only after its own last beat. So tokens leave in pairs: the second follows the first
      without a gap (its statistics were done while the first was emitted); the next pair's first
      token, loaded while the second was emitted, adds ``pair_overhead`` = ``LOAD_DEPTH +
      stats_cycles`` cycles (its last beat to its first X read: the load pipeline, the statistics
      engine and the cycle the output side takes the token's constants). Tokens shorter than
      about ``stats_cycles / 2`` are limited by the statistics engine instead (one token per
      ``stats_cycles``).
    """

    max_channels: int = 1024
    lut_multipliers: bool = False  # the products in LUTs instead of DSP blocks (same timing)

    # input handshake -> alpha (a block-RAM read; q - z beside it) -> X -> X**2 (a product) -> M1 and
    # M2's low half -> M2's high half, handed to the statistics
    LOAD_DEPTH: ClassVar[int] = READ_LATENCY + 1 + PRODUCT_LATENCY + 2
    # statistics engine up to V: take the token, the products C*M2 and M1 x its slices, their sum
    # M1**2, V's low half (its high half is loaded into the root engine)
    VARIANCE_CYCLES: ClassVar[int] = 1 + PRODUCT_LATENCY + 2
    DIV_STEPS: ClassVar[int] = R_BITS
    # X read, C*X, - M1, requant_stages for n, G*n, the low half of + B, requant_stages for the output
    OUT_DEPTH: ClassVar[int] = (READ_LATENCY + PRODUCT_LATENCY + 1 + REQUANT_LATENCY + PRODUCT_LATENCY + 1
                                + REQUANT_LATENCY)

    def __post_init__(self):
        check_int("layernorm", "max_channels", self.max_channels, 1, MAX_CHANNELS)
        check_bool("layernorm", "lut_multipliers", self.lut_multipliers)

    @property
    def name(self) -> str:
        return f"layernorm_{self.max_channels}c" + ("_lut" if self.lut_multipliers else "")

    @property
    def sqrt_bits(self) -> int:
        """Bits of D. One zero point and shifts of at most 3 put all X of a token in an interval
        255 * 8 wide, so std(X) <= 1020, V = C**2 * var(X) <= (C * 1020)**2 and D <= C * 1020."""
        return bits_for(self.max_channels * X_SPAN // 2)

    @property
    def stats_cycles(self) -> int:
        """Statistics engine, per token: V, one cycle per root bit and one more, one per quotient bit."""
        return self.VARIANCE_CYCLES + self.sqrt_bits + 1 + self.DIV_STEPS

    @property
    def latency(self) -> int:
        return self.LOAD_DEPTH + self.stats_cycles + 1 + self.OUT_DEPTH + CreditPipeline.FIFO_LATENCY

    @property
    def pair_overhead(self) -> int:
        return self.stats_cycles + self.LOAD_DEPTH

    def pair_cycles(self, channels: int) -> int:
        return max(2 * channels + self.pair_overhead, 2 * self.stats_cycles)

    def timing(self) -> dict:
        return {"latency": self.latency, "stats_cycles": self.stats_cycles, "pair_overhead": self.pair_overhead,
                "beats_per_cycle": 1}

    @property
    def channel_shape(self):
        return unsigned(bits_for(self.max_channels - 1))

    @property
    def in_layout(self) -> data.StructLayout:
        return data.StructLayout({"q": unsigned(CODE_BITS), "last": unsigned(1)})

    @property
    def out_layout(self) -> data.StructLayout:
        return data.StructLayout({"q": unsigned(CODE_BITS), "last": unsigned(1)})

    @property
    def param_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "kind": ParamKind,
            "channel": self.channel_shape,
            "alpha": unsigned(2),
            "g": signed(G_BITS),
            "b": signed(B_BITS),
            "z": unsigned(CODE_BITS),
            "z_out": unsigned(CODE_BITS),
            "fg": unsigned(FG_BITS),
        })

    def param_fields(self, z: int, z_out: int, fg: int, alpha, G, B) -> dict[str, np.ndarray]:
        """The ``params`` beats that load one layer (a CHANNEL write per channel of alpha/G/B, then
        the LAYER scalars), as field arrays for ``hw.payload.PayloadCodec(param_layout)``."""
        alpha, G = np.asarray(alpha, dtype=np.int64), np.asarray(G, dtype=np.int64)
        n = len(alpha)
        if not 1 <= n <= self.max_channels or len(G) != n or len(B) != n:
            raise ValueError(f"layernorm: alpha, G and B must have one entry per channel, 1..{self.max_channels}")
        zeros = np.zeros(n + 1, dtype=np.int64)
        return {
            "kind": np.array([ParamKind.CHANNEL.value] * n + [ParamKind.LAYER.value]),
            "channel": np.append(np.arange(n), 0),
            "alpha": np.append(alpha, 0), "g": np.append(G, 0), "b": np.append(saturate_beta(B), 0),
            "z": zeros + z, "z_out": zeros + z_out, "fg": zeros + fg,
        }

    def to_dict(self) -> dict:
        return asdict(self)


class LayerNormUnit(StreamUnit):
    """uint8 PTF codes -> LayerNorm output codes, one token (C beats ending with ``last``) at a time.

    ``params`` (always ready): ``kind`` CHANNEL writes channel ``channel``'s ``alpha``, ``g`` and
    ``b``; LAYER sets ``z``, ``z_out`` and ``fg``. Write a layer's parameters before its tokens and
    change them only when no token is in the unit. ``inp``: ``q`` and ``last`` per channel; the
    beat that fills ``max_channels`` ends the token even without ``last``. ``out``: ``q`` and
    ``last`` per channel, tokens in order.
    """

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        depth = cfg.max_channels
        lut = cfg.lut_multipliers
        count_shape = unsigned(bits_for(depth))  # C in 1..max_channels

        def read(mem, addr):
            """The word of `mem` at `addr`, READ_LATENCY cycles later."""
            port = mem.read_port()
            m.d.comb += port.addr.eq(addr)
            return port.data

        # ---- parameters
        p = self.params.payload
        m.d.comb += self.params.ready.eq(1)
        z, z_out, fg = Signal(CODE_BITS), Signal(CODE_BITS), Signal(FG_BITS)
        with m.If(self.params.valid & (p.kind == ParamKind.LAYER)):
            m.d.sync += [z.eq(p.z), z_out.eq(p.z_out), fg.eq(p.fg)]
        write_channel = self.params.valid & (p.kind == ParamKind.CHANNEL)
        # alpha is read by the loader and (G, B) by the output pipeline: two memories, one read port each
        m.submodules.alpha_mem = alpha_mem = Bram(shape=unsigned(2), depth=depth)
        affine = data.StructLayout({"g": signed(G_BITS), "b": signed(B_BITS)})
        m.submodules.affine_mem = affine_mem = Bram(shape=affine, depth=depth)
        alpha_wp, affine_wp = alpha_mem.write_port(), affine_mem.write_port()
        m.d.comb += [alpha_wp.addr.eq(p.channel), alpha_wp.data.eq(p.alpha), alpha_wp.en.eq(write_channel),
                     affine_wp.addr.eq(p.channel), affine_wp.data.g.eq(p.g), affine_wp.data.b.eq(p.b),
                     affine_wp.en.eq(write_channel)]

        # Token buffer: X of two tokens, half `bank` at addresses (bank, c). It keeps X (12 bits)
        # rather than q (8) so that the output side needs no alpha: a second alpha read port would
        # cost as much memory as the four extra bits, and X would be formed twice. Each half is a
        # power of two deep, so an address is the channel with the bank above it, no adder.
        half_bits = ceil_log2(depth)
        m.submodules.token_mem = token_mem = Bram(shape=signed(X_BITS), depth=2 << half_bits)

        def buffer_addr(bank, channel):
            return Cat(channel[:half_bits], bank)

        # A half is reserved from a token's first input beat until its last X has been read out;
        # the loader starts a token only while a half is free. The halves reserved and released
        # are counted apart (modulo 4), each by its own side, so that the output side's `release`,
        # which settles late in the cycle, reaches no loader register.
        reserved, released = Signal(2), Signal(2)
        release = Signal()

        # ---- loader. Stage 1: q - z; stage READ_LATENCY: alpha (read at the beat's channel); the
        # stage after: X, written to the buffer; stage A, PRODUCT_LATENCY later: X**2 is in, M1 and
        # the low half of M2 accumulate; stage B: the high half of M2 takes the low half's carry,
        # and a token's last beat hands its sums to the statistics engine. Two halves, because M2
        # is up to 34 bits: one carry chain of that length and its feedback do not fit a cycle.
        inp = self.inp.payload
        channel = Signal(cfg.channel_shape)  # of the next input beat
        in_token = Signal()
        load_bank = Signal()
        m.d.comb += self.inp.ready.eq(in_token | ((reserved - released)[:2] != 2))
        accept = self.inp.valid & self.inp.ready
        ends = inp.last | (channel == depth - 1)
        with m.If(accept):
            m.d.sync += [channel.eq(Mux(ends, 0, channel + 1)), in_token.eq(~ends), load_bank.eq(load_bank ^ ends)]
        with m.If(accept & ~in_token):
            m.d.sync += reserved.eq(reserved + 1)
        valid1, first1, last1 = delayed(m, accept, 1, "valid"), delayed(m, ~in_token, 1, "first"), delayed(m, ends, 1, "last")
        bank1 = delayed(m, load_bank, 1, "bank")
        addr1, count1 = delayed(m, buffer_addr(load_bank, channel), 1, "addr"), delayed(m, channel + 1, 1, "count")
        centred1 = delayed(m, inp.q - z, 1, "centred")
        alpha2 = read(alpha_mem, channel)
        x_in = delayed(m, delayed(m, centred1, READ_LATENCY - 1, "centred") << alpha2, 1, "x")
        token_wp = token_mem.write_port()
        m.d.comb += [token_wp.addr.eq(delayed(m, addr1, READ_LATENCY, "addr")), token_wp.data.eq(x_in),
                     token_wp.en.eq(delayed(m, valid1, READ_LATENCY, "valid"))]

        a_stages = READ_LATENCY + PRODUCT_LATENCY  # from stage 1 to stage A
        square = wide_product(m, x_in, x_in, "square", lut)[:bits_for(X_MAX**2)]
        valid_a, first_a, last_a = (delayed(m, v, a_stages, name)
                                    for v, name in ((valid1, "valid"), (first1, "first"), (last1, "last")))
        x_a = delayed(m, x_in, PRODUCT_LATENCY, "x")
        m1_bits = bits_for(depth * X_MAX) + 1
        m2_bits = bits_for(depth * X_MAX**2)
        low_bits = (m2_bits + 1) // 2
        m1, m2_low, carry = Signal(signed(m1_bits)), Signal(low_bits), Signal()
        with m.If(valid_a):
            m.d.sync += [m1.eq(Mux(first_a, 0, m1) + x_a),
                         Cat(m2_low, carry).eq(Mux(first_a, 0, m2_low) + square[:low_bits])]
        valid_b, first_b, last_b = (delayed(m, v, 1, name)
                                    for v, name in ((valid_a, "valid"), (first_a, "first"), (last_a, "last")))
        count_b, bank_b = delayed(m, count1, a_stages + 1, "count"), delayed(m, bank1, a_stages + 1, "bank")
        m2_high = Signal(m2_bits - low_bits)
        m2_high_next = Mux(first_b, 0, m2_high) + delayed(m, square[low_bits:], 1, "square_high") + carry
        with m.If(valid_b):
            m.d.sync += m2_high.eq(m2_high_next)

        # The token constants, a slot per buffer half: slot b holds those of the token in half b.
        # The loader writes C and M1 with the token's last beat, the statistics engine k after the
        # root and R at its end, and the output side reads the slot of the half it reads. Only the
        # token two places later overwrites a slot, and it starts loading after this one has been
        # read out.
        nb = cfg.sqrt_bits
        slot_layout = data.StructLayout({"count": count_shape, "m1": signed(m1_bits), "not_r": unsigned(R_BITS),
                                         "k": unsigned(bits_for(nb))})
        slots = [Signal(slot_layout, name=f"slot_{b}") for b in range(2)]
        full = Signal(2)  # slot b holds a token the output side has not started yet

        def slot_field(bank, name):
            return Mux(bank, slots[1][name], slots[0][name])

        # A token's M2 waits here until the statistics engine is free. The next token's comes no
        # earlier than the edge on which the engine takes this one (where the newer write below
        # wins): the next token starts loading only after the token before this one has been read
        # out of the buffer, so the engine is done with that one and takes this M2 on the edge
        # after it arrives, while the next token's takes at least one more beat.
        pending = Signal()
        pend_m2 = Signal(m2_bits)
        take = Signal()
        with m.If(take):
            m.d.sync += pending.eq(0)
        with m.If(valid_b & last_b):
            m.d.sync += [pending.eq(1), pend_m2.eq(Cat(m2_low, m2_high_next))]
            for b, slot in enumerate(slots):
                with m.If(bank_b == b):
                    m.d.sync += [slot.count.eq(count_b), slot.m1.eq(m1)]

        # ---- statistics engine
        stat_bank = Signal()  # the buffer half of the engine's token
        stat_m1, stat_count = slot_field(stat_bank, "m1"), slot_field(stat_bank, "count")
        # V = C*M2 - M1**2 < 2**(2*nb), so it is exact modulo 2**(2*nb). The multipliers take the
        # pending token's sums on every edge: the products of those taken at `take` show
        # PRODUCT_LATENCY cycles later. M1**2 is M1 times each of its slices that a multiplier operand holds,
        # summed the cycle after; then V's low half and its borrow; its high half goes straight
        # into the root engine.
        slice_bits = DSP_WIDTH - 1
        slices = [(lo, stat_m1[lo:lo + slice_bits] if lo + slice_bits < m1_bits else stat_m1[lo:].as_signed())
                  for lo in range(0, m1_bits, slice_bits)]
        cm2, m1_square = Signal(2 * nb), Signal(2 * nb)
        m.d.sync += [cm2.eq(wide_product(m, pend_m2, stat_count, "cm2", lut)),
                     m1_square.eq(sum(wide_product(m, stat_m1, part, f"m1_square_{lo}", lut) << lo for lo, part in slices))]
        v_low = Signal(nb + 1)  # V's low half and, on top, the borrow out of it
        cm2_high, m1_square_high = Signal(nb), Signal(nb)
        m.d.sync += [v_low.eq(cm2[:nb] - m1_square[:nb]), cm2_high.eq(cm2[nb:]), m1_square_high.eq(m1_square[nb:])]
        variance = Cat(v_low[:nb], cm2_high - m1_square_high - v_low[nb])

        # The engine's phases follow one another as pulses and one-hot counters, all registers:
        # `take` starts it, V is in VARIANCE_CYCLES - 1 cycles later (`load_root`), the root then
        # takes sqrt_bits + 1 cycles (`bit`) and the quotient DIV_STEPS (`qbit`). Its datapath
        # registers move on every cycle and are loaded at the start of their phase, so no state
        # decoding sits in front of them.
        busy = Signal()
        m.d.comb += take.eq(pending & ~busy)
        load_root = delayed(m, take, cfg.VARIANCE_CYCLES - 1, "load_root")
        vbits = Signal(2 * nb)  # V, shifted out two bits at a time from the top
        # isqrt remainder: V's leading bits minus root**2, less the last trial when that did not fit
        # (|rem| < 2 * 2**nb, so steps are taken modulo 2**(nb + 2))
        rem = Signal(signed(nb + 2))
        # isqrt: the root bits decided so far, held inverted (each is its step's sign) so that the
        # sign goes from the carry chain straight into the register
        unfit = Signal(nb)
        root = ~unfit
        bit = Signal(nb + 1)  # one-hot weight of root[0], the bit decided the cycle before
        seen = Signal()  # a root bit has been set (D > 0 so far)
        k = Signal(range(nb + 1))
        top = Signal(nb)  # 2**(k-1)
        d = Signal(nb)  # D
        drem = Signal(signed(nb + 2))  # division remainder (or that minus D), doubled ahead
        short = Signal()  # the division remainder is negative: add D back instead of subtracting it
        signs = Signal(R_BITS)  # the division remainders' signs: the quotient's bits inverted
        qbit = Signal(R_BITS)  # one-hot weight of the quotient bit decided this cycle

        # The root and the quotient are non-restoring: each step is one carry chain between
        # registers, adding or subtracting as the registered sign of the remainder says, and a
        # negative remainder is not restored but made up for by the next step. Their bits are
        # those of the restoring (digit-by-digit) forms.
        #
        # Root, two bits of V per cycle: the next root bit is 1 iff what is left of V reaches
        # 4 * root + 1 (or, after a negative remainder, 4 * root + 3 is added back), trials made by
        # wiring. k and 2**(k-1) follow from the registered root bit a cycle later, hence the one
        # cycle more than root bits.
        below = rem[-1]
        add_trial = Cat(Const(0b11, 2), root, Const(0, 2))  # 4 * root + 3
        sub_trial = ~Cat(Const(0b01, 2), root, Const(0, 2))  # -(4 * root + 1), less the carry in
        root_step = (Cat(vbits[-2:], rem) + Mux(below, add_trial, sub_trial) + ~below)[:nb + 2]
        seen_next = seen | root[0]
        k_next = k + seen_next
        top_next = Mux(root[0] & ~seen, bit, top)
        with m.If(load_root):
            m.d.sync += [vbits.eq(variance), rem.eq(0), unfit.eq((1 << nb) - 1), bit.eq(1 << nb), seen.eq(0), k.eq(0),
                         top.eq(0)]
        with m.Else():
            m.d.sync += [vbits.eq(vbits << 2), rem.eq(root_step), unfit.eq(Cat(root_step[-1], unfit)),
                         bit.eq(bit >> 1), seen.eq(seen_next), k.eq(k_next), top.eq(top_next)]
        # Division of 2**(k-1) * 2**16 by D, the first step from 2**(k-1): quotient bit j is 1 iff
        # the remainder reaches D. D = 0 (zero variance) leaves R meaningless, but then every
        # C*X - M1 is 0 and so is n, as in the reference (where R = 0).
        divisor = Cat(d, Const(0, 2))
        div_step = (Mux(qbit[-1], top, drem) + Mux(short, divisor, ~divisor) + ~short)[:nb + 2]
        m.d.sync += [signs.eq(Cat(div_step[-1], signs)), qbit.eq(qbit >> 1), drem.eq(div_step << 1),
                     short.eq(div_step[-1])]
        with m.If(bit[0]):  # root[0] is D's last bit
            m.d.sync += [d.eq(root), qbit.eq(1 << (R_BITS - 1)), short.eq(0)]

        # R goes to its slot from `signs` the cycle after the last quotient bit, when stat_bank has
        # moved on: the output side reads it no earlier than the cycle after that.
        r_due = delayed(m, qbit[0], 1, "r_due")
        for b, slot in enumerate(slots):
            with m.If(stat_bank == b):
                with m.If(bit[0]):
                    m.d.sync += slot.k.eq(k_next)
            with m.Elif(r_due):
                m.d.sync += slot.not_r.eq(signs)
        with m.If(take):
            m.d.sync += busy.eq(1)
        with m.If(qbit[0]):
            m.d.sync += [busy.eq(0), full.bit_select(stat_bank, 1).eq(1), stat_bank.eq(~stat_bank)]

        # ---- output: issue X reads one per cycle; token constants travel with the elements
        issue = stream.Signature(unsigned(1)).create(path=("issue",))
        pipe = CreditPipeline(m, issue, self.out, cfg.OUT_DEPTH, "ln")
        active, out_channel, out_bank = Signal(), Signal(cfg.channel_shape), Signal()
        remaining = Signal(count_shape)  # the token's X reads still to issue, the current one included
        issue_last = Signal()  # remaining == 1

        # issue.ready (the pipeline's credit check) settles late in the cycle, so `fire` only
        # enables registers whose next values are ready before it. A token starts when its slot is
        # full and the output side is idle or issues the previous token's last X.
        fire = issue.valid & issue.ready
        next_bank = out_bank ^ active  # the other half while a token is read, else out_bank
        idle_start = ~active & full.bit_select(out_bank, 1)
        start = idle_start | (release & full.bit_select(~out_bank, 1))
        m.d.comb += [issue.valid.eq(active), release.eq(fire & issue_last)]
        with m.If(fire):
            m.d.sync += out_channel.eq(Mux(issue_last, 0, out_channel + 1))
        # remaining and issue_last count down with each X read, and after a token's last one load
        # the next token's count, and again on every cycle while idle, as its slot may still fill
        with m.If(issue.ready | ~active):
            with m.If(issue_last | ~active):
                m.d.sync += [remaining.eq(slot_field(next_bank, "count")),
                             issue_last.eq(slot_field(next_bank, "count") == 1)]
            with m.Else():
                m.d.sync += [remaining.eq(remaining - 1), issue_last.eq(remaining == 2)]
        with m.If(release):
            m.d.sync += [active.eq(0), out_bank.eq(~out_bank), released.eq(released + 1)]
        with m.If(start):
            m.d.sync += [active.eq(1), full.bit_select(next_bank, 1).eq(0)]

        # Stage 0 issues the X read; X arrives at READ_LATENCY; C*X (hw.dsp.wide_product)
        # PRODUCT_LATENCY later, and C*X - M1 = C * (X - mean) (at most 2 * C * 2040) the stage
        # after. Then requant_stages: n = round_shift((C*X - M1) * R, k + LN_RECIP_BITS - FN), whose
        # clamp to N_BITS never binds.
        cx_stage = READ_LATENCY + PRODUCT_LATENCY
        x = read(token_mem, buffer_addr(out_bank, out_channel))
        count, tok_m1, not_r, tok_k = (slot_field(out_bank, name) for name in ("count", "m1", "not_r", "k"))
        cx = wide_product(m, x, pipe.delay(count, READ_LATENCY, "count"), "cx", lut)
        centred = pipe.reg(cx - pipe.delay(tok_m1, cx_stage, "m1"), "centred")
        n_full = requant_stages(pipe, centred, pipe.delay(~not_r, cx_stage + 1, "r"),
                                pipe.delay(tok_k, cx_stage + 2, "k") + (LN_RECIP_BITS - FN),
                                0, -(2 ** (N_BITS - 1)), 2 ** (N_BITS - 1) - 1, "norm", lut)
        n = n_full[:N_BITS].as_signed()
        # G and B are read so that they arrive with n, not travel from stage 0.
        n_stage = cx_stage + 1 + REQUANT_LATENCY
        gb = read(affine_mem, pipe.delay(out_channel, n_stage - READ_LATENCY, "channel"))
        # G*n (17 x 18 bits, one 18x18 multiplier), + B in two halves (a 50-bit carry chain does
        # not fit a cycle): the low half and its carry are registered, the high half is added as
        # the sum enters requant_stages, whose first register it reaches. G*n + B is already the
        # quantity to round, so it enters requant_stages with mult 1.
        gn = wide_product(m, gb.g, n, "gn", lut)
        b = pipe.delay(gb.b, PRODUCT_LATENCY, "b")
        total_low = pipe.reg(gn[:TOTAL_LOW_BITS] + b[:TOTAL_LOW_BITS], "total_low")
        total_high = (pipe.reg(gn[TOTAL_LOW_BITS:].as_signed(), "gn_high")
                      + pipe.reg(b[TOTAL_LOW_BITS:].as_signed(), "b_high") + total_low[TOTAL_LOW_BITS])
        total = Cat(total_low[:TOTAL_LOW_BITS], total_high).as_signed()
        y = requant_stages(pipe, total, Const(1, 1), fg + FN, z_out, 0, 255, "affine", lut)
        m.d.comb += [pipe.result.q.eq(y[:CODE_BITS]), pipe.result.last.eq(pipe.delay(issue_last, cfg.OUT_DEPTH, "last"))]
        return m
