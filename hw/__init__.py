"""Amaranth hardware units of the accelerator.

Each unit's module holds its config (widths, timing, port layouts) and the builders of what
travels on its ports, so the compiler (``sw/``) and the testbenches (``sim/tb/``) share one
statement of them: ``payload.py`` packs field arrays into payload words, ``lanes.py`` maps channels
onto the lane-parallel units, ``tiling.py`` cuts a matmul into the array's operand beats, and
``LayerNormConfig.param_fields`` lays out LayerNorm's parameters. The numbers shared with the
integer reference come from ``fqvit.contract``. ``hw`` imports nothing of ``calib``, ``sim`` or
``sw`` and no torch, so generating Verilog needs neither (``tests/test_layering.py``).
"""
