"""What `alsel advise` costs as the paired store grows: 10^3, 10^4 and 10^5 pairs (D = 512, random unit rows,
a caption near each image), a pool of 10^5 images, a budget of 10% of the paired store, the default
settings (6 splits, every candidate, at most 1,000 paired images used). Prints the seconds of a fresh
`alsel advise` process and its split plan.

    python benchmarks/advise_cost.py [--sizes 1000,10000,100000] [--learner linear]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from strategy_scale import write_pairs  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--pool", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--learner", default="linear")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        pool = os.path.join(d, "pool.h5")
        write_pairs(pool, args.pool, args.dim, 7, "u")
        print(f"pool {args.pool:,} images, D = {args.dim}, {os.cpu_count()} CPU cores, learner {args.learner}")
        for n in (int(x) for x in args.sizes.split(",")):
            paired = os.path.join(d, f"paired{n}.h5")
            write_pairs(paired, n, args.dim, n, "p")
            out = os.path.join(d, f"advice{n}.json")
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", "import sys, cli; sys.exit(cli.main(sys.argv[1:]))", "advise",
                                "--paired", paired, "--unpaired", pool, "--budget", str(n // 10), "--out", out,
                                "--device", "cpu", "--learner", args.learner, "--quiet"], cwd=ROOT,
                               capture_output=True, text=True)
            dt = time.perf_counter() - t0
            if r.returncode != 0:
                sys.exit(r.stderr)
            doc = json.load(open(out))
            p = doc["plan"]
            print(f"{n:>8,} pairs, budget {n // 10:,}: {dt:6.0f} s (plan: {p['images']:,} images per split, "
                  f"{p['start']} to start, pool {p['pool']}, {p['test']} held out, {p['budget']} per round); "
                  f"recommendation {doc['recommendation']}", flush=True)


if __name__ == "__main__":
    main()
