"""Tiling of a (M x K) @ (K x N) code matmul onto an R x C output-stationary array.

The array computes one R x C output tile per pass over K. ``operand_beats`` lays out the beat
sequence that streams every tile through ``hw.systolic.SystolicArray`` (field arrays, one entry
per beat), and ``assemble`` puts the result rows it emits back into the M x N matrix. Ragged
edge tiles are sent with their real ``rows``/``cols``; the array masks the rest.
"""

from dataclasses import dataclass

import numpy as np
import torch

from calib.intref.gemm import INT8, UINT8, CodeSpec, check_operands

__all__ = ["Tile", "tile_grid", "operand_beats", "assemble"]


@dataclass(frozen=True)
class Tile:
    m0: int
    n0: int
    rows: int
    cols: int


def tile_grid(m: int, n: int, rows: int, cols: int) -> list[Tile]:
    """Output tiles in emission order: row-major over the M x N result."""
    return [
        Tile(m0, n0, min(rows, m - m0), min(cols, n - n0))
        for m0 in range(0, m, rows)
        for n0 in range(0, n, cols)
    ]


def operand_beats(
    a: torch.Tensor, b: torch.Tensor, za: int, zb: int, rows: int, cols: int,
    a_spec: CodeSpec = UINT8, b_spec: CodeSpec = INT8,
) -> tuple[list[Tile], dict[str, np.ndarray]]:
    """The tiles and the operand beats (one per tile per k) that compute ``(a - za) @ (b - zb)``.

    Lanes past a ragged edge are sent as zeros; the array ignores them.
    """
    check_operands(a, b, za, zb, a_spec, b_spec)
    m, k = a.shape
    if k == 0 or m == 0 or b.shape[1] == 0:
        raise ValueError(f"empty matmul: A is {tuple(a.shape)}, B is {tuple(b.shape)}")
    n = b.shape[1]
    tiles = tile_grid(m, n, rows, cols)
    # Pad to whole tiles once, then cut every tile out of the padded views.
    a_pad = np.zeros((len(range(0, m, rows)) * rows, k), dtype=np.int64)
    a_pad[:m] = a.numpy()
    b_pad = np.zeros((k, len(range(0, n, cols)) * cols), dtype=np.int64)
    b_pad[:, :n] = b.numpy()
    a_lanes = np.concatenate([a_pad[t.m0:t.m0 + rows].T for t in tiles])  # (T*K, R)
    b_lanes = np.concatenate([b_pad[:, t.n0:t.n0 + cols] for t in tiles])  # (T*K, C)
    beats = len(tiles) * k
    last = np.zeros(beats, dtype=np.int64)
    last[k - 1::k] = 1
    fields = {
        "a": a_lanes & 0xFF,
        "b": b_lanes & 0xFF,
        "a_zero": np.full(beats, za, dtype=np.int64),
        "b_zero": np.full(beats, zb, dtype=np.int64),
        "a_signed": np.full(beats, int(a_spec.signed), dtype=np.int64),
        "b_signed": np.full(beats, int(b_spec.signed), dtype=np.int64),
        "last": last,
        "rows": np.repeat([t.rows for t in tiles], k),
        "cols": np.repeat([t.cols for t in tiles], k),
    }
    return tiles, fields


def assemble(tiles: list[Tile], m: int, n: int, results: dict[str, np.ndarray]) -> torch.Tensor:
    """Scatter emitted result rows (fields ``data``, ``keep``, ``last``) into the M x N int32 result.

    Raises AssertionError if the rows do not have the shape the tiles imply: a missing, extra or
    wrongly flagged row is a hardware bug, never something to paper over.
    """
    data, keep, last = results["data"], results["keep"], results["last"]
    expected_rows = sum(t.rows for t in tiles)
    assert len(data) == expected_rows, f"array emitted {len(data)} result rows, expected {expected_rows}"
    out = torch.zeros((m, n), dtype=torch.int32)
    r = 0
    for index, t in enumerate(tiles):
        block = slice(r, r + t.rows)
        want_last = np.zeros(t.rows, dtype=np.int64)
        want_last[-1] = 1
        assert np.array_equal(last[block], want_last), f"tile {index} {t}: 'last' flags {last[block]}"
        assert np.all(keep[block] == (1 << t.cols) - 1), f"tile {index} {t}: 'keep' masks {keep[block]}"
        out[t.m0:t.m0 + t.rows, t.n0:t.n0 + t.cols] = torch.from_numpy(
            data[block, :t.cols].astype(np.int32))
        r += t.rows
    return out
