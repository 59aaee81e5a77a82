"""Amaranth hardware units of the accelerator."""
