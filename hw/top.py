"""The accelerator top: the systolic array and the transformer units behind a small command set.

Three host-facing streams: ``cmd`` (one ``Command`` per operation), ``din`` (data words, each the
raw bits of whatever the current command consumes) and ``dout`` (result words). Commands start in
order; a command ends when it has taken ``count`` data words and given ``out_count`` result words,
so results of different commands never interleave. Only a ``LOAD_ACT`` with ``overlap`` set runs
beside another command (the ``MATMUL`` in flight); see the two engines in ``elaborate``.

* ``LOAD_ACT`` / ``LOAD_WEIGHT``: ``count`` words into the activation buffer (``rows`` uint8 codes
  a word: one channel of a slab of ``rows`` tokens) or the weight buffer (``cols`` codes a word:
  one input channel of ``cols`` output channels), from address ``addr``.
* ``PARAMS``: ``count`` words into the ``params`` port of ``unit`` (requantizer, GELU table,
  LayerNorm, softmax table, residual adder).
* ``MATMUL``: ``tiles`` output tiles of the activation slab at ``addr`` (``k`` words) times the
  weights at ``waddr`` (tile ``t``'s ``k`` words at ``waddr + t*k``), computed without the host:
  the buffers feed the array one beat per cycle, and every result row goes through the
  requantizer (channel group ``group + t``) and the GELU table to ``dout`` as an ``epilogue``
  word holding both the requantized codes (or int32, ``wide``) and their GELU codes.
* ``LOAD_V``: ``count`` words into the attention chain's V buffer from address ``addr``: a word is
  one key's chunk of V's row (``AttentionConfig.v_word`` codes), at ``chunk * 2**key_bits + key``.
* ``ATTEND``: one head's attention on chip (hw/attention.py): the issue engine walks Q's slabs in
  the activation buffer against K^T's tiles in the weight buffer, the requantized logit rows go
  to the chain (slab buffer, LIS softmax, V lookup, attention x V), and each query's attention x V
  row leaves on ``dout``, ``requant_lanes`` columns a word (with ``tap``: each softmax code, the
  driver's check mode).
* ``STREAM``: ``count`` words through ``unit`` (LayerNorm, residual add), its outputs to ``dout``.

What still streams in and out between operations instead of living in a scratchpad, and what that
costs, is in docs/architecture.md ("Accelerator top").
"""

from amaranth.lib import enum
import functools
import hashlib
import json
import operator
from dataclasses import asdict, dataclass

from amaranth import ClockDomain, ClockSignal, DomainRenamer, Module, Mux, ResetSignal, Signal, signed, unsigned
from amaranth.lib import data, stream
from amaranth.lib.wiring import In, Out, Component, connect
from amaranth.utils import bits_for

from fqvit.contract import ACC_BITS, DEFAULT_LIS_RULE, MAX_CHANNELS, MAX_KEYS, MULT_BITS, SHIFT_BITS

from .attention import AttentionChain, AttentionConfig
from .attnv import AttnV, AttnVConfig
from .bram import Bram
from .config import check_int
from .dsp import dsp_blocks
from .gelu import Gelu, GeluConfig
from .layernorm import LayerNormConfig, LayerNormUnit
from .pipeline import CreditLink, CreditPipeline, delayed
from .requant import Requantizer, RequantConfig
from .residual import ResidualAdder, ResidualConfig
from .softmax import LisSoftmax, SoftmaxConfig
from .systolic import SystolicArray, SystolicConfig, ZERO_BITS

__all__ = ["Op", "UnitId", "TopConfig", "Accelerator", "COUNT_BITS"]

COUNT_BITS = 24  # data/result words of one command: a DeiT-Tiny head's attention x V is 310k beats


class Op(enum.Enum, shape=3):
    LOAD_ACT = 0
    LOAD_WEIGHT = 1
    PARAMS = 2
    MATMUL = 3
    STREAM = 4
    LOAD_V = 5
    ATTEND = 6


class UnitId(enum.Enum, shape=3):
    REQUANT = 0
    GELU = 1
    LAYERNORM = 2
    SOFTMAX = 3
    ATTNV = 4  # no PARAMS or STREAM: only ATTEND feeds it
    RESIDUAL = 5


PARAM_UNITS = (UnitId.REQUANT, UnitId.GELU, UnitId.LAYERNORM, UnitId.SOFTMAX, UnitId.RESIDUAL)
STREAM_UNITS = (UnitId.LAYERNORM, UnitId.RESIDUAL)  # the softmax and attention x V are fed by ATTEND


@dataclass(frozen=True)
class TopConfig:
    """rows x cols: the systolic array; act_kib / weight_kib: the on-chip buffers; max_channels:
    the widest layer (requantizer, residual and LayerNorm memories); max_keys: the longest
    attention row; attnv_lanes: attention x V's width, the widest head the chain takes in one
    pass (hw/attention.py); softmax_rule: the LIS rounding rule the model was quantized with; dsp_budget:
    the DSP blocks (MULT18X18D) of the target device, 156 on the LFE5U-85F.

    The array takes one DSP block per PE. When it and the units' multipliers would take more than
    `dsp_budget`, the units' products move to LUTs (hw.dsp.wide_product, same timing): first those
    of the per-lane units (requantizer, residual adder, attention x V), then LayerNorm's. The 12x12
    top keeps LayerNorm's 11 blocks beside the array's 144. A requantizer or residual adder in LUTs
    builds LUT_LANES lanes and takes a beat every cols / LUT_LANES cycles (hw/share.py). An array that alone exceeds the budget
    is still generated (for simulation); the synthesis report says it does not fit."""

    rows: int = 8
    cols: int = 8
    act_kib: int = 32
    weight_kib: int = 64
    max_channels: int = 1024
    max_keys: int = 256
    attnv_lanes: int = 64
    softmax_rule: str = DEFAULT_LIS_RULE
    dsp_budget: int = 156

    def __post_init__(self):
        check_int("top", "rows", self.rows, 1, SystolicConfig.MAX_DIM)
        check_int("top", "cols", self.cols, 1, SystolicConfig.MAX_DIM)
        check_int("top", "act_kib", self.act_kib, 1, 1024)
        check_int("top", "weight_kib", self.weight_kib, 1, 4096)
        check_int("top", "max_channels", self.max_channels, 1, MAX_CHANNELS)
        check_int("top", "max_keys", self.max_keys, 1, MAX_KEYS)
        check_int("top", "attnv_lanes", self.attnv_lanes, 1, 64)
        check_int("top", "dsp_budget", self.dsp_budget, 0, 4096)
        self.units()  # the unit configs validate the rest (e.g. the softmax rule)

    def units(self) -> dict:
        return self._units(self.lut_units)

    def _units(self, lut_units: tuple[str, ...]) -> dict:
        lut = {name: name in lut_units for name in _MULTIPLYING_UNITS}
        return {
            "systolic": SystolicConfig(self.rows, self.cols),
            "requant": RequantConfig(lanes=self.cols, max_channels=self.max_channels, lut_multipliers=lut["requant"],
                                     share=self._share(lut["requant"])),
            "gelu": GeluConfig(lanes=self.cols, side_bits=ACC_BITS * self.cols),  # side: the requantized row
            "layernorm": LayerNormConfig(max_channels=self.max_channels, lut_multipliers=lut["layernorm"]),
            "softmax": SoftmaxConfig(max_keys=self.max_keys, rule=self.softmax_rule),
            "attnv": AttnVConfig(lanes=self.attnv_lanes, requant_lanes=4, max_keys=self.max_keys,
                                 lut_multipliers=lut["attnv"]),
            "residual": ResidualConfig(lanes=self.cols, max_channels=self.max_channels,
                                       lut_multipliers=lut["residual"], share=self._share(lut["residual"])),
        }

    def _share(self, lut: bool) -> int:
        """A lane-parallel unit's `share`: with its products in LUTs, LUT_LANES lanes do the work."""
        return -(-self.cols // LUT_LANES) if lut else 1

    @property
    def lut_units(self) -> tuple[str, ...]:
        """The units whose products are in LUTs (see the class docstring)."""
        for lut_units in _LUT_ORDER:
            if self._dsp_blocks(lut_units) <= self.dsp_budget:
                return lut_units
        return _LUT_ORDER[-1]

    @property
    def dsp_blocks(self) -> int:
        """The DSP blocks (MULT18X18D) the top takes on the ecp5 target."""
        return self._dsp_blocks(self.lut_units)

    def _dsp_blocks(self, lut_units) -> int:
        units = self._units(lut_units)
        return self.rows * self.cols + sum(_unit_dsp_blocks(name, units[name]) for name in _MULTIPLYING_UNITS)

    @property
    def attention(self) -> AttentionConfig:
        return AttentionConfig(self.rows, self.cols, self.attnv_lanes, self.max_keys)

    @property
    def act_words(self) -> int:
        """Activation buffer depth: words of `rows` codes, i.e. the longest K of one matmul."""
        return self.act_kib * 1024 // self.rows

    @property
    def weight_words(self) -> int:
        """Weight buffer depth: words of `cols` codes (tiles x K of one MATMUL command)."""
        return self.weight_kib * 1024 // self.cols

    @property
    def name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return f"fqvit_top_{self.rows}x{self.cols}_{digest}"

    def timing(self) -> dict:
        return {name: unit.timing() for name, unit in self.units().items()}

    @property
    def cmd_layout(self) -> data.StructLayout:
        addr = unsigned(max(bits_for(max(self.act_words, self.weight_words)), self.attention.v_addr_bits))
        return data.StructLayout({
            "op": Op,
            "unit": UnitId,
            "count": unsigned(COUNT_BITS),  # din words this command takes
            "out_count": unsigned(COUNT_BITS),  # dout words it gives
            "addr": addr,  # LOAD_*: first word; MATMUL: the activation slab
            "waddr": addr,  # MATMUL: the first weight tile
            "k": unsigned(bits_for(self.act_words)),  # MATMUL: reduction length (slab words)
            "tiles": unsigned(bits_for(self.weight_words)),  # MATMUL: output tiles of `cols` channels
            "group": self.units()["requant"].in_layout["group"].shape,  # MATMUL: requant group of tile 0
            "rows": unsigned(bits_for(self.rows)),  # MATMUL: real tokens in the slab
            "last_cols": unsigned(bits_for(self.cols)),  # MATMUL: real channels of the last tile
            "a_zero": signed(ZERO_BITS),
            "b_zero": signed(ZERO_BITS),
            "b_signed": unsigned(1),  # weights int8 (1) or activation codes (0, Q.K^T)
            "zero": unsigned(8),  # output zero point
            "wide": unsigned(1),  # int32 outputs (logits)
            "overlap": unsigned(1),  # LOAD_ACT: may run beside the MATMUL or ATTEND in flight
            # ATTEND (hw/attention.py): slabs of `rows` queries after the first (the last slab has
            # `rows`, the others R), keys a row, softmax codes out instead of attention x V (tap),
            # V's zero point, the head's width and attention x V's requantization
            "extra_slabs": unsigned(bits_for(self.attention.max_slabs)),
            "keys": unsigned(bits_for(self.max_keys)),
            "tap": unsigned(1),
            "v_zero": unsigned(8),
            "head_dim": unsigned(bits_for(self.attnv_lanes)),
            "av_zero": unsigned(8),
            "av_mult": unsigned(MULT_BITS),
            "av_shift": unsigned(SHIFT_BITS),
        })

    @property
    def epilogue_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "data": data.ArrayLayout(signed(ACC_BITS), self.cols),
            "gelu": data.ArrayLayout(unsigned(8), self.cols),
            "keep": unsigned(self.cols),
            "last": unsigned(1),
        })

    @property
    def din_width(self) -> int:
        u = self.units()
        widths = [self.rows * 8, self.cols * 8, self.attention.v_word * 8]  # LOAD_ACT, LOAD_WEIGHT, LOAD_V
        widths += [u[n].param_layout.size for n in ("requant", "gelu", "layernorm", "softmax", "residual")]
        widths += [u[n].in_layout.size for n in ("layernorm", "residual")]
        return max(widths)

    @property
    def dout_width(self) -> int:
        u = self.units()
        return max([self.epilogue_layout.size] + [u[n].out_layout.size for n in ("layernorm", "softmax", "attnv", "residual")])

    def to_dict(self) -> dict:
        return asdict(self)


# The units with multipliers, in the order their products move to LUTs when DSP blocks run out.
# A requantizer or residual adder whose products are in LUTs builds this many lanes and shares them
# among the array's columns (hw/share.py), as attention x V's requantizer has 4 lanes.
LUT_LANES = 4
_MULTIPLYING_UNITS = {"requant": Requantizer, "residual": ResidualAdder, "attnv": AttnV, "layernorm": LayerNormUnit}
_LUT_ORDER = ((), ("requant", "residual", "attnv"), ("requant", "residual", "attnv", "layernorm"))


@functools.cache
def _unit_dsp_blocks(name: str, config) -> int:
    return dsp_blocks(_MULTIPLYING_UNITS[name](config))


class Accelerator(Component):
    """The top: ``cmd``, ``din`` and ``dout`` streams; ``busy`` while a command is in flight.

    `gate_idle_units` (simulation builds only, never synthesized): the array and every unit run on
    a clock of their own, ``clk`` gated off while no command uses them (`_gate_clocks`). Verilator
    evaluates a module's registers and the logic behind them only on its clock's edges, so an idle
    unit costs nothing; the results and the cycles are those of the ungated top.
    """

    # Cycles a unit's clock keeps running after the last command that used it has ended: its last
    # beat has left by then (a command ends when its last result word has), but a PARAMS command
    # ends when its last word is in the unit's input FIFO, which takes it CreditPipeline.FIFO_LATENCY
    # cycles to offer, and the unit's write port one or two more.
    GATE_TAIL = 8

    def __init__(self, config: TopConfig, gate_idle_units: bool = False):
        self._config = config
        self._gate_idle_units = gate_idle_units
        super().__init__({
            "cmd": In(stream.Signature(config.cmd_layout)),
            "din": In(stream.Signature(unsigned(config.din_width))),
            "dout": Out(stream.Signature(unsigned(config.dout_width))),
            "busy": Out(1),
        })

    @property
    def config(self) -> TopConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        u = cfg.units()
        R, C = cfg.rows, cfg.cols

        array = SystolicArray(u["systolic"])
        requant = Requantizer(u["requant"])
        gelu = Gelu(u["gelu"])
        units = {
            UnitId.LAYERNORM: LayerNormUnit(u["layernorm"]),
            UnitId.SOFTMAX: LisSoftmax(u["softmax"]),
            UnitId.ATTNV: AttnV(u["attnv"]),
            UnitId.RESIDUAL: ResidualAdder(u["residual"]),
        }
        param_ports = {UnitId.REQUANT: requant.params, UnitId.GELU: gelu.params,
                       **{uid: units[uid].params for uid in PARAM_UNITS if uid in units}}
        chain = AttentionChain(cfg.attention, u["softmax"], u["attnv"])

        # Output-registered block RAMs (hw/bram.py): a plain DP16KD read takes ~6 ns to its data.
        # Each block has its own input registers: wbuf is 32 blocks at 8x8, spread over the
        # device's block-RAM rows, and one address register driving them all took 11.6 ns of routing.
        m.submodules.abuf = abuf = Bram(shape=data.ArrayLayout(unsigned(8), R), depth=cfg.act_words,
                                        registered_inputs=True)
        m.submodules.wbuf = wbuf = Bram(shape=data.ArrayLayout(unsigned(8), C), depth=cfg.weight_words,
                                        registered_inputs=True)

        # Two engines. The load engine runs LOAD_ACT, so the next slab can arrive while a MATMUL
        # computes on the previous one; the main engine runs everything else. The din stream has
        # one consumer at a time: a LOAD_ACT starts only while the main engine is idle or in a
        # MATMUL (which takes no data words), and only if its `overlap` bit allows the latter
        # (the compiler sets it when the slab goes to the other half of the buffer); every other
        # command waits for both engines, so a MATMUL also finds its slab complete.
        cur = Signal(cfg.cmd_layout)
        busy = Signal()
        # Word counters, each with a registered "not yet done" flag: the flags gate the din and
        # dout handshakes, whose paths reach into every unit, so no 24-bit compare sits on them.
        in_left, in_open = Signal(COUNT_BITS), Signal()
        out_left, out_open = Signal(COUNT_BITS), Signal()
        wptr_load = Signal(cur.addr.shape())  # LOAD_WEIGHT: next write address
        issuing = Signal()  # MATMUL: operand beats still to issue
        loading = Signal()  # the load engine's LOAD_ACT
        load_left, load_open = Signal(COUNT_BITS), Signal()
        aptr_load = Signal(cur.addr.shape())
        # The current command's routing, decoded once as it starts: one register per destination,
        # so no op/unit compare sits on the din and dout handshakes (from `cur.op` through its
        # decode to attention x V's output FIFO was the 8x8 top's critical path, 92 MHz).
        # route_array: the issue engine runs (MATMUL or ATTEND); route_attend: the epilogue's rows
        # go to the attention chain instead of the GELU table and dout.
        route_load_weight, route_load_v, route_array, route_attend = Signal(), Signal(), Signal(), Signal()
        route_params = {uid: Signal(name=f"route_params_{uid.name.lower()}") for uid in param_ports}
        route_stream = {uid: Signal(name=f"route_stream_{uid.name.lower()}") for uid in STREAM_UNITS}
        p = self.cmd.payload
        is_load_act = p.op == Op.LOAD_ACT
        load_may_start = ~loading & (~busy | (p.overlap & route_array))
        m.d.comb += self.cmd.ready.eq(Mux(is_load_act, load_may_start, ~busy & ~loading))

        # Issue counters: the activation and weight read addresses (tiles are contiguous in wbuf,
        # slabs in abuf), the steps left in this tile, the tiles left after it in this slab, the
        # slabs after this one (ATTEND) and the real rows of this slab.
        aptr, abase = Signal(cur.addr.shape()), Signal(cur.addr.shape())
        wptr = Signal(cur.waddr.shape())
        k_left = Signal(cur.k.shape())
        t_left = Signal(cur.tiles.shape())
        s_left = Signal.like(cur.extra_slabs)
        slab_rows = Signal.like(cur.rows)
        # ATTEND starts a slab only while the chain has a free half of its slab buffer: `granted`
        # slabs, of which the chain has `released` (both wrap at 4; at most 2 apart).
        slab_wait, granted = Signal(), Signal(2)
        rgroup = Signal.like(cur.group)  # the requantizer's channel group of the next result tile
        rtiles_left = Signal.like(cur.tiles)  # result tiles after this one in its slab
        attend_start = Signal()  # the chain's `start`: the cycle after an ATTEND is accepted

        accept = self.cmd.valid & self.cmd.ready
        m.d.sync += attend_start.eq(accept & (p.op == Op.ATTEND))
        with m.If(accept & is_load_act):
            m.d.sync += [loading.eq(p.count != 0), load_left.eq(p.count), load_open.eq(p.count != 0),
                         aptr_load.eq(p.addr)]
        with m.Elif(loading & ~load_open):
            m.d.sync += loading.eq(0)
        with m.If(accept & ~is_load_act):
            m.d.sync += [
                cur.eq(p), busy.eq(1), in_left.eq(p.count), in_open.eq(p.count != 0), out_left.eq(p.out_count),
                out_open.eq(p.out_count != 0), wptr_load.eq(p.addr),
                issuing.eq(((p.op == Op.MATMUL) | (p.op == Op.ATTEND)) & (p.tiles != 0) & (p.k != 0)),
                aptr.eq(p.addr), abase.eq(p.addr), wptr.eq(p.waddr), k_left.eq(p.k - 1), t_left.eq(p.tiles - 1),
                s_left.eq(p.extra_slabs), slab_rows.eq(Mux(p.extra_slabs == 0, p.rows, R)),
                slab_wait.eq(p.op == Op.ATTEND), granted.eq(0),
                rgroup.eq(p.group), rtiles_left.eq(p.tiles - 1),
                route_load_weight.eq(p.op == Op.LOAD_WEIGHT), route_load_v.eq(p.op == Op.LOAD_V),
                route_array.eq((p.op == Op.MATMUL) | (p.op == Op.ATTEND)), route_attend.eq(p.op == Op.ATTEND),
                *(route.eq((p.op == Op.PARAMS) & (p.unit == uid)) for uid, route in route_params.items()),
                *(route.eq((p.op == Op.STREAM) & (p.unit == uid)) for uid, route in route_stream.items()),
            ]
        with m.Elif(busy & ~in_open & ~out_open & ~issuing):
            m.d.sync += busy.eq(0)

        # Data in: the load engine while it loads, else the main engine's command.
        # in_open and out_open are set with busy and busy stays until both clear, so either implies
        # it: the handshakes below need not reach the command engine's busy register.
        take = in_open  # never while the load engine takes words (dispatch rules)
        load_take = loading & load_open
        din_ready = Signal()  # the main engine's
        m.d.comb += self.din.ready.eq(din_ready | load_take)
        din_fire = self.din.valid & din_ready
        awp, wwp = abuf.write_port(), wbuf.write_port()
        m.d.comb += [awp.addr.eq(aptr_load), awp.data.eq(self.din.payload[:R * 8]), awp.en.eq(self.din.valid & load_take),
                     wwp.addr.eq(wptr_load), wwp.data.eq(self.din.payload[:C * 8])]
        with m.If(self.din.valid & load_take):
            m.d.sync += [load_left.eq(load_left - 1), load_open.eq(load_left != 1), aptr_load.eq(aptr_load + 1)]
        with m.If(din_fire):
            m.d.sync += [in_left.eq(in_left - 1), in_open.eq(in_left != 1), wptr_load.eq(wptr_load + 1)]

        # Data out: every result word goes through a FIFO whose input is a register (a credit
        # pipeline without stages), so the unit multiplexer below ends at a flip-flop and dout is
        # offered from the FIFO alone. A command counts its words as they enter the FIFO; the
        # accelerator stays busy until the host has taken the last.
        results = stream.Signature(unsigned(cfg.dout_width)).create()
        out_pipe = CreditPipeline(m, results, self.dout, 0, "dout")
        dout_valid = Signal()
        dout_payload = out_pipe.result
        m.d.comb += [results.valid.eq(dout_valid & out_open),
                     self.busy.eq(busy | loading | self.dout.valid)]
        with m.If(results.valid & results.ready):
            m.d.sync += [out_left.eq(out_left - 1), out_open.eq(out_left != 1)]
        out_ready = results.ready & out_open

        # Every unit's inputs (data and params) come from din through a FIFO beside the unit, and
        # its results go to the dout multiplexer through a FIFO here, each counted at its writer
        # (CreditLink): din's ready is a multiplexer of registers here, a unit's result ready is a
        # register in its block, and the long routes between the host link and the units run from
        # register to register. A unit and its input FIFOs form a block, a module of its own (the
        # simulation build clocks a block only while it is in use, `_gate_clocks`).
        blocks = {"array": array, "requant": requant, "gelu": gelu, "attention": chain,
                  **{uid.name.lower(): unit for uid, unit in units.items()}}
        for name, unit in list(blocks.items()):
            blocks[name] = Module()
            blocks[name].submodules[name] = unit

        # A unit's results all leave within the command that routes work to it (a command ends
        # only once the host has its out_count words), so at most one result FIFO holds words at a
        # time. Their payloads are zero while empty, and dout's source is the OR of them all, with
        # no route select: one reaching the ~170 payload bits (route_matmul -> the dout FIFO's
        # input register, 10.25 ns of routing) was the 8x8 top's critical path at 90.8 MHz.
        def staged(source, name, block):
            out = stream.Signature(source.payload.shape()).create(path=(name,))
            link = CreditLink(block, m, out, source.payload, name, zero_empty=True)
            block.d.comb += [source.ready.eq(link.room), link.offer.eq(source.valid)]
            m.d.comb += out.ready.eq(out_ready)
            return out

        def fed(sink, name, block, route):
            link = CreditLink(m, block, sink, self.din.payload[:sink.payload.shape().size], name)
            m.d.comb += link.offer.eq(self.din.valid & take & route)
            with m.If(route):
                m.d.comb += din_ready.eq(take & link.room)

        # The routes are exclusive, so each destination's If stands alone.
        # The weight write enable is built from registers alone, not from `din_fire`: that carries
        # the ready of every unit through the route multiplexer, and from there to the input
        # registers of all of wbuf's blocks was the 8x8 top's critical path (81.7 MHz).
        m.d.comb += wwp.en.eq(self.din.valid & take & route_load_weight)
        vwp = chain.v_write
        m.d.comb += [vwp.addr.eq(wptr_load), vwp.data.eq(self.din.payload[:cfg.attention.v_word * 8]),
                     vwp.en.eq(self.din.valid & take & route_load_v)]
        with m.If(route_load_weight | route_load_v):
            m.d.comb += din_ready.eq(take)
        for uid, port in param_ports.items():
            fed(port, f"{uid.name.lower()}_params_in", blocks[uid.name.lower()], route_params[uid])
        unit_outs = []
        for uid in STREAM_UNITS:
            fed(units[uid].inp, f"{uid.name.lower()}_in", blocks[uid.name.lower()], route_stream[uid])
            unit_outs.append(staged(units[uid].out, f"{uid.name.lower()}_out", blocks[uid.name.lower()]))
        gelu_out = staged(gelu.out, "gelu_out", blocks["gelu"])

        # The attention chain (ATTEND): the epilogue's rows -> slab buffer -> softmax -> V lookup
        # -> attention x V -> dout; with `tap`, the softmax codes -> dout.
        softmax, attnv = units[UnitId.SOFTMAX], units[UnitId.ATTNV]
        connect(m, chain.keys_out, softmax.inp)
        connect(m, softmax.out, chain.codes_in)
        # Attention x V's input ready is its key pipeline's enable, and reaching the read side of
        # the chain's V-lookup FIFO (a 621-bit word: 18 slices) it was the 8x8 top's critical path
        # (71.9 MHz, 12.65 ns of routing): a FIFO beside attention x V, counted at the chain, ends it.
        v_keys = CreditLink(blocks["attention"], blocks["attnv"], attnv.inp, chain.attnv_out.payload, "attnv_in")
        blocks["attention"].d.comb += [v_keys.offer.eq(chain.attnv_out.valid), chain.attnv_out.ready.eq(v_keys.room)]
        unit_outs.append(staged(attnv.out, "attnv_out", blocks["attnv"]))
        unit_outs.append(staged(chain.codes_out, "softmax_out", blocks["attention"]))
        cp = chain.params
        m.d.comb += [chain.start.eq(attend_start), cp.extra_slabs.eq(cur.extra_slabs), cp.rows.eq(cur.rows),
                     cp.tiles.eq(cur.tiles), cp.keys.eq(cur.keys), cp.tap.eq(cur.tap), cp.v_zero.eq(cur.v_zero),
                     cp.head_dim.eq(cur.head_dim), cp.zero.eq(cur.av_zero), cp.mult.eq(cur.av_mult),
                     cp.shift.eq(cur.av_shift)]

        # MATMUL operand issue. The buffers are read without an enable and their data reaches the
        # array through fixed delays, with no FIFO and no handshake between them: the issue
        # applies the array's own rules for a tile's `last` beat before the read (the spacing and
        # the result rows it may claim, SystolicConfig.max_claimed, counted here as the beat is
        # read), so the array's `ready` is high whenever a beat arrives and nothing waits on it.
        # With a FIFO between them, the array's `ready` logic reaching the FIFO's read side was
        # the 8x8 top's critical path (73.4 MHz, 11.3 ns of routing; 70.4 MHz with a register
        # slice, whose output enable then reached every operand flip-flop).
        sc = u["systolic"]
        read_latency = abuf.latency
        arp, wrp = abuf.read_port(), wbuf.read_port()
        m.d.comb += [arp.addr.eq(aptr), wrp.addr.eq(wptr)]
        last_k, last_t = k_left == 0, t_left == 0
        gap = Signal(range(sc.min_tile_beats), name="tile_gap")  # cycles until a `last` beat may issue
        claimed = Signal(range(sc.fifo_depth + 1), name="tile_claimed")  # rows of tiles issued, not read out
        last_ok = Signal(init=1, name="tile_last_ok")  # gap == 0 and claimed <= max_claimed, a register
        fire = issuing & ~slab_wait & (~last_k | last_ok)
        fire_last = fire & last_k
        with m.If(slab_wait & ((granted - chain.released)[:2] < 2)):
            m.d.sync += [slab_wait.eq(0), granted.eq(granted + 1)]
        gap_next = Mux(fire_last, sc.min_tile_beats - 1, Mux(gap == 0, 0, gap - 1))
        # A row read out of the array comes from the array's block, so it only selects between
        # values computed here (after it, the subtraction and the compare took 11.3 ns to last_ok).
        claimed_kept = claimed + Mux(fire_last, slab_rows, 0)
        row_out = array.results.valid & array.results.ready
        m.d.sync += [gap.eq(gap_next), claimed.eq(Mux(row_out, claimed_kept - 1, claimed_kept)),
                     last_ok.eq((gap_next == 0) & Mux(row_out, claimed_kept <= sc.max_claimed + 1,
                                                      claimed_kept <= sc.max_claimed))]
        with m.If(fire):
            m.d.sync += [wptr.eq(wptr + 1), aptr.eq(Mux(last_k, abase, aptr + 1)),
                         k_left.eq(Mux(last_k, cur.k - 1, k_left - 1))]
            with m.If(last_k):
                m.d.sync += t_left.eq(t_left - 1)
                with m.If(last_t):
                    with m.If(s_left == 0):
                        m.d.sync += issuing.eq(0)
                    with m.Else():  # the next slab: the next k words of abuf, the same weight tiles
                        m.d.sync += [s_left.eq(s_left - 1), abase.eq(abase + cur.k), aptr.eq(abase + cur.k),
                                     wptr.eq(cur.waddr), t_left.eq(cur.tiles - 1),
                                     slab_rows.eq(Mux(s_left == 1, cur.rows, R)), slab_wait.eq(route_attend)]
        ops = array.operands.payload
        m.d.comb += [
            array.operands.valid.eq(delayed(m, fire, read_latency, "issue_valid")),
            ops.a.eq(arp.data), ops.b.eq(wrp.data),
            ops.a_zero.eq(cur.a_zero), ops.b_zero.eq(cur.b_zero),
            ops.a_signed.eq(0), ops.b_signed.eq(cur.b_signed),
            ops.rows.eq(delayed(m, slab_rows, read_latency, "issue_rows")),  # the next slab's once its last beat fires
            ops.last.eq(delayed(m, last_k, read_latency, "issue_last")),
            ops.cols.eq(delayed(m, Mux(last_t, cur.last_cols, C), read_latency, "issue_cols")),
        ]

        # Epilogue: array -> requantizer (channel group of the result tile) -> GELU table -> dout.
        res, rq = array.results, requant.inp
        m.d.comb += [
            rq.valid.eq(res.valid), res.ready.eq(rq.ready),
            rq.payload.data.eq(res.payload.data), rq.payload.keep.eq(res.payload.keep),
            rq.payload.last.eq(res.payload.last), rq.payload.group.eq(rgroup),
            rq.payload.zero.eq(cur.zero), rq.payload.wide.eq(cur.wide),
        ]
        with m.If(res.valid & res.ready & res.payload.last):
            m.d.sync += [rgroup.eq(Mux(rtiles_left == 0, cur.group, rgroup + 1)),
                         rtiles_left.eq(Mux(rtiles_left == 0, cur.tiles - 1, rtiles_left - 1))]
        # MATMUL: GELU carries the requantized int32 row through beside its codes. ATTEND: the
        # rows' codes go to the chain, which always takes them.
        logits = chain.logits
        m.d.comb += [logits.valid.eq(requant.out.valid & route_attend), logits.payload.last.eq(requant.out.payload.last)]
        for lane in range(C):
            m.d.comb += logits.payload.data[lane].eq(requant.out.payload.data[lane][:8])
        m.d.comb += [
            gelu.inp.valid.eq(requant.out.valid & ~route_attend),
            requant.out.ready.eq(Mux(route_attend, logits.ready, gelu.inp.ready)),
            gelu.inp.payload.keep.eq(requant.out.payload.keep), gelu.inp.payload.last.eq(requant.out.payload.last),
            gelu.inp.payload.side.eq(requant.out.payload.data.as_value()),
        ]
        for lane in range(C):
            m.d.comb += gelu.inp.payload.data[lane].eq(requant.out.payload.data[lane][:8])
        epilogue, word = Signal(cfg.epilogue_layout), gelu_out.payload
        m.d.comb += [epilogue.data.eq(word.side), epilogue.gelu.eq(word.data),
                     epilogue.keep.eq(word.keep), epilogue.last.eq(word.last)]
        m.d.comb += [dout_valid.eq(functools.reduce(operator.or_, [out.valid for out in unit_outs + [gelu_out]])),
                     dout_payload.eq(functools.reduce(operator.or_, [out.payload.as_value() for out in unit_outs]
                                                      + [epilogue.as_value()]))]

        # Who uses each unit: the array and the epilogue in a MATMUL, every unit in the commands
        # routed to it.
        def used(*routes):
            return busy & functools.reduce(lambda a, b: a | b, routes)
        in_use = {"array": used(route_array), "requant": used(route_array, route_params[UnitId.REQUANT]),
                  "gelu": used(route_array & ~route_attend, route_params[UnitId.GELU]),
                  **{uid.name.lower(): used(route_stream[uid], route_params[uid]) for uid in STREAM_UNITS},
                  "softmax": used(route_attend, route_params[UnitId.SOFTMAX]), "attnv": used(route_attend),
                  "attention": used(route_attend, route_load_v)}
        if self._gate_idle_units:
            self._gate_clocks(m, {name: (block, in_use[name]) for name, block in blocks.items()})
        else:
            for name, block in blocks.items():
                m.submodules[name] = block
        return m

    def _gate_clocks(self, m: Module, clocked: dict) -> None:
        """Each of `clocked` (name: (block, in use)) in a domain of its own, clocked while it is in
        use and GATE_TAIL cycles after. The enable is latched while ``clk`` is low, so the gated
        clock has no glitch and its rising edges are ``clk``'s."""
        m.domains.gate_latch = latch_domain = ClockDomain(clk_edge="neg", local=True)
        m.d.comb += [latch_domain.clk.eq(ClockSignal()), latch_domain.rst.eq(ResetSignal())]
        for name, (block, in_use) in clocked.items():
            tail = Signal(range(self.GATE_TAIL + 1), name=f"{name}_gate_tail")
            m.d.sync += tail.eq(Mux(in_use, self.GATE_TAIL, Mux(tail == 0, 0, tail - 1)))
            enable = Signal(name=f"{name}_gate_enable")
            m.d.gate_latch += enable.eq(in_use | (tail != 0))
            domain = ClockDomain(f"{name}_gated", local=True)
            m.domains += domain
            m.d.comb += [domain.clk.eq(ClockSignal() & enable), domain.rst.eq(ResetSignal())]
            m.submodules[name] = DomainRenamer(domain.name)(block)
