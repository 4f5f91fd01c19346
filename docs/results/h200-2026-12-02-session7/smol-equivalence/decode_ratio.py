"""abtest's client-side decode rate over llama-server's own (timings.predicted_per_second), per
measured request of the SmolLM2 H200 evidence: how much the client's timing adds at 140–710 tok/s.

usage: python decode_ratio.py   (from the repository root, PYTHONPATH=.)"""
import pathlib
import statistics

from abtest.analysis.metrics import decode_tps, server_decode_tps
from abtest.evidence import read_evidence

D = pathlib.Path(__file__).resolve().parent.parent
for f in sorted(D.glob("*mol*.jsonl.gz")):
    ev = read_evidence(f)
    by: dict[str, list[float]] = {}
    for r in ev.requests:
        c, s = decode_tps(r), server_decode_tps(r)
        if not r.warmup and c and s:
            by.setdefault(r.arm, []).append(c / s)
    for arm, v in by.items():
        print(f"{f.name[:40]:<40} {arm:<9} n {len(v):>3}  client/server decode: median {statistics.median(v):.4f},"
              f" range {min(v):.4f}–{max(v):.4f}")
