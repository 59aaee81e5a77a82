"""The driver API every backend implements: the integer model's ops (``calib.intref.blocks.RefOps``).

* ``ref``: ``RefOps`` itself, the integer reference.
* ``AcceleratorOps``: compiles each op (sw/compiler.py) and runs the program on a ``Device``
  (the Verilated top, sw/sim_job.py), decoding the result words back into the op's tensor. It
  counts cycles, multiply-accumulates and array beats per op kind.
* ``PlanOps``: compiles every op against a configuration without running it, and returns the
  reference's result. It checks a whole model against the hardware before anything is built.
"""

from collections import defaultdict
from typing import Protocol

from calib.intref.blocks import REF

from .compiler import Compiler, Program

__all__ = ["Device", "AcceleratorOps", "PlanOps", "OP_NAMES"]

OP_NAMES = ("linear", "logits", "softmax_lis", "attn_v", "layernorm", "add")


class Device(Protocol):
    def execute(self, program: Program) -> tuple[list[int], int]:
        """Run a program; its result words and the cycles it took."""


class _CompiledOps:
    """Ops that compile every call; subclasses decide what to do with the program."""

    def __init__(self, compiler: Compiler, on_op=None):
        self.compiler = compiler
        self.on_op = on_op  # called after every op (progress)
        self.stats = defaultdict(lambda: {"calls": 0, "cycles": 0, "macs": 0, "array_beats": 0, "din_words": 0})
        self.log = []  # (op kind, cycles) of every call, in order

    def _run(self, name: str, *args):
        prog = getattr(self.compiler, name)(*args)
        s = self.stats[prog.kind]
        s["calls"] += 1
        s["macs"] += prog.macs
        s["array_beats"] += prog.array_beats
        s["din_words"] += len(prog.din)
        out = self._execute(name, prog, args)
        if self.on_op:
            self.on_op(name)
        return out


def _op(name: str):
    def op(self, *args):
        return self._run(name, *args)
    op.__name__ = name
    return op


for _name in OP_NAMES:  # the RefOps methods, each compiled by the Compiler method of the same name
    setattr(_CompiledOps, _name, _op(_name))


class AcceleratorOps(_CompiledOps):
    def __init__(self, compiler: Compiler, device: Device, on_op=None):
        super().__init__(compiler, on_op)
        self.device = device

    def _execute(self, name, prog, args):
        words, cycles = self.device.execute(prog)
        self.stats[prog.kind]["cycles"] += cycles
        self.log.append((prog.kind, cycles))
        return prog.decode(words)


class PlanOps(_CompiledOps):
    def _execute(self, name, prog, args):
        return getattr(REF, name)(*args)
