"""Host side: compiles quantized models into accelerator work and runs it on a backend."""
