"""Thresholds ξ for a Flickr30K/COCO-sized paired set, tiled over both sides with a running top-k.

Prints, per variant, the time, the rate in paired texts per second, the ratio to a bare float32
matmul of the same total shape (N_t x D @ D x N_i) measured in the same run, and the growth of peak
resident memory during the computation (the full N_t x N_i matrix is printed for comparison).

    python benchmarks/threshold_bench.py                           # 30,000 images x 150,000 captions, D = 512
    python benchmarks/threshold_bench.py --images 5000 --captions 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alsel.rounding import resolve_precision  # noqa: E402
from alsel.store import Paired  # noqa: E402
from alsel.thresholds import ThresholdParams, compute_xi  # noqa: E402
from train_eval_bench import reset_peak_rss, rss_gib, world  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=30000)
    ap.add_argument("--captions", type=int, default=5)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16 (exact paths)")
    args = ap.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    images, texts, ti = world(args.images, args.captions, args.dim, rng, noise=0.15, dtype=np.float32)
    paired = Paired("bench", images, texts, ti, "bench", "bench")
    n_t, n_i = len(texts), len(images)

    # the limit: a bare matmul of the same total shape, timed on a slice and scaled
    x = torch.from_numpy(texts[:8192]).to(device)
    y = torch.from_numpy(images).to(device)
    torch.mm(x[:1024], y.T)
    t = time.perf_counter()
    torch.mm(x, y.T)
    if device.type == "cuda":
        torch.cuda.synchronize()
    bare = (time.perf_counter() - t) * n_t / len(x)
    del x, y
    full = n_t * n_i * 4 / 2**30
    print("note: the bare reference is an untiled 8192-row matmul scaled to N_t rows; alsel's cache-sized tiles "
          "can beat it (ratios above 1)")
    print(f"{n_i} images x {n_t} captions, D {args.dim}, device {args.device}, torch threads {torch.get_num_threads()}; "
          f"bare float32 matmul of that shape ≈ {bare:.1f} s; the full matrix would be {full:.1f} GiB")
    variants = [ThresholdParams(select="images", top_k=1), ThresholdParams(select="images", top_k=3),
                ThresholdParams(select="texts", top_k=1)]
    reference = {}
    for name in args.precision.split(","):
        precision = resolve_precision(name, device)
        for params in variants + ([ThresholdParams(batch="mini")] if name == "fp32" else []):
            reset_peak_rss()
            before = rss_gib("VmRSS")
            t = time.perf_counter()
            xi = compute_xi(paired, params, device, precision=precision)
            dt = time.perf_counter() - t
            grew = rss_gib("VmHWM") - before
            ratio = f"{bare / dt:.2f}" if params.batch == "full" else "-"
            same = ""
            if params in reference:  # the low-precision path must give the float32 answer
                same = f", max |Δξ| vs fp32 {float(np.max(np.abs(xi - reference[params]))):.1e}"
            elif name == "fp32":
                reference[params] = xi
            print(f"{name:4s} {params.select:6s} top-{params.top_k} {params.batch:4s}: {dt:7.1f} s, "
                  f"{n_t / dt:9,.0f} pairs/s, ratio to bare fp32 mm {ratio}, peak RSS +{grew * 1024:.0f} MiB, "
                  f"ξ mean {float(np.mean(xi)):.4f}{same}")


if __name__ == "__main__":
    main()
