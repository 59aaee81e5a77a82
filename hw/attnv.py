"""Attention x V without multipliers: LIS codes shift V rows into per-column accumulators.

For one query row, key ``j`` arrives as one beat: its LIS code ``c[j]`` (0..15, or 16 for the
zero state) and ``lanes`` columns of V's row ``j``. Every lane adds ``(v[j] - z_v) << (15 - c[j])``
to its accumulator: a barrel shift and an add, no multiplier. The row's last key hands the sums
to a hold register and the accumulators start on the next row in the next cycle, while the held
sums are requantized to the ``attn_v`` uint8 codes by ``hw.requant.requant_stages``
(calib.intref.attnv.attnv_shift, then calib.intref.requant.requantize). A head dimension wider
than ``lanes`` is sent as column chunks, each re-streaming the row's codes.

Why the requantizer is narrower than the accumulators: requantization (a 16-bit multiplier, a
variable shift of a 48-bit product by up to 62, rounding and clamping) costs about 650 LUT4s, 115
carry cells and two 18x18 multipliers per requantized column on an ECP5 (yosys synth_ecp5),
against about 160 LUT4s per lane for shift, accumulate and hold. But it runs once per row, and
rows are long (197 keys in DeiT, 49 in Swin, 17 in the digits model), so ``requant_lanes``
requantizers take the held row ``requant_lanes`` columns per cycle: ``steps = ceil(lanes /
requant_lanes)`` cycles per row, hidden behind the next row's keys whenever rows have at least
``steps`` keys. ``requant_lanes = lanes`` gives one requantizer per lane, for short rows.

The output is one word per requantizer issue: ``requant_lanes`` codes and their ``keep`` bits, in
column order; issues whose columns are all past the row's ``keep`` (a head narrower than ``lanes``)
give no word. A row of ``lanes`` columns would be a word of 8 x ``lanes`` bits (577 at 64 lanes):
that wide a result FIFO and output bus were what kept the accelerator top from routing, and the
requantizers produce the row ``requant_lanes`` columns at a time anyway.

The key pipeline is a stall-together pipeline (hw.pipeline.StallPipeline): it holds a row's last
key while the hold register is still busy. The requantizers are a credit pipeline
(hw.pipeline.CreditPipeline): back-pressure on ``out`` stops new issues once the output FIFO is
spoken for, hence holds the hold register and, through it, ``inp``. Nothing is dropped.
"""

from dataclasses import asdict, dataclass

from amaranth import Module, Mux, ResetSignal, Signal, signed, unsigned
from amaranth.lib import data, stream

from fqvit.contract import CODE_BITS, EXP_BITS, MULT_BITS, SHIFT_BITS

from .unit import StreamUnit
from .config import check_bool
from .pipeline import CreditPipeline, StallPipeline
from .requant import REQUANT_LATENCY, requant_stages

__all__ = ["AttnVConfig", "AttnV"]

LIS_ACC_BITS = 25  # docs/numerics.md: a softmax's LIS row gives |acc| < 1.5 * 255 * 2**15 < 2**24
REQUANT_STAGES = REQUANT_LATENCY
KEY_STAGES = 3  # v - z_v, then the term's shift in two steps


@dataclass(frozen=True)
class AttnVConfig:
    """lanes: V columns per key beat; requant_lanes: columns requantized per cycle; max_keys: the
    longest row that is exact for *any* codes.

    Codes from the LIS softmax weigh less than 1.5 in total, so their rows are exact at any length
    in 25 bits; ``max_keys`` sizes the accumulator for arbitrary codes (all 0 in the worst case) so
    the unit also matches the reference outside the softmax's range (256 keys: 32 bits).
    """

    lanes: int = 8
    requant_lanes: int = 1
    max_keys: int = 256
    lut_multipliers: bool = False  # the requantizers' products in LUTs instead of DSP blocks

    def __post_init__(self):
        def check(name, hi, bound):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise ValueError(f"attnv {name} must be an integer in {bound}, got {value!r}")

        check("lanes", 64, "1..64")
        check("requant_lanes", self.lanes, f"1..lanes ({self.lanes})")
        check("max_keys", 4096, "1..4096")
        check_bool("attnv", "lut_multipliers", self.lut_multipliers)

    @property
    def name(self) -> str:
        return f"attnv_{self.lanes}l_{self.requant_lanes}r_{self.max_keys}k" + ("_lut" if self.lut_multipliers else "")

    @property
    def acc_bits(self) -> int:
        """Signed accumulator width: max_keys keys of code 0 and |v - z_v| = 255, or an LIS row."""
        return max(LIS_ACC_BITS, (self.max_keys * 255 << EXP_BITS).bit_length() + 1)

    @property
    def steps(self) -> int:
        """Cycles the requantizers spend on one row; a row of fewer keys still takes this long."""
        return -(-self.lanes // self.requant_lanes)

    @property
    def latency(self) -> int:
        """Cycles from the handshake of a row's last key to its first output word, unstalled, when
        the previous row had at least `steps` keys: key stages, hold, the first requant issue, the
        requantizer's other stages; the row's other words follow one per cycle."""
        return KEY_STAGES + 1 + REQUANT_STAGES + CreditPipeline.FIFO_LATENCY

    def words(self, columns: int) -> int:
        """Output words of a row of `columns` columns (its ``keep``)."""
        return -(-columns // self.requant_lanes)

    def timing(self) -> dict:
        return {"latency": self.latency, "keys_per_cycle": 1, "min_row_cycles": self.steps}

    @property
    def in_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "code": unsigned(CODE_BITS),
            "v": data.ArrayLayout(unsigned(8), self.lanes),
            "last": unsigned(1),  # last key of the row
            "z_v": unsigned(8),
            # read on the row's last key only:
            "keep": unsigned(self.lanes),  # valid columns, copied to the output
            "last_row": unsigned(1),  # the row ends a block: becomes out.last
            "z_out": unsigned(8),  # the row's requantization
            "mult": unsigned(MULT_BITS),
            "shift": unsigned(SHIFT_BITS),
        })

    @property
    def out_layout(self) -> data.StructLayout:
        """One requantizer issue: columns ``requant_lanes * i ...`` of a row, ``last`` on the last
        word of a row that ends a block (``last_row``)."""
        return data.StructLayout({
            "data": data.ArrayLayout(unsigned(8), self.requant_lanes),
            "keep": unsigned(self.requant_lanes),
            "last": unsigned(1),
        })

    def to_dict(self) -> dict:
        return asdict(self)


class AttnV(StreamUnit):
    """``inp``: one key per beat (fields in ``AttnVConfig.in_layout``); ``out``: a row's columns,
    ``requant_lanes`` a word.

    The per-layer scalars travel in every beat instead of a parameter register: a row is then
    self-contained, so rows of different layers (or heads with different zero points) may follow
    each other back to back with no drain and no ordering rule between a parameter write and the
    rows still in flight. It costs input wires, and one copy of the row's scalars in the hold
    register.
    """

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        lanes, width, steps = cfg.lanes, cfg.requant_lanes, cfg.steps
        inp = self.inp.payload
        row_fields = ("last_row", "z_out", "mult", "shift")  # with keep, the fields read on a row's last key
        row_layout = data.StructLayout({k: cfg.in_layout[k].shape for k in row_fields})

        # Key pipeline, stage 1: v - z_v and copies of the key's code and `last`; stages 2 and 3:
        # the term, shifted by ~c[3:2] * 4, then by ~c[1:0] (~c[:4] is 15 - c; codes >= 16 add 0).
        # Only a row's last key leaves it, into the hold register; the other keys end in the
        # accumulators. Each lane is a part of its own, with its own copy of every input and
        # control bit it reads.
        to_hold = stream.Signature(0).create(path=("to_hold",))
        keys = StallPipeline(m, self.inp, to_hold, KEY_STAGES, "key")
        arriving = keys.out_valid & keys.delay(inp.last, KEY_STAGES, "key_last")
        issue = stream.Signature(0).create(path=("issue",))
        rq = CreditPipeline(m, issue, self.out, REQUANT_STAGES, "rq")
        hold = _HoldState(m, steps, arriving, rq.room)
        m.d.comb += [to_hold.valid.eq(arriving), to_hold.ready.eq(hold.free), issue.valid.eq(hold.valid)]

        def part(name):
            """A part of the key pipeline, its copy of the hold state, and its copies of the last
            stage's `valid` and `last`."""
            en = Signal(name=f"{name}_en")
            part = keys.part(name, en=en)
            valid = part.delay(keys.valid(0), KEY_STAGES - 1, f"{name}_valid")
            last = part.delay(inp.last, KEY_STAGES - 1, f"{name}_last")
            # valid & last in a register of its own: `last` also steers every accumulator bit
            arriving = part.reg(valid & last, f"{name}_arriving")
            valid, last = part.reg(valid, f"{name}_valid_end"), part.reg(last, f"{name}_last_end")
            room = Signal(init=1, name=f"{name}_room")  # a copy of rq.room
            part.m.d.sync += room.eq(rq.room_next)
            part_hold = _HoldState(part.m, steps, arriving, room)
            part.m.d.comb += en.eq(~arriving | part_hold.free)
            return part, part_hold, valid, last

        # Hold register: one row's sums (padded to steps * width lanes) and scalars. Each requant
        # issue takes its lowest `width` lanes and shifts the rest down.
        held = [Signal(signed(cfg.acc_bits), name=f"held_{lane}") for lane in range(steps * width)]
        for lane in range(len(held)):
            shifted_in = held[lane + width] if lane + width < len(held) else held[lane]
            if lane >= lanes:  # padding: only shifts
                with m.If(hold.taken):
                    m.d.sync += held[lane].eq(shifted_in)
                continue
            lane_keys, lane_hold, valid, lane_last = part(f"key{lane}")
            centred = lane_keys.reg(inp.v[lane] - inp.z_v, f"centred_{lane}")  # 9-bit signed, -255..255
            code = lane_keys.reg(inp.code, f"code_{lane}")
            # a 4:1 multiplexer per bit and stage (two LUT4s and their PFUMX); 16:1 took 7 ns
            coarse = lane_keys.reg(Mux(code[4:].any(), 0, centred << (~code[2:4] << 2)), f"coarse_{lane}")
            term = lane_keys.reg(coarse << lane_keys.reg(~code[:2], f"fine_{lane}"), f"term_{lane}")  # 24-bit signed
            acc = Signal(signed(cfg.acc_bits), name=f"acc_{lane}", reset_less=True)
            total = Signal(signed(cfg.acc_bits), name=f"total_{lane}")
            lane_keys.m.d.comb += total.eq(acc + term)
            # The accumulator's enable is built from registers, not from the key pipeline's enable
            # (which reaches the lane's other 70 registers). The row's last key restarts it, and so
            # does a reset: one synchronous reset of its flip-flops, no multiplexer after the adder.
            accumulate = valid & (~lane_hold.arriving | lane_hold.free)
            with lane_keys.m.If(ResetSignal() | (accumulate & lane_last)):
                lane_keys.m.d.sync += acc.eq(0)
            with lane_keys.m.Elif(accumulate):
                lane_keys.m.d.sync += acc.eq(total)
            with lane_keys.m.If(lane_hold.taken):
                lane_keys.m.d.sync += held[lane].eq(shifted_in)
            with lane_keys.m.If(lane_hold.load):  # after the issue: a new row wins
                lane_keys.m.d.sync += held[lane].eq(total)
        row_keys, row_hold, _, _ = part("row")
        row_in = Signal(row_layout)
        m.d.comb += [getattr(row_in, k).eq(getattr(inp, k)) for k in row_fields]
        row = row_keys.delay(row_in, KEY_STAGES, "key_row")
        held_row = Signal(row_layout)
        # keep shifts down with the held sums: an issue's columns are its lowest `width` bits
        keep = row_keys.delay(inp.keep, KEY_STAGES, "key_keep")
        held_keep = Signal(steps * width)
        with row_keys.m.If(row_hold.taken):
            row_keys.m.d.sync += held_keep.eq(held_keep >> width)
        with row_keys.m.If(row_hold.load):
            row_keys.m.d.sync += [held_row.eq(row), held_keep.eq(keep)]

        # Requantizers: requant_stages is the whole rq pipeline.
        shift1, zero1 = rq.reg(held_row.shift, "rq_shift"), rq.reg(held_row.z_out, "rq_zero")
        codes = [requant_stages(rq, held[i], held_row.mult, shift1, zero1, 0, 255, f"rq{i}", cfg.lut_multipliers)[:8] for i in range(width)]
        # an issue gives a word if any of its columns is kept; the row's last such word ends a block
        keep3 = rq.delay(held_keep[:width], REQUANT_STAGES, "rq_keep")
        last3 = rq.delay(held_row.last_row & (held_keep[width:] == 0), REQUANT_STAGES, "rq_last")
        m.d.comb += [
            rq.push.eq(keep3.any()),
            *(rq.result.data[lane].eq(codes[lane]) for lane in range(width)),
            rq.result.keep.eq(keep3),
            rq.result.last.eq(last3),
        ]
        return m


class _HoldState:
    """The hold register's control, built in module `m`: an issue is on offer (`valid`), it is
    its row's last (`final`), the hold register may take a row now (`free`: it is empty, or its
    row's last issue is being taken). Inputs: `arriving` (a row's last key ends the key pipeline)
    and the requantizers' `room` (issue.ready), registers.

    Every part of the key pipeline keeps an identical copy, fed by its own copies of the inputs,
    so each control signal is a LUT of registers in the lane it steers (one control net reaching
    every lane's registers took 4.7 ns of routing)."""

    def __init__(self, m, steps: int, arriving, room):
        self.valid = Signal()
        self.final = Signal(init=steps == 1)
        self.arriving = arriving
        self.free = ~self.valid | (room & self.final)
        self.load = arriving & self.free  # the arriving row moves into the hold register
        self.taken = self.valid & room
        if steps > 1:
            step = Signal(range(steps))
            with m.If(self.taken):
                m.d.sync += [step.eq(Mux(self.final, 0, step + 1)), self.final.eq(~self.final & (step == steps - 2))]
        m.d.sync += self.valid.eq(self.load | (self.valid & ~(self.taken & self.final)))
