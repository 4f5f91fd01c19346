"""The logit margins on the H200 at every baseline vs cpu-moe divergence of the SmolLM2 upcycles.

usage: python margins.py   (from the repository root; runs `abtest report` on the evidence beside this
folder into a temporary directory and reads its report.json; each arm is deterministic, so one output
per prompt stands for all: the 12 prompts' run-0 divergences of block 0 are summarised)"""
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile

D = pathlib.Path(__file__).resolve().parent.parent
files = sorted(str(p) for p in D.glob("*smollm2-135m-*.jsonl.gz")) + sorted(str(p) for p in D.glob("*SmolLM2*.jsonl.gz"))
with tempfile.TemporaryDirectory() as t:
    subprocess.run([sys.executable, "-m", "abtest", "report", *files, "--out", t], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rep = json.loads((pathlib.Path(t) / "report.json").read_text())
for e in rep["equivalence"]:
    seen, rows = set(), []
    for d in e["divergences"]:
        if d["prompt_id"] in seen:
            continue
        seen.add(d["prompt_id"])
        rows.append(d)
    print(f"{e['arm']} vs {e['baseline']}: {e['identical']}/{e['pairs']} identical, {e['unpaired']} unpaired")
    for d in sorted(rows, key=lambda d: d["position"]):
        m = "—" if d.get("margin") is None else f"{d['margin']:.3f}{'' if d.get('margin_is_exact') else ' (≥)'}"
        am = "—" if d.get("arm_margin") is None else f"{d['arm_margin']:.3f}"
        print(f"  {d['prompt_id']:<18} @ {d['position']:>3}  baseline {d.get('baseline_token')!r:<14} margin {m:<10}"
              f" cpu-moe {d.get('token')!r:<14} margin {am}")
    ms = [d["margin"] for d in rows if d.get("margin") is not None]
    ams = [d["arm_margin"] for d in rows if d.get("arm_margin") is not None]
    ex = sum(bool(d.get("margin_is_exact")) for d in rows)
    if ms:
        print(f"  baseline-side margin: median {statistics.median(ms):.3f}, range {min(ms):.4f}–{max(ms):.3f};"
              f" the runner-up is cpu-moe's token at {ex}/{len(rows)}")
    if ams:
        print(f"  cpu-moe-side margin: median {statistics.median(ams):.3f}, range {min(ams):.4f}–{max(ams):.3f}")
