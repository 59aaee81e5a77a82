"""Tiling of a (M x K) @ (K x N) code matmul onto an R x C output-stationary array.

The array computes one R x C output tile per pass over K. ``operand_beats`` lays out the beat
sequence that streams every tile through ``hw.systolic.SystolicArray`` (field arrays, one entry
per beat, for ``SystolicConfig.operand_layout``), and ``assemble`` puts the result rows it emits
back into the M x N matrix. Ragged edge tiles are sent with their real ``rows``/``cols``; the
array masks the rest. This is the array's port contract, so it lives beside the array: the
systolic testbench (sim/tb/systolic.py) and the tests build their beats here. Arrays in and out
are NumPy (anything ``np.asarray`` takes, e.g. a CPU torch tensor), so the hardware package never
needs torch.
"""

from dataclasses import dataclass

import numpy as np

from fqvit.contract import INT8, UINT8, CodeSpec, check_code_values, check_no_overflow

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


def _codes(name: str, codes, spec: CodeSpec, zero: int) -> np.ndarray:
    """`codes` as a NumPy matrix; ValueError naming what is wrong unless they are valid `spec` codes."""
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer tensor of {spec} codes, got dtype {codes.dtype}")
    if codes.ndim != 2:
        raise ValueError(f"{name} must be a matrix, got shape {codes.shape}")
    check_code_values(name, *((int(codes.min()), int(codes.max())) if codes.size else (None, None)), spec, zero)
    return codes


def operand_beats(
    a, b, za: int, zb: int, rows: int, cols: int, a_spec: CodeSpec = UINT8, b_spec: CodeSpec = INT8,
) -> tuple[list[Tile], dict[str, np.ndarray]]:
    """The tiles and the operand beats (one per tile per k) that compute ``(a - za) @ (b - zb)``.

    Refuses (ValueError) what the array cannot compute exactly: codes outside their spec, unequal
    inner dimensions, a K that could overflow the int32 accumulators, an empty product. Lanes past
    a ragged edge are sent as zeros; the array ignores them.
    """
    a, b = _codes("A", a, a_spec, za), _codes("B", b, b_spec, zb)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: A is {a.shape}, B is {b.shape}")
    check_no_overflow(a.shape[1], a_spec, za, b_spec, zb)
    m, k = a.shape
    if k == 0 or m == 0 or b.shape[1] == 0:
        raise ValueError(f"empty matmul: A is {a.shape}, B is {b.shape}")
    n = b.shape[1]
    tiles = tile_grid(m, n, rows, cols)
    # Pad to whole tiles once, then cut every tile out of the padded views.
    a_pad = np.zeros((len(range(0, m, rows)) * rows, k), dtype=np.int64)
    a_pad[:m] = a
    b_pad = np.zeros((k, len(range(0, n, cols)) * cols), dtype=np.int64)
    b_pad[:, :n] = b
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


def assemble(tiles: list[Tile], m: int, n: int, results: dict[str, np.ndarray]) -> np.ndarray:
    """Scatter emitted result rows (fields ``data``, ``keep``, ``last``) into the M x N int32 result.

    Raises AssertionError if the rows do not have the shape the tiles imply: a missing, extra or
    wrongly flagged row is a hardware bug, never something to paper over.
    """
    data, keep, last = results["data"], results["keep"], results["last"]
    expected_rows = sum(t.rows for t in tiles)
    assert len(data) == expected_rows, f"array emitted {len(data)} result rows, expected {expected_rows}"
    out = np.zeros((m, n), dtype=np.int32)
    r = 0
    for index, t in enumerate(tiles):
        block = slice(r, r + t.rows)
        want_last = np.zeros(t.rows, dtype=np.int64)
        want_last[-1] = 1
        assert np.array_equal(last[block], want_last), f"tile {index} {t}: 'last' flags {last[block]}"
        assert np.all(keep[block] == (1 << t.cols) - 1), f"tile {index} {t}: 'keep' masks {keep[block]}"
        out[t.m0:t.m0 + t.rows, t.n0:t.n0 + t.cols] = data[block, :t.cols]
        r += t.rows
    return out
