"""The compiler: each op of the integer model becomes a program of accelerator commands.

A ``Program`` holds the commands (``hw.top.TopConfig.cmd_layout`` field dicts), the data words
they consume, the number of result words they give and how to turn those words back into the
op's output tensor. Tiling follows the top's buffers:

* a GEMM (M x K) @ (K x N) loads the weights once per chunk of output tiles that fits the weight
  buffer, then for every slab of ``rows`` tokens loads the slab (K words) and runs one MATMUL over
  the chunk's tiles; the tokens of every image in the batch share one weight load;
* attention runs on chip per head: Q.K^T, the LIS softmax and attention x V (``attention``);
* LayerNorm and residual adds stream their beats through the unit.

Every check of a shape against the hardware happens here, before anything runs, and raises
``CompileError`` naming the op, what it needs and what the configuration has.
"""

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from hw.lanes import bank_addresses, from_lanes, lane_beats
from hw.payload import PayloadCodec
from hw.top import COUNT_BITS, Op, TopConfig, UnitId

__all__ = ["CompileError", "Program", "Compiler", "CHECK", "model_ops"]

STREAM_BEATS = 1 << 16  # beats per STREAM command, so a program splits into host-memory-sized runs


CHECK = "check"  # the kind of check mode's read-back programs: run, counted and reported apart from the model's


def model_ops(stats: dict) -> dict:
    """Per-kind statistics (AcceleratorOps.stats) of the model's own ops, without the read-backs."""
    return {kind: s for kind, s in sorted(stats.items()) if kind != CHECK}


class CompileError(ValueError):
    """An op the configured accelerator cannot run; the message says why and what would fix it."""


@dataclass
class Program:
    kind: str  # op kind for the cycle report: linear, attention, layernorm, add; CHECK: check-mode read-back
    commands: list[dict] = field(default_factory=list)
    din: list[int] = field(default_factory=list)
    out_words: int = 0
    macs: int = 0  # useful multiply-accumulates (for the array's utilization)
    array_beats: int = 0  # operand beats the array is fed
    decode: Callable[[list[int]], object] | None = None

    def add(self, words: list[int], **fields) -> None:
        """Append one command and the data words it takes."""
        fields.setdefault("count", len(words))
        if fields["count"] >= 1 << COUNT_BITS or fields.get("out_count", 0) >= 1 << COUNT_BITS:
            raise CompileError(f"{self.kind}: one command of {fields['count']} words exceeds the top's "
                               f"{COUNT_BITS}-bit counters")
        self.commands.append(fields)
        self.din.extend(words)
        self.out_words += fields.get("out_count", 0)


def _lanes(rows: np.ndarray, lanes: int) -> np.ndarray:
    """[n, w <= lanes] -> [n, lanes], zero padded."""
    out = np.zeros((rows.shape[0], lanes), dtype=np.int64)
    out[:, :rows.shape[1]] = rows
    return out


class Compiler:
    def __init__(self, cfg: TopConfig):
        self.cfg = cfg
        self.units = cfg.units()
        self.cmd_codec = PayloadCodec(cfg.cmd_layout)
        self.codecs = {name: (PayloadCodec(u.param_layout) if hasattr(u, "param_layout") else None,
                              PayloadCodec(u.in_layout), PayloadCodec(u.out_layout))
                       for name, u in self.units.items() if name != "systolic"}
        self.epilogue = PayloadCodec(cfg.epilogue_layout)

    # -- host link traffic --------------------------------------------------------------------------

    def link_bytes(self, prog: Program) -> dict:
        """Bytes `prog` moves over the host link, by what they are: `program` (commands), `weights`
        (weights, K and V of attention, and every unit's parameters), `data_in` and `data_out`
        (activations to and from the accelerator). A word counts the bytes of its payload (a slab
        word R codes, an epilogue row its int32 lanes and GELU codes), not the link's width."""
        u, cfg = self.units, self.cfg
        size = lambda bits: -(-bits // 8)  # noqa: E731
        din = {Op.LOAD_ACT: cfg.rows, Op.LOAD_WEIGHT: cfg.cols, Op.LOAD_V: cfg.attention.v_word}
        params = {UnitId.REQUANT: "requant", UnitId.GELU: "gelu", UnitId.LAYERNORM: "layernorm",
                  UnitId.SOFTMAX: "softmax", UnitId.RESIDUAL: "residual"}
        out = {"program": len(prog.commands) * size(cfg.cmd_layout.size), "weights": 0, "data_in": 0, "data_out": 0}
        for c in prog.commands:
            op, n, o = c["op"], c.get("count", 0), c.get("out_count", 0)
            unit = params.get(c.get("unit"))
            if op == Op.PARAMS:
                out["weights"] += n * size(u[unit].param_layout.size)
            elif op == Op.LOAD_ACT:
                out["data_in"] += n * din[op]
            elif op in din:  # LOAD_WEIGHT, LOAD_V
                out["weights"] += n * din[op]
            elif op == Op.STREAM:
                out["data_in"] += n * size(u[unit].in_layout.size)
                out["data_out"] += o * size(u[unit].out_layout.size)
            elif op == Op.MATMUL:
                out["data_out"] += o * size(cfg.epilogue_layout.size)
            elif op == Op.ATTEND:
                out["data_out"] += o * size(u["softmax" if c.get("tap") else "attnv"].out_layout.size)
        return out

    # -- encoding --------------------------------------------------------------------------------

    def encode_commands(self, commands: list[dict]) -> list[int]:
        names = [name for name, _ in self.cfg.cmd_layout]
        fields = {n: np.array([int(getattr(c.get(n, 0), "value", c.get(n, 0))) for c in commands], dtype=np.int64)
                  for n in names}
        return self.cmd_codec.encode(fields)

    @staticmethod
    def _bytes(lanes: np.ndarray) -> list[int]:
        """Rows of byte lanes (lane 0 in the low bits) as integers."""
        packed = (lanes & 0xFF).astype(np.uint8)
        return [int.from_bytes(row.tobytes(), "little") for row in packed]

    def _params(self, prog: Program, unit: str, uid: UnitId, fields: dict) -> None:
        prog.add(self.codecs[unit][0].encode(fields), op=Op.PARAMS, unit=uid)

    def _stream(self, prog: Program, unit: str, uid: UnitId, fields: dict, group: int, out_per_group: int) -> None:
        """STREAM commands for beats that come in groups of `group` (a token, a row) giving
        `out_per_group` result words each; a command takes at most STREAM_BEATS beats, in whole groups."""
        words = self.codecs[unit][1].encode(fields)
        per = max(1, STREAM_BEATS // group) * group
        for i in range(0, len(words), per):
            part = words[i:i + per]
            prog.add(part, op=Op.STREAM, unit=uid, out_count=len(part) // group * out_per_group)

    # -- GEMM ------------------------------------------------------------------------------------

    def _gemm(self, prog: Program, what: str, x: torch.Tensor, w: torch.Tensor, a_zero: int, b_zero: int,
              b_signed: bool, zero: int, wide: bool) -> list[tuple[int, int, int]]:
        """Commands for x [M, K] (uint8 codes) times w [N, K] (the B operand, transposed); returns
        where each result word goes: (first token, first channel, tokens, channels) per word."""
        cfg, R, C = self.cfg, self.cfg.rows, self.cfg.cols
        m, k = x.shape
        n = w.shape[0]
        if k > cfg.act_words:
            raise CompileError(f"{what}: K = {k} does not fit the activation buffer ({cfg.act_kib} KiB holds "
                               f"{cfg.act_words} words of {R} codes); raise act_kib or use fewer array rows")
        chunk = cfg.weight_words // k  # output tiles per weight load
        if chunk == 0:
            raise CompileError(f"{what}: one weight tile (K = {k} words of {C} codes) does not fit the weight "
                               f"buffer ({cfg.weight_kib} KiB, {cfg.weight_words} words); raise weight_kib")
        tiles = -(-n // C)
        double = 2 * k <= cfg.act_words
        wt = np.zeros((tiles * C, k), dtype=np.int64)
        wt[:n] = w.numpy()
        xs = x.numpy().astype(np.int64)
        where = []
        for t0 in range(0, tiles, chunk):
            t1 = min(tiles, t0 + chunk)
            wwords = wt[t0 * C:t1 * C].reshape(t1 - t0, C, k).transpose(0, 2, 1).reshape(-1, C)
            prog.add(self._bytes(wwords), op=Op.LOAD_WEIGHT, addr=0)
            last_cols = min(C, n - (t1 - 1) * C)
            for slab, m0 in enumerate(range(0, m, R)):
                rows = min(R, m - m0)
                # Two slabs fit: alternate halves, so each slab loads while the previous one computes.
                addr = (slab % 2) * k if double else 0
                prog.add(self._bytes(_lanes(xs[m0:m0 + rows].T, R)), op=Op.LOAD_ACT, addr=addr,
                         overlap=int(double))
                prog.add([], op=Op.MATMUL, addr=addr, waddr=0, k=k, tiles=t1 - t0, group=t0, rows=rows,
                         last_cols=last_cols, a_zero=a_zero, b_zero=b_zero, b_signed=int(b_signed), zero=zero,
                         wide=int(wide), out_count=(t1 - t0) * rows)
                prog.array_beats += (t1 - t0) * k
                for t in range(t0, t1):
                    cols = min(C, n - t * C)
                    where.extend((m0 + r, t * C, cols) for r in range(rows))
        prog.macs += m * n * k
        return where

    @staticmethod
    def _scatter(lanes: np.ndarray, where, m: int, n: int) -> torch.Tensor:
        """Result rows (decoded epilogue lanes, in emission order) into the M x N output."""
        out = np.zeros((m, n), dtype=np.int64)
        for (row, c0, cols), values in zip(where, lanes):
            out[row, c0:c0 + cols] = values[:cols]
        return torch.from_numpy(out)

    def _requant_params(self, prog: Program, n: int, bias, mult, shift, what: str) -> None:
        if n > self.cfg.max_channels:
            raise CompileError(f"{what}: {n} output channels exceed the requantizer's max_channels "
                               f"({self.cfg.max_channels})")
        self._params(prog, "requant", UnitId.REQUANT, {
            **bank_addresses(n, self.cfg.cols),
            "bias": np.broadcast_to(np.asarray(bias, dtype=np.int64), (n,)),
            "mult": np.broadcast_to(np.asarray(mult, dtype=np.int64), (n,)),
            "shift": np.broadcast_to(np.asarray(shift, dtype=np.int64), (n,)),
        })

    def linear(self, x, w, z_x: int, bias, mult, shift, z_out: int, wide: bool, gelu_table=None) -> Program:
        """x [..., K] codes @ w [N, K].T + bias, requantized (and looked up in `gelu_table`)."""
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k)
        n = w.shape[0]
        prog = Program("linear")
        self._requant_params(prog, n, 0 if bias is None else bias.numpy(), mult.numpy(), shift.numpy(), "linear")
        if gelu_table is not None:
            self._params(prog, "gelu", UnitId.GELU, {"index": np.arange(256), "value": gelu_table.numpy()})
        where = self._gemm(prog, "linear", x2, w, z_x, 0, True, z_out, wide)

        def decode(words):
            fields = self.epilogue.decode(words)
            out = self._scatter(fields["data"], where, x2.shape[0], n).reshape(*lead, n)
            out = out.to(torch.int32) if wide else out
            g = None if gelu_table is None else self._scatter(fields["gelu"], where, x2.shape[0], n).reshape(*lead, n)
            return out, g
        prog.decode = decode
        return prog

    def logits(self, q, k, z: int, mult: int, shift: int, z_out: int) -> Program:
        """Requantized Q.K^T for q, k [..., N, hd]: one GEMM per head, K as the B operand."""
        *lead, nq, hd = q.shape
        nk = k.shape[-2]
        prog = Program("logits")
        self._requant_params(prog, nk, 0, mult, shift, "attention logits")
        qs, ks = q.reshape(-1, nq, hd), k.reshape(-1, nk, hd)
        wheres = [self._gemm(prog, "attention logits", qs[h], ks[h], z, z, False, z_out, False)
                  for h in range(qs.shape[0])]

        def decode(words):
            data = self.epilogue.decode(words)["data"]
            outs, i = [], 0
            for where in wheres:
                outs.append(self._scatter(data[i:i + len(where)], where, nq, nk))
                i += len(where)
            return torch.stack(outs).reshape(*lead, nq, nk)
        prog.decode = decode
        return prog

    # -- the attention chain ------------------------------------------------------------------------

    def attention(self, q, k, v, z: int, logits_rq, table, rule: tuple[int, int], mask, attn_v_rq,
                  tap: bool = False) -> Program:
        """Q.K^T -> logit codes -> LIS softmax -> x V for q, k, v [..., N, hd], per head on chip
        (hw/attention.py): K as the weights, V in the V buffer, Q's slabs in the activation buffer,
        one ATTEND a head (more when Q does not fit the buffer). Gives attention x V's rows, or with
        `tap` the softmax codes (the driver's check mode)."""
        cfg, R, C, att = self.cfg, self.cfg.rows, self.cfg.cols, self.cfg.attention
        *lead, nq, hd = q.shape
        nk = k.shape[-2]
        sm, av = self.units["softmax"], self.units["attnv"]
        if mask is not None:
            raise CompileError("attention: masks (Swin's shifted windows) are not compiled yet")
        if tuple(rule) != sm.num_den:
            raise CompileError(f"softmax: the model's LIS rule {tuple(rule)} is not the hardware's "
                               f"{sm.rule!r} {sm.num_den}; build the top with the model's rule")
        if max(nq, nk) > cfg.max_keys:
            raise CompileError(f"attention: {nq} queries x {nk} keys exceed max_keys ({cfg.max_keys})")
        if hd > cfg.attnv_lanes:
            raise CompileError(f"attention: heads of {hd} channels exceed attention x V's {cfg.attnv_lanes} lanes "
                               f"(attnv_lanes); build the top with attnv_lanes >= {hd}")
        tiles = -(-nk // C)
        if tiles * hd > cfg.weight_words:
            raise CompileError(f"attention: K of one head ({nk} keys x {hd} channels) does not fit the weight buffer "
                               f"({cfg.weight_kib} KiB); raise weight_kib")
        per_cmd = cfg.act_words // hd  # query slabs one ATTEND reads from the activation buffer
        if per_cmd == 0:
            raise CompileError(f"attention: one slab of Q ({hd} words) does not fit the activation buffer "
                               f"({cfg.act_kib} KiB); raise act_kib")
        a_mult, a_shift, a_zero = attn_v_rq
        prog = Program(CHECK if tap else "attention")
        self._requant_params(prog, nk, 0, *logits_rq[:2], "attention logits")
        self._params(prog, "softmax", UnitId.SOFTMAX, {"addr": np.arange(len(table)), "value": table.numpy()})
        qs, ks, vs = (t.reshape(-1, *t.shape[-2:]).numpy().astype(np.int64) for t in (q, k, v))
        slabs = -(-nq // R)
        for h in range(qs.shape[0]):
            kt = np.zeros((tiles * C, hd), dtype=np.int64)
            kt[:nk] = ks[h]
            prog.add(self._bytes(kt.reshape(tiles, C, hd).transpose(0, 2, 1).reshape(-1, C)), op=Op.LOAD_WEIGHT, addr=0)
            for chunk, c0 in enumerate(range(0, hd, att.v_word)):  # V's columns a chunk at a time
                prog.add(self._bytes(_lanes(vs[h][:, c0:c0 + att.v_word], att.v_word)), op=Op.LOAD_V,
                         addr=chunk << att.key_bits)
            for s0 in range(0, slabs, per_cmd):
                s1 = min(slabs, s0 + per_cmd)
                m0, m1 = s0 * R, min(nq, s1 * R)
                words = []
                for m in range(m0, m1, R):
                    words += self._bytes(_lanes(qs[h][m:m + R].T, R))
                prog.add(words, op=Op.LOAD_ACT, addr=0)
                prog.add([], op=Op.ATTEND, addr=0, waddr=0, k=hd, tiles=tiles, group=0, rows=m1 - (s1 - 1) * R,
                         extra_slabs=s1 - s0 - 1, last_cols=nk - (tiles - 1) * C, a_zero=z, b_zero=z, b_signed=0,
                         zero=logits_rq[2], keys=nk, tap=int(tap), v_zero=z, head_dim=hd, av_zero=a_zero,
                         av_mult=a_mult, av_shift=a_shift, out_count=(m1 - m0) * (nk if tap else av.words(hd)))
            prog.array_beats += slabs * tiles * hd
        heads = qs.shape[0]
        prog.macs += 0 if tap else 2 * heads * nq * nk * hd  # Q.K^T and attention x V

        def decode(words):
            if tap:
                codes = self.codecs["softmax"][2].decode(words)["code"]
                return torch.from_numpy(codes.reshape(heads, nq, nk)).reshape(*lead, nq, nk)
            # a query's row is av.words(hd) words of requant_lanes columns
            rows = self.codecs["attnv"][2].decode(words)["data"].reshape(heads, nq, -1)[:, :, :hd]
            return torch.from_numpy(np.ascontiguousarray(rows)).reshape(*lead, nq, hd)
        prog.decode = decode
        return prog

    # -- streamed units ----------------------------------------------------------------------------

    def layernorm(self, x, z: int, alpha, G, B, fg: int, z_out: int) -> Program:
        cfg = self.units["layernorm"]
        c = x.shape[-1]
        if c > cfg.max_channels:
            raise CompileError(f"layernorm: {c} channels exceed max_channels ({cfg.max_channels})")
        prog = Program("layernorm")
        self._params(prog, "layernorm", UnitId.LAYERNORM,
                     cfg.param_fields(z, z_out, fg, alpha.numpy(), G.numpy(), B.numpy()))
        q = x.reshape(-1).numpy()
        last = (np.arange(q.size) % c == c - 1).astype(np.int64)
        self._stream(prog, "layernorm", UnitId.LAYERNORM, {"q": q, "last": last}, c, c)
        prog.decode = lambda words: torch.from_numpy(self.codecs["layernorm"][2].decode(words)["q"]).reshape(x.shape)
        return prog

    def add(self, a, z_a: int, ma, b, z_b: int, mb, shift: int, z_out: int) -> Program:
        cfg = self.units["residual"]
        c = a.shape[-1]
        if c > cfg.max_channels:
            raise CompileError(f"residual add: {c} channels exceed max_channels ({cfg.max_channels})")
        prog = Program("add")
        self._params(prog, "residual", UnitId.RESIDUAL, {**bank_addresses(c, cfg.lanes), "ma": ma.numpy(),
                                                          "mb": mb.numpy()})
        a2 = a.reshape(-1, c)
        fields = lane_beats(a2, cfg.lanes)
        beats = len(fields["data"])
        fields.update(a=fields.pop("data"), b=lane_beats(torch.broadcast_to(b, a.shape).reshape(-1, c), cfg.lanes)["data"],
                      a_zero=np.full(beats, z_a), b_zero=np.full(beats, z_b), zero=np.full(beats, z_out),
                      shift=np.full(beats, shift))
        groups = beats // a2.shape[0]
        self._stream(prog, "residual", UnitId.RESIDUAL, fields, groups, groups)
        prog.decode = lambda words: torch.from_numpy(from_lanes(self.codecs["residual"][2].decode(words)["data"], c)).reshape(a.shape)
        return prog
