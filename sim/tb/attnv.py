"""cocotb testbench of attention x V (``hw.attnv``), compared with ``calib.intref.attnv`` + requant.

Run through ``sim.toolchain`` (see ``tests/test_attnv_sim.py``); the configuration comes in
``$ATTNV_CONFIG`` as JSON. A job is one attention head: LIS codes [Nq, Nk], V codes [Nk, D] and the
layer's scalars. ``Head.key_fields`` streams it the way a driver does: column chunk by column chunk
(``lanes`` columns, the last one ragged), and in each chunk every query row re-streams its codes,
one key per beat. Every output element is compared with
``requantize(attnv_shift(codes, v, z_v), mult, shift, z_out)``, with no tolerance.
"""

import json
import os
import random
from dataclasses import dataclass

import cocotb
import numpy as np
import torch

from calib.intref.attnv import attnv_shift
from calib.intref.requant import dyadic, requantize
from calib.intref.softmax import LIS_RULES, ZERO_CODE, exp_table, lis_codes
from hw.attnv import AttnVConfig
from hw.payload import PayloadCodec
from sim.scoreboard import assert_bit_exact
from sim.tb.common import seeded, start
from sim.tb.jobs import Job, JobRun, run_jobs

CFG = AttnVConfig(**json.loads(os.environ.get("ATTNV_CONFIG", "{}")))


@dataclass
class Head:
    """One head's attention x V job: codes [Nq, Nk] (0..16; any code >= 16 is the zero state),
    v [Nk, D] (uint8) and the scalars."""

    codes: torch.Tensor
    v: torch.Tensor
    z_v: int
    z_out: int
    mult: int
    shift: int
    label: str = ""

    def __repr__(self):
        nq, nk = self.codes.shape
        return (f"head {self.label} Nq={nq} Nk={nk} D={self.v.shape[1]} z_v={self.z_v} z_out={self.z_out} "
                f"mult={self.mult} shift={self.shift}")

    def acc(self) -> torch.Tensor:
        return attnv_shift(self.codes, self.v, self.z_v)

    def reference(self) -> torch.Tensor:
        return requantize(self.acc(), torch.tensor(self.mult), torch.tensor(self.shift), self.z_out)

    def chunks(self, lanes: int) -> list[tuple[int, int]]:
        """(first column, width) of each column chunk, in streaming order."""
        d = self.v.shape[1]
        return [(d0, min(lanes, d - d0)) for d0 in range(0, d, lanes)]

    def key_fields(self, cfg: AttnVConfig) -> dict[str, np.ndarray]:
        """The input beats: for each chunk, for each query row, one beat per key.

        The fields the unit reads on a row's last key only carry their complement on the other
        keys, so a unit that read them anywhere else would fail."""
        nq, nk = self.codes.shape
        codes, v = self.codes.numpy(), self.v.numpy()
        last = np.zeros((nq, nk), dtype=np.int64)
        last[:, -1] = 1
        last = last.reshape(-1)
        parts = []
        for d0, width in self.chunks(cfg.lanes):
            chunk = np.zeros((nk, cfg.lanes), dtype=np.int64)  # unused lanes carry zeros
            chunk[:, :width] = v[:, d0:d0 + width]
            row_end = {"keep": (1 << width) - 1, "z_out": self.z_out, "mult": self.mult, "shift": self.shift}
            fields = {k: np.where(last == 1, value, ~value & ((1 << cfg.in_layout[k].shape.width) - 1))
                      for k, value in row_end.items()}
            last_row = np.zeros(nq * nk, dtype=np.int64)
            last_row[-1] = 1
            parts.append({"code": codes.reshape(-1), "v": np.tile(chunk, (nq, 1)), "last": last,
                          "last_row": np.where(last == 1, last_row, 1), "z_v": np.full(nq * nk, self.z_v), **fields})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def row_words(self, cfg: AttnVConfig) -> list[int]:
        """Output words of each query row, in streaming order (chunk by chunk)."""
        return [cfg.words(width) for _, width in self.chunks(cfg.lanes) for _ in range(self.codes.shape[0])]

    def out_words(self, cfg: AttnVConfig) -> int:
        return sum(self.row_words(cfg))

    def check(self, cfg: AttnVConfig, fields: dict[str, np.ndarray]) -> None:
        """Compare this head's output words (in streaming order: chunk, row, its columns
        `requant_lanes` a word) with the reference."""
        nq, _ = self.codes.shape
        got = torch.zeros((nq, self.v.shape[1]), dtype=torch.int64)
        start = 0
        for g, (d0, width) in enumerate(self.chunks(cfg.lanes)):
            n = cfg.words(width) * nq
            words = slice(start, start + n)
            start += n
            keep, last = fields["keep"][words], fields["last"][words]
            want_keep = word_keeps(cfg, width) * nq
            assert keep.tolist() == want_keep, f"{self!r}: chunk {g} keep {keep.tolist()}, want {want_keep}"
            assert last.tolist() == [0] * (n - 1) + [1], f"{self!r}: chunk {g} last {last.tolist()}"
            data = fields["data"][words].reshape(nq, -1)[:, :width]
            got[:, d0:d0 + width] = torch.from_numpy(data)
        acc = self.acc()

        def explain(idx):
            i, d = idx
            return (f"acc {int(acc[i, d])}; codes[{i}]={self.codes[i].tolist()} "
                    f"v[:, {d}]={self.v[:, d].tolist()}")

        assert_bit_exact(f"{cfg.name} {self!r}", got, self.reference(), explain)


def word_keeps(cfg: AttnVConfig, width: int) -> list[int]:
    """The `keep` bits of each output word of a row of `width` columns (`requant_lanes` a word)."""
    rl = cfg.requant_lanes
    return [sum(1 << j for j in range(rl) if w * rl + j < width) for w in range(cfg.words(width))]


def row_starts(cfg: AttnVConfig, heads: list[Head]) -> tuple[np.ndarray, list[int]]:
    """The index of each row's first output word among `heads`' words, and each row's word count."""
    words = [n for head in heads for n in head.row_words(cfg)]
    return np.cumsum([0] + words[:-1]), words


def requant_for(acc_peak: float, rng: random.Random) -> tuple[int, int]:
    """A realistic (mult, shift): the output scale fits the largest |acc| to within a factor of
    about 2 either way, so some outputs clip and most do not."""
    ratio = 127 / max(acc_peak, 1 << 15) * 2 ** rng.uniform(-1, 1)
    mult, shift = dyadic(ratio)
    return int(mult), int(shift)


def random_codes(gen: torch.Generator, rng: random.Random, nq: int, nk: int) -> torch.Tensor:
    """Half the time a softmax's LIS codes (random logits and scale, either rule), else arbitrary
    codes 0..16 with a random share of zero states per row."""
    if rng.random() < 0.5:
        logits = torch.randint(0, 256, (nq, nk), generator=gen)
        table = exp_table(2 ** rng.uniform(-6, 0))
        return lis_codes(logits, table, LIS_RULES[rng.choice(sorted(LIS_RULES))])
    zero_share = torch.rand((nq, 1), generator=gen)
    codes = torch.randint(0, ZERO_CODE + 1, (nq, nk), generator=gen)
    return torch.where(torch.rand((nq, nk), generator=gen) < zero_share, ZERO_CODE, codes)


def random_head(gen: torch.Generator, rng: random.Random, nq: int, nk: int, d: int, label: str) -> Head:
    codes = random_codes(gen, rng, nq, nk)
    v = torch.randint(0, 256, (nk, d), generator=gen)
    z_v = rng.randint(0, 255)
    peak = float(attnv_shift(codes, v, z_v).abs().max())
    return Head(codes, v, z_v, rng.randint(0, 255), *requant_for(peak, rng), label=label)


def shift_ladder_heads(gen: torch.Generator, lanes: int) -> list[Head]:
    """Row c has one key of code c (every 5-bit code: 16..31 are all the zero state) and small
    |v - z_v| (1..3), with multipliers that make each shift visible in the output: 2**-8 resolves
    codes 0..7, 1 resolves codes 8..15."""
    codes = torch.full((32, 3), ZERO_CODE)
    codes[:, 1] = torch.arange(32)
    z_v = 100
    v = z_v + torch.randint(1, 4, (3, lanes), generator=gen) * (1 - 2 * torch.randint(0, 2, (3, lanes), generator=gen))
    return [Head(codes, v, z_v, 128, 1 << 15, shift, label=f"shift ladder, multiplier 2**-{shift - 15}")
            for shift in (23, 15)]


def digits_attnv_vectors() -> dict:
    """Block 0 of the calibrated digits model: LIS codes [B, heads, N, N], V [B, heads, N, hd], the
    expected attn_v codes and the scalars. Small enough to hand to the simulator in a file, which
    then need not load the model."""
    from sim.vectors import digits_vectors

    im, trace, _ = digits_vectors()
    p = "blocks.0.attn"
    codes, qkv = trace[f"{p}.softmax"], trace[f"{p}.qkv"]
    batch, heads, n, _ = codes.shape
    return {
        "codes": codes, "want": trace[f"{p}.attn_v"],
        "v": qkv.reshape(batch, n, 3, heads, -1).permute(2, 0, 3, 1, 4)[2],  # as calib.intref.blocks.mha
        "scalars": {"z_v": im.zero(f"{p}.qkv"), "z_out": im.zero(f"{p}.attn_v"),
                    "mult": im.i(f"{p}.attn_v.mult"), "shift": im.i(f"{p}.attn_v.shift")},
    }


def digits_heads(vectors: dict, images: int) -> list[Head]:
    """One Head per (image, head) of `digits_attnv_vectors()`, checked against the model's trace."""
    jobs = []
    for b in range(min(images, vectors["codes"].shape[0])):
        for h in range(vectors["codes"].shape[1]):
            head = Head(vectors["codes"][b, h], vectors["v"][b, h], **vectors["scalars"],
                        label=f"digits image {b} head {h}")
            assert torch.equal(head.reference(), vectors["want"][b, h]), f"{head!r}: trace disagrees with the reference"
            jobs.append(head)
    return jobs


async def run_heads(dut, clock, heads: list[Head], idle: float, seed) -> JobRun:
    """Stream `heads` back to back and check each one's output."""
    in_codec, out_codec = PayloadCodec(CFG.in_layout), PayloadCodec(CFG.out_layout)
    jobs = [Job(in_codec.encode(head.key_fields(CFG)), head.out_words(CFG),
                check=lambda fields, head=head: head.check(CFG, fields)) for head in heads]
    cycles = sum(len(job.words) + job.out_beats * CFG.steps for job in jobs) + CFG.latency + 100
    return await run_jobs(dut, clock, jobs, out_codec, idle=idle, seed=seed, cycles=cycles)


@cocotb.test()
async def random_heads_with_stalls(dut):
    """Random heads (1..197 keys, 1..3 chunks, ragged last chunk), stalled on both streams."""
    seed, gen = seeded()
    rng = random.Random(seed)
    jobs = []
    for n in range(24):
        nk = rng.choice([1, 2, rng.randint(1, 197), 197])
        nq = rng.randint(1, 3)
        d = rng.randint(1, 3 * CFG.lanes)
        jobs.append(random_head(gen, rng, nq, nk, d, f"random {n}"))
    clock = await start(dut)
    await run_heads(dut, clock, jobs, 0.3, seed)


@cocotb.test()
async def zero_states_and_extremes(dut):
    """Every shift amount alone, all-zero-state rows, one code 0 (the largest softmax weight), V
    and zero points at 0/255, and max_keys keys of code 0: the largest |acc| of all, which needs
    the full accumulator."""
    seed, gen = seeded()
    rng = random.Random(seed)
    lanes = CFG.lanes
    full = torch.full
    jobs = shift_ladder_heads(gen, lanes)
    for z_out in (0, 128, 255):  # all zero states: acc = 0, out = z_out
        jobs.append(Head(full((2, 197), ZERO_CODE), torch.randint(0, 256, (197, lanes), generator=gen),
                         rng.randint(0, 255), z_out, *requant_for(1 << 15, rng), label="all zero states"))
    for v_code, z_v in ((255, 0), (0, 255), (255, 255), (0, 0)):
        for nk, code, keys in ((197, 0, "one"), (CFG.max_keys, 0, "every"), (197, 15, "every")):
            row = full((1, nk), code)
            if keys == "one":
                row[:] = ZERO_CODE
                row[0, rng.randrange(nk)] = code
            peak = (nk if keys == "every" else 1) * 255 << (15 - code)
            for z_out in (0, 128, 255):
                jobs.append(Head(row, full((nk, lanes), v_code), z_v, z_out, *requant_for(peak, rng),
                                 label=f"v={v_code} z_v={z_v}, {keys} key of {nk} code {code}"))
    largest = max(int(job.acc().abs().max()) for job in jobs)
    assert largest.bit_length() == CFG.acc_bits - 1, f"largest |acc| {largest} leaves the accumulator's top bits unused"
    clock = await start(dut)
    await run_heads(dut, clock, jobs, 0.2, seed)


@cocotb.test(skip="ATTNV_DIGITS" not in os.environ)
async def digits_model_rows(dut):
    """Real rows: block 0 of the calibrated digits model (LIS codes, V, zero points, multiplier),
    from the file of `digits_attnv_vectors()` named by $ATTNV_DIGITS."""
    seed, _ = seeded()
    vectors = torch.load(os.environ["ATTNV_DIGITS"], weights_only=True)
    jobs = digits_heads(vectors, images=2 if CFG.lanes >= 8 else 1)
    clock = await start(dut)
    await run_heads(dut, clock, jobs, 0.3, seed)


@cocotb.test()
async def published_latency_and_full_throughput(dut):
    """Unstalled: rows of at least `steps` keys stream one key per cycle with no bubble between
    rows, each row's first output word `latency` cycles after its last key and its other words
    one per cycle after it."""
    seed, gen = seeded()
    rng = random.Random(seed)
    d = CFG.lanes + 1  # two chunks
    shapes = ((3, CFG.steps), (3, CFG.steps + 1), (2, 17), (2, 197))
    jobs = [random_head(gen, rng, nq, nk, d, f"timing {nk}") for nq, nk in shapes]
    clock = await start(dut)
    run = await run_heads(dut, clock, jobs, 0.0, seed)
    accepted, sink = run.inp.accepted_at, run.out
    assert accepted == list(range(accepted[0], accepted[0] + len(accepted))), "inp stalled"
    last_keys = np.flatnonzero(np.concatenate([job.key_fields(CFG)["last"] for job in jobs]))
    first_words, row_words = row_starts(CFG, jobs)
    delays = {sink.received_at[w] - accepted[k] for w, k in zip(first_words, last_keys, strict=True)}
    assert delays == {CFG.latency}, f"rows began {sorted(delays)} cycles after their last key, published {CFG.latency}"
    gaps = [sink.received_at[w + n - 1] - sink.received_at[w] - (n - 1) for w, n in zip(first_words, row_words)]
    assert not any(gaps), f"a row's words did not leave one per cycle: extra cycles {gaps}"
    dut._log.info("%s: %d keys in %d cycles, latency %d", CFG.name, len(accepted),
                  sink.received_at[-1] - accepted[0] + 1, CFG.latency)

    short = [random_head(gen, rng, 6, 1, d, "one-key rows")]
    received = (await run_heads(dut, clock, short, 0.0, seed)).out.received_at
    starts = [received[w] for w in row_starts(CFG, short)[0]]
    gaps = {b - a for a, b in zip(starts, starts[1:])}
    assert gaps == {CFG.steps}, f"one-key rows began {sorted(gaps)} cycles apart, published {CFG.steps}"
