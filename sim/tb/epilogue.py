"""Shared by the testbenches of the lane-parallel epilogue units (GELU, residual adder, Requantizer).

A tensor of rows of C channels travels as ceil(C / lanes) beats per row: beat g of a row carries
channels g*lanes .. g*lanes + lanes - 1 (its ``group``), ``keep`` marks the real lanes of a ragged
last group and ``last`` ends the row. Per-channel parameters live in bank n % lanes at index
n // lanes. ``run_layers`` writes each layer's parameters, then streams its beats (``sim.tb.jobs``),
with random gaps on both input streams and random back-pressure on the output.
"""

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from hw.lanes import bank_addresses, from_lanes, lane_beats
from sim.tb.jobs import Job, JobRun, run_jobs

__all__ = ["DIGITS_ENV", "lane_beats", "bank_addresses", "from_lanes", "save_digits", "Digits", "layer_job",
           "run_layers", "check_passthrough", "check_unstalled_timing"]

DIGITS_ENV = "EPILOGUE_DIGITS"

# What the testbenches take from the digits model (sim.vectors): its first GELU, its first residual
# add, and the linear layers fc1 (uint8 out) and head (int32 logits) with their inputs.
DIGITS_TENSORS = ("blocks.0.mlp.gelu", "resid.1.ma", "resid.1.mb",
                  *(f"{layer}.{k}" for layer in ("blocks.0.mlp.fc1", "head") for k in ("w", "b", "mult", "shift")))
DIGITS_INTS = ("resid.1.shift", *(f"zero.{p}" for p in ("resid.0", "blocks.0.attn.proj", "resid.1", "blocks.0.norm2",
                                                        "blocks.0.mlp.fc1", "norm")))
DIGITS_TRACE = ("blocks.0.mlp.fc1", "blocks.0.mlp.gelu", "resid.0", "blocks.0.attn.proj", "resid.1",
                "blocks.0.norm2", "norm", "logits")


def save_digits(path) -> None:
    """Write the digits model's tensors the testbenches use to `path`, so a simulation run never
    calibrates (or trains) a model itself: the test passes the path in $EPILOGUE_DIGITS."""
    from sim.vectors import digits_vectors

    im, trace, _ = digits_vectors()
    torch.save({"t": {n: im.t(n) for n in DIGITS_TENSORS}, "i": {n: im.i(n) for n in DIGITS_INTS},
                "trace": {n: trace[n] for n in DIGITS_TRACE}}, path)


class Digits:
    """The saved part of the digits model with IntModel's accessors, from $EPILOGUE_DIGITS
    (or straight from ``sim.vectors`` when a testbench runs on its own)."""

    def __init__(self):
        path = os.environ.get(DIGITS_ENV)
        if path is None:
            path = Path(tempfile.mkdtemp()) / "digits.pt"
            save_digits(path)
        saved = torch.load(path, weights_only=True)
        self._t, self._i, self.trace = saved["t"], saved["i"], saved["trace"]

    def t(self, name: str) -> torch.Tensor:
        return self._t[name]

    def i(self, name: str) -> int:
        return self._i[name]

    def zero(self, point: str) -> int:
        return self._i[f"zero.{point}"]


def layer_job(params: list[int], fields: dict[str, np.ndarray], words: list[int], check) -> Job:
    """One layer: its parameter words, its input beats (fields and encoded words) and `check`,
    which receives the decoded output fields of exactly its beats (after ``keep`` and ``last``
    are checked to have left with their beats)."""
    def check_all(out):
        check_passthrough(fields, out)
        check(out)

    return Job(words, len(words), params, check_all)


async def run_layers(dut, clock, layers: list[Job], out_codec, idle: float, seed) -> JobRun:
    """Stream the layers in order and check each. A beat reads its parameters in the cycle it is
    accepted: the next layer's writes follow its last accepted beat at once."""
    cycles = sum(len(layer.params) + 2 * layer.out_beats for layer in layers) + 100
    return await run_jobs(dut, clock, layers, out_codec, idle=idle, seed=seed, cycles=cycles)


def check_passthrough(inp: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> None:
    """``keep`` and ``last`` leave with their beat, in order."""
    for key in ("keep", "last"):
        if not np.array_equal(inp[key], out[key]):
            bad = int(np.flatnonzero(inp[key] != out[key])[0])
            raise AssertionError(f"{key} of beat {bad}: sent {int(inp[key][bad])}, received {int(out[key][bad])}")


def contiguous(cycles: list[int]) -> bool:
    return cycles == list(range(cycles[0], cycles[0] + len(cycles)))


def check_unstalled_timing(run: JobRun, latency: int, interval: int = 1) -> None:
    """With no gaps and no back-pressure: parameters written one per cycle (always ready), one beat
    every `interval` cycles in and out, each `latency` cycles after its handshake."""
    assert contiguous(run.params.accepted_at), "params not always ready"
    accepted, received = run.inp.accepted_at, run.out.received_at
    assert accepted == list(range(accepted[0], accepted[0] + interval * len(accepted), interval)), \
        f"input not taken every {interval} cycles: {accepted}"
    delays = {r - a for a, r in zip(accepted, received)}
    assert delays == {latency}, f"beats left {sorted(delays)} cycles after their handshake, published latency {latency}"
