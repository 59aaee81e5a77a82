"""Streams in Amaranth's Python simulator: a producer, a consumer that notices extra beats, a runner.

The cocotb counterparts are in ``sim.streams``; these drive ``lib.stream`` interfaces of a component
directly (``valid``/``ready``/``payload``), for the short checks that need no Verilator build::

    bench = StreamBench(dut, seed=3)
    source = bench.send([(dut.params, param_words), (dut.inp, words)], idle=0.3)
    sink = bench.receive(dut.out, len(words), idle=0.3)
    bench.run()
    sink.words, sink.received_at, source.accepted_at(dut.inp)

``send`` offers the words of each (stream, words) step in order, idling before each beat with
probability ``idle``. ``receive`` takes exactly ``count`` beats with random back-pressure, then holds
``ready`` high until every producer is done and ``drain`` cycles more, and fails on any beat offered
meanwhile: a unit that emits one beat too many does not pass. ``run`` returns once every producer
and consumer is done, and fails naming the unfinished ones after ``timeout`` cycles.
"""

import random

from amaranth import Value
from amaranth.sim import Simulator

__all__ = ["StreamBench", "Producer", "Consumer"]

DRAIN_CYCLES = 32
PERIOD = 1e-6  # seconds; only cycles matter


def _port_name(dut, stream) -> str:
    for name in dut.signature.members:
        if getattr(dut, name, None) is stream:
            return name
    return repr(stream)


class Producer:
    """Offers each step's words on its stream in turn; `accepted_at(stream)` gives the handshake
    cycles and `waited(stream)` the cycles a beat was offered but not taken."""

    def __init__(self, bench: "StreamBench", steps, idle: float, rng: random.Random):
        self._bench, self._idle, self._rng = bench, idle, rng
        self.steps = [(stream, list(words)) for stream, words in steps]
        self._accepted = [[] for _ in self.steps]
        self._waited = [0] * len(self.steps)
        self.done = False

    def accepted_at(self, stream) -> list[int]:
        return [c for (s, _), cycles in zip(self.steps, self._accepted) if s is stream for c in cycles]

    def waited(self, stream) -> int:
        return sum(n for (s, _), n in zip(self.steps, self._waited) if s is stream)

    def status(self) -> str:
        sent = sum(len(c) for c in self._accepted)
        return f"producer: {sent} of {sum(len(w) for _, w in self.steps)} beats accepted"

    async def run(self, ctx):
        for step, (stream, words) in enumerate(self.steps):
            payload = Value.cast(stream.payload)
            for word in words:
                while self._idle and self._rng.random() < self._idle:
                    await ctx.tick()
                ctx.set(stream.valid, 1)
                ctx.set(payload, word)
                while True:
                    _, _, ready = await ctx.tick().sample(stream.ready)
                    if ready:
                        break
                    self._waited[step] += 1
                self._accepted[step].append(self._bench.cycle)
                ctx.set(stream.valid, 0)
        self.done = True


class Consumer:
    """Takes `count` beats with random back-pressure (`words`, `received_at`), then watches for
    extra beats until every producer is done and `drain` cycles more."""

    def __init__(self, bench: "StreamBench", stream, name: str, count: int, idle: float, rng: random.Random,
                 drain: int):
        self._bench, self._stream, self.name = bench, stream, name
        self.count, self.drain, self._idle, self._rng = count, drain, idle, rng
        self.words, self.received_at = [], []
        self.done = False

    def status(self) -> str:
        return f"consumer of {self.name}: {len(self.words)} of {self.count} beats received"

    async def run(self, ctx):
        stream, payload = self._stream, Value.cast(self._stream.payload)
        while len(self.words) < self.count:
            while self._idle and self._rng.random() < self._idle:
                await ctx.tick()
            ctx.set(stream.ready, 1)
            # one-shot waits, not `until`: the simulator cannot close an unfinished `until` when
            # a run ends in an error
            valid = False
            while not valid:
                _, _, valid, word = await ctx.tick().sample(stream.valid, payload)
            self.words.append(word)
            self.received_at.append(self._bench.cycle)
            ctx.set(stream.ready, 0)
        ctx.set(stream.ready, 1)
        left = self.drain
        while left > 0 or not self._bench.producers_done():
            _, _, valid, word = await ctx.tick().sample(stream.valid, payload)
            if valid:
                raise AssertionError(f"{self.name}: an extra beat ({word:#x}) after the {self.count} expected, "
                                     f"at cycle {self._bench.cycle}")
            if self._bench.producers_done():
                left -= 1
        ctx.set(stream.ready, 0)
        self.done = True


class StreamBench:
    """One Amaranth simulation of `dut` with a 1 MHz clock, its producers and consumers, and a
    cycle counter (`cycle`) that their handshake logs share."""

    def __init__(self, dut, seed=0):
        self.dut = dut
        self.cycle = 0
        self._rng = random.Random(seed)
        self._producers, self._consumers = [], []
        self.sim = Simulator(dut)
        self.sim.add_clock(PERIOD)
        self.sim.add_process(self._count_cycles)

    async def _count_cycles(self, ctx):
        while True:
            await ctx.tick()
            self.cycle += 1

    def producers_done(self) -> bool:
        return all(p.done for p in self._producers)

    def send(self, steps, idle: float = 0.0) -> Producer:
        """A producer of the (stream, words) `steps`, one after the other, with input gaps of
        probability `idle` before each beat."""
        producer = Producer(self, steps, idle, random.Random(self._rng.random()))
        self._producers.append(producer)
        self.sim.add_testbench(producer.run)
        return producer

    def receive(self, stream, count: int, idle: float = 0.0, drain: int = DRAIN_CYCLES) -> Consumer:
        """A consumer of exactly `count` beats of `stream` with back-pressure of probability `idle`
        that fails on a beat offered in the `drain` cycles after every producer is done."""
        consumer = Consumer(self, stream, _port_name(self.dut, stream), count, idle,
                            random.Random(self._rng.random()), drain)
        self._consumers.append(consumer)
        self.sim.add_testbench(consumer.run)
        return consumer

    def run(self, timeout: int | None = None) -> None:
        """Simulate until every producer and consumer is done; fail after `timeout` cycles (by
        default 20 per beat sent or expected, and 1000 more)."""
        if timeout is None:
            beats = sum(len(w) for p in self._producers for _, w in p.steps) + sum(c.count for c in self._consumers)
            timeout = 20 * beats + 1000 + max((c.drain for c in self._consumers), default=0)
        parts = self._producers + self._consumers

        async def watchdog(ctx):
            await ctx.delay(timeout * PERIOD)
            raise AssertionError(f"not done after {timeout} cycles: "
                                 + "; ".join(p.status() for p in parts if not p.done))

        self.sim.add_testbench(watchdog, background=True)
        self.sim.run()
