"""cocotb testbenches, one module per hardware unit (run through ``sim.toolchain``)."""
