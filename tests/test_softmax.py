"""The LIS softmax unit in Amaranth's own simulator (small configurations), its config and LisCode."""

import pytest
import torch
from amaranth.sim import Simulator

from calib.intref.softmax import LIS_RULES, ZERO_CODE, exp_table, lis_codes
from hw.payload import PayloadCodec
from hw.softmax import LisCode, LisSoftmax, SoftmaxConfig, den_sum_bits
from sim.pysim import StreamBench
from sim.scoreboard import assert_bit_exact


def run_pysim(cfg, table, rows, stall=0.0, seed=0, out_stall=None):
    """Write `table`, stream `rows` [(x, mask)] back to back (input gaps with probability `stall`,
    back-pressure `out_stall`, by default the same); return (codes, lasts, in/out cycles)."""
    out_stall = stall if out_stall is None else out_stall
    dut = LisSoftmax(cfg)
    in_codec, out_codec = PayloadCodec(cfg.in_layout), PayloadCodec(cfg.out_layout)
    params = PayloadCodec(cfg.param_layout).encode({"addr": torch.arange(256).numpy(), "value": table.numpy()})
    x = torch.cat([r[0] for r in rows]).numpy()
    mask = torch.cat([r[1] for r in rows]).numpy()
    last = torch.cat([torch.arange(len(r[0])) == len(r[0]) - 1 for r in rows]).numpy()
    words = in_codec.encode({"x": x, "mask": mask, "last": last})
    bench = StreamBench(dut, seed)
    source = bench.send([(dut.params, params), (dut.inp, words)], idle=stall)
    sink = bench.receive(dut.out, len(words), idle=out_stall, drain=cfg.latency(cfg.max_keys))
    bench.run()
    fields = out_codec.decode(sink.words)
    return (torch.from_numpy(fields["code"]), torch.from_numpy(fields["last"]), source.accepted_at(dut.inp),
            sink.received_at)


def check_rows(cfg, table, rows, codes, lasts):
    at = 0
    for i, (x, mask) in enumerate(rows):
        n = len(x)
        want = lis_codes(x[None], table, cfg.num_den, mask[None])[0]
        got = codes[at:at + n]

        def explain(idx, x=x, mask=mask):
            return f"row {i}: x={x.tolist()} mask={mask.int().tolist()}"

        assert_bit_exact(f"{cfg.name} row {i}", got, want, explain)
        assert lasts[at:at + n].tolist() == [0] * (n - 1) + [1], f"row {i}: last flags {lasts[at:at + n].tolist()}"
        at += n


def random_rows(gen, count, max_len):
    rows = []
    for _ in range(count):
        n = int(torch.randint(1, max_len + 1, (), generator=gen))
        x = torch.randint(0, 256, (n,), generator=gen)
        mask = torch.rand(n, generator=gen) < float(torch.rand((), generator=gen))
        rows.append((x, mask))
    return rows


@pytest.mark.parametrize("rule", sorted(LIS_RULES))
def test_pysim_matches_reference(rule):
    cfg = SoftmaxConfig(max_keys=8, rule=rule)
    gen = torch.Generator().manual_seed(7)
    rows = random_rows(gen, 12, 8)
    rows += [(torch.full((8,), 9), torch.zeros(8, dtype=torch.bool)),  # all equal
             (torch.tensor([255, 0, 0, 0, 0]), torch.zeros(5, dtype=torch.bool)),  # one dominating logit
             (torch.tensor([3]), torch.zeros(1, dtype=torch.bool)),  # a single key
             (torch.tensor([200, 7, 9]), torch.ones(3, dtype=torch.bool))]  # every key masked
    table = exp_table(0.05)
    for stall in (0.0, 0.3):
        codes, lasts, _, _ = run_pysim(cfg, table, rows, stall, seed=3)
        check_rows(cfg, table, rows, codes, lasts)


@pytest.mark.parametrize("stall,out_stall", [(0.0, 0.7), (0.7, 0.0)])
def test_pysim_short_rows_one_side_stalled(stall, out_stall):
    """Rows shorter than the pipelines while one side stalls: each pass runs as far ahead as it may."""
    cfg = SoftmaxConfig(max_keys=8)
    gen = torch.Generator().manual_seed(11)
    rows = random_rows(gen, 40, 4)
    table = exp_table(0.05)
    codes, lasts, _, _ = run_pysim(cfg, table, rows, stall, seed=5, out_stall=out_stall)
    check_rows(cfg, table, rows, codes, lasts)


def test_pysim_any_16_bit_table_and_one_key_buffers():
    """max_keys=1 (every beat ends a row) and a table of arbitrary 16-bit values: sums stay exact."""
    cfg = SoftmaxConfig(max_keys=1)
    table = torch.randint(0, 2**16, (256,), generator=torch.Generator().manual_seed(1))
    rows = [(torch.tensor([v]), torch.tensor([m])) for v, m in [(5, False), (255, False), (0, True), (17, False)]]
    codes, lasts, _, _ = run_pysim(cfg, table, rows, 0.2)
    check_rows(cfg, table, rows, codes, lasts)


def test_pysim_row_longer_than_buffer_is_cut():
    """A row without `last` within max_keys beats ends at its max_keys-th beat."""
    cfg = SoftmaxConfig(max_keys=4)
    table = torch.randint(0, 2**16, (256,), generator=torch.Generator().manual_seed(2))
    x = torch.tensor([10, 200, 30, 40, 250, 60])
    no_mask = torch.zeros(6, dtype=torch.bool)
    dut_rows = [(x, no_mask)]  # streamed as one 6-key row
    codes, lasts, _, _ = run_pysim(cfg, table, dut_rows)
    check_rows(cfg, table, [(x[:4], no_mask[:4]), (x[4:], no_mask[4:])], codes, lasts)


def test_pysim_published_timing():
    cfg = SoftmaxConfig(max_keys=16)
    table = exp_table(0.05)
    gen = torch.Generator().manual_seed(5)
    n = 11
    rows = [(torch.randint(0, 256, (n,), generator=gen), torch.zeros(n, dtype=torch.bool)) for _ in range(4)]
    codes, lasts, accepted, received = run_pysim(cfg, table, rows)
    check_rows(cfg, table, rows, codes, lasts)
    assert received[0] - accepted[n - 1] == cfg.latency(n)
    starts = received[::n]
    assert {b - a for a, b in zip(starts, starts[1:])} == {cfg.row_interval(n)}
    for r in range(4):  # each row's codes back to back
        assert received[r * n:(r + 1) * n] == list(range(received[r * n], received[r * n] + n))
    assert received[n - 1] - accepted[0] + 1 == 3 * n + cfg.LATENCY_OFFSET - 1


def test_lis_code_thresholds_in_pysim():
    """LisCode at every threshold boundary of a few sums (the exhaustive check runs in Verilator)."""
    cases = []
    for rule in sorted(LIS_RULES):
        num, den = LIS_RULES[rule]
        for total in (2**15, 2**15 + 1, 3 * 2**16 - 1, 2**23, 1024 * 2**15):
            for t in range(ZERO_CODE):
                boundary = den * total // (num << t)  # largest e that passes threshold t
                cases += [(rule, total, e) for e in (boundary - 1, boundary, boundary + 1) if 0 <= e <= 2**15]
            cases += [(rule, total, 0), (rule, total, 2**15)]
    duts = {rule: LisCode(rule, den_sum_bits(rule, 1024)) for rule in LIS_RULES}
    got = []

    for rule, dut in duts.items():
        mine = [c for c in cases if c[0] == rule]

        async def bench(ctx, dut=dut, mine=mine, rule=rule):
            for _, total, e in mine:
                ctx.set(dut.den_sum, LIS_RULES[rule][1] * total)
                ctx.set(dut.e, e)
                await ctx.delay(1e-9)
                got.append(ctx.get(dut.code))

        sim = Simulator(dut)
        sim.add_testbench(bench)
        sim.run()
    for (rule, total, e), code in zip(sorted(cases, key=lambda c: c[0]), got):
        # the reference on a two-key row whose exponentials are (total - e, e)
        table = torch.zeros(256, dtype=torch.int64)
        table[0], table[1] = total - e, e
        want = int(lis_codes(torch.tensor([[1, 0]]), table, LIS_RULES[rule])[0, 1])
        assert code == want, f"{rule}: sum={total} e={e}: LisCode {code}, reference {want}"


@pytest.mark.parametrize("value", [0, -1, 1025, 2.0, True, "256", None])
def test_config_refuses_bad_max_keys(value):
    with pytest.raises(ValueError, match=r"softmax max_keys must be an integer in 1\.\.1024, got"):
        SoftmaxConfig(max_keys=value)


@pytest.mark.parametrize("value", ["round", "", None, (3, 2)])
def test_config_refuses_unknown_rule(value):
    with pytest.raises(ValueError, match="softmax rule must be one of"):
        SoftmaxConfig(rule=value)


def test_config_names_widths_and_timing():
    assert SoftmaxConfig().name == "lis_softmax_256k_nearest"  # the project's default rule
    assert SoftmaxConfig(64, "fqvit").name == "lis_softmax_64k_fqvit"
    assert (SoftmaxConfig().sum_bits, SoftmaxConfig(1024).sum_bits) == (24, 26)
    assert (SoftmaxConfig(1024, "fqvit").den_sum_bits, SoftmaxConfig(1024, "nearest").den_sum_bits) == (27, 28)
    cfg = SoftmaxConfig(197)
    assert (cfg.latency(197), cfg.row_interval(197), cfg.row_interval(2)) == (211, 198, 6)
    assert cfg.timing()["row_interval"] == "max(N + 1, 6)"
    assert cfg.to_dict() == {"max_keys": 197, "rule": "nearest"}
