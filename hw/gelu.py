"""GELU as a table lookup: ``out = table[code]`` for every lane (calib/intref/gelu.py).

The fc1 output is already a uint8 code, so GELU (with its input and output quantization) is a
256-entry uint8 table built offline per layer. The unit holds the current layer's table in one
memory with a read port per lane, so ``lanes`` codes are looked up every cycle. The table is
written one entry per ``params`` beat (always ready) before the layer's codes arrive.

The table is a ``hw.bram.Bram``: the looked-up codes leave its read ports' output registers two
cycles after the lookup (on ECP5 the block RAM's own register, about 1 ns from the clock where a
plain read takes 6.2 ns) and go straight into the output FIFO. ``side_bits`` carries an
opaque field through beside the codes (the accelerator top sends the requantized int32 row along,
so fc1's codes and their GELU codes leave together).
"""

from dataclasses import asdict, dataclass
from typing import ClassVar

from amaranth import Module, unsigned
from amaranth.lib import data

from .bram import Bram
from .unit import StreamUnit
from .config import check_int
from .pipeline import CreditPipeline

__all__ = ["CODE_BITS", "GeluConfig", "Gelu"]

CODE_BITS = 8
TABLE_SIZE = 1 << CODE_BITS


@dataclass(frozen=True)
class GeluConfig:
    """lanes: codes per beat (the array's columns)."""

    lanes: int = 8
    side_bits: int = 0

    STAGES: ClassVar[int] = Bram.LATENCY  # the table read and the block RAM's output register
    LATENCY: ClassVar[int] = STAGES + CreditPipeline.FIFO_LATENCY  # accept -> out

    def __post_init__(self):
        check_int("gelu", "lanes", self.lanes, 1, 32)
        check_int("gelu", "side_bits", self.side_bits, 0, 2048)

    @property
    def name(self) -> str:
        return f"gelu_{self.lanes}l" + (f"_{self.side_bits}s" if self.side_bits else "")

    def timing(self) -> dict:
        return {"latency": self.LATENCY, "beats_per_cycle": 1}

    @property
    def stream_layout(self) -> data.StructLayout:
        """Both ``inp`` and ``out``: codes in, their GELU codes out; ``keep``/``last`` pass through."""
        return data.StructLayout({
            "data": data.ArrayLayout(unsigned(CODE_BITS), self.lanes),
            "keep": unsigned(self.lanes),
            "last": unsigned(1),
            **({"side": unsigned(self.side_bits)} if self.side_bits else {}),
        })

    @property
    def in_layout(self) -> data.StructLayout:
        return self.stream_layout

    @property
    def out_layout(self) -> data.StructLayout:
        return self.stream_layout

    @property
    def param_layout(self) -> data.StructLayout:
        return data.StructLayout({"index": unsigned(CODE_BITS), "value": unsigned(CODE_BITS)})

    def to_dict(self) -> dict:
        return asdict(self)


class Gelu(StreamUnit):
    """uint8 codes -> uint8 codes through the layer's 256-entry table.

    ``params`` writes ``table[index] = value``; always ready. Write the whole table before the
    layer's codes arrive (a code reads the table in the cycle it is accepted).
    """

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        pipe = CreditPipeline(m, self.inp, self.out, cfg.STAGES, "gelu")
        m.d.comb += self.params.ready.eq(1)

        m.submodules.table = table = Bram(shape=unsigned(CODE_BITS), depth=TABLE_SIZE)
        wp = table.write_port()
        m.d.comb += [wp.addr.eq(self.params.payload.index), wp.data.eq(self.params.payload.value),
                     wp.en.eq(self.params.valid)]
        for lane in range(cfg.lanes):
            rp = table.read_port()
            m.d.comb += [rp.addr.eq(self.inp.payload.data[lane]), pipe.result.data[lane].eq(rp.data)]
        passing = ("keep", "last", "side") if cfg.side_bits else ("keep", "last")
        for field in passing:
            m.d.comb += getattr(pipe.result, field).eq(
                pipe.reg(pipe.reg(getattr(self.inp.payload, field), f"{field}_1"), f"{field}_2"))
        return m
