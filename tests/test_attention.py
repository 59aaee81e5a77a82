"""The attention chain (hw/attention.py) inside the top, in Amaranth's simulator: Q.K^T -> logit
codes -> LIS softmax -> attention x V on chip, against the integer reference, with random gaps on
the host's data, random back-pressure on its results, and a result word too many failing."""

import pytest
import torch

from calib.intref.blocks import REF
from hw.attention import AttentionConfig
from hw.top import Accelerator, Op, TopConfig
from sim.pysim import StreamBench
from sim.tb.attnv import word_keeps
from sw.compiler import CompileError, Compiler


def attention_case(cfg: TopConfig, heads: int, nq: int, nk: int, hd: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randint(0, 256, (heads, n, hd), generator=gen) for n in (nq, nk, nk))
    table = torch.randint(0, 1 << 15, (256,), generator=gen)
    # requantizations that keep the codes spread out (neither saturated nor constant)
    return (q, k, v, 100, (20000, 22, 128), table, cfg.units()["softmax"].num_den, None, (20000, 30, 120))


# (R, C, attnv lanes, heads, queries, keys, head dim): ragged last slabs and key tiles, one slab,
# one key tile, a head as wide as the unit, V in three chunks of the V buffer (the last ragged) and
# a head narrower than the unit
CASES = [(2, 3, 4, 2, 5, 7, 4), (3, 2, 8, 1, 7, 9, 8), (1, 2, 4, 1, 3, 2, 3), (4, 4, 4, 1, 4, 4, 4),
         (2, 2, 40, 1, 3, 5, 35)]


@pytest.mark.parametrize("tap", [False, True], ids=["attn_v", "tap"])
@pytest.mark.parametrize("rows,cols,lanes,heads,nq,nk,hd", CASES)
def test_the_chain_matches_the_reference_under_back_pressure(rows, cols, lanes, heads, nq, nk, hd, tap):
    cfg = TopConfig(rows, cols, act_kib=1, weight_kib=1, max_channels=64, max_keys=32, attnv_lanes=lanes,
                    softmax_rule="nearest")
    args = attention_case(cfg, heads, nq, nk, hd, seed=rows * 10 + cols)
    compiler = Compiler(cfg)
    prog = compiler.attention(*args, tap=tap)
    assert sum(c["op"] == Op.ATTEND for c in prog.commands) == heads
    dut = Accelerator(cfg)
    bench = StreamBench(dut, seed=nq)
    bench.send([(dut.cmd, compiler.encode_commands(prog.commands))])
    bench.send([(dut.din, prog.din)], idle=0.3)
    sink = bench.receive(dut.dout, prog.out_words, idle=0.6)
    bench.run(timeout=30_000)
    words = sink.words
    want = REF.attention(*args)[1 if tap else 2]
    assert want.unique().numel() >= 3  # the case exercises the codes (neither saturated nor constant)
    assert torch.equal(prog.decode(words), want)
    out = compiler.codecs["softmax" if tap else "attnv"][2].decode(words)
    if tap:  # `last` on each row's final key
        assert out["last"].tolist() == [int(j == nk - 1) for _ in range(heads * nq) for j in range(nk)]
    else:  # each query's row in words of requant_lanes columns, the head's columns kept; `last` on
        # each ATTEND's final word
        av = cfg.units()["attnv"]
        n = av.words(hd)
        assert out["keep"].tolist() == word_keeps(av, hd) * (heads * nq)
        assert out["last"].tolist() == [int(i == nq - 1 and w == n - 1) for _ in range(heads) for i in range(nq)
                                        for w in range(n)]


def test_queries_beyond_the_activation_buffer_take_several_commands():
    """Q's slabs that do not fit the activation buffer go in several ATTENDs per head, each ending
    its rows; the result is the same."""
    cfg = TopConfig(2, 2, act_kib=1, weight_kib=1, max_channels=64, max_keys=600, attnv_lanes=4,
                    softmax_rule="nearest")
    args = attention_case(cfg, 1, 600, 3, 2, seed=3)  # 300 slabs of 2 words; 512 words a command
    prog = Compiler(cfg).attention(*args)
    attends = [c for c in prog.commands if c["op"] == Op.ATTEND]
    assert [c["extra_slabs"] + 1 for c in attends] == [256, 44]
    assert sum(c["out_count"] for c in attends) == 600


def test_shapes_the_chain_cannot_take_are_refused():
    cfg = TopConfig(2, 2, act_kib=1, weight_kib=1, max_channels=64, max_keys=32, attnv_lanes=4,
                    softmax_rule="nearest")
    compiler = Compiler(cfg)
    with pytest.raises(CompileError, match="heads of 5 channels exceed attention x V's 4 lanes"):
        compiler.attention(*attention_case(cfg, 1, 4, 4, 5, 0))
    with pytest.raises(CompileError, match=r"40 queries x 4 keys exceed max_keys \(32\)"):
        compiler.attention(*attention_case(cfg, 1, 40, 4, 4, 0))
    with pytest.raises(CompileError, match="masks"):
        args = list(attention_case(cfg, 1, 4, 4, 4, 0))
        args[7] = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
        compiler.attention(*args)


def test_attention_config_is_validated():
    with pytest.raises(ValueError, match="attention lanes must be an integer in 1..64, got 0"):
        AttentionConfig(lanes=0)
    assert AttentionConfig(8, 8, 64, 256).tile_slots == 32 and AttentionConfig(4, 6, 64, 256).tile_slots == 64
