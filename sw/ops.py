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

from .compiler import CHECK, Compiler, Program

__all__ = ["Device", "AcceleratorOps", "PlanOps", "OP_NAMES"]

OP_NAMES = ("linear", "layernorm", "add")  # compiled alike; `attention` has check-mode read-backs


class Device(Protocol):
    def execute(self, program: Program) -> tuple[list[int], int]:
        """Run a program; its result words and the cycles it took."""


class _CompiledOps:
    """Ops that compile every call; subclasses decide what to do with the program.

    `check` (the default): the attention chain's intermediates (the logit codes and the softmax
    codes) are read back too, by programs of kind ``check`` that run the same hardware up to that
    point (a MATMUL to the host, an ATTEND with ``tap``) and whose cycles are reported apart from
    the model's. Without it (performance mode) the attention op gives attention x V's output only.
    """

    def __init__(self, compiler: Compiler, on_op=None, check: bool = True):
        self.compiler = compiler
        self.on_op = on_op  # called after every op (progress)
        self.check = check
        self.stats = defaultdict(lambda: {"calls": 0, "cycles": 0, "macs": 0, "array_beats": 0, "din_words": 0})
        self.log = []  # (op kind, cycles) of every call, in order
        self.traffic = []  # Compiler.link_bytes of every program but the check mode's, in order
        self.check_traffic = defaultdict(int)  # the check mode's read-back programs, summed

    def _program(self, prog: Program, name: str, args):
        s = self.stats[prog.kind]
        s["calls"] += 1
        s["macs"] += prog.macs
        s["array_beats"] += prog.array_beats
        s["din_words"] += len(prog.din)
        traffic = self.compiler.link_bytes(prog)
        if prog.kind == CHECK:
            for key, n in traffic.items():
                self.check_traffic[key] += n
        else:
            self.traffic.append(traffic)
        return self._execute(name, prog, args)

    def _run(self, name: str, *args):
        out = self._program(getattr(self.compiler, name)(*args), name, args)
        if self.on_op:
            self.on_op(name)
        return out

    def attention(self, q, k, v, z, logits_rq, table, rule, mask, attn_v_rq):
        args = (q, k, v, z, logits_rq, table, rule, mask, attn_v_rq)
        out = self._program(self.compiler.attention(*args), "attention", args)
        logits = probs = None
        if self.check:
            check = self.compiler.logits(q, k, z, *logits_rq)
            check.kind = CHECK
            logits = self._program(check, "logits", (q, k, z, *logits_rq))
            probs = self._program(self.compiler.attention(*args, tap=True), "attention_tap", args)
        if self.on_op:
            self.on_op("attention")
        return logits, probs, out


def _op(name: str):
    def op(self, *args):
        return self._run(name, *args)
    op.__name__ = name
    return op


for _name in OP_NAMES:  # the RefOps methods, each compiled by the Compiler method of the same name
    setattr(_CompiledOps, _name, _op(_name))


class AcceleratorOps(_CompiledOps):
    def __init__(self, compiler: Compiler, device: Device, on_op=None, check: bool = True):
        super().__init__(compiler, on_op, check)
        self.device = device

    def _execute(self, name, prog, args):
        words, cycles = self.device.execute(prog)
        self.stats[prog.kind]["cycles"] += cycles
        if prog.kind != CHECK:  # the model's ops only: sw/bench.py reads the log by position
            self.log.append((prog.kind, cycles))
        return prog.decode(words)


class PlanOps(_CompiledOps):
    def _execute(self, name, prog, args):
        if name == "attention":
            return REF.attention(*args)[2]
        if name == "attention_tap":
            return REF.attention(*args)[1]
        return getattr(REF, name)(*args)
