"""FQ-ViT post-training quantization and the integer-only reference."""
