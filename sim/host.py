"""A simulation-only host for the accelerator top: host memories and a DMA that never wait on Python.

The harness wraps ``hw.top.Accelerator`` with three memories: commands and data words that it
reads from ``cmd.hex`` / ``din.hex`` (``$readmemh``) and streams into the top one word per cycle,
and the result words it collects and writes to ``dout.hex`` (``$writememh``). The Python side
(``HostProcess``) only writes the files and asks for a run: the RTL then runs on its own, at the
simulator's speed, for the whole program. This is plain Verilog because Amaranth has no file I/O;
it is test infrastructure, never synthesized.

The harness is clocked by a C++ main loop of its own (``sim/host_main.cpp``, compiled into the
model by ``toolchain.build(..., main=HOST_MAIN)``), one child process per run of the sim backend,
which takes one program per request on its stdin. cocotb's main loop, with the harness clocking
itself under ``--timing``, spent a fifth of the time in VPI callbacks and the timing scheduler
between the two evaluations of each cycle: 1.38x the cycles/s without it (DeiT-Tiny's first block
on the gated top, 1.19M against 864k with the RTL alone, measured at 0c08082). Earlier, a clock
driven from cocotb (a callback every edge) and ``--public-flat-rw`` had cost 5x.

``go``, ``n_cmd`` and ``n_din`` are sampled at the clock edge, so nothing written from outside
reaches the model's logic combinationally: Verilator evaluates whatever depends on an input at
every ``eval`` (two a cycle), changed or not; with ``go`` and ``din_ptr`` as inputs that was a fifth
of the design (everything the command and data words feed). And the top is never reset: it powers
up in its reset state (Amaranth writes every register's reset value as its Verilog initial value),
and with ``rst`` tied to 0 Verilator drops the reset term from every register. Together with
toolchain.FAST_MAKE: 1.55x fewer instructions per cycle in ``eval`` (30.2k to 19.5k, callgrind over
the first 1.2M cycles of DeiT-Tiny's first block at e7ddb03, bit-exact).

Then the design itself: Verilator evaluates every register of every unit at every clock edge, busy
or idle. By module (a build that keeps modules apart, -fno-inline: 21.7k a cycle): the 8x8 array
5.8k (74 a PE), requantizer 3.5k, residual 2.4k, attention x V 2.2k, LayerNorm 1.8k, GELU and
softmax 0.6k each, FIFOs, glue and scheduling the rest; the residual, attention x V, LayerNorm,
GELU and softmax cost the same whether or not the running program uses them. So sw/driver.py
builds the top with ``gate_idle_units``: the array and each unit run on ``clk`` gated off while no
command uses them, and Verilator skips a module whose clock has no edge. The same words in the
same cycles as the ungated top (tests/test_top.py checks it cycle by cycle in Amaranth's simulator,
tests/test_run_vit_sim.py against the ungated ecp5 build); 1.96x the cycles/s on DeiT-Tiny's first
block (864k against 441k with the RTL alone under cocotb, interleaved runs, medians of 2). A gated
block holds the unit and its input and output FIFOs, which cost as much again when clocked all the
time (918k instead of 1.25M on this host). Synthesis never sees the gates (rtl_gen generates the
ungated top).

Where a GEMM cycle goes now (perf over DeiT-Tiny's first block on the gated top at e78cc45, the
model's `nba_sequent` functions mapped to modules through the signals they write): the array 43 %
of the RTL's time, the requantizer 21 %, the top's own logic 17 % (nearly all of it the dout and
gelu_out FIFOs), the rest spread. Two changes followed, each the same words in the same cycles:

* FIFOs: a LutRamFifo is cut into slices of 36 bits for placement (hw/fifo.py), each with its own
  pointers and RAM, and the epilogue's ~300-bit FIFOs (array results, requantizer, GELU, the dout
  link) came to ~50 slices evaluated at every edge of a GEMM. The simulation build elaborates on
  rtl_gen.SimulationPlatform, which makes each FIFO one slice: 605k -> 1.0M cycles/s with the RTL
  alone on DeiT-Tiny's first block.
* The array's PEs lost their valid bit (hw/systolic.py; a bubble enters a row as a = 0), in the
  hardware too: 1.0M -> 1.25M. The array is then about half of the RTL's time, 64 PEs of about
  fifteen register updates each, which is what a cycle-accurate model of the mesh costs.
"""

import subprocess
from pathlib import Path

from hw.top import TopConfig

__all__ = ["CMD_DEPTH", "DIN_DEPTH", "DOUT_DEPTH", "HOST_MAIN", "harness_name", "harness_verilog", "HostProcess"]

CMD_DEPTH = 1 << 14
DIN_DEPTH = 1 << 20
DOUT_DEPTH = 1 << 18
HOST_MAIN = Path(__file__).with_name("host_main.cpp")

_TEMPLATE = """
module {name} (
    input clk,
    input load,               // pulse: read cmd.hex and din.hex, rewind
    input go,                 // level: stream while high
    input jitter,             // level: random gaps on din and back-pressure on dout (tests)
    input dump,               // pulse: write the n_out result words to dout.hex
    input [31:0] n_cmd,
    input [31:0] n_din,
    output reg [31:0] cmd_ptr,
    output reg [31:0] din_ptr,
    output reg [31:0] n_out,
    output reg [63:0] cycles,
    output done
);
    reg go_s = 0, jitter_s = 0;
    reg [31:0] n_cmd_s = 0, n_din_s = 0;
    // With jitter, a data word is offered only half the time (once offered, it stays until taken,
    // as a stream requires) and results are taken half the time: maximal-length LFSR bits.
    reg [31:0] lfsr = 32'h1;
    reg din_held = 0;
    always @(posedge clk) begin
        go_s <= go;
        jitter_s <= jitter;
        n_cmd_s <= n_cmd;
        n_din_s <= n_din;
    end
    reg [{cw}-1:0] cmd_mem [0:{cmd_depth}-1];
    reg [{dw}-1:0] din_mem [0:{din_depth}-1];
    reg [{ow}-1:0] dout_mem [0:{dout_depth}-1];
    wire cmd_valid = go_s && cmd_ptr < n_cmd_s;
    wire din_valid = go_s && din_ptr < n_din_s && (!jitter_s || din_held || lfsr[0]);
    wire dout_ready = go_s && (!jitter_s || lfsr[7]);
    wire cmd_ready, din_ready, dout_valid, busy;
    always @(posedge clk) begin
        lfsr <= {{lfsr[30:0], lfsr[31] ^ lfsr[21] ^ lfsr[1] ^ lfsr[0]}};
        din_held <= din_valid && !din_ready;
    end
    wire [{ow}-1:0] dout_payload;
    assign done = go_s && cmd_ptr == n_cmd_s && din_ptr == n_din_s && !busy;

    {top} top (
        .clk(clk), .rst(1'b0),
        .cmd__valid(cmd_valid), .cmd__ready(cmd_ready), .cmd__payload(cmd_mem[cmd_ptr[{cmd_bits}-1:0]]),
        .din__valid(din_valid), .din__ready(din_ready), .din__payload(din_mem[din_ptr[{din_bits}-1:0]]),
        .dout__valid(dout_valid), .dout__ready(dout_ready), .dout__payload(dout_payload),
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
            if (dout_valid && dout_ready) begin
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


def harness_verilog(cfg: TopConfig, top_verilog: str) -> str:
    """One Verilog file: the generated top and the harness around it (built with main=HOST_MAIN)."""
    return top_verilog + _TEMPLATE.format(
        name=harness_name(cfg), top=cfg.name, cw=cfg.cmd_layout.size, dw=cfg.din_width, ow=cfg.dout_width,
        cmd_depth=CMD_DEPTH, din_depth=DIN_DEPTH, dout_depth=DOUT_DEPTH, cmd_bits=CMD_DEPTH.bit_length() - 1,
        din_bits=DIN_DEPTH.bit_length() - 1, dout_bits=DOUT_DEPTH.bit_length() - 1)


def _write_hex(path: Path, words: list[int]) -> None:
    path.write_text("".join(f"{w:x}\n" for w in words))


class HostProcess:
    """The compiled harness (a build with main=HOST_MAIN) as a child process in folder `workdir`,
    where its host memory files live; runs programs one after another on the same top, whose state
    (buffers, parameters) carries over between them. A context manager: the process ends with it."""

    def __init__(self, executable: Path, workdir: Path, jitter: bool = False):
        self.workdir = Path(workdir)
        self.jitter = jitter  # random gaps on din, random back-pressure on dout (the cycles then include them)
        self.rtl_seconds = 0.0  # from `go` to `done`: the RTL running on its own
        self._proc = subprocess.Popen([str(executable)], cwd=self.workdir, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End of input: the process ends (or is killed if it does not)."""
        try:
            self._proc.stdin.close()
        except BrokenPipeError:  # it has ended already
            pass
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for stream in (self._proc.stdout, self._proc.stderr):
            stream.close()

    def _request(self, line: str) -> list[str]:
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
            answer = self._proc.stdout.readline().split()
        except BrokenPipeError:
            answer = []
        if not answer or answer[0] not in ("done", "timeout"):
            self._proc.kill()
            raise RuntimeError(f"the simulator process stopped answering (rc {self._proc.wait()}): "
                               f"{' '.join(answer)} {self._proc.stderr.read()[-2000:]}")
        return answer

    def run(self, cmds: list[int], din: list[int], out_words: int, max_cycles: int) -> tuple[list[int], int]:
        """Stream a program through the top; returns its result words and the cycles it took."""
        if not cmds or len(cmds) > CMD_DEPTH or len(din) > DIN_DEPTH or out_words > DOUT_DEPTH:
            raise ValueError(f"program of {len(cmds)} commands, {len(din)} data and {out_words} result words "
                             f"does not fit the host memories ({CMD_DEPTH}, {DIN_DEPTH}, {DOUT_DEPTH})")
        _write_hex(self.workdir / "cmd.hex", cmds)
        if din:
            _write_hex(self.workdir / "din.hex", din)
        answer = self._request(f"run {len(cmds)} {len(din)} {max_cycles} {int(self.jitter)}")
        if answer[0] == "timeout":  # report where the program stopped
            cmd_ptr, din_ptr, n_out = answer[1:]
            raise RuntimeError(
                f"the accelerator did not finish within {max_cycles} cycles: {cmd_ptr} of {len(cmds)} commands and "
                f"{din_ptr} of {len(din)} data words taken, {n_out} of {out_words} results given")
        cycles, n_out, seconds = int(answer[1]), int(answer[2]), float(answer[3])
        self.rtl_seconds += seconds
        if n_out != out_words:
            raise RuntimeError(f"the accelerator gave {n_out} result words, the program expects {out_words}")
        words = [int(line, 16) for line in (self.workdir / "dout.hex").read_text().split()] if n_out else []
        return words, cycles
