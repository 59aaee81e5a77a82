"""What every cocotb testbench shares: the clock, the reset and the seeded random sources."""

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles

from sim.streams import ClockCounter

__all__ = ["PERIOD_NS", "start", "seeded"]

PERIOD_NS = 10


async def start(dut, low: tuple[str, ...] = (), drive_clock: bool = True) -> ClockCounter:
    """Start the clock (unless the design makes its own) and hold reset for 3 cycles; `low` names
    inputs to drive 0 meanwhile."""
    if drive_clock:
        Clock(dut.clk, PERIOD_NS, unit="ns").start()
    clock = ClockCounter(dut.clk, PERIOD_NS)
    dut.rst.value = 1
    for name in low:
        getattr(dut, name).value = 0
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    return clock


def seeded() -> tuple[int, torch.Generator]:
    """cocotb's run seed and a torch generator seeded with it (torch takes a signed 64-bit seed)."""
    seed = cocotb.RANDOM_SEED % 2**63
    return seed, torch.Generator().manual_seed(seed)
