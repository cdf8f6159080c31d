"""How `alsel select --strategy ascmr` scales with the pool: time and peak memory for pools of pairs.

Writes pool stores of N images with one caption each (random unit rows, float16, D = 512) and a
randomly initialised probabilistic head (dim 64, 10 classes), then runs the command in a fresh
process per size and prints seconds, pool rows per second and the process's own peak RSS (VmHWM,
read at exit). Memory should grow by the per-row arrays only (fused mean and log-variance, 2 x 4 x dim
bytes, plus a few float64 per row), not with N x N or the embeddings.

    python benchmarks/ascmr_scale.py --sizes 100000,400000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from alsel.probhead import ProbConfig, ProbHead, save_prob_head  # noqa: E402
from alsel.store import StoreWriter  # noqa: E402

CHILD = """
import sys, cli
code = cli.main(sys.argv[2:])
open(sys.argv[1], "w").write(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")))
sys.exit(code)
"""


def write_pool(path: str, n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with StoreWriter(path, model="bench", pretrained="none", created_by="ascmr_scale") as w:
        w.add_group("images", n, d, np.float16)
        w.add_group("texts", n, d, np.float16, text_image=np.arange(n))
        for group in ("images", "texts"):
            for a in range(0, n, 65536):
                x = rng.standard_normal((min(65536, n - a), d)).astype(np.float32)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                w.write(group, a, x, [f"{group[0]}{i}" for i in range(a, a + len(x))])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,400000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--budget", type=int, default=1000)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        head = ProbHead(args.dim, 10, ProbConfig(dim=64)).eval()
        save_prob_head(os.path.join(d, "ph.pt"), head)
        print(f"{'pool pairs':>11} {'seconds':>8} {'rows/s':>8} {'peak RSS':>10}")
        for n in (int(x) for x in args.sizes.split(",")):
            pool = os.path.join(d, f"pool{n}.h5")
            write_pool(pool, n, args.dim, n)
            hwm = os.path.join(d, "hwm")
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", CHILD, hwm, "select", "--strategy", "ascmr", "--unpaired",
                                pool, "--head", os.path.join(d, "ph.pt"), "--budget", str(args.budget), "--out",
                                os.path.join(d, "sel.h5"), "--device", "cpu"], cwd=ROOT, capture_output=True,
                               text=True)
            dt = time.perf_counter() - t0
            if r.returncode != 0:
                sys.exit(r.stderr)
            kib = int(open(hwm).read().split()[1])
            print(f"{n:>11,} {dt:>8.1f} {n / dt:>8,.0f} {kib / 2**20:>8.2f} GiB", flush=True)
            os.unlink(pool)


if __name__ == "__main__":
    main()
