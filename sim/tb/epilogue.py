"""Shared by the testbenches of the lane-parallel epilogue units (GELU, residual adder, Requantizer).

A tensor of rows of C channels travels as ceil(C / lanes) beats per row: beat g of a row carries
channels g*lanes .. g*lanes + lanes - 1 (its ``group``), ``keep`` marks the real lanes of a ragged
last group and ``last`` ends the row. Per-channel parameters live in bank n % lanes at index
n // lanes. ``run_layers`` writes each layer's parameters, then streams its beats, with random
gaps on both input streams and random back-pressure on the output.
"""

import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cocotb
import numpy as np
import torch
from cocotb.triggers import with_timeout

from sim.streams import StreamSink, StreamSource
from sw.lanes import bank_addresses, from_lanes, lane_beats
from sim.tb.common import PERIOD_NS

__all__ = ["DIGITS_ENV", "lane_beats", "bank_addresses", "from_lanes", "save_digits", "Digits", "Layer", "run_layers",
           "check_passthrough", "check_unstalled_timing"]

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


@dataclass
class Layer:
    """One layer's parameter words, its input beats (fields and encoded words), and a check that
    receives the decoded output fields of exactly its beats."""

    params: list[int]
    fields: dict[str, np.ndarray]
    words: list[int]
    check: object  # callable(out_fields)


async def run_layers(dut, clock, layers: list[Layer], out_codec, idle: float, seed):
    """Stream the layers in order; check each; return the (params, inp) sources and the sink."""
    rng = random.Random(seed)
    params = StreamSource(dut, "params", clock, idle=idle, rng=random.Random(rng.random()))
    inp = StreamSource(dut, "inp", clock, idle=idle, rng=random.Random(rng.random()))
    sink = StreamSink(dut, "out", clock, idle=idle, rng=random.Random(rng.random()))
    beats = sum(len(layer.words) for layer in layers)
    receiving = cocotb.start_soon(sink.receive(beats))
    budget = int((sum(len(layer.params) for layer in layers) + 2 * beats + 100) * (1 + 8 * idle)) * PERIOD_NS
    for layer in layers:
        # a beat reads its parameters in the cycle it is accepted: the next layer's writes may
        # follow its last accepted beat at once
        await with_timeout(params.send(layer.params), budget, "ns")
        await with_timeout(inp.send(layer.words), budget, "ns")
    await with_timeout(receiving, budget, "ns")
    fields = out_codec.decode(sink.words)
    first = 0
    for layer in layers:
        n = len(layer.words)
        out = {key: value[first:first + n] for key, value in fields.items()}
        check_passthrough(layer.fields, out)
        layer.check(out)
        first += n
    dut._log.info("%d layers, %d beats, idle %.1f: cycles %d..%d", len(layers), beats, idle,
                  inp.accepted_at[0], sink.received_at[-1])
    return params, inp, sink


def check_passthrough(inp: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> None:
    """``keep`` and ``last`` leave with their beat, in order."""
    for key in ("keep", "last"):
        if not np.array_equal(inp[key], out[key]):
            bad = int(np.flatnonzero(inp[key] != out[key])[0])
            raise AssertionError(f"{key} of beat {bad}: sent {int(inp[key][bad])}, received {int(out[key][bad])}")


def contiguous(cycles: list[int]) -> bool:
    return cycles == list(range(cycles[0], cycles[0] + len(cycles)))


def check_unstalled_timing(params: StreamSource, inp: StreamSource, sink: StreamSink, latency: int) -> None:
    """With no gaps and no back-pressure: parameters written one per cycle (always ready), one beat
    per cycle in and out, each `latency` cycles after its handshake."""
    assert contiguous(params.accepted_at), "params not always ready"
    accepted, received = inp.accepted_at, sink.received_at
    assert contiguous(accepted), "input stalled"
    delays = {r - a for a, r in zip(accepted, received)}
    assert delays == {latency}, f"beats left {sorted(delays)} cycles after their handshake, published latency {latency}"
