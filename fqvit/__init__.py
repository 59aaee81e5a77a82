"""Torch-free foundations that every layer may import (and that import nothing of the project).

* ``fqvit.contract``: the integer contract's constants and rules (LIS, LayerNorm and requantizer
  widths, maximum sizes), shared by the hardware (``hw/``) and the integer reference
  (``calib/intref/``), so neither restates the other's numbers.
* ``fqvit.cache``: where the project keeps what it builds (trained models, exported integer
  models, test vectors, Verilator builds).
"""
