"""Verilator simulation: the toolchain, stream drivers/monitors, and the cocotb testbenches."""
