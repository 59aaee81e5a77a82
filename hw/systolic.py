"""Output-stationary int8 systolic matmul array.

An R x C grid of processing elements computes one R x C tile of ``(A - za) @ (B - zb)`` at a
time: operand beat ``k`` carries column ``k`` of the A tile (R activation codes) and row ``k`` of
the B tile (C weight codes). Every PE keeps its own int32 accumulator for the whole reduction, so
K is unbounded by the array and needs no partial-sum memory. The beat that ends a tile carries
``last``; each PE then moves its sum into a result chain that drains upward, and the array emits
the tile as up to R result rows of C int32 lanes. Why output-stationary, the exact timing and the
port layout are in ``docs/architecture.md``.

The whole array advances on one enable: it stops only when a result row is offered and not
taken, so back-pressure on ``results`` stalls ``operands`` and nothing is ever dropped.
"""

from dataclasses import asdict, dataclass
from typing import ClassVar

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from fqvit.contract import ACC_BITS, MAX_ARRAY_DIM

from .dsp import RegisteredMultiplier
from .fifo import LutRamFifo

__all__ = ["SystolicConfig", "parse_array", "SystolicArray", "ProcessingElement"]

CODE_BITS = 8  # operand codes: uint8 activations, int8 weights
ZERO_BITS = 9  # signed zero point: covers both the uint8 (0..255) and the int8 (-128..127) range
CENTERED_BITS = 10  # code - zero point for any encodable pair, so the subtraction never wraps


@dataclass(frozen=True)
class SystolicConfig:
    """Parameters of one systolic array; validated on construction."""

    rows: int = 8
    cols: int = 8

    MAX_DIM: ClassVar[int] = MAX_ARRAY_DIM

    def __post_init__(self):
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"systolic {name} must be an integer in 1..{self.MAX_DIM}, got {value!r}"
                )
            if not 1 <= value <= self.MAX_DIM:
                raise ValueError(
                    f"systolic {name} must be in 1..{self.MAX_DIM}, got {value}"
                )

    @property
    def name(self) -> str:
        """Verilog module name; unique per configuration."""
        return f"systolic_{self.rows}x{self.cols}"

    @property
    def latency(self) -> int:
        """Cycles from the handshake of a tile's ``last`` beat to its first result row, unstalled:
        edge stage, skew and mesh, the multiplier's two registers and the two product registers,
        deskew, the result FIFO and its input register."""
        return self.cols + 1 + ProcessingElement.PRODUCT_LATENCY + self.FIFO_LATENCY

    FIFO_LATENCY: ClassVar[int] = LutRamFifo.LATENCY  # the FIFO's input register, then the RAM

    @property
    def fifo_depth(self) -> int:
        """Result rows the FIFO holds: every tile that can be in the mesh at once (one per 2R-1
        cycles over the cycles from `last` to its last row) plus one tile of slack."""
        span = self.latency - self.FIFO_LATENCY + 2 * self.rows
        return self.rows * (-(-span // (2 * self.rows - 1)) + 2)

    @property
    def row_interval(self) -> int:
        """Cycles between consecutive result rows of one tile (the drain moves against the wavefront)."""
        return 2

    @property
    def min_tile_beats(self) -> int:
        """Fewest cycles between two ``last`` beats; shorter tiles are held back (``ready`` low) until then."""
        return 2 * self.rows - 1

    @property
    def max_claimed(self) -> int:
        """A tile's ``last`` beat is taken only while the result rows claimed (those of the tiles
        taken, not yet read out) are at most this: the FIFO has room for one more full tile. With
        R = 1, tiles may end back to back and a claim lands a cycle late, so one row more is kept free.

        A producer that keeps its ``last`` beats `min_tile_beats` cycles apart and counts the rows
        itself (adding a tile's rows as it sends the beat) never sees ``ready`` low: the top relies
        on that to feed the array without a handshake."""
        return self.fifo_depth - self.rows - (1 if self.min_tile_beats == 1 else 0)

    def timing(self) -> dict:
        return {"latency": self.latency, "row_interval": self.row_interval,
                "min_tile_beats": self.min_tile_beats, "beats_per_cycle": 1}

    @property
    def operand_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "a": data.ArrayLayout(unsigned(CODE_BITS), self.rows),
            "b": data.ArrayLayout(unsigned(CODE_BITS), self.cols),
            "a_zero": signed(ZERO_BITS),
            "b_zero": signed(ZERO_BITS),
            "a_signed": unsigned(1),
            "b_signed": unsigned(1),
            "last": unsigned(1),
            "rows": unsigned(bits_for(self.rows)),
            "cols": unsigned(bits_for(self.cols)),
        })

    @property
    def result_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "data": data.ArrayLayout(signed(ACC_BITS), self.cols),
            "keep": unsigned(self.cols),
            "last": unsigned(1),
        })

    def to_dict(self) -> dict:
        return asdict(self)


def parse_array(text: str) -> tuple[int, int]:
    """An array size written ``RxC`` (``"8x8"``) as (rows, cols), each in 1..MAX_DIM; ValueError
    says what is wrong. The CLIs' ``--array`` option."""
    try:
        rows, cols = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"array must be RxC, two integers joined by 'x' (e.g. 8x8), got {text!r}") from None
    for name, value in (("rows", rows), ("cols", cols)):
        if not 1 <= value <= SystolicConfig.MAX_DIM:
            raise ValueError(f"array {name} must be in 1..{SystolicConfig.MAX_DIM}, got {value}")
    return rows, cols


class ProcessingElement(wiring.Component):
    """One multiply-accumulate cell, pipelined: the operands and the product are registered (an
    18x18 DSP block with its input and output registers, hw/dsp.py) and the product is added to the
    accumulator in the next cycle.

    Operands move one PE right (``a``, with ``last``) or down (``b``) per cycle.
    ``result_in``/``result_out`` form the column's drain chain towards the top. Nothing here has an
    enable: the mesh never stalls (see SystolicArray), so no clock-enable net fans out to every
    register of the array. Nor is there a valid bit: a bubble reaches the PE as ``a = 0``, adds 0,
    and never carries ``last`` (the array zeroes it at each row's entry), so the accumulator adds
    every cycle and only ``last`` steers it. A valid bit beside ``a`` was five flip-flops a PE (its
    copies through the multiplier's and the product's registers), and Verilator evaluates them all
    at every edge: 320 at 8x8, a fifth of the top's simulation time (DeiT-Tiny's first block:
    1.0M -> 1.25M cycles/s with the RTL alone).
    """

    # operands in -> product at the adder: the multiplier, then two fabric registers
    PRODUCT_LATENCY: ClassVar[int] = RegisteredMultiplier.LATENCY + 2

    def __init__(self):
        super().__init__({
            "a_in": In(signed(CENTERED_BITS)),
            "b_in": In(signed(CENTERED_BITS)),
            "last_in": In(1),
            "result_in": In(signed(ACC_BITS)),
            "a_out": Out(signed(CENTERED_BITS)),
            "b_out": Out(signed(CENTERED_BITS)),
            "last_out": Out(1),
            "result_out": Out(signed(ACC_BITS)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mult = mult = RegisteredMultiplier(CENTERED_BITS, CENTERED_BITS)
        m.d.comb += [mult.a.eq(self.a_in), mult.b.eq(self.b_in)]
        # The product crosses from the DSP block into the fabric through two registers of its own:
        # DSP blocks sit in a few rows of the die, and the route from one to the accumulator's
        # carry chain (8-9.5 ns) was the 8x8 array's critical path. With one register it was still
        # the 12x12 array's (7.6 ns of routing at 92 % of the DSP sites in use, where the fabric
        # beside the DSP rows is crowded); two let the placer split the distance.
        landed, product = Signal.like(mult.p), Signal.like(mult.p)
        m.d.sync += [landed.eq(mult.p), product.eq(landed)]
        # last follows the operands through the multiplier and the product registers
        last_p = [Signal(name=f"last_p{i}") for i in range(self.PRODUCT_LATENCY)]
        acc = Signal(signed(ACC_BITS))
        total = Signal(signed(ACC_BITS))  # wraps like int32; the driver keeps K in range
        m.d.comb += total.eq(acc + product)
        m.d.sync += [
            self.a_out.eq(self.a_in),
            self.b_out.eq(self.b_in),
            self.last_out.eq(self.last_in),
            last_p[0].eq(self.last_in),
            *(last_p[i].eq(last_p[i - 1]) for i in range(1, self.PRODUCT_LATENCY)),
            # The chain slot is free when `last` passes: tiles are at least 2R-1 cycles apart.
            self.result_out.eq(Mux(last_p[-1], total, self.result_in)),
            acc.eq(Mux(last_p[-1], 0, total)),
        ]
        return m


class SystolicArray(wiring.Component):
    """R x C output-stationary matmul array with ``operands`` and ``results`` streams.

    ``operands`` beat fields: ``a`` (R codes), ``b`` (C codes), ``a_zero``/``b_zero`` and
    ``a_signed``/``b_signed`` (how to read the codes), ``last`` (ends the tile), and on the last
    beat ``rows``/``cols``: how many rows and columns of this tile are real (ragged edges). Rows
    past ``rows`` are never emitted; lanes past ``cols`` are cleared in ``keep``.

    ``results`` beat fields: ``data`` (C int32 sums), ``keep`` (valid lanes), ``last`` (last row of
    the tile).
    """

    def __init__(self, config: SystolicConfig):
        self._config = config
        super().__init__({
            "operands": In(stream.Signature(config.operand_layout)),
            "results": Out(stream.Signature(config.result_layout)),
        })

    @property
    def config(self) -> SystolicConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, C = cfg.rows, cfg.cols
        ops = self.operands.payload

        # The mesh runs every cycle. Its result rows go into a FIFO, and a tile's `last` beat is
        # taken only when the FIFO has room for the rows of every tile still in the mesh, so
        # back-pressure on `results` holds operands back instead of freezing the array.
        # `claimed` counts the rows of accepted tiles not yet read out of the FIFO; a tile's rows are
        # added a cycle after its `last` beat (`claim`), so the accept path ends in a register,
        # not in an adder. The check is made against a full tile (R rows, whatever `rows` says) so
        # that it is a register compared with a constant: the adder and comparator on the FIFO
        # level had been the 12x12 array's critical path. A ragged tile may wait a little longer;
        # a full one exactly as long. The claim's one-cycle lag is safe because `last` beats are
        # at least 2R - 1 cycles apart; with R = 1 they may be back to back (see `max_claimed`).
        m.submodules.fifo = fifo = LutRamFifo(cfg.result_layout, cfg.fifo_depth)
        claimed = Signal(range(cfg.fifo_depth + 1))
        claim = Signal.like(ops.rows)
        room = claimed <= cfg.max_claimed

        # Spacing: a `last` beat is taken only 2R-1 cycles after the previous one, so a column's
        # drain chain is empty before the next tile's sums are captured into it. `wait` counts
        # down the cycles still to go.
        wait = Signal(range(cfg.min_tile_beats))
        spacing_ok = wait == 0
        m.d.comb += self.operands.ready.eq(~ops.last | (spacing_ok & room))
        accept = self.operands.valid & self.operands.ready
        with m.If(accept & ops.last):
            m.d.sync += wait.eq(cfg.min_tile_beats - 1)
        with m.Elif(~spacing_ok):
            m.d.sync += wait.eq(wait - 1)
        m.d.sync += claim.eq(Mux(accept & ops.last, ops.rows, 0))

        # Edge stage: subtract the zero points once per lane, so PEs multiply exact signed values.
        def centered(code, is_signed, zero):
            return Mux(is_signed, code.as_signed(), code) - zero

        edge_a = [Signal(signed(CENTERED_BITS), name=f"edge_a_{i}") for i in range(R)]
        edge_b = [Signal(signed(CENTERED_BITS), name=f"edge_b_{j}") for j in range(C)]
        edge_valid = Signal()
        edge_last = Signal()  # only on an accepted beat: the PEs have no valid bit
        m.d.sync += [edge_valid.eq(accept), edge_last.eq(accept & ops.last)]
        m.d.sync += [edge_a[i].eq(centered(ops.a[i], ops.a_signed, ops.a_zero)) for i in range(R)]
        m.d.sync += [edge_b[j].eq(centered(ops.b[j], ops.b_signed, ops.b_zero)) for j in range(C)]

        def delayed(m, value, cycles, name):
            """`value` delayed by `cycles` cycles."""
            for stage in range(cycles):
                reg = Signal(value.shape(), name=f"{name}_d{stage}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        pes = [[ProcessingElement() for _ in range(C)] for _ in range(R)]
        for i in range(R):
            for j in range(C):
                pe = pes[i][j]
                m.submodules[f"pe_{i}_{j}"] = pe
                if j == 0:  # row i enters i cycles late, so A meets B on the anti-diagonal
                    # A bubble enters the row as a = 0 (its B may be anything), so its products
                    # are 0 in every PE of the row; the valid bit stops here, with ten loads.
                    valid = delayed(m, edge_valid, i, f"skew_valid_{i}")
                    m.d.comb += [
                        pe.a_in.eq(Mux(valid, delayed(m, edge_a[i], i, f"skew_a_{i}"), 0)),
                        pe.last_in.eq(delayed(m, edge_last, i, f"skew_last_{i}")),
                    ]
                else:
                    left = pes[i][j - 1]
                    m.d.comb += [
                        pe.a_in.eq(left.a_out),
                        pe.last_in.eq(left.last_out),
                    ]
                if i == 0:
                    m.d.comb += pe.b_in.eq(delayed(m, edge_b[j], j, f"skew_b_{j}"))
                else:
                    m.d.comb += pe.b_in.eq(pes[i - 1][j].b_out)
                if i < R - 1:
                    m.d.comb += pe.result_in.eq(pes[i + 1][j].result_out)

        # Column j drains row r at its top 2r+j+5 cycles after the edge stage held `last`;
        # delaying it by C-1-j lines the columns up into whole rows.
        row_data = [delayed(m, pes[0][j].result_out, C - 1 - j, f"deskew_{j}") for j in range(C)]

        # The tile's rows/cols travel beside the mesh and arrive one cycle before its first row.
        tile_shape = data.StructLayout({
            "valid": 1, "rows": unsigned(bits_for(R)), "cols": unsigned(bits_for(C)),
        })
        tile_in = Signal(tile_shape)
        m.d.comb += [
            tile_in.valid.eq(accept & ops.last),
            tile_in.rows.eq(ops.rows),
            tile_in.cols.eq(ops.cols),
        ]
        tile_out = delayed(m, tile_in, C + ProcessingElement.PRODUCT_LATENCY, "tile")

        # Output sequencing: row r of the current tile is at the deskew output on even phase 2r.
        cur = Signal(tile_shape)
        phase = Signal(range(2 * R))
        row = phase >> 1
        with m.If(tile_out.valid):
            m.d.sync += [cur.eq(tile_out), phase.eq(0)]
        with m.Elif(cur.valid):
            m.d.sync += phase.eq(phase + 1)
            with m.If(phase == 2 * R - 2):
                m.d.sync += cur.valid.eq(0)

        push = cur.valid & ~phase[0] & (row < cur.rows)
        entry = Signal(cfg.result_layout)
        m.d.comb += [entry.last.eq(row == cur.rows - 1), fifo.w.valid.eq(push), fifo.w.payload.eq(entry)]
        for j in range(C):
            m.d.comb += [entry.data[j].eq(row_data[j]), entry.keep[j].eq(j < cur.cols)]
        m.d.sync += claimed.eq(claimed + claim - (fifo.r.valid & fifo.r.ready))

        wiring.connect(m, wiring.flipped(self.results), fifo.r)
        return m
