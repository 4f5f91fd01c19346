"""Fakes for tests and benchmarks: servers that misbehave on cue or follow a known schedule."""

from pathlib import Path

SCRIPTED_PY = Path(__file__).with_name("scripted.py")  # run as a script: stdlib only, no install needed
