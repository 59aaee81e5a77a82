"""The ``sim`` backend's side: a model (or benchmark GEMMs) run on the Verilated top.

sw/driver.py starts the compiled harness (sim/host.py's ``HostProcess``) and hands a job here:
an integer model, image codes and the blocks to run, or GEMM shapes. The network's forward
runs with ``AcceleratorOps``; each op's program goes to the harness through ``SimDevice``, which
hands whole programs to the RTL and waits for them, so Python is out of the per-cycle loop. The
result holds every traced tensor, per-op statistics and the simulation's times.
"""

import time

import torch

from calib.intref import vit
from hw.top import TopConfig
from sim.host import CMD_DEPTH, DIN_DEPTH, DOUT_DEPTH, HostProcess

from .compiler import CHECK, Compiler, Program
from .ops import AcceleratorOps

__all__ = ["SimDevice", "run"]


class SimDevice:
    """Runs programs on the harness, split at command boundaries into runs that fit its memories."""

    def __init__(self, link: HostProcess, compiler: Compiler):
        self.link = link
        self.compiler = compiler
        self.sim_seconds = 0.0
        self.cycles = 0
        self.check_cycles = 0  # check-mode read-backs (Program kind CHECK), not the model's

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
            # generous bound: every word, operand beat and softmax key at a tenth of the full rate
            limit = 10 * (din + out + sum(c.get("k", 0) * c.get("tiles", 0) * (c.get("extra_slabs", 0) + 1)
                                          + c.get("keys", 0) * c.get("out_count", 0) for c in cmds)) + 100_000
            t0 = time.perf_counter()
            got, c = self.link.run(self.compiler.encode_commands(cmds), program.din[start_word:start_word + din],
                                   out, limit)
            self.sim_seconds += time.perf_counter() - t0
            words += got
            cycles += c
            start_word += din
        if program.kind == CHECK:
            self.check_cycles += cycles
        else:
            self.cycles += cycles
        return words, cycles


def _run_model(job: dict, compiler: Compiler, device: SimDevice, on_op) -> dict:
    im = job["model"]
    ops = AcceleratorOps(compiler, device, on_op, check=job.get("check", True))
    trace = {}
    out = vit.forward(im, job["codes"], trace, ops, job["depth"])
    return {"out": out, "trace": trace, "stats": dict(ops.stats), "log": ops.log, "traffic": ops.traffic,
            "check_traffic": dict(ops.check_traffic)}


def _run_gemms(job: dict, compiler: Compiler, device: SimDevice, on_op) -> dict:
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
        on_op("linear")
    return {"gemms": rows}


def run(link: HostProcess, cfg: TopConfig, job: dict, on_op=lambda name: None) -> dict:
    """Run `job` (``model``, ``codes``, ``depth``; or ``gemms``) on the harness behind `link`;
    `on_op(name)` after each op."""
    compiler = Compiler(cfg)
    device = SimDevice(link, compiler)
    t0 = time.perf_counter()
    result = (_run_gemms if "gemms" in job else _run_model)(job, compiler, device, on_op)
    result.update(cycles=device.cycles, check_cycles=device.check_cycles, sim_seconds=device.sim_seconds, rtl_seconds=link.rtl_seconds,
                  wall_s=time.perf_counter() - t0)
    return result
