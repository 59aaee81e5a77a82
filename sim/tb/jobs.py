"""The one way the unit testbenches drive a unit: write a job's parameters, stream its input beats,
collect its output beats; jobs back to back, each checked on exactly its own outputs.

A `Job` writes its ``params`` words (if any) once the previous job's input is accepted, then
streams its ``words``; ``out_beats`` of output belong to it. ``run_jobs`` plays every stream with
random gaps (the sources) and random back-pressure (the sink), fails on an output beat beyond the
total expected (``StreamSink.receive``) and on a run longer than the bound it is given.
"""

import random
from dataclasses import dataclass, field
from typing import Callable

import cocotb
from cocotb.triggers import with_timeout

from sim.streams import DRAIN_CYCLES, StreamSink, StreamSource
from sim.tb.common import PERIOD_NS

__all__ = ["Job", "JobRun", "run_jobs"]


@dataclass
class Job:
    """Input beats, the number of output beats they give, the parameter words written before
    them, and a check of the job's decoded output fields (None: the caller reads `JobRun.outputs`)."""

    words: list[int]
    out_beats: int
    params: list[int] = field(default_factory=list)
    check: Callable[[dict], None] | None = None


@dataclass
class JobRun:
    """The streams of one run (their handshake cycles) and each job's decoded output fields."""

    params: StreamSource | None
    inp: StreamSource
    out: StreamSink
    outputs: list[dict]


async def run_jobs(dut, clock, jobs: list[Job], out_codec, *, idle: float, seed, cycles: int,
                   out_idle: float | None = None, ports=("params", "inp", "out"), drain: int = DRAIN_CYCLES) -> JobRun:
    """Run `jobs` back to back and check each; `cycles` bounds the run without stalls (it is
    scaled up for them). Input gaps have probability `idle`, back-pressure `out_idle` (by default
    the same); `ports` names the (params, input, output) streams; a unit without parameters needs
    no params port when no job has parameters."""
    out_idle = idle if out_idle is None else out_idle
    params_port, inp_port, out_port = ports
    rng = random.Random(seed)
    inp = StreamSource(dut, inp_port, clock, idle=idle, rng=random.Random(rng.random()))
    sink = StreamSink(dut, out_port, clock, idle=out_idle, rng=random.Random(rng.random()))
    params = (StreamSource(dut, params_port, clock, idle=idle, rng=random.Random(rng.random()))
              if any(job.params for job in jobs) else None)
    total = sum(job.out_beats for job in jobs)

    async def feed_and_collect():
        receiving = cocotb.start_soon(sink.receive(total, drain))
        for job in jobs:
            if job.params:
                await params.send(job.params)
            await inp.send(job.words)
        await receiving

    budget = int(cycles * (1 + 8 * max(idle, out_idle))) + drain
    await with_timeout(feed_and_collect(), budget * PERIOD_NS, "ns")
    fields = out_codec.decode(sink.words)
    outputs, first = [], 0
    for job in jobs:
        outputs.append({key: value[first:first + job.out_beats] for key, value in fields.items()})
        first += job.out_beats
    for job, out in zip(jobs, outputs):
        if job.check is not None:
            job.check(out)
    if inp.accepted_at and sink.received_at:
        dut._log.info("%d jobs: %d beats in, %d out, idle %.1f/%.1f, cycles %d..%d", len(jobs),
                      len(inp.accepted_at), total, idle, out_idle, inp.accepted_at[0], sink.received_at[-1])
    return JobRun(params, inp, sink, outputs)
