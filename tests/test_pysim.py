"""sim.pysim: the stream producer and consumer of Amaranth's simulator, on a unit that repeats beats."""

import pytest

from sim.pysim import StreamBench
from sim.tb.stream_check import WORDS, Repeater


def repeat(copies: int, expect: int, idle: float = 0.0, drain: int = 32):
    dut = Repeater(copies)
    bench = StreamBench(dut, seed=copies)
    source = bench.send([(dut.inp, WORDS)], idle=idle)
    sink = bench.receive(dut.out, expect, idle=idle, drain=drain)
    bench.run()
    return source, sink


@pytest.mark.parametrize("idle", [0.0, 0.5])
def test_every_beat_in_order_with_handshake_cycles(idle):
    source, sink = repeat(2, 2 * len(WORDS), idle)
    assert sink.words == [w for w in WORDS for _ in range(2)]
    accepted, received = source.accepted_at(source.steps[0][0]), sink.received_at
    assert len(accepted) == len(WORDS) and accepted == sorted(set(accepted))
    assert all(a < r for a, r in zip(accepted, received[::2]))  # each first copy after its input
    if idle == 0.0:  # the first copy one cycle after its input, the second right behind it
        assert [r - a for a, r in zip(accepted, received[::2])] == [1] * len(WORDS)
        assert [b - a for a, b in zip(received[::2], received[1::2])] == [1] * len(WORDS)


def test_an_extra_beat_fails():
    with pytest.raises(AssertionError, match=r"out: an extra beat \(0x63\) after the 9 expected"):
        repeat(2, 2 * len(WORDS) - 1, 0.3)


def test_beats_while_the_producer_still_sends_fail():
    """The consumer watches for extra beats until every producer is done, even with no drain window."""
    with pytest.raises(AssertionError, match=r"out: an extra beat \(0xfa\) after the 1 expected"):
        repeat(1, 1, 0.0, drain=0)


def test_a_missing_beat_times_out_naming_who_waits():
    dut = Repeater(1)
    bench = StreamBench(dut)
    bench.send([(dut.inp, WORDS)])
    bench.receive(dut.out, len(WORDS) + 1)
    with pytest.raises(AssertionError, match=r"not done after 1000 cycles: consumer of out: 5 of 6 beats received"):
        bench.run(timeout=1000)


def test_producer_counts_cycles_a_beat_waited():
    """The repeater takes a new input only once its 4 copies have left: every input but the first waits 4 cycles."""
    source, _ = repeat(4, 4 * len(WORDS))
    inp = source.steps[0][0]
    assert source.waited(inp) == 4 * (len(WORDS) - 1)
