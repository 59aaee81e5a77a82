"""GELU as a 256-entry table from the fc1 output code to the fc2 input code.

Any function of one 8-bit code is exact as a table, so the table *is* the definition:
``table[q] = clamp(z_out + round(gelu(s_in * (q - z_in)) / s_out), 0, 255)`` with the erf GELU,
built offline at export time. At run time GELU is a lookup (a 256x8 ROM per layer).
Deviation from FQ-ViT, which applies GELU in float to the *unquantized* fc1 output: we quantize
fc1's output first (measured cost in docs/results.md).
"""

import math

import torch

__all__ = ["gelu_table", "gelu"]


def gelu_table(s_in: float, z_in: int, s_out: float, z_out: int) -> torch.Tensor:
    """Offline: the uint8 table (as int64 [256])."""
    table = []
    for q in range(256):
        x = s_in * (q - z_in)
        y = 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
        table.append(min(255, max(0, z_out + round(y / s_out))))
    return torch.tensor(table, dtype=torch.int64)


def gelu(codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Look every code up in `table` (int64 codes out)."""
    return table[codes.to(torch.int64)]
