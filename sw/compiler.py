"""The compiler: each op of the integer model becomes a program of accelerator commands.

A ``Program`` holds the commands (``hw.top.TopConfig.cmd_layout`` field dicts), the data words
they consume, the number of result words they give and how to turn those words back into the
op's output tensor. Tiling follows the top's buffers:

* a GEMM (M x K) @ (K x N) loads the weights once per chunk of output tiles that fits the weight
  buffer, then for every slab of ``rows`` tokens loads the slab (K words) and runs one MATMUL over
  the chunk's tiles; the tokens of every image in the batch share one weight load;
* LayerNorm, softmax, attention x V and residual adds stream their beats through the unit.

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

__all__ = ["CompileError", "Program", "Compiler"]

STREAM_BEATS = 1 << 16  # beats per STREAM command, so a program splits into host-memory-sized runs


class CompileError(ValueError):
    """An op the configured accelerator cannot run; the message says why and what would fix it."""


@dataclass
class Program:
    kind: str  # op kind for the cycle report: linear, logits, softmax, attn_v, layernorm, add
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

    # -- streamed units ----------------------------------------------------------------------------

    def softmax_lis(self, logits, table, rule: tuple[int, int], mask) -> Program:
        if mask is not None:
            raise CompileError("softmax: attention masks (Swin's shifted windows) are not compiled yet")
        sm = self.units["softmax"]
        if tuple(rule) != sm.num_den:
            raise CompileError(f"softmax: the model's LIS rule {tuple(rule)} is not the hardware's "
                               f"{sm.rule!r} {sm.num_den}; build the top with the model's rule")
        shape = logits.shape
        nk = shape[-1]
        if nk > sm.max_keys:
            raise CompileError(f"softmax: rows of {nk} keys exceed max_keys ({sm.max_keys})")
        prog = Program("softmax")
        self._params(prog, "softmax", UnitId.SOFTMAX, {"addr": np.arange(len(table)), "value": table.numpy()})
        x = logits.reshape(-1).numpy()
        last = (np.arange(x.size) % nk == nk - 1).astype(np.int64)
        self._stream(prog, "softmax", UnitId.SOFTMAX, {"x": x, "mask": np.zeros_like(x), "last": last}, nk, nk)
        prog.decode = lambda words: torch.from_numpy(self.codecs["softmax"][2].decode(words)["code"]).reshape(shape)
        return prog

    def attn_v(self, probs, v, z_v: int, mult: int, shift: int, z_out: int) -> Program:
        """LIS codes [..., Nq, Nk] x V [..., Nk, hd]: per head, per column chunk, per query row one
        beat per key."""
        cfg = self.units["attnv"]
        *lead, nq, nk = probs.shape
        hd = v.shape[-1]
        if nk > cfg.max_keys:
            raise CompileError(f"attention x V: rows of {nk} keys exceed max_keys ({cfg.max_keys})")
        L = cfg.lanes
        codes, vs = probs.reshape(-1, nq, nk).numpy(), v.reshape(-1, nk, hd).numpy()
        heads = codes.shape[0]
        chunks = [(d0, min(L, hd - d0)) for d0 in range(0, hd, L)]
        parts = {"code": [], "v": [], "keep": []}
        for h in range(heads):
            for d0, width in chunks:
                parts["code"].append(codes[h].reshape(-1))
                parts["v"].append(np.tile(_lanes(vs[h][:, d0:d0 + width], L), (nq, 1)))
                parts["keep"].append(np.full(nq * nk, (1 << width) - 1))
        beats = heads * len(chunks) * nq * nk
        last = (np.arange(beats) % nk == nk - 1).astype(np.int64)
        fields = {"code": np.concatenate(parts["code"]), "v": np.concatenate(parts["v"]), "last": last,
                  "z_v": np.full(beats, z_v), "keep": np.concatenate(parts["keep"]),
                  "last_row": (np.arange(beats) % (nq * nk) == nq * nk - 1).astype(np.int64),
                  "z_out": np.full(beats, z_out), "mult": np.full(beats, mult), "shift": np.full(beats, shift)}
        prog = Program("attn_v")
        self._stream(prog, "attnv", UnitId.ATTNV, fields, nk, 1)

        def decode(words):
            data = self.codecs["attnv"][2].decode(words)["data"].reshape(heads, len(chunks), nq, L)
            out = np.zeros((heads, nq, hd), dtype=np.int64)
            for g, (d0, width) in enumerate(chunks):
                out[:, :, d0:d0 + width] = data[:, g, :, :width]
            return torch.from_numpy(out).reshape(*lead, nq, hd)
        prog.decode = decode
        return prog

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
