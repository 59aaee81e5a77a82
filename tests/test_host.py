"""The sim backend's harness process (sim/host.py): what it reports when a program or the
simulator goes wrong."""

import pytest
import torch

from hw.top import Op, TopConfig
from sim.host import HostProcess
from sw import driver
from sw.compiler import Compiler

pytestmark = pytest.mark.sim


def test_a_program_that_does_not_finish_and_a_dead_simulator_are_reported(tmp_path):
    cfg = TopConfig(2, 2, act_kib=1, weight_kib=1, max_channels=16, max_keys=16)
    compiled = driver.build_sim(cfg)
    load = Compiler(cfg).encode_commands([{"op": Op.LOAD_WEIGHT, "count": 4, "addr": 0}])
    with HostProcess(compiled.executable, tmp_path) as link:
        words, cycles = link.run(load, [1, 2, 3, 4], 0, 1000)
        assert words == [] and 4 <= cycles < 20 and link.rtl_seconds > 0
        with pytest.raises(RuntimeError, match="did not finish within 1000 cycles: 1 of 1 commands and 2 of 2 "
                                               "data words taken, 0 of 0 results given"):
            link.run(load, [1, 2], 0, 1000)  # the top waits for the other two words
    with HostProcess(compiled.executable, tmp_path) as link:
        with pytest.raises(RuntimeError, match="the accelerator gave 0 result words, the program expects 3"):
            link.run(load, [1, 2, 3, 4], 3, 1000)
        # a result word beyond the program's count fails the run (under random back-pressure too)
        prog = Compiler(cfg).linear(torch.randint(0, 256, (3, 4)), torch.randint(-128, 128, (3, 4)), 0, None,
                                    torch.full((3,), 1 << 14), torch.full((3,), 16), 0, False)
        link.jitter = True
        with pytest.raises(RuntimeError, match=f"the accelerator gave {prog.out_words} result words, the program "
                                               f"expects {prog.out_words - 1}"):
            link.run(Compiler(cfg).encode_commands(prog.commands), prog.din, prog.out_words - 1, 10_000)
        link._proc.kill()
        with pytest.raises(RuntimeError, match="the simulator process stopped answering"):
            link.run(load, [1, 2, 3, 4], 0, 1000)
