"""Measuring: prompts, the stream client, memory sampling, and the runner that writes evidence."""
