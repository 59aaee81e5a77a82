"""The attention chain: Q.K^T's requantized rows -> LIS softmax -> attention x V, without the host.

The array computes one slab of R queries against every key of a head (``tiles`` result tiles of
C keys each, K = the head dimension) and the requantizer turns each result row into C uint8
logit codes. The chain takes those rows and feeds the two units that follow:

* **Slab buffer** (``sbuf``, two halves of R x ``tile_slots`` words of C codes). A result row of
  tile t for query r is written at ``(half, r, t)``. The array emits a slab tile by tile, and the
  softmax wants one query's keys in sequence, so the buffer is where that transpose happens. The
  array may fill one half while the softmax reads the other; the top's issue engine starts a slab
  only while a half is free (``released``, the slabs the feeder has finished reading).
* **Feeder**: reads a query's words in key order and hands the softmax one code per cycle (a C:1
  byte select behind the block RAM's output register), ``last`` on the row's final key.
* **V lookup**: each LIS code out of the softmax is key ``j`` of its row; the V buffer gives V's row
  j beside it, and the pair goes to attention x V with the command's requantization. A head of up
  to ``lanes`` channels is one pass: every code streams once, not once per chunk of columns. The V
  buffer is ``v_chunks`` block RAMs side by side, each ``v_word`` codes of every key, all read at
  the key; the top's ``LOAD_V`` writes one chunk's column of words at a time (``v_write``: address
  ``chunk * 2**key_bits + key``), so a V word is 128 bits and not a whole row (512 at 64 lanes):
  the host link's ``din`` needs no more width than the residual adder's input (174 bits), which
  that width had been costing the top's routing.
* With ``tap`` the softmax codes leave on ``codes_out`` instead (the driver's check mode reads
  the chain's intermediate this way).

Rates: a slab takes the array ``tiles * max(hd, 2R - 1)`` cycles and the softmax
``rows * max(keys + 1, 6)``; DeiT (197 keys, hd = 64, R = C = 8) gives 1,600 and 1,584, so the
array, the softmax and attention x V (one key per cycle) run together at the array's rate.
"""

from dataclasses import asdict, dataclass

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import Component, In, Out
from amaranth.utils import bits_for, ceil_log2

from fqvit.contract import MULT_BITS, SHIFT_BITS

from .attnv import AttnVConfig
from .bram import Bram
from .config import check_int
from .pipeline import CreditPipeline
from .softmax import SoftmaxConfig

__all__ = ["AttentionConfig", "AttentionChain"]


@dataclass(frozen=True)
class AttentionConfig:
    """rows x cols: the array (R queries a slab, C keys a result row); lanes: attention x V's
    width (the widest head in one pass); max_keys: the longest row."""

    rows: int = 8
    cols: int = 8
    lanes: int = 64
    max_keys: int = 256

    def __post_init__(self):
        check_int("attention", "rows", self.rows, 1, 32)
        check_int("attention", "cols", self.cols, 1, 32)
        check_int("attention", "lanes", self.lanes, 1, 64)
        check_int("attention", "max_keys", self.max_keys, 1, 4096)

    @property
    def tile_slots(self) -> int:
        """Words a query row takes in the slab buffer: its key tiles, rounded up to a power of two
        so an address is the concatenation (half, row, tile)."""
        return 1 << ceil_log2(-(-self.max_keys // self.cols))

    @property
    def sbuf_depth(self) -> int:
        return 2 * (1 << ceil_log2(self.rows)) * self.tile_slots

    V_WORD = 16  # codes of a LOAD_V word: 128 bits, within the 174-bit din the other commands need

    @property
    def v_word(self) -> int:
        return min(self.lanes, self.V_WORD)

    @property
    def v_chunks(self) -> int:
        """V buffer chunks: block RAMs of `v_word` codes a key."""
        return -(-self.lanes // self.v_word)

    @property
    def key_bits(self) -> int:
        return ceil_log2(self.max_keys)

    @property
    def v_addr_bits(self) -> int:
        """`v_write`'s address: (key, chunk), the key in the low `key_bits`."""
        return self.key_bits + ceil_log2(self.v_chunks)

    @property
    def max_slabs(self) -> int:
        return -(-self.max_keys // self.rows)

    @property
    def params_layout(self) -> data.StructLayout:
        """What the chain reads from the command, constant while it runs."""
        return data.StructLayout({
            "extra_slabs": unsigned(bits_for(self.max_slabs)),  # slabs of R queries after the first
            "rows": unsigned(bits_for(self.rows)),  # queries in the last slab
            "tiles": unsigned(bits_for(self.tile_slots)),  # key tiles of a row
            "keys": unsigned(bits_for(self.max_keys)),
            "tap": unsigned(1),  # softmax codes to codes_out, attention x V idle
            "v_zero": unsigned(8),
            "head_dim": unsigned(bits_for(self.lanes)),
            "zero": unsigned(8),  # attention x V's requantization
            "mult": unsigned(MULT_BITS),
            "shift": unsigned(SHIFT_BITS),
        })

    def to_dict(self) -> dict:
        return asdict(self)


class AttentionChain(Component):
    """``logits``: requantized result rows (C codes, ``last`` on a tile's last row); ``keys_out``
    -> the softmax's ``inp``; ``codes_in`` <- its ``out``; ``attnv_out`` -> attention x V's
    ``inp``; ``codes_out``: the softmax codes in ``tap`` mode. ``start`` (one cycle) begins a
    command whose ``params`` hold until it ends; ``released`` counts the slabs whose half of the
    slab buffer is free again (wrapping). ``v_write``: the V buffer's write port (``LOAD_V``),
    ``v_word`` codes of one key's chunk at address ``chunk * 2**key_bits + key``."""

    def __init__(self, config: AttentionConfig, softmax: SoftmaxConfig, attnv: AttnVConfig):
        self._config = config
        C = config.cols
        super().__init__({
            "start": In(1),
            "params": In(config.params_layout),
            "released": Out(2),
            "logits": In(stream.Signature(data.StructLayout({"data": data.ArrayLayout(unsigned(8), C),
                                                             "last": unsigned(1)}))),
            "keys_out": Out(stream.Signature(softmax.in_layout)),
            "codes_in": In(stream.Signature(softmax.out_layout)),
            "codes_out": Out(stream.Signature(softmax.out_layout)),
            "attnv_out": Out(stream.Signature(attnv.in_layout)),
            # a memory port's members are inputs already: Out keeps them so
            "v_write": Out(WritePort.Signature(addr_width=config.v_addr_bits,
                                              shape=data.ArrayLayout(unsigned(8), config.v_word))),
        })

    @property
    def config(self) -> AttentionConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg, p = self._config, self.params
        C = cfg.cols
        row_bits, tile_bits = ceil_log2(cfg.rows), ceil_log2(cfg.tile_slots)
        m.submodules.sbuf = sbuf = Bram(shape=data.ArrayLayout(unsigned(8), C), depth=cfg.sbuf_depth)
        # V buffer: one Bram per chunk, written when the address picks it, all read at one key
        vbufs = []
        vw = self.v_write
        for c in range(cfg.v_chunks):
            m.submodules[f"vbuf_{c}"] = vbuf = Bram(shape=data.ArrayLayout(unsigned(8), cfg.v_word),
                                                    depth=cfg.max_keys, registered_inputs=True)
            wp_v = vbuf.write_port()
            m.d.comb += [wp_v.addr.eq(vw.addr[:cfg.key_bits]), wp_v.data.eq(vw.data),
                         wp_v.en.eq(vw.en & (vw.addr[cfg.key_bits:] == c))]
            vbufs.append(vbuf)

        # Writer: rows arrive tile by tile, each tile's rows in order; the slab's last tile ends it.
        w_row, w_tile, w_half = Signal(range(cfg.rows)), Signal(range(cfg.tile_slots)), Signal()
        wp = sbuf.write_port()
        m.d.comb += [self.logits.ready.eq(1), wp.en.eq(self.logits.valid),
                     wp.addr.eq(Cat(w_tile[:tile_bits], w_row[:row_bits], w_half)), wp.data.eq(self.logits.payload.data)]
        written = Signal(2)  # slabs complete in the buffer (wrapping, as `released`)
        with m.If(self.logits.valid):
            m.d.sync += w_row.eq(w_row + 1)
            with m.If(self.logits.payload.last):
                m.d.sync += [w_row.eq(0), w_tile.eq(w_tile + 1)]
                with m.If(w_tile == p.tiles - 1):
                    m.d.sync += [w_tile.eq(0), w_half.eq(~w_half), written.eq(written + 1)]

        # Feeder: a slab's queries one after another, each row's keys in order, a byte of a word
        # each cycle. Its reads are issued into a credit pipeline (the read, the byte select), so
        # back-pressure from the softmax stops the issue and nothing is lost.
        f_row, f_tile, f_byte = Signal(range(cfg.rows)), Signal(range(cfg.tile_slots)), Signal(range(C))
        f_half, f_key_left = Signal(), Signal.like(p.keys)
        f_slab_rows = Signal(range(cfg.rows + 1))
        f_slabs_left = Signal.like(p.extra_slabs)
        released = self.released
        issue = stream.Signature(unsigned(1)).create(path=("feed_issue",))
        feed = CreditPipeline(m, issue, self.keys_out, sbuf.latency + 1, "feed")
        m.d.comb += issue.valid.eq(written != released)
        rp = sbuf.read_port()
        m.d.comb += rp.addr.eq(Cat(f_tile[:tile_bits], f_row[:row_bits], f_half))
        row_end, slab_end = f_key_left == 0, f_row == f_slab_rows - 1
        byte = feed.delay(f_byte, sbuf.latency, "feed_byte")
        m.d.comb += [feed.result.x.eq(feed.reg(rp.data[byte], "feed_x")),  # the byte select, registered
                     feed.result.mask.eq(0),
                     feed.result.last.eq(feed.delay(row_end, sbuf.latency + 1, "feed_last"))]
        with m.If(self.start):
            m.d.sync += [f_row.eq(0), f_tile.eq(0), f_byte.eq(0), f_half.eq(0), f_key_left.eq(p.keys - 1),
                         f_slabs_left.eq(p.extra_slabs), f_slab_rows.eq(Mux(p.extra_slabs == 0, p.rows, cfg.rows)),
                         w_row.eq(0), w_tile.eq(0), w_half.eq(0), written.eq(0), released.eq(0)]
        with m.Elif(issue.valid & issue.ready):
            m.d.sync += [f_key_left.eq(f_key_left - 1), f_byte.eq(f_byte + 1)]
            with m.If(f_byte == C - 1):
                m.d.sync += [f_byte.eq(0), f_tile.eq(f_tile + 1)]
            with m.If(row_end):
                m.d.sync += [f_key_left.eq(p.keys - 1), f_byte.eq(0), f_tile.eq(0), f_row.eq(f_row + 1)]
                with m.If(slab_end):
                    m.d.sync += [f_row.eq(0), f_half.eq(~f_half), released.eq(released + 1),
                                 f_slabs_left.eq(f_slabs_left - 1),
                                 f_slab_rows.eq(Mux(f_slabs_left == 1, p.rows, cfg.rows))]

        # Softmax codes: to codes_out (tap), or with V's row of their key to attention x V.
        look = stream.Signature(self.codes_in.payload.shape()).create(path=("v_lookup",))
        m.d.comb += [look.payload.eq(self.codes_in.payload),
                     self.codes_out.payload.eq(self.codes_in.payload),
                     look.valid.eq(self.codes_in.valid & ~p.tap), self.codes_out.valid.eq(self.codes_in.valid & p.tap),
                     self.codes_in.ready.eq(Mux(p.tap, self.codes_out.ready, look.ready))]
        v_latency = vbufs[0].latency
        pipe = CreditPipeline(m, look, self.attnv_out, v_latency, "v_lookup")
        key, rows_left = Signal(range(cfg.max_keys)), Signal(range(cfg.max_slabs * cfg.rows + 1))
        v_row = []
        for vbuf in vbufs:
            vrp = vbuf.read_port()
            m.d.comb += vrp.addr.eq(key)
            v_row.append(vrp.data.as_value())
        took = look.valid & look.ready
        last = look.payload.last
        with m.If(self.start):
            m.d.sync += [key.eq(0), rows_left.eq(p.extra_slabs * cfg.rows + p.rows)]
        with m.Elif(took):
            m.d.sync += key.eq(Mux(last, 0, key + 1))
            with m.If(last):
                m.d.sync += rows_left.eq(rows_left - 1)
        keep = Signal(cfg.lanes)
        m.d.sync += keep.eq(Cat(lane < p.head_dim for lane in range(cfg.lanes)))
        r = pipe.result
        m.d.comb += [r.code.eq(pipe.delay(look.payload.code, v_latency, "code")),
                     r.last.eq(pipe.delay(last, v_latency, "last")),
                     r.last_row.eq(pipe.delay(last & (rows_left == 1), v_latency, "last_row")),
                     r.v.eq(Cat(*v_row)[:cfg.lanes * 8]), r.z_v.eq(p.v_zero), r.keep.eq(keep), r.z_out.eq(p.zero),
                     r.mult.eq(p.mult), r.shift.eq(p.shift)]
        return m
