"""A block RAM whose read ports have an output register: read data two cycles after the address.

An ECP5 DP16KD read without its output register takes about 6 ns from the clock to the data, so
a plain synchronous ``lib.memory`` read port feeding anything but a flip-flop right beside it
misses 150 MHz, and yosys never enables the block's own output register. ``Bram`` has the
``lib.memory`` port API (``write_port()``, ``read_port()``, each with ``addr``, ``data``, ``en``),
but its read data appears ``LATENCY = 2`` cycles after the address: the synchronous read, then an
output register. A read port's ``en`` (default 1) holds both, so a stall-together pipeline may
drive it with its enable. Elaborated for a platform whose ``dsp_family`` is ``"ecp5"`` (the
rtl_gen ``ecp5`` target, ``hw.dsp.ECP5Target``), every read port becomes DP16KD primitives with
``REGMODE_B = "OUTREG"`` (port A writes, port B reads), so the register is the block's own and
its clock-to-out is short. Anywhere else it is a ``lib.memory.Memory`` and a register, with the
same cycle behaviour; ``sim/models/DP16KD.v`` models the primitive for simulating the lowered form.

Reading an address in the cycle the write port writes it is not supported: the DP16KD gives an
undefined value (the generic form and the model give the old one). No caller does it.

The contents start at zero (no ``init``); the read data register is not reset (a DP16KD's RSTB
is tied low), it starts at zero.

``Bram(..., registered_inputs=True)`` puts a register in front of every block: its own copy of the
write address, data and enable and of the read address (``latency`` 3; a write lands one edge
after its port saw it). A memory of many blocks is spread over the device's block-RAM rows, and one
register driving all of their address pins was the 8x8 top's critical path (the weight buffer's
32 blocks: 11.6 ns of routing). Each copy lives in a ``slice_*`` module, which synthesis keeps
apart (rtl_gen.synth), so the copies are not merged back into one.
"""

from dataclasses import dataclass

from amaranth import Array, Cat, ClockSignal, Const, Elaboratable, Instance, Module, Shape, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.utils import ceil_log2

__all__ = ["Bram", "Dp16kdTiling", "dp16kd_tiling"]

# DP16KD configurations (data width, depth); the word address sits in the top address pins,
# AD[13:4] at x18 down to AD[13:0] at x1 (as yosys' brams_map_16kd.v wires them).
DP16KD_CONFIGS = ((18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))
DP16KD_ADDR_BITS = 14


@dataclass(frozen=True)
class Dp16kdTiling:
    """`columns` blocks of `width` bits side by side, `banks` such rows stacked in depth (the low
    `bank_addr_bits` address bits address a block, the rest pick the bank)."""

    width: int
    block_depth: int
    columns: int
    banks: int

    @property
    def bank_addr_bits(self) -> int:
        return ceil_log2(self.block_depth)

    @property
    def addr_shift(self) -> int:
        return DP16KD_ADDR_BITS - self.bank_addr_bits

    @property
    def blocks(self) -> int:
        return self.columns * self.banks


def dp16kd_tiling(width: int, depth: int) -> Dp16kdTiling:
    """The fewest DP16KDs that hold `depth` words of `width` bits; among equals, the fewest banks
    (no bank select when one block is deep enough)."""
    options = [Dp16kdTiling(w, d, -(-width // w), -(-depth // d)) for w, d in DP16KD_CONFIGS]
    return min(options, key=lambda t: (t.blocks, t.banks))


class Bram(wiring.Component):
    """`depth` words of `shape`; one write port and any number of read ports, each its own copy
    of the contents (one set of blocks per read port, all written together)."""

    LATENCY = 2  # read port: address -> data (without registered inputs)

    def __init__(self, *, shape, depth: int, registered_inputs: bool = False):
        self._shape, self._depth = shape, depth
        self._registered = registered_inputs
        self._addr_width = ceil_log2(depth)
        self._write = None
        self._reads = []
        super().__init__({})

    @property
    def shape(self):
        return self._shape

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def latency(self) -> int:
        """A read port's cycles from address to data: LATENCY, one more with registered inputs."""
        return self.LATENCY + self._registered

    def write_port(self) -> WritePort:
        """The write port: ``data`` is written at ``addr`` at the clock edge where ``en`` is 1
        (with registered inputs, at the edge after)."""
        if self._write is not None:
            raise ValueError("a Bram has one write port")
        self._write = WritePort.Signature(addr_width=self._addr_width, shape=self._shape).create(path=("w",))
        return self._write

    def read_port(self) -> ReadPort:
        """A read port: ``data`` shows the word at ``addr`` from ``latency`` edges where ``en`` was 1 ago."""
        port = ReadPort.Signature(addr_width=self._addr_width, shape=self._shape).create(path=(f"r{len(self._reads)}",))
        self._reads.append(port)
        return port

    def elaborate(self, platform):
        if self._write is None or not self._reads:
            raise ValueError("a Bram needs its write port and at least one read port before elaboration")
        if getattr(platform, "dsp_family", None) == "ecp5":
            return self._elaborate_dp16kd()
        m = Module()
        m.submodules.mem = mem = Memory(shape=self._shape, depth=self._depth, init=[])
        wp = mem.write_port()
        w = _Inputs(m, self._registered, "w")
        m.d.comb += [wp.addr.eq(w.reg(self._write.addr, "addr")), wp.data.eq(w.reg(self._write.data, "data")),
                     wp.en.eq(w.reg(self._write.en, "en"))]
        for i, port in enumerate(self._reads):
            rp = mem.read_port()
            out = Signal(self._shape, name=f"r{i}_data", reset_less=True)
            m.d.comb += [rp.addr.eq(_Inputs(m, self._registered, f"r{i}").reg(port.addr, "addr", port.en)),
                         rp.en.eq(port.en), port.data.eq(out)]
            with m.If(port.en):
                m.d.sync += out.eq(rp.data)
        return m

    def _elaborate_dp16kd(self):
        m = Module()
        tiling = dp16kd_tiling(Shape.cast(self._shape).width, self._depth)
        w = self._write
        w_bits = Value.cast(w.data)
        w_bank = w.addr[tiling.bank_addr_bits:]
        for i, port in enumerate(self._reads):
            banks = []
            for b in range(tiling.banks):
                write = w.en & (w_bank == b) if tiling.banks > 1 else w.en
                columns = []
                for c in range(tiling.columns):
                    lo = c * tiling.width
                    data = w_bits[lo:min(lo + tiling.width, len(w_bits))]
                    dob = Signal(18, name=f"r{i}_b{b}_c{c}_dob")
                    m.submodules[f"slice_r{i}_b{b}_c{c}"] = _Block(
                        tiling, self._registered, (w.addr, data, write), (port.addr, port.en, dob))
                    columns.append(dob[:len(data)])
                banks.append(Cat(*columns))
            # the bank select travels beside the read through all of its stages, so the bank
            # multiplexer after the output registers starts from a register too
            bank = port.addr[tiling.bank_addr_bits:]
            for stage in range(self.latency if tiling.banks > 1 else 0):
                held = Signal.like(bank, name=f"r{i}_bank_{stage + 1}", reset_less=True)
                with m.If(port.en):
                    m.d.sync += held.eq(bank)
                bank = held
            # every value of the select picks a bank (a bank count that is not a power of two would
            # leave the case incomplete); addresses past `depth` are never read
            choices = banks + banks[-1:] * ((1 << len(bank)) - len(banks))
            m.d.comb += Value.cast(port.data).eq(Array(choices)[bank] if tiling.banks > 1 else banks[0])
        return m


class _Inputs:
    """A port's input registers when the Bram has them (`registered`), else its signals as they are."""

    def __init__(self, m: Module, registered: bool, prefix: str):
        self._m, self._registered, self._prefix = m, registered, prefix

    def reg(self, value, name: str, en=None):
        if not self._registered:
            return value
        held = Signal.like(value, name=f"{self._prefix}_{name}_in")
        with self._m.If(Const(1) if en is None else en):
            self._m.d.sync += held.eq(value)
        return held


class _Block(Elaboratable):
    """One DP16KD of a Bram (`_dp16kd`), with its own input registers if `registered`: in a
    module of its own, so that synthesis keeps each block's copy."""

    def __init__(self, tiling: Dp16kdTiling, registered: bool, write, read):
        self._tiling, self._registered, self._write, self._read = tiling, registered, write, read

    def elaborate(self, platform):
        m = Module()
        (w_addr, w_data, w_en), (r_addr, r_en, r_data) = self._write, self._read
        bits = self._tiling.bank_addr_bits
        w, r = _Inputs(m, self._registered, "w"), _Inputs(m, self._registered, "r")
        m.submodules.block = _dp16kd(self._tiling, w.reg(w_addr[:bits], "addr"), w.reg(w_data, "data"),
                                     w.reg(w_en, "en"), r.reg(r_addr[:bits], "addr", r_en), r_en, r_data)
        return m


def _dp16kd(tiling: Dp16kdTiling, w_addr, w_data, w_en, r_addr, r_en, r_data) -> Instance:
    """One block: port A writes `w_data` (at most `tiling.width` bits), port B reads into the 18-bit
    `r_data` through the block's output register."""
    shift, abits = tiling.addr_shift, tiling.bank_addr_bits
    # x18 takes ADx[1:0] as byte write enables; the other configurations ignore the pins below the word address
    ada = Cat(Const(0b11 if tiling.width == 18 else 0, shift), w_addr[:abits])
    adb = Cat(Const(0, shift), r_addr[:abits])
    dia = Cat(w_data, Const(0, 18 - len(w_data)))

    def pin(value, k):
        return value[k] if k < len(value) else Const(0)

    return Instance(
        "DP16KD",
        p_DATA_WIDTH_A=tiling.width, p_DATA_WIDTH_B=tiling.width,
        p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
        p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC",
        p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
        p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL", p_GSR="DISABLED",
        i_CLKA=ClockSignal(), i_CEA=Const(1), i_OCEA=Const(1), i_WEA=w_en, i_RSTA=Const(0),
        i_CSA0=Const(0), i_CSA1=Const(0), i_CSA2=Const(0),
        i_CLKB=ClockSignal(), i_CEB=r_en, i_OCEB=r_en, i_WEB=Const(0), i_RSTB=Const(0),
        i_CSB0=Const(0), i_CSB1=Const(0), i_CSB2=Const(0),
        **{f"i_ADA{k}": pin(ada, k) for k in range(DP16KD_ADDR_BITS)},
        **{f"i_ADB{k}": pin(adb, k) for k in range(DP16KD_ADDR_BITS)},
        **{f"i_DIA{k}": dia[k] for k in range(18)},
        **{f"i_DIB{k}": Const(0) for k in range(18)},
        **{f"o_DOB{k}": r_data[k] for k in range(18)},
        # port A only writes; its read data is left unused, but connected (lint: no missing pin)
        **{f"o_DOA{k}": Signal(name=f"doa_{k}") for k in range(18)},
    )
