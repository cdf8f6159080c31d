"""How every strategy of the registry scales with the pool: time and peak memory of `alsel select`.

Writes, per size N, a pool of N pairs (random unit rows, float16, D = 512: images with one caption each,
so the same file serves the strategies that take pool images and those that take pool pairs), a paired
store of 5,000 pairs and a randomly initialised probabilistic head (dim 64, 10 classes), then runs
`alsel select --strategy NAME --budget B` in a fresh process per strategy and size, and prints seconds
and the process's own peak RSS (VmHWM, read at exit). Nothing may grow like N × N: memory should grow
by a few numbers per pool row (and the pool itself where it fits in POOL_CACHE_BYTES).

    python benchmarks/strategy_scale.py --sizes 100000,1000000
    python benchmarks/strategy_scale.py --sizes 20000 --strategies typiclust,probcover   # a quick look
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

from alsel import strategies  # noqa: E402
from alsel.probhead import ProbConfig, ProbHead, save_prob_head  # noqa: E402
from alsel.store import StoreWriter  # noqa: E402

CHILD = """
import sys, cli
code = cli.main(sys.argv[2:])
open(sys.argv[1], "w").write(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")))
sys.exit(code)
"""


def write_pairs(path: str, n: int, d: int, seed: int, prefix: str) -> None:
    """n images and one caption each (a caption near its image), random unit rows, float16."""
    rng = np.random.default_rng(seed)
    with StoreWriter(path, model="bench", pretrained="none", created_by="strategy_scale") as w:
        w.add_group("images", n, d, np.float16)
        w.add_group("texts", n, d, np.float16, text_image=np.arange(n))
        for a in range(0, n, 65536):
            x = rng.standard_normal((min(65536, n - a), d)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            t = x + 0.7 * rng.standard_normal(x.shape).astype(np.float32) / np.sqrt(d)
            t /= np.linalg.norm(t, axis=1, keepdims=True)
            w.write("images", a, x, [f"{prefix}i{i}" for i in range(a, a + len(x))])
            w.write("texts", a, t, [f"{prefix}t{i}" for i in range(a, a + len(x))])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--strategies", default=",".join(strategies.names()))
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--paired", type=int, default=5000)
    ap.add_argument("--budget", type=int, default=100)
    args = ap.parse_args()
    torch.manual_seed(0)
    names = args.strategies.split(",")
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        head = ProbHead(args.dim, 10, ProbConfig(dim=64)).eval()
        save_prob_head(os.path.join(d, "ph.pt"), head)
        paired = os.path.join(d, "paired.h5")
        write_pairs(paired, args.paired, args.dim, 1, "p")
        print(f"paired store {args.paired:,} pairs, D = {args.dim}, float16 pools, budget {args.budget}, "
              f"{os.cpu_count()} CPU cores")
        print(f"{'strategy':>18} {'pool rows':>10} {'seconds':>8} {'peak RSS':>10}")
        for n in (int(x) for x in args.sizes.split(",")):
            pool = os.path.join(d, f"pool{n}.h5")
            write_pairs(pool, n, args.dim, n, "u")
            for name in names:
                s = strategies.get(name)
                extra = ["--head", os.path.join(d, "ph.pt")] if "prob_head" in s.needs else ["--paired", paired]
                hwm = os.path.join(d, "hwm")
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-c", CHILD, hwm, "select", "--strategy", name, "--unpaired",
                                    pool, *extra, "--budget", str(args.budget), "--out", os.path.join(d, "sel.h5"),
                                    "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
                dt = time.perf_counter() - t0
                if r.returncode != 0:
                    sys.exit(f"{name} at {n}: {r.stderr}")
                kib = int(open(hwm).read().split()[1])
                print(f"{name:>18} {n:>10,} {dt:>8.1f} {kib / 2**20:>8.2f} GiB", flush=True)
            os.unlink(pool)


if __name__ == "__main__":
    main()
