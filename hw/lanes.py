"""How rows of C channels map onto a lane-parallel unit's lanes (requantizer, GELU, residual adder).

A row travels as ceil(C / lanes) beats: beat g carries channels g*lanes .. g*lanes + lanes - 1
(its ``group``), ``keep`` marks the real lanes of a ragged last group and ``last`` ends the row.
Per-channel parameters live in bank n % lanes at index n // lanes. This is part of those units'
port contract, so it lives beside them: the compiler (sw/compiler.py) and the testbenches
(sim/tb/) both build their beats here. Arrays in and out are NumPy (anything ``np.asarray``
takes, e.g. a CPU torch tensor), so the hardware package never needs torch.
"""

import numpy as np

__all__ = ["lane_beats", "bank_addresses", "from_lanes"]


def lane_beats(rows, lanes: int) -> dict[str, np.ndarray]:
    """`rows` [N, C] -> beat fields ``data`` [N*G, lanes] (padding lanes 0), ``keep``, ``last``, ``group``."""
    rows = np.asarray(rows)
    n, c = rows.shape
    groups = -(-c // lanes)
    padded = np.zeros((n, groups * lanes), dtype=np.int64)
    padded[:, :c] = rows
    real = np.arange(groups * lanes).reshape(groups, lanes) < c
    keep = (real * (1 << np.arange(lanes))).sum(axis=1)
    return {
        "data": padded.reshape(n * groups, lanes),
        "keep": np.tile(keep, n),
        "last": np.tile(np.arange(groups) == groups - 1, n).astype(np.int64),
        "group": np.tile(np.arange(groups), n),
    }


def bank_addresses(channels: int, lanes: int) -> dict[str, np.ndarray]:
    """``lane`` and ``group`` of every channel's parameter entry."""
    n = np.arange(channels)
    return {"lane": n % lanes, "group": n // lanes}


def from_lanes(data: np.ndarray, channels: int) -> np.ndarray:
    """Output lanes [N*G, lanes] back to rows [N, channels] (the inverse of ``lane_beats``)."""
    lanes = data.shape[1]
    groups = -(-channels // lanes)
    return data.reshape(-1, groups * lanes)[:, :channels].copy()
