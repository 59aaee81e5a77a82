"""cocotb testbench of the LIS softmax unit (``hw.softmax``), compared with ``calib.intref.softmax``.

Run through ``sim.toolchain`` (see ``tests/test_softmax_sim.py``); the configuration comes in
``$SOFTMAX_CONFIG`` as JSON, real rows of the digits model (optional) in the file named by
``$SOFTMAX_VECTORS``. Every test writes an exp table through ``params``, streams whole rows with
random gaps on ``inp`` and random back-pressure on ``out`` (except the timing test) and compares
every code with ``lis_codes``; a mismatch prints the row.
"""

import json
import os
import random

import cocotb
import torch

from calib.intref.softmax import exp_rows, exp_table, lis_codes
from calib.intref.swin import shift_mask
from hw.payload import PayloadCodec
from hw.softmax import TABLE_BITS, SoftmaxConfig
from sim.scoreboard import assert_bit_exact
from sim.tb.common import seeded, start
from sim.tb.jobs import Job, JobRun, run_jobs

CFG = SoftmaxConfig(**json.loads(os.environ.get("SOFTMAX_CONFIG", "{}")))
IN_CODEC = PayloadCodec(CFG.in_layout)
OUT_CODEC = PayloadCodec(CFG.out_layout)
PARAM_CODEC = PayloadCodec(CFG.param_layout)
SCALES = (0.004, 0.05, 0.4)  # gentle, typical and steep exp tables (at 0.4, e = 0 beyond d = 27)


class Row:
    """One softmax row: logit codes, key mask (True: no part), and its reference codes."""

    def __init__(self, x, mask=None):
        self.x = torch.as_tensor(x, dtype=torch.int64)
        self.mask = torch.as_tensor([False] * len(self.x) if mask is None else mask, dtype=torch.bool)

    def __len__(self):
        return len(self.x)

    def __repr__(self):
        return f"row of {len(self)} keys: x={self.x.tolist()} mask={self.mask.int().tolist()}"

    def reference(self, table):
        return lis_codes(self.x[None], table, CFG.num_den, self.mask[None])[0]


def random_row(gen, n, mask_rate=None) -> Row:
    """n random codes; a mask with a random density (or `mask_rate`), sometimes none at all."""
    x = torch.randint(0, 256, (n,), generator=gen)
    if mask_rate is None:
        mask_rate = float(torch.rand((), generator=gen)) if torch.rand((), generator=gen) < 0.5 else 0.0
    return Row(x, torch.rand(n, generator=gen) < mask_rate)


def row_words(rows) -> list[int]:
    last = torch.cat([torch.arange(len(r)) == len(r) - 1 for r in rows])
    return IN_CODEC.encode({"x": torch.cat([r.x for r in rows]).numpy(),
                            "mask": torch.cat([r.mask for r in rows]).numpy(), "last": last.numpy()})


async def run_rows(dut, clock, what, table, rows, idle, rng, out_idle=None) -> JobRun:
    """Write `table` (all 256 entries through ``params``, always ready), stream `rows` back to back
    (gaps with probability `idle`, back-pressure `out_idle`, by default the same) and check every
    code against lis_codes."""
    params = PARAM_CODEC.encode({"addr": torch.arange(256).numpy(), "value": table.numpy()})
    words = row_words(rows)
    job = Job(words, len(words), params, check=lambda out: check_rows(what, rows, table, out))
    cycles = len(params) + 2 * sum(CFG.row_interval(len(r)) + CFG.latency(len(r)) for r in rows) + 100
    # a spurious row's codes would leave within a row's latency of the last expected code
    return await run_jobs(dut, clock, [job], OUT_CODEC, idle=idle, out_idle=out_idle, seed=rng.random(),
                          cycles=cycles, drain=CFG.latency(CFG.max_keys))


def check_rows(what, rows, table, fields, expected=None):
    """Every code against lis_codes (or `expected` codes per row), and the last flags."""
    at = 0
    for i, row in enumerate(rows):
        n = len(row)
        got = torch.from_numpy(fields["code"][at:at + n])
        want = row.reference(table) if expected is None else expected[i]
        e, total = exp_rows(row.x[None], table, row.mask[None])

        def explain(idx, row=row, e=e[0], total=int(total)):
            (j,) = idx
            return f"key {j}: x={int(row.x[j])} mask={int(row.mask[j])} e={int(e[j])}, row sum {total}"

        try:
            assert_bit_exact(f"{CFG.name} {what} row {i}", got, want, explain)
        except AssertionError as err:
            raise AssertionError(f"{err}\n  the {row!r}") from None
        lasts = fields["last"][at:at + n].tolist()
        assert lasts == [0] * (n - 1) + [1], f"{what} row {i}: last flags {lasts} ({row!r})"
        at += n


@cocotb.test()
async def random_rows_with_stalls(dut):
    """Random lengths 1..max_keys, random masks (some rows fully masked), three exp tables and one
    table of arbitrary 16-bit values, with random gaps and back-pressure."""
    seed, gen = seeded()
    rng = random.Random(seed)
    clock = await start(dut, low=("params__valid",))
    tables = {f"scale {s}": exp_table(s) for s in SCALES}
    tables["random 16-bit table"] = torch.randint(0, 2**TABLE_BITS, (256,), generator=gen)
    for what, table in tables.items():
        rows = [random_row(gen, rng.randint(1, CFG.max_keys)) for _ in range(10)]
        rows += [random_row(gen, rng.randint(1, CFG.max_keys), mask_rate=1.0) for _ in range(2)]
        rng.shuffle(rows)
        await run_rows(dut, clock, what, table, rows, 0.3, rng)


@cocotb.test()
async def short_rows_one_side_stalled(dut):
    """Rows of 1..8 keys (shorter than the passes' pipelines) with the output stalled 70 % of the
    time and the input never, then the other way round: every pass runs ahead as far as it may."""
    seed, gen = seeded()
    rng = random.Random(seed)
    clock = await start(dut, low=("params__valid",))
    for idle, out_idle in ((0.0, 0.7), (0.7, 0.0)):
        rows = [random_row(gen, rng.randint(1, min(8, CFG.max_keys))) for _ in range(60)]
        await run_rows(dut, clock, f"short rows, idle {idle}/{out_idle}", exp_table(0.05), rows, idle, rng, out_idle)


@cocotb.test()
async def edge_rows(dut):
    """All-equal rows, one dominating logit, single keys, fully masked rows, the longest rows."""
    seed, gen = seeded()
    rng = random.Random(seed)
    clock = await start(dut, low=("params__valid",))
    n = CFG.max_keys
    lengths = sorted({1, 2, min(n, 197), n})
    rows = []
    for length in lengths:
        rows += [Row([v] * length) for v in (0, 128, 255)]  # all equal: every key gets 1/N
        rows.append(Row([255] + [0] * (length - 1)))  # one dominating logit
        rows.append(Row([0] + [255] * (length - 1)))  # one far below the rest
        rows.append(Row([7] * length, [True] * length))  # every key masked: all zero state
        rows.append(random_row(gen, length))
    if n >= 2:
        rows.append(Row([255, 0] + [0] * (n - 2), [True, False] + [False] * (n - 2)))  # the max is masked
    for what, table in ((f"scale {s}", exp_table(s)) for s in SCALES):
        await run_rows(dut, clock, what, table, rows, 0.3, rng)


@cocotb.test(skip=CFG.max_keys < 49)
async def swin_shifted_windows(dut):
    """49-key rows of Swin's shifted windows: every query of the windows split in two and in four."""
    seed, gen = seeded()
    rng = random.Random(seed)
    clock = await start(dut, low=("params__valid",))
    masks = shift_mask(14, 14, (7, 7), (3, 3))[:, 0]  # windows: unsplit, split by rows, by columns, both
    rows = [Row(torch.randint(0, 256, (49,), generator=gen), masks[w, q]) for w in (1, 3) for q in range(49)]
    await run_rows(dut, clock, "swin shift mask", exp_table(0.05), rows, 0.3, rng)


@cocotb.test(skip="SOFTMAX_VECTORS" not in os.environ)
async def digits_model_rows(dut):
    """Real attention rows of the calibrated digits model: its logits, its exp tables, and the
    codes its integer forward computed (when the model's LIS rule is this unit's)."""
    seed, _ = seeded()
    rng = random.Random(seed)
    vectors = torch.load(os.environ["SOFTMAX_VECTORS"], weights_only=True)
    clock = await start(dut, low=("params__valid",))
    for name, layer in vectors["layers"].items():
        logits = layer["logits"].reshape(-1, layer["logits"].shape[-1])
        rows = [Row(x) for x in logits]
        table = layer["table"].to(torch.int64)
        run = await run_rows(dut, clock, name, table, rows, 0.3, rng)
        if tuple(vectors["rule"]) == CFG.num_den:
            check_rows(f"{name} (model trace)", rows, table, run.outputs[0], layer["codes"].reshape(len(rows), -1))
            dut._log.info("%s: %d rows equal to the digits model's own LIS codes", name, len(rows))


@cocotb.test()
async def published_latency_and_throughput(dut):
    """Unstalled: a lone row's first code `latency(N)` after its last key, rows of N keys every
    `row_interval(N)` cycles with their codes back to back, one key per cycle into the unit."""
    seed, gen = seeded()
    rng = random.Random(seed)
    clock = await start(dut, low=("params__valid",))
    for n in sorted({1, min(CFG.max_keys, 49), CFG.max_keys}):
        lone = [random_row(gen, n)]
        run = await run_rows(dut, clock, f"lone row of {n}", exp_table(0.05), lone, 0.0, rng)
        source, sink = run.inp, run.out
        latency = sink.received_at[0] - source.accepted_at[-1]
        assert latency == CFG.latency(n), (
            f"N={n}: first code {latency} cycles after the last key, published {CFG.latency(n)}")
        assert sink.received_at[-1] - source.accepted_at[0] + 1 == 3 * n + CFG.LATENCY_OFFSET - 1

        train = [random_row(gen, n) for _ in range(4)]
        run = await run_rows(dut, clock, f"train of rows of {n}", exp_table(0.05), train, 0.0, rng)
        source, sink = run.inp, run.out
        for r in range(4):
            keys_in = source.accepted_at[r * n:(r + 1) * n]
            codes_out = sink.received_at[r * n:(r + 1) * n]
            assert keys_in == list(range(keys_in[0], keys_in[0] + n)), f"N={n}: row {r}'s keys not one per cycle"
            assert codes_out == list(range(codes_out[0], codes_out[0] + n)), f"N={n}: row {r}'s codes not back to back"
        starts = sink.received_at[::n]
        gaps = {b - a for a, b in zip(starts, starts[1:])}
        assert gaps == {CFG.row_interval(n)}, f"N={n}: rows {gaps} cycles apart, published {CFG.row_interval(n)}"
        dut._log.info("%s: rows of %d keys, latency %d, one row per %d cycles", CFG.name, n, latency, gaps.pop())
