"""The systolic array in Amaranth's own simulator (small configurations), its config and tiling."""

import numpy as np
import pytest
import torch

from calib.intref.gemm import INT8, UINT8, matmul_codes
from hw.payload import PayloadCodec
from hw.systolic import SystolicArray, SystolicConfig
from hw.tiling import assemble, operand_beats, tile_grid
from sim.pysim import StreamBench


def random_case(rng: torch.Generator, m, k, n, a_spec=UINT8, b_spec=INT8):
    a = torch.randint(a_spec.lo, a_spec.hi + 1, (m, k), generator=rng)
    b = torch.randint(b_spec.lo, b_spec.hi + 1, (k, n), generator=rng)
    za = int(torch.randint(a_spec.lo, a_spec.hi + 1, (), generator=rng))
    zb = int(torch.randint(b_spec.lo, b_spec.hi + 1, (), generator=rng))
    return a, b, za, zb


def run_pysim(cfg, cases, stall, seed):
    """Stream every case back to back through the array; return the result matrices."""
    dut = SystolicArray(cfg)
    in_codec, out_codec = PayloadCodec(cfg.operand_layout), PayloadCodec(cfg.result_layout)
    plans = [operand_beats(a, b, za, zb, cfg.rows, cfg.cols, asp, bsp) for a, b, za, zb, asp, bsp in cases]
    words = [w for _, fields in plans for w in in_codec.encode(fields)]
    bench = StreamBench(dut, seed)
    bench.send([(dut.operands, words)], idle=stall)
    sink = bench.receive(dut.results, sum(t.rows for tiles, _ in plans for t in tiles), idle=stall)
    bench.run()
    fields = out_codec.decode(sink.words)
    results, r = [], 0
    for (a, b, *_), (tiles, _) in zip(cases, plans):
        n_rows = sum(t.rows for t in tiles)
        part = {key: value[r:r + n_rows] for key, value in fields.items()}
        results.append(torch.from_numpy(assemble(tiles, a.shape[0], b.shape[1], part)))
        r += n_rows
    return results


@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 2), (2, 3), (3, 2)])
def test_pysim_matches_reference(rows, cols):
    cfg = SystolicConfig(rows, cols)
    rng = torch.Generator().manual_seed(rows * 10 + cols)
    cases = []
    # K=1 and K < 2R-1 exercise the tile-spacing hold; ragged M and N every edge case.
    for m, k, n in [(1, 1, 1), (5, 2, 4), (3, 7, 5), (rows, 3 * rows, cols), (7, 1, 3)]:
        for a_spec, b_spec in [(UINT8, INT8), (UINT8, UINT8)]:
            cases.append((*random_case(rng, m, k, n, a_spec, b_spec), a_spec, b_spec))
    for stall in (0.0, 0.3):
        got = run_pysim(cfg, cases, stall, seed=rows + cols)
        for (a, b, za, zb, asp, bsp), out in zip(cases, got):
            want = matmul_codes(a, b, za, zb, asp, bsp)
            assert torch.equal(out, want), f"mismatch for A{tuple(a.shape)} B{tuple(b.shape)}"


@pytest.mark.parametrize("value", [0, -1, 33, 2.0, True, "8"])
def test_config_refuses_bad_dimensions(value):
    with pytest.raises(ValueError, match="systolic rows must be"):
        SystolicConfig(rows=value)


def test_config_derived_timing():
    cfg = SystolicConfig(4, 6)
    assert (cfg.latency, cfg.row_interval, cfg.min_tile_beats) == (13, 2, 7)  # C + edge + 2 multiplier registers + 2 product registers + FIFO input register + LUT-RAM write
    assert cfg.name == "systolic_4x6"


def test_tile_grid_covers_ragged_edges():
    tiles = tile_grid(197, 20, 8, 6)
    assert len(tiles) == 25 * 4
    covered = np.zeros((197, 20), dtype=int)
    for t in tiles:
        covered[t.m0:t.m0 + t.rows, t.n0:t.n0 + t.cols] += 1
    assert np.all(covered == 1)


def test_codec_round_trip():
    cfg = SystolicConfig(3, 5)
    codec = PayloadCodec(cfg.result_layout)
    rng = np.random.default_rng(0)
    fields = {
        "data": rng.integers(-(2**31), 2**31, size=(50, 5)),
        "keep": rng.integers(0, 32, size=50),
        "last": rng.integers(0, 2, size=50),
    }
    back = codec.decode(codec.encode(fields))
    for key in fields:
        assert np.array_equal(back[key], fields[key]), key


def test_reference_refuses_bad_operands():
    a = torch.zeros((2, 3), dtype=torch.int64)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        matmul_codes(a, torch.zeros((4, 2), dtype=torch.int64))
    with pytest.raises(ValueError, match="outside the uint8 code range"):
        matmul_codes(a - 1, torch.zeros((3, 2), dtype=torch.int64))
    with pytest.raises(ValueError, match="must be an integer tensor"):
        matmul_codes(a.float(), torch.zeros((3, 2), dtype=torch.int64))
    with pytest.raises(ValueError, match="can overflow int32"):
        matmul_codes(torch.zeros((1, 40000), dtype=torch.int64), torch.zeros((40000, 1), dtype=torch.int64),
                     0, 0, UINT8, UINT8)
