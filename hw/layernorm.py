"""Integer LayerNorm on PTF codes, one channel per cycle (``calib/intref/layernorm.py``, bit for bit).

A token is a run of input beats (one uint8 code each) that ends with ``last``; its channel count C
is the number of beats. Three engines work on different tokens at once:

* the **loader** centres and shifts each code, ``X = (q - z) << alpha[c]`` (alpha from a parameter
  memory), writes X into one half of a two-token buffer and accumulates ``M1 = sum X`` and
  ``M2 = sum X**2``; at the token's end it leaves (M1, M2, C) for the statistics engine;
* the **statistics engine** computes ``V = C*M2 - M1**2`` (two cycles: the products, then the
  difference), ``D = isqrt(V)`` digit by digit (one result bit per cycle, no multiplier; the bit
  length ``k`` and ``2**(k-1)`` fall out of the same loop), and ``R = floor(2**(15+k) / D)`` by
  restoring division (17 quotient bits, one per cycle);
* the **output pipeline** reads X back and computes ``n = round_shift((C*X - M1) * R, k + 5)`` and
  ``out = clamp(z_out + round_shift(G*n + B, 10 + fg), 0, 255)``: eighteen stages of a credit pipeline, both
  roundings through ``requant_stages``, one beat per cycle with full back-pressure.

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
from amaranth.lib.memory import Memory
from amaranth.utils import bits_for

from fqvit.contract import FN, LN_RECIP_BITS, MAX_CHANNELS, MAX_FG, PTF_MAX_ALPHA

from .unit import StreamUnit
from .config import check_int
from .pipeline import CreditPipeline
from .dsp import PRODUCT_LATENCY, wide_product
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


class ParamKind(enum.Enum, shape=1):
    CHANNEL = 0  # alpha, g, b of channel `channel`
    LAYER = 1  # the layer's scalars z, z_out, fg


class Stats(enum.Enum, shape=3):
    """States of the statistics engine."""

    IDLE = 0  # waiting for a token's sums
    VARIANCE = 1  # C*M2 and M1**2 are in; V = their difference
    SQRT = 2  # one root bit per cycle
    DIVIDE = 3  # one quotient bit per cycle
    DONE = 4  # D, k and R wait for the output side


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
      unit is otherwise idle (load pipeline, statistics, output pipeline);
    * within a token, one beat per cycle on both streams;
    * back to back, every two tokens of C channels take ``pair_cycles(C)`` =
      ``max(2*C + pair_overhead, 2*stats_cycles)``. A token starts loading only once the token two
      places ahead of it has been read out of the buffer (it has two halves), and its statistics
      start only after its own last beat. So tokens leave in pairs: the second follows the first
      without a gap (its statistics were done while the first was emitted); the next pair's first
      token, loaded while the second was emitted, adds ``pair_overhead`` = ``stats_cycles +
      LOAD_DEPTH - 1`` cycles. Tokens shorter than about ``stats_cycles / 2`` are limited by the
      statistics engine instead (one token per ``stats_cycles``).
    """

    max_channels: int = 1024

    LOAD_DEPTH: ClassVar[int] = 3  # input handshake -> X, X**2 -> M1, M2 -> handed to the statistics
    # X read, C*X, - M1, requant_stages for n, G*n, requant_stages for the output
    OUT_DEPTH: ClassVar[int] = 2 + PRODUCT_LATENCY + REQUANT_LATENCY + PRODUCT_LATENCY + REQUANT_LATENCY
    DIV_STEPS: ClassVar[int] = R_BITS

    def __post_init__(self):
        check_int("layernorm", "max_channels", self.max_channels, 1, MAX_CHANNELS)

    @property
    def name(self) -> str:
        return f"layernorm_{self.max_channels}c"

    @property
    def sqrt_bits(self) -> int:
        """Bits of D. One zero point and shifts of at most 3 put all X of a token in an interval
        255 * 8 wide, so std(X) <= 1020, V = C**2 * var(X) <= (C * 1020)**2 and D <= C * 1020."""
        return bits_for(self.max_channels * X_SPAN // 2)

    @property
    def stats_cycles(self) -> int:
        """Statistics engine: take the sums, V, one cycle per root bit, per quotient bit, hand over."""
        return 2 + self.sqrt_bits + self.DIV_STEPS + 1

    @property
    def latency(self) -> int:
        return self.LOAD_DEPTH + self.stats_cycles + self.OUT_DEPTH + CreditPipeline.FIFO_LATENCY

    @property
    def pair_overhead(self) -> int:
        return self.stats_cycles + self.LOAD_DEPTH - 1

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
        count_shape = unsigned(bits_for(depth))  # C in 1..max_channels

        # ---- parameters
        p = self.params.payload
        m.d.comb += self.params.ready.eq(1)
        z, z_out, fg = Signal(CODE_BITS), Signal(CODE_BITS), Signal(FG_BITS)
        with m.If(self.params.valid & (p.kind == ParamKind.LAYER)):
            m.d.sync += [z.eq(p.z), z_out.eq(p.z_out), fg.eq(p.fg)]
        write_channel = self.params.valid & (p.kind == ParamKind.CHANNEL)
        # alpha is read by the loader and (G, B) by the output pipeline: two memories, one read port each
        m.submodules.alpha_mem = alpha_mem = Memory(shape=unsigned(2), depth=depth, init=[])
        affine = data.StructLayout({"g": signed(G_BITS), "b": signed(B_BITS)})
        m.submodules.affine_mem = affine_mem = Memory(shape=affine, depth=depth, init=[])
        alpha_wp, affine_wp = alpha_mem.write_port(), affine_mem.write_port()
        m.d.comb += [alpha_wp.addr.eq(p.channel), alpha_wp.data.eq(p.alpha), alpha_wp.en.eq(write_channel),
                     affine_wp.addr.eq(p.channel), affine_wp.data.g.eq(p.g), affine_wp.data.b.eq(p.b),
                     affine_wp.en.eq(write_channel)]

        # Token buffer: X of two tokens, half `bank` at addresses bank * max_channels + c. It keeps
        # X (12 bits) rather than q (8) so that the output side needs no alpha: a second alpha read
        # port would cost as much memory as the four extra bits, and X would be formed twice.
        m.submodules.token_mem = token_mem = Memory(shape=signed(X_BITS), depth=2 * depth, init=[])

        def buffer_addr(bank, channel):
            return Mux(bank, depth + channel, channel)

        # A half is reserved from a token's first input beat until its last X has been read out;
        # the loader starts a token only while a half is free.
        reserved = Signal(range(3))
        release = Signal()

        # ---- loader: stage 0 accepts q and reads alpha, stage 1 makes X, stage 2 accumulates
        inp = self.inp.payload
        channel = Signal(cfg.channel_shape)  # of the next input beat
        in_token = Signal()
        load_bank = Signal()
        m.d.comb += self.inp.ready.eq(in_token | (reserved < 2))
        accept = self.inp.valid & self.inp.ready
        ends = inp.last | (channel == depth - 1)
        alpha_rp = alpha_mem.read_port()
        m.d.comb += alpha_rp.addr.eq(channel)

        valid1, q1, first1, last1 = Signal(), Signal(CODE_BITS), Signal(), Signal()
        addr1, count1 = Signal(range(2 * depth)), Signal(count_shape)
        m.d.sync += valid1.eq(accept)
        with m.If(accept):
            m.d.sync += [q1.eq(inp.q), first1.eq(~in_token), last1.eq(ends),
                         addr1.eq(buffer_addr(load_bank, channel)), count1.eq(channel + 1),
                         channel.eq(Mux(ends, 0, channel + 1)), in_token.eq(~ends), load_bank.eq(load_bank ^ ends)]
        x1 = Signal(signed(X_BITS))
        m.d.comb += x1.eq((q1 - z) << alpha_rp.data)
        token_wp = token_mem.write_port()
        m.d.comb += [token_wp.addr.eq(addr1), token_wp.data.eq(x1), token_wp.en.eq(valid1)]

        valid2, x2, sq2, first2, last2 = Signal(), Signal(signed(X_BITS)), Signal(2 * X_BITS - 2), Signal(), Signal()
        count2 = Signal(count_shape)
        m.d.sync += [valid2.eq(valid1), x2.eq(x1), sq2.eq(x1 * x1), first2.eq(first1), last2.eq(last1),
                     count2.eq(count1)]
        m1_bits = bits_for(depth * X_MAX) + 1
        m2_bits = bits_for(depth * X_MAX**2)
        m1, m2 = Signal(signed(m1_bits)), Signal(unsigned(m2_bits))
        m1_next, m2_next = Mux(first2, 0, m1) + x2, Mux(first2, 0, m2) + sq2
        with m.If(valid2):
            m.d.sync += [m1.eq(m1_next), m2.eq(m2_next)]

        # A token's sums wait here until the statistics engine is free. The next token's sums come
        # no earlier than the edge on which the engine takes these (where the newer write below
        # wins): the next token starts loading only after the token before this one has been read
        # out of the buffer, so the engine is done with that one and takes these sums on the edge
        # after they arrive, while the next token's take at least one more beat.
        pending = Signal()
        pend_m1, pend_m2, pend_count = Signal.like(m1), Signal.like(m2), Signal(count_shape)
        take = Signal()
        with m.If(take):
            m.d.sync += pending.eq(0)
        with m.If(valid2 & last2):
            m.d.sync += [pending.eq(1), pend_m1.eq(m1_next), pend_m2.eq(m2_next), pend_count.eq(count2)]

        # ---- statistics engine
        nb = cfg.sqrt_bits
        v_bits = 2 * nb
        stat_m1, stat_count = Signal.like(m1), Signal(count_shape)
        prod_cm2 = Signal(unsigned(bits_for((depth * X_MAX) ** 2)))  # C*M2 and M1**2 <= (C * 2040)**2
        prod_m1sq = Signal.like(prod_cm2)
        rem = Signal(unsigned(v_bits))  # isqrt: what is left of V
        root = Signal(unsigned(v_bits))  # isqrt: the partial root, scaled as the algorithm needs
        bit = Signal(unsigned(nb))  # one-hot weight of the root bit decided this cycle
        seen = Signal()  # a root bit has been set (D > 0 so far)
        k = Signal(range(nb + 1))
        top = Signal(unsigned(nb))  # 2**(k-1)
        d = Signal(unsigned(nb))  # D
        drem = Signal(unsigned(nb + 1))  # division remainder, doubled ahead
        quot = Signal(unsigned(R_BITS))
        step = Signal(range(R_BITS))
        done = Signal()  # D, k and R of a token are ready for the output side
        start = Signal()  # the output side takes them

        # Digit-by-digit root: `four` = bit**2 (bit j of `bit` at bit 2j), no squaring needed.
        four = Cat(*(Cat(bit[j], Const(0, 1)) for j in range(nb)))
        trial = root + four
        fits = rem >= trial
        root_next = Mux(fits, (root >> 1) + four, root >> 1)
        seen_next = seen | fits
        top_next = Mux(fits & ~seen, bit, top)
        # Restoring division of 2**(k-1) * 2**16 by D: quotient bit j is 1 iff the remainder
        # reaches D. D = 0 (zero variance) gives R = 0, as in the reference.
        diff = drem - d
        goes = ~diff[-1] & seen
        # An If chain on a state signal rather than m.FSM: Yosys writes an FSM as case statements
        # without a default, which a plain `verilator --lint-only` rejects.
        state = Signal(Stats)
        with m.If(state == Stats.IDLE):
            m.d.comb += take.eq(pending)
            with m.If(pending):
                m.d.sync += [prod_cm2.eq(pend_count * pend_m2), prod_m1sq.eq(pend_m1 * pend_m1),
                             stat_m1.eq(pend_m1), stat_count.eq(pend_count), state.eq(Stats.VARIANCE)]
        with m.Elif(state == Stats.VARIANCE):
            m.d.sync += [rem.eq(prod_cm2 - prod_m1sq), root.eq(0), bit.eq(1 << (nb - 1)), seen.eq(0),
                         k.eq(0), top.eq(0), state.eq(Stats.SQRT)]
        with m.Elif(state == Stats.SQRT):
            m.d.sync += [rem.eq(Mux(fits, rem - trial, rem)), root.eq(root_next), bit.eq(bit >> 1),
                         seen.eq(seen_next), k.eq(k + seen_next), top.eq(top_next)]
            with m.If(bit[0]):
                m.d.sync += [d.eq(root_next), drem.eq(top_next), step.eq(R_BITS - 1), state.eq(Stats.DIVIDE)]
        with m.Elif(state == Stats.DIVIDE):
            m.d.sync += [quot.eq(Cat(goes, quot)), drem.eq(Mux(goes, diff, drem) << 1), step.eq(step - 1)]
            with m.If(step == 0):
                m.d.sync += state.eq(Stats.DONE)
        with m.Else():  # DONE
            m.d.comb += done.eq(1)
            with m.If(start):
                m.d.sync += state.eq(Stats.IDLE)

        # ---- output: issue X reads one per cycle; token constants travel with the elements
        issue = stream.Signature(unsigned(1)).create(path=("issue",))
        pipe = CreditPipeline(m, issue, self.out, cfg.OUT_DEPTH, "ln")
        active, out_channel, out_bank = Signal(), Signal(cfg.channel_shape), Signal()
        tok_count, tok_m1 = Signal(count_shape), Signal.like(m1)
        tok_r, tok_k = Signal(R_BITS), Signal.like(k)
        issue_last = out_channel == tok_count - 1
        fire = issue.valid & issue.ready
        m.d.comb += [issue.valid.eq(active), release.eq(fire & issue_last),
                     start.eq(done & (~active | release))]
        with m.If(fire):
            m.d.sync += out_channel.eq(out_channel + 1)
        with m.If(release):
            m.d.sync += [active.eq(0), out_bank.eq(~out_bank)]
        with m.If(start):
            m.d.sync += [active.eq(1), out_channel.eq(0), tok_count.eq(stat_count), tok_m1.eq(stat_m1),
                         tok_r.eq(quot), tok_k.eq(k)]
        m.d.sync += reserved.eq(reserved + (accept & ~in_token) - release)

        token_rp = token_mem.read_port()
        m.d.comb += token_rp.addr.eq(buffer_addr(out_bank, out_channel))

        # Stage 0 issues the X read; stage 1 has X; C*X (hw.dsp.wide_product) arrives at stage 4, and
        # C*X - M1 = C * (X - mean) (at most 2 * C * 2040) is registered at stage 5. Stages 6-10:
        # n = round_shift((C*X - M1) * R, k + LN_RECIP_BITS - FN), whose clamp to N_BITS never binds.
        cx = wide_product(m, token_rp.data, pipe.delay(tok_count, 1, "count"), "cx")
        centred = pipe.reg(cx - pipe.delay(tok_m1, 1 + PRODUCT_LATENCY, "m1"), "centred")
        n_full = requant_stages(pipe, centred, pipe.delay(tok_r, 2 + PRODUCT_LATENCY, "r"),
                                pipe.delay(tok_k, 3 + PRODUCT_LATENCY, "k") + (LN_RECIP_BITS - FN),
                                0, -(2 ** (N_BITS - 1)), 2 ** (N_BITS - 1) - 1, "norm")
        n = n_full[:N_BITS].as_signed()
        # G and B are read the stage before n so they arrive with it, not travel from stage 0.
        n_stage = 2 + PRODUCT_LATENCY + REQUANT_LATENCY
        affine_rp = affine_mem.read_port()
        m.d.comb += affine_rp.addr.eq(pipe.delay(out_channel, n_stage - 1, "channel"))
        # G*n (17 x 18 bits, one 18x18 multiplier), + B, then the output rounding. G*n + B is
        # already the quantity to round, so it enters requant_stages with mult 1.
        gn = wide_product(m, affine_rp.data.g, n, "gn")
        total = gn + pipe.delay(affine_rp.data.b, PRODUCT_LATENCY, "b")
        y = requant_stages(pipe, total, Const(1, 1), fg + FN, z_out, 0, 255, "affine")
        m.d.comb += [pipe.result.q.eq(y[:CODE_BITS]), pipe.result.last.eq(pipe.delay(issue_last, cfg.OUT_DEPTH, "last"))]
        return m
