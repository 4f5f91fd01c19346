"""Models: GGUF headers, the catalog of names, synthesised random-weight files, VRAM prediction."""
