"""GELU as a table lookup: ``out = table[code]`` for every lane (calib/intref/gelu.py).

The fc1 output is already a uint8 code, so GELU (with its input and output quantization) is a
256-entry uint8 table built offline per layer. The unit holds the current layer's table in one
memory with a read port per lane, so ``lanes`` codes are looked up every cycle. The table is
written one entry per ``params`` beat (always ready) before the layer's codes arrive.
"""

from dataclasses import asdict, dataclass
from typing import ClassVar

from amaranth import Module, unsigned
from amaranth.lib import data
from amaranth.lib.memory import Memory

from .unit import StreamUnit
from .config import check_int
from .pipeline import StallPipeline

__all__ = ["CODE_BITS", "GeluConfig", "Gelu"]

CODE_BITS = 8
TABLE_SIZE = 1 << CODE_BITS


@dataclass(frozen=True)
class GeluConfig:
    """lanes: codes per beat (the array's columns)."""

    lanes: int = 8

    LATENCY: ClassVar[int] = 1  # accept -> out: the synchronous table read

    def __post_init__(self):
        check_int("gelu", "lanes", self.lanes, 1, 32)

    @property
    def name(self) -> str:
        return f"gelu_{self.lanes}l"

    def timing(self) -> dict:
        return {"latency": self.LATENCY, "beats_per_cycle": 1}

    @property
    def stream_layout(self) -> data.StructLayout:
        """Both ``inp`` and ``out``: codes in, their GELU codes out; ``keep``/``last`` pass through."""
        return data.StructLayout({
            "data": data.ArrayLayout(unsigned(CODE_BITS), self.lanes),
            "keep": unsigned(self.lanes),
            "last": unsigned(1),
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
        pipe = StallPipeline(m, self.inp, self.out, cfg.LATENCY, "gelu")
        m.d.comb += self.params.ready.eq(1)

        m.submodules.table = table = Memory(shape=unsigned(CODE_BITS), depth=TABLE_SIZE, init=[])
        wp = table.write_port()
        m.d.comb += [wp.addr.eq(self.params.payload.index), wp.data.eq(self.params.payload.value),
                     wp.en.eq(self.params.valid)]
        for lane in range(cfg.lanes):
            rp = table.read_port()  # en: the looked-up code holds while the pipeline stalls
            m.d.comb += [rp.addr.eq(self.inp.payload.data[lane]), rp.en.eq(pipe.en),
                         self.out.payload.data[lane].eq(rp.data)]
        m.d.comb += [self.out.valid.eq(pipe.out_valid),
                     self.out.payload.keep.eq(pipe.reg(self.inp.payload.keep, "keep1")),
                     self.out.payload.last.eq(pipe.reg(self.inp.payload.last, "last1"))]
        return m
