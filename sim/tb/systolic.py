"""cocotb testbench of the systolic array (``hw.systolic``), compared with ``calib.intref.gemm``.

Run through ``sim.toolchain`` (see ``tests/test_systolic_sim.py``); the array configuration comes
in ``$SYSTOLIC_CONFIG`` as JSON. Every test streams whole matmuls, tiled by ``hw.tiling``, through
the operand stream with random gaps while the result stream gets random back-pressure, and then
compares every output element with the reference. Nothing is compared with a tolerance.
"""

import json
import os
import random
import time

import cocotb
import torch

from calib.intref.gemm import INT8, UINT8, matmul_codes
from hw.payload import PayloadCodec
from hw.systolic import SystolicConfig
from hw.tiling import assemble, operand_beats
from sim.scoreboard import assert_bit_exact
from sim.tb.common import seeded, start
from sim.tb.jobs import Job, JobRun, run_jobs

CFG = SystolicConfig(**json.loads(os.environ.get("SYSTOLIC_CONFIG", "{}")))
IN_CODEC = PayloadCodec(CFG.operand_layout)
OUT_CODEC = PayloadCodec(CFG.result_layout)


class Matmul:
    """One (A - za) @ (B - zb) job: inputs, its tiling, and its reference result."""

    def __init__(self, a, b, za, zb, a_spec, b_spec):
        self.a, self.b, self.za, self.zb, self.a_spec, self.b_spec = a, b, za, zb, a_spec, b_spec
        self.tiles, fields = operand_beats(a, b, za, zb, CFG.rows, CFG.cols, a_spec, b_spec)
        self.words = IN_CODEC.encode(fields)
        self.result_rows = sum(t.rows for t in self.tiles)

    def __repr__(self):
        return (f"A{tuple(self.a.shape)}:{self.a_spec} za={self.za} @ "
                f"B{tuple(self.b.shape)}:{self.b_spec} zb={self.zb}")

    def outputs(self, fields):
        """(hardware result, reference result) from the result-stream fields of this job."""
        got = torch.from_numpy(assemble(self.tiles, self.a.shape[0], self.b.shape[1], fields))
        return got, matmul_codes(self.a, self.b, self.za, self.zb, self.a_spec, self.b_spec)

    def check(self, fields):
        got, want = self.outputs(fields)

        def explain(idx):
            i, j = idx
            return f"A[{i},:8]={self.a[i, :8].tolist()} B[:8,{j}]={self.b[:8, j].tolist()}"

        assert_bit_exact(f"{CFG.name} {self!r}", got, want, explain)


def random_matmul(gen: torch.Generator, m, k, n, a_spec=UINT8, b_spec=INT8) -> Matmul:
    def codes(spec, shape):
        return torch.randint(spec.lo, spec.hi + 1, shape, generator=gen)

    za = int(codes(a_spec, ()))
    zb = 0 if b_spec is INT8 else int(codes(b_spec, ()))  # weights: symmetric int8
    return Matmul(codes(a_spec, (m, k)), codes(b_spec, (k, n)), za, zb, a_spec, b_spec)


async def run_matmuls(dut, clock, matmuls: list[Matmul], idle: float, seed, check: bool = True) -> JobRun:
    """Stream `matmuls` back to back; check each one's result (unless `check` is False: the caller
    reads `JobRun.outputs`)."""
    jobs = [Job(m.words, m.result_rows, check=m.check if check else None) for m in matmuls]
    cycles = sum(len(job.words) + 2 * job.out_beats for job in jobs) + 4 * CFG.rows + 100
    return await run_jobs(dut, clock, jobs, OUT_CODEC, idle=idle, seed=seed, cycles=cycles,
                          ports=(None, "operands", "results"))


@cocotb.test()
async def random_shapes_with_stalls(dut):
    """Random shapes (K=1, K below the tile spacing, ragged M/N) in both operand modes, stalled."""
    seed, gen = seeded()
    rng = random.Random(seed)
    jobs = []
    for _ in range(40):
        m = rng.randint(1, 3 * CFG.rows + 1)
        n = rng.randint(1, 3 * CFG.cols + 1)
        k = rng.choice([1, 2, CFG.min_tile_beats - 1 or 1, rng.randint(1, 80)])
        specs = rng.choice([(UINT8, INT8), (UINT8, UINT8)])
        jobs.append(random_matmul(gen, m, k, n, *specs))
    clock = await start(dut)
    for idle in (0.0, 0.3):
        await run_matmuls(dut, clock, jobs, idle, seed)


@cocotb.test()
async def vit_sized_ragged_matmul(dut):
    """M=197 tokens, K=192 (DeiT-T width) and an N that leaves a ragged last column tile."""
    _, gen = seeded()
    n = 2 * CFG.cols + CFG.cols // 2 + 1
    jobs = [random_matmul(gen, 197, 192, n)]
    clock = await start(dut)
    await run_matmuls(dut, clock, jobs, 0.2, cocotb.RANDOM_SEED)


@cocotb.test()
async def extreme_codes_near_int32_limits(dut):
    """All-extreme codes and zero points, K long enough to come within 0.002% of int32's range."""
    k = 2**31 // (255 * 255)  # the longest reduction that cannot overflow uint8 x uint8
    m, n = CFG.rows, CFG.cols
    full = torch.full
    jobs = [
        Matmul(full((m, k), 255), full((k, n), 255), 0, 0, UINT8, UINT8),  # +2147450625
        Matmul(full((m, k), 255), full((k, n), 0), 0, 255, UINT8, UINT8),  # -2147450625
        Matmul(full((m, 64), 0), full((64, n), -128), 255, 0, UINT8, INT8),
        Matmul(full((m, 64), 255), full((64, n), 127), 0, 0, UINT8, INT8),
    ]
    assert int(matmul_codes(jobs[0].a, jobs[0].b, 0, 0, UINT8, UINT8)[0, 0]) > 2**31 - 2**16
    clock = await start(dut)
    await run_matmuls(dut, clock, jobs, 0.1, cocotb.RANDOM_SEED)


@cocotb.test()
async def published_latency_and_full_throughput(dut):
    """Unstalled: one beat per cycle, first row `latency` cycles after `last`, rows every 2 cycles."""
    _, gen = seeded()
    k = max(CFG.min_tile_beats, 32)
    job = random_matmul(gen, 3 * CFG.rows, k, 2 * CFG.cols)
    clock = await start(dut)
    run = await run_matmuls(dut, clock, [job], 0.0, cocotb.RANDOM_SEED)
    accepted, sink = run.inp.accepted_at, run.out
    assert accepted == list(range(accepted[0], accepted[0] + len(accepted))), "operands stalled"
    first_row = sink.received_at[0]
    last_beat_of_tile0 = accepted[k - 1]
    assert first_row - last_beat_of_tile0 == CFG.latency, (
        f"first result row {first_row - last_beat_of_tile0} cycles after 'last', "
        f"published latency {CFG.latency}")
    gaps = {b - a for a, b in zip(sink.received_at, sink.received_at[1:CFG.rows])}
    assert gaps <= {CFG.row_interval}, f"rows of a tile {gaps} cycles apart"
    total = sink.received_at[-1] - accepted[0] + 1
    ideal = len(job.tiles) * k
    assert total == ideal + CFG.latency + 2 * CFG.rows - 2, f"{total} cycles for {len(job.tiles)} tiles of K={k}"
    dut._log.info("%s: %d tiles x K=%d in %d cycles (%.1f%% of ideal)",
                  CFG.name, len(job.tiles), k, total, 100 * ideal / total)


@cocotb.test(skip="MATMUL_JOB" not in os.environ)
async def matmul_job(dut):
    """Not a regression test: runs the job `sw.run_matmul` describes in $MATMUL_JOB, writes a report."""
    spec = json.loads(os.environ["MATMUL_JOB"])
    gen = torch.Generator().manual_seed(spec["seed"])
    job = random_matmul(gen, spec["m"], spec["k"], spec["n"])
    clock = await start(dut)
    started = time.perf_counter()
    run = await run_matmuls(dut, clock, [job], 0.0, spec["seed"], check=False)
    wall = time.perf_counter() - started
    got, want = job.outputs(run.outputs[0])
    cycles = run.out.received_at[-1] - run.inp.accepted_at[0] + 1
    report = {
        "array": f"{CFG.rows}x{CFG.cols}", "shape": [spec["m"], spec["k"], spec["n"]],
        "tiles": len(job.tiles), "operand_beats": len(job.words), "cycles": cycles,
        "mac_utilization": spec["m"] * spec["k"] * spec["n"] / (CFG.rows * CFG.cols * cycles),
        "bit_exact": bool(torch.equal(got, want)), "mismatches": int((got != want).sum()),
        "sim_wall_s": wall, "sim_cycles_per_s": cycles / wall,
    }
    with open(spec["report"], "w") as f:
        json.dump(report, f, indent=2)
