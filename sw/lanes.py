"""How rows of C channels map onto a unit's lanes (requantizer, GELU, residual adder).

A row travels as ceil(C / lanes) beats: beat g carries channels g*lanes .. g*lanes + lanes - 1
(its ``group``), ``keep`` marks the real lanes of a ragged last group and ``last`` ends the row.
Per-channel parameters live in bank n % lanes at index n // lanes. The compiler and the
testbenches both use these, so there is one statement of the mapping.
"""

import numpy as np
import torch

__all__ = ["lane_beats", "bank_addresses", "from_lanes"]


def lane_beats(rows: torch.Tensor, lanes: int) -> dict[str, np.ndarray]:
    """`rows` [N, C] -> beat fields ``data`` [N*G, lanes] (padding lanes 0), ``keep``, ``last``, ``group``."""
    n, c = rows.shape
    groups = -(-c // lanes)
    padded = np.zeros((n, groups * lanes), dtype=np.int64)
    padded[:, :c] = rows.numpy()
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


def from_lanes(data: np.ndarray, channels: int) -> torch.Tensor:
    """Output lanes [N*G, lanes] back to rows [N, channels] (the inverse of ``lane_beats``)."""
    lanes = data.shape[1]
    groups = -(-channels // lanes)
    return torch.from_numpy(data.reshape(-1, groups * lanes)[:, :channels].copy())
