"""A simulation-only host for the accelerator top: host memories and a DMA that never wait on Python.

The harness wraps ``hw.top.Accelerator`` with three memories: commands and data words that it
reads from ``cmd.hex`` / ``din.hex`` (``$readmemh``) and streams into the top one word per cycle,
and the result words it collects and writes to ``dout.hex`` (``$writememh``). The Python side
(``HostLink``) only writes the files, pulses ``load``, raises ``go`` and awaits ``done``: the RTL
then runs on its own, at the simulator's speed, for the whole program. This is plain Verilog
because Amaranth has no file I/O; it is test infrastructure, never synthesized.

The harness also makes its own clock (``always #5``, Verilator ``--timing``) and marks only its
ports public, and the model is compiled with ``toolchain.build(..., fast=True)``: a clock driven
from cocotb costs a callback every edge, and ``--public-flat-rw`` (cocotb's default, every signal
visible) keeps Verilator from optimizing; together they cost 5x in speed.

Nothing cocotb can write reaches the model's logic combinationally: ``go``, ``n_cmd`` and ``n_din``
are sampled at the clock edge and the outputs are public read-only. Verilator evaluates whatever
depends on a writable signal at every ``eval`` (two a cycle, one per clock edge), changed or not;
with ``go`` and ``din_ptr`` writable that was a fifth of the design (everything the command and data
words feed). And the top is never reset: it powers up in its reset state (Amaranth writes every
register's reset value as its Verilog initial value), and with ``rst`` tied to 0 Verilator drops the
reset term from every register; the harness's ``rst`` only holds the harness idle. Together with
toolchain.FAST_MAKE: 1.55x fewer instructions per cycle in ``eval`` (30.2k to 19.5k, callgrind over
the first 1.2M cycles of DeiT-Tiny's first block at e7ddb03, bit-exact).
``harness_verilog(..., baseline=True)`` is the harness without these (sw/bench.py's baseline).

Then the design itself: Verilator evaluates every register of every unit at every clock edge, busy
or idle. By module (a build that keeps modules apart, -fno-inline: 21.7k a cycle): the 8x8 array
5.8k (74 a PE), requantizer 3.5k, residual 2.4k, attention x V 2.2k, LayerNorm 1.8k, GELU and
softmax 0.6k each, FIFOs, glue and scheduling the rest; the residual, attention x V, LayerNorm,
GELU and softmax cost the same whether or not the running program uses them. So sw/driver.py
builds the top with ``gate_idle_units``: the array and each unit run on ``clk`` gated off while no
command uses them, and Verilator skips a module whose clock has no edge. The same words in the
same cycles as the ungated top (tests/test_top.py checks it cycle by cycle in Amaranth's simulator,
tests/test_run_vit_sim.py against the ungated ecp5 build); 1.96x the cycles/s on DeiT-Tiny's first
block (864k against 441k with the RTL alone, one run each interleaved, medians of 2). Synthesis
never sees the gates (rtl_gen generates the ungated top).
"""

import os
import time
from pathlib import Path

from cocotb.triggers import ClockCycles, RisingEdge, SimTimeoutError, with_timeout

from hw.top import TopConfig
from sim.tb.common import PERIOD_NS

__all__ = ["CMD_DEPTH", "DIN_DEPTH", "DOUT_DEPTH", "harness_name", "harness_verilog", "HostLink"]

CMD_DEPTH = 1 << 14
DIN_DEPTH = 1 << 20
DOUT_DEPTH = 1 << 18

_TEMPLATE = """
module {name} (
    input rst /*verilator public_flat_rw*/,
    input load /*verilator public_flat_rw*/,               // pulse: read cmd.hex and din.hex, rewind
    input go /*verilator public_flat_rw*/,                 // level: stream while high
    input dump /*verilator public_flat_rw*/,               // pulse: write the n_out result words to dout.hex
    input [31:0] n_cmd /*verilator public_flat_rw*/,
    input [31:0] n_din /*verilator public_flat_rw*/,
    output reg [31:0] cmd_ptr /*verilator public_flat_{out}*/,
    output reg [31:0] din_ptr /*verilator public_flat_{out}*/,
    output reg [31:0] n_out /*verilator public_flat_{out}*/,
    output reg [63:0] cycles /*verilator public_flat_{out}*/,
    output done /*verilator public_flat_{out}*/
);
    /*verilator public_module*/
    reg clk /*verilator public_flat_{out}*/ = 0;
    always #{half_period} clk = ~clk;
{inputs}
    reg [{cw}-1:0] cmd_mem [0:{cmd_depth}-1];
    reg [{dw}-1:0] din_mem [0:{din_depth}-1];
    reg [{ow}-1:0] dout_mem [0:{dout_depth}-1];
    wire cmd_valid = go_s && cmd_ptr < n_cmd_s;
    wire din_valid = go_s && din_ptr < n_din_s;
    wire cmd_ready, din_ready, dout_valid, busy;
    wire [{ow}-1:0] dout_payload;
    assign done = go_s && cmd_ptr == n_cmd_s && din_ptr == n_din_s && !busy;

    {top} top (
        .clk(clk), .rst({top_rst}),
        .cmd__valid(cmd_valid), .cmd__ready(cmd_ready), .cmd__payload(cmd_mem[cmd_ptr[{cmd_bits}-1:0]]),
        .din__valid(din_valid), .din__ready(din_ready), .din__payload(din_mem[din_ptr[{din_bits}-1:0]]),
        .dout__valid(dout_valid), .dout__ready(go_s), .dout__payload(dout_payload),
        .busy(busy)
    );

    always @(posedge clk) begin
        if (load) begin
            $readmemh("cmd.hex", cmd_mem);
            if (n_din != 0) $readmemh("din.hex", din_mem);
            cmd_ptr <= 0;
            din_ptr <= 0;
            n_out <= 0;
            cycles <= 0;
        end else if (go_s && !done) begin
            cycles <= cycles + 1;
            if (cmd_valid && cmd_ready) cmd_ptr <= cmd_ptr + 1;
            if (din_valid && din_ready) din_ptr <= din_ptr + 1;
            if (dout_valid) begin
                dout_mem[n_out[{dout_bits}-1:0]] <= dout_payload;
                n_out <= n_out + 1;
            end
        end
        if (dump && n_out != 0) $writememh("dout.hex", dout_mem, 0, n_out - 1);
    end
endmodule
"""


def harness_name(cfg: TopConfig) -> str:
    return f"{cfg.name}_host"


# go, n_cmd and n_din as the logic sees them: sampled at the clock edge, or (baseline) directly.
_SAMPLED_INPUTS = """\
    reg go_s = 0;
    reg [31:0] n_cmd_s = 0, n_din_s = 0;
    always @(posedge clk) begin
        go_s <= go && !rst;
        n_cmd_s <= n_cmd;
        n_din_s <= n_din;
    end"""
_DIRECT_INPUTS = """\
    wire go_s = go;
    wire [31:0] n_cmd_s = n_cmd, n_din_s = n_din;"""


def harness_verilog(cfg: TopConfig, top_verilog: str, baseline: bool = False) -> str:
    """One Verilog file: the generated top and the harness around it. `baseline`: the harness as it
    was before it sampled its inputs and tied off the top's reset (module docstring), which
    sw/bench.py measures against; it runs the same programs in the same cycles."""
    return top_verilog + _TEMPLATE.format(
        out="rw" if baseline else "rd", inputs=_DIRECT_INPUTS if baseline else _SAMPLED_INPUTS,
        top_rst="rst" if baseline else "1'b0",
        name=harness_name(cfg), top=cfg.name, cw=cfg.cmd_layout.size, dw=cfg.din_width, ow=cfg.dout_width,
        half_period=PERIOD_NS // 2, cmd_depth=CMD_DEPTH, din_depth=DIN_DEPTH, dout_depth=DOUT_DEPTH,
        cmd_bits=CMD_DEPTH.bit_length() - 1, din_bits=DIN_DEPTH.bit_length() - 1,
        dout_bits=DOUT_DEPTH.bit_length() - 1)


def _write_hex(path: Path, words: list[int]) -> None:
    path.write_text("".join(f"{w:x}\n" for w in words))


class HostLink:
    """Runs programs (command words, data words) on the harness from a cocotb test."""

    def __init__(self, dut, workdir: Path | None = None):
        self.dut = dut
        self.workdir = Path(workdir or os.getcwd())  # $readmemh names are relative to the simulator's cwd
        self.rtl_seconds = 0.0  # wall time from `go` to `done`: the RTL running on its own
        dut.load.value = 0
        dut.go.value = 0
        dut.dump.value = 0

    async def _pulse(self, signal) -> None:
        signal.value = 1
        await RisingEdge(self.dut.clk)
        signal.value = 0

    async def run(self, cmds: list[int], din: list[int], out_words: int, max_cycles: int) -> tuple[list[int], int]:
        """Stream a program through the top; returns its result words and the cycles it took."""
        if not cmds or len(cmds) > CMD_DEPTH or len(din) > DIN_DEPTH or out_words > DOUT_DEPTH:
            raise ValueError(f"program of {len(cmds)} commands, {len(din)} data and {out_words} result words "
                             f"does not fit the host memories ({CMD_DEPTH}, {DIN_DEPTH}, {DOUT_DEPTH})")
        dut = self.dut
        _write_hex(self.workdir / "cmd.hex", cmds)
        if din:
            _write_hex(self.workdir / "din.hex", din)
        dut.n_cmd.value = len(cmds)
        dut.n_din.value = len(din)
        await self._pulse(dut.load)
        dut.go.value = 1
        t0 = time.perf_counter()
        try:
            await with_timeout(RisingEdge(dut.done), max_cycles * PERIOD_NS, "ns")
        except SimTimeoutError as err:  # report where the program stopped
            raise RuntimeError(
                f"the accelerator did not finish within {max_cycles} cycles: {int(dut.cmd_ptr.value)} of {len(cmds)} "
                f"commands and {int(dut.din_ptr.value)} of {len(din)} data words taken, {int(dut.n_out.value)} of "
                f"{out_words} results given") from err
        self.rtl_seconds += time.perf_counter() - t0
        dut.go.value = 0
        await ClockCycles(dut.clk, 1)
        cycles, n_out = int(dut.cycles.value), int(dut.n_out.value)
        if n_out != out_words:
            raise RuntimeError(f"the accelerator gave {n_out} result words, the program expects {out_words}")
        words = []
        if n_out:
            await self._pulse(dut.dump)
            await ClockCycles(dut.clk, 1)
            words = [int(line, 16) for line in (self.workdir / "dout.hex").read_text().split()]
        return words, cycles
