"""hw.bram.Bram: the generic form's cycle behaviour in Amaranth's simulator, the DP16KD tiling, and
the primitives the ecp5 form instantiates (the lowered form runs on sim/models/DP16KD.v in Verilator
inside the top lowered to ecp5: tests/test_run_vit_sim.py)."""

import random

import pytest
from amaranth import Elaboratable, Fragment, Module, Value, unsigned
from amaranth.back import verilog
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

import hw.bram
from hw.bram import Bram, Dp16kdTiling, dp16kd_tiling
from hw.dsp import ECP5Target


class BramHarness(wiring.Component):
    """A Bram of `width`-bit words with `reads` read ports, every port on the harness's ports."""

    def __init__(self, width: int, depth: int, reads: int, registered_inputs: bool = False):
        self._width, self._depth, self._reads, self._registered = width, depth, reads, registered_inputs
        addr = unsigned((depth - 1).bit_length())
        super().__init__({"w_addr": In(addr), "w_data": In(width), "w_en": In(1), "r_addr": In(addr).array(reads),
                          "r_en": In(1).array(reads), "r_data": Out(width).array(reads)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Bram(shape=unsigned(self._width), depth=self._depth,
                                      registered_inputs=self._registered)
        wp = mem.write_port()
        m.d.comb += [wp.addr.eq(self.w_addr), wp.data.eq(self.w_data), wp.en.eq(self.w_en)]
        for i in range(self._reads):
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(self.r_addr[i]), rp.en.eq(self.r_en[i]), self.r_data[i].eq(rp.data)]
        return m


class StandInBlock(Elaboratable):
    """In place of one DP16KD (hw.bram._dp16kd), for Amaranth's simulator: a block_depth-word memory
    read through the same two stages, both held while `en` is low."""

    def __init__(self, tiling, w_addr, w_data, w_en, r_addr, r_en, r_data):
        self.tiling, self.w, self.r = tiling, (w_addr, w_data, w_en), (r_addr, r_en, r_data)

    def elaborate(self, platform):
        m = Module()
        (w_addr, w_data, w_en), (r_addr, r_en, r_data) = self.w, self.r
        bits = self.tiling.bank_addr_bits
        m.submodules.mem = mem = Memory(shape=unsigned(self.tiling.width), depth=self.tiling.block_depth, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        m.d.comb += [wp.addr.eq(w_addr[:bits]), wp.data.eq(w_data), wp.en.eq(w_en), rp.addr.eq(r_addr[:bits]),
                     rp.en.eq(r_en)]
        with m.If(r_en):
            m.d.sync += r_data.eq(rp.data)
        return m


@pytest.mark.parametrize("registered", [False, True], ids=["plain", "registered_inputs"])
@pytest.mark.parametrize("width,depth,reads,form", [
    (8, 256, 3, "generic"), (9, 40, 1, "generic"),
    # the ecp5 form's tiling, banks and bank select around stand-ins for the blocks (the blocks
    # themselves run on sim/models/DP16KD.v inside the lowered top: tests/test_run_vit_sim.py)
    (3, 20000, 2, "ecp5 blocks"), (20, 1024, 1, "ecp5 blocks"),
])
def test_reads_latency_cycles_after_the_address_and_en_holds_every_stage(width, depth, reads, form, registered,
                                                                          monkeypatch):
    """Random writes, and reads whose `en` drops at random: each read port's data is the word its
    address held `latency` enabled edges ago (with registered inputs, the address register; then
    the synchronous read and the output register, all held while `en` is low); with registered
    inputs a write lands an edge late. No port reads the address being written in the same cycle."""
    dut = BramHarness(width, depth, reads, registered)
    tiling = dp16kd_tiling(width, depth)
    if form == "ecp5 blocks":
        blocks = []
        monkeypatch.setattr(hw.bram, "_dp16kd", lambda *args: blocks.append(StandInBlock(*args)) or blocks[-1])
        dut = Fragment.get(dut, ECP5Target())  # the harness's ports stay those of `BramHarness`
        assert len(blocks) == reads * tiling.blocks and tiling.blocks > 1
    rng = random.Random(width * depth)
    # few addresses, so that reads meet writes, and the same ones in every bank (bank aliasing shows)
    addresses = [a for offset in rng.sample(range(min(depth, tiling.block_depth)), 12)
                 for a in range(offset, depth, tiling.block_depth)]
    harness = dut.origins[0] if isinstance(dut, Fragment) else dut
    checked = []

    async def bench(ctx):
        mem = [0] * depth
        # the model: with registered inputs, the write and each port's address one edge (an
        # enabled edge for a read port) late; then per port the read and the output register
        write = (False, 0, 0)
        at, read, out = [0] * reads, [0] * reads, [0] * reads
        for _ in range(600):
            w_en, w_addr, w_data = rng.random() < 0.5, rng.choice(addresses), rng.randrange(1 << width)
            ctx.set(harness.w_en, w_en)
            ctx.set(harness.w_addr, w_addr)
            ctx.set(harness.w_data, w_data)
            ports = []
            for i in range(reads):
                en = rng.random() < 0.7
                addr = rng.choice([a for a in addresses if not (w_en and a == w_addr)])
                ctx.set(harness.r_en[i], en)
                ctx.set(harness.r_addr[i], addr)
                ports.append((en, addr))
            await ctx.tick()
            if not registered:
                write, at = (w_en, w_addr, w_data), [addr for _, addr in ports]
            for i, (en, addr) in enumerate(ports):
                if en:
                    read[i], out[i] = mem[at[i]], read[i]
                    at[i] = addr
            if write[0]:
                mem[write[1]] = write[2]
            write = (w_en, w_addr, w_data)
            for i in range(reads):
                assert ctx.get(harness.r_data[i]) == out[i]
                checked.append(out[i])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert sum(1 for value in checked if value) > len(checked) // 2  # the reads saw written data, not only zeros


def test_generic_form_keeps_a_layout():
    """A read port's data is a View of the Bram's shape, as with lib.memory."""
    layout = data.StructLayout({"x": unsigned(8), "mask": unsigned(1)})
    mem = Bram(shape=layout, depth=16)
    wp, rp = mem.write_port(), mem.read_port()
    assert isinstance(wp.data, data.View) and isinstance(rp.data, data.View) and len(Value.cast(rp.data)) == 9
    assert (len(wp.addr), len(rp.addr), Bram.LATENCY, mem.latency) == (4, 4, 2, 2)
    registered = Bram(shape=layout, depth=16, registered_inputs=True)
    registered.write_port(), registered.read_port()
    assert registered.latency == 3
    Fragment.get(registered, None)
    Fragment.get(mem, None)


@pytest.mark.parametrize("width,depth,tiling", [
    (8, 256, Dp16kdTiling(18, 1024, 1, 1)),       # the GELU table
    (9, 512, Dp16kdTiling(18, 1024, 1, 1)),       # the softmax key buffer
    (16, 4096, Dp16kdTiling(4, 4096, 4, 1)),      # the softmax exp buffer at 1024 keys
    (64, 2048, Dp16kdTiling(9, 2048, 8, 1)),      # as few blocks as 1024 x 18 in two banks, without a bank select
    (3, 20000, Dp16kdTiling(4, 4096, 1, 5)),      # deeper than one block: banks
    (64, 32768, Dp16kdTiling(1, 16384, 64, 2)),
])
def test_dp16kd_tiling_takes_the_fewest_blocks_then_the_fewest_banks(width, depth, tiling):
    assert dp16kd_tiling(width, depth) == tiling
    assert tiling.width * tiling.columns >= width and tiling.block_depth * tiling.banks >= depth


@pytest.mark.parametrize("width,depth,reads,blocks", [(8, 256, 2, 2), (16, 4096, 1, 4), (3, 20000, 2, 10)])
def test_ecp5_form_instantiates_dp16kd_with_the_output_register(width, depth, reads, blocks):
    generic = verilog.convert(BramHarness(width, depth, reads), name="bram", emit_src=False)
    ecp5 = verilog.convert(BramHarness(width, depth, reads), name="bram", emit_src=False, platform=ECP5Target())
    assert "DP16KD" not in generic
    assert ecp5.count("DP16KD #(") == blocks
    assert ecp5.count('.REGMODE_B("OUTREG")') == blocks and ecp5.count('.REGMODE_A("NOREG")') == blocks


def test_bram_refuses_a_second_write_port_and_a_missing_read_port():
    mem = Bram(shape=unsigned(8), depth=16)
    mem.write_port()
    with pytest.raises(ValueError, match="a Bram has one write port"):
        mem.write_port()
    with pytest.raises(ValueError, match="needs its write port and at least one read port"):
        Fragment.get(mem, None)
