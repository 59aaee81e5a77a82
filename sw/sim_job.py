"""The ``sim`` backend's side inside the simulator: a cocotb test that runs the model on the top.

sw/driver.py writes a job (integer model file, image codes, top configuration, blocks to run)
and starts this test on the Verilated harness (sim/host.py). The network's forward runs in a
cocotb bridge thread with ``AcceleratorOps``; each op's program goes to the harness through
``SimDevice``, which hands whole programs to the RTL and waits for ``done``, so Python is out of
the per-cycle loop. The result (every traced tensor, per-op statistics, simulation speed) is
saved for the driver to compare.
"""

import json
import os
import time
from pathlib import Path

import cocotb
import torch
from cocotb.task import bridge, resume

from calib.export import load
from calib.intref import vit
from hw.top import TopConfig
from sim.host import CMD_DEPTH, DIN_DEPTH, DOUT_DEPTH, HostLink
from sim.tb.common import start

from .compiler import Compiler, Program
from .ops import AcceleratorOps

__all__ = ["SimDevice"]


class SimDevice:
    """Runs programs on the harness, split at command boundaries into runs that fit its memories."""

    def __init__(self, link: HostLink, compiler: Compiler):
        self.link = link
        self.compiler = compiler
        self.sim_seconds = 0.0
        self.cycles = 0

    def _runs(self, program: Program):
        run, din, out = [], 0, 0
        for cmd in program.commands:
            n, o = cmd.get("count", 0), cmd.get("out_count", 0)
            if run and (len(run) == CMD_DEPTH or din + n > DIN_DEPTH or out + o > DOUT_DEPTH):
                yield run, din, out
                run, din, out = [], 0, 0
            run.append(cmd)
            din, out = din + n, out + o
        if run:
            yield run, din, out

    def execute(self, program: Program) -> tuple[list[int], int]:
        words, cycles, start_word = [], 0, 0
        for cmds, din, out in self._runs(program):
            # generous bound: every word and operand beat at a tenth of the full rate
            limit = 10 * (din + out + sum(c.get("k", 0) * c.get("tiles", 0) for c in cmds)) + 100_000
            t0 = time.perf_counter()
            got, c = resume(self.link.run)(self.compiler.encode_commands(cmds),
                                           program.din[start_word:start_word + din], out, limit)
            self.sim_seconds += time.perf_counter() - t0
            words += got
            cycles += c
            start_word += din
        self.cycles += cycles
        return words, cycles


def _run_model(job: dict, compiler: Compiler, device: SimDevice) -> dict:
    im = load(job["model"])
    codes = torch.load(job["codes"])
    progress = Path(job["progress"])
    done = [0]

    def on_op(name):
        done[0] += 1
        progress.write_text(str(done[0]))

    ops = AcceleratorOps(compiler, device, on_op)
    trace = {}
    out = vit.forward(im, codes, trace, ops, job["depth"])
    return {"out": out, "trace": trace, "stats": dict(ops.stats), "log": ops.log}


def _run_gemms(job: dict, compiler: Compiler, device: SimDevice) -> dict:
    """Benchmark GEMMs (sw/bench.py): random codes through the linear op, checked against the reference."""
    from calib.intref.blocks import REF

    gen = torch.Generator().manual_seed(0)
    rows = []
    for m, k, n in job["gemms"]:
        x = torch.randint(0, 256, (m, k), generator=gen)
        w = torch.randint(-128, 128, (n, k), generator=gen)
        args = (x, w, 7, torch.randint(-1000, 1000, (n,), generator=gen), torch.full((n,), 40000),
                torch.full((n,), 30), 3, False)
        prog = compiler.linear(*args)
        words, cycles = device.execute(prog)
        got, _ = prog.decode(words)
        rows.append({"shape": [m, k, n], "cycles": cycles, "macs": prog.macs,
                     "bit_exact": bool(torch.equal(got, REF.linear(*args)[0]))})
    return {"gemms": rows}


def _run(job: dict, link: HostLink) -> None:
    compiler = Compiler(TopConfig(**job["top"]))
    device = SimDevice(link, compiler)
    t0 = time.perf_counter()
    result = (_run_gemms if "gemms" in job else _run_model)(job, compiler, device)
    result.update(cycles=device.cycles, sim_seconds=device.sim_seconds, rtl_seconds=link.rtl_seconds,
                  wall_s=time.perf_counter() - t0)
    torch.save(result, job["result"])


@cocotb.test()
async def run_job(dut):
    job = json.loads(Path(os.environ["FQVIT_SIM_JOB"]).read_text())
    await start(dut, low=("load", "go", "dump", "n_cmd", "n_din"), drive_clock=False)  # the harness clocks itself
    await bridge(_run)(job, HostLink(dut))
