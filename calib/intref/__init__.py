"""The integer-only reference: every op of the quantized network, defined once, in integer torch."""
