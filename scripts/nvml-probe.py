"""What abtest's NVML sampler sees of a real CUDA process: per-device PID memory by UUID, the
CUDA_VISIBLE_DEVICES mapping (unset, by index, by UUID), the devices listed. Prints one JSON object.

    python3 scripts/nvml-probe.py          # on a GPU machine; needs nvidia-ml-py and torch

The child process (torch) allocates 1 GiB on each device it sees, under the CUDA_VISIBLE_DEVICES
given, and sleeps; the parent samples it with `abtest.measure.sampler` as `abtest run` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abtest.measure.sampler import Nvml, VramSampler, summarize  # noqa: E402

CHILD = ("import torch,time,sys\n"
         "xs=[torch.empty(1<<30,dtype=torch.uint8,device=f'cuda:{i}') for i in range(torch.cuda.device_count())]\n"
         "torch.cuda.synchronize(); print(torch.cuda.device_count(), flush=True); time.sleep(30)\n")


def probe(cuda_visible: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if cuda_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True)
    try:
        seen = int((child.stdout.readline() if child.stdout else "0").strip() or 0)
        nvml = Nvml(cuda_visible=cuda_visible, from_env=False)
        samples = []
        sampler = VramSampler(nvml, "probe", child.pid, time.perf_counter_ns(), samples.append)
        for _ in range(5):
            sampler.sample()
            time.sleep(0.1)
        s = sampler.samples[-1]
        return {"cuda_visible_devices": cuda_visible, "torch_device_count": seen,
                "info": nvml.info().as_dict(), "sample": vars(s),
                "peak_by_gpu": summarize(sampler.samples, None).get("peak_by_gpu")}
    finally:
        child.kill()
        child.wait()


def main() -> int:
    first = Nvml(from_env=False)
    if not first.ok:
        print(json.dumps({"no_gpu": first.reason}))
        return 1
    uuid = first.uuids[0]
    out = [probe(None), probe("0"), probe(uuid), probe(uuid[:12])]
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
