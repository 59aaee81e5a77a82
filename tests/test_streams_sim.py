"""sim.streams in Verilator: a StreamSink fails on a beat beyond the count it expects
(``sim.tb.stream_check`` on a unit that repeats every beat)."""

import pytest
from amaranth.back import verilog

import rtl_gen  # noqa: F401  (the pinned builtin Yosys, as for every generated design)
from sim import toolchain
from sim.tb.stream_check import COPIES, Repeater

pytestmark = pytest.mark.sim


def test_sink_notices_an_extra_beat(tmp_path):
    text = verilog.convert(Repeater(COPIES), name="repeater", emit_src=False)
    compiled = toolchain.build(text, "repeater")
    toolchain.run_tests(compiled, "sim.tb.stream_check", seed=7, test_dir=tmp_path)
