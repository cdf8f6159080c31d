"""Retrieval head training speed and evaluation time at COCO-5k scale.

Prints, in one run on one machine:
  - `train_head` steps per second (batch 128, D -> dim, VSE++ loss) on a paired set of N pairs
  - R-sum of a head trained from scratch on the synthetic world with 100 and 400 paired images
  - `recall` time for a test set of 5,000 images x 25,000 captions (5 per image), raw and through
    the head, computed in blocks (never the full 5k x 25k matrix), and the peak RSS growth

    python benchmarks/train_eval_bench.py                  # D = 512, 5k x 25k
    python benchmarks/train_eval_bench.py --images 1000    # quicker
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alsel.head import TrainConfig, steps_per_epoch, train_head  # noqa: E402
from alsel.metrics import recall  # noqa: E402
from alsel.store import Paired  # noqa: E402


def unit(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def world(n_images, captions, dim, rng, noise=None, dtype=np.float64):
    """Random unit images, `captions` noisy copies of each as texts (per-element noise std `noise`,
    default 4.8/sqrt(D)); draws in `dtype` (float32 halves the memory of large worlds)."""
    noise = 4.8 / np.sqrt(dim) if noise is None else noise
    images = unit(rng.standard_normal((n_images, dim), dtype=dtype))
    ti = np.repeat(np.arange(n_images), captions)
    texts = unit(images[ti] + noise * rng.standard_normal((len(ti), dim), dtype=dtype))
    return images, texts, ti


def synth_learning_curve(device) -> None:
    """Head from scratch on the synthetic world with 100 and 400 paired images (as tests/test_head.py)."""
    import tempfile

    from alsel.metrics import evaluate
    from alsel.store import load_paired, open_store
    from alsel.synth import synth_stores

    with tempfile.TemporaryDirectory() as d:
        result = {}
        for frac in (0.1, 0.4):
            w = synth_stores(os.path.join(d, str(frac)), images=1000, captions=5, classes=20, dim=32, seed=0,
                             paired=frac, test=0.2)
            with open_store(w["paired"], need="paired") as st:
                p = load_paired(st)
            head, _ = train_head(p, TrainConfig(init="random", dim=32, epochs=60), device)
            with open_store(w["test"], need="paired") as test:
                result[len(p.images)] = evaluate(test, device, head)["rsum"]
                n_i, n_t = test.images.n, test.texts.n
    chance = sum(100 * (1 - (1 - k / n_t) ** 5) + 100 * k / n_i for k in (1, 5, 10))
    print("synth head from scratch (1000-image world, dim 32, 60 epochs): R-sum "
          + ", ".join(f"{v:.1f} with {k} paired images" for k, v in result.items()) + f"; chance {chance:.1f}")


def reset_peak_rss() -> bool:
    """Linux: restart the high-water mark of resident memory (VmHWM) from the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_gib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) from /proc; ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000, help="test images (5 captions each)")
    ap.add_argument("--train-pairs", type=int, default=25000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--head-dim", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)

    print(f"device {args.device}, torch threads {torch.get_num_threads()}")
    images, texts, ti = world(args.images, 5, args.dim, rng)
    reset_peak_rss()
    rss0 = rss_gib("VmRSS")
    t = time.perf_counter()
    m = recall(images, texts, ti, device)
    dt_raw = time.perf_counter() - t
    grew = rss_gib("VmHWM") - rss0
    full = len(images) * len(texts) * 4 / 2**30
    print(f"eval {len(images)} images x {len(texts)} captions, raw: {dt_raw:.2f} s (R-sum {m['rsum']:.1f}); "
          f"peak RSS {grew * 1024:+.0f} MiB over the RSS before it "
          f"(the full similarity matrix would be {full:.2f} GiB in float32)")

    ti_img, tt, tti = world(args.train_pairs // 5, 5, args.dim, rng)
    paired = Paired("bench", ti_img, tt, tti, "bench", "bench")
    cfg = TrainConfig(init="random", dim=args.head_dim, epochs=args.epochs, batch_size=128)
    t = time.perf_counter()
    head, hist = train_head(paired, cfg, device)
    dt = time.perf_counter() - t
    print(f"train: {args.train_pairs} pairs, D {args.dim} -> {args.head_dim}, batch 128: "
          f"{hist.steps} steps in {dt:.1f} s = {hist.steps / dt:.1f} steps/s "
          f"({steps_per_epoch(args.train_pairs, 128)} steps per epoch)")

    t = time.perf_counter()
    m_head = recall(head.encode(images, "image", device), head.encode(texts, "text", device), ti, device)
    print(f"eval through the head: {time.perf_counter() - t:.2f} s (R-sum {m_head['rsum']:.1f})")
    synth_learning_curve(device)


if __name__ == "__main__":
    main()
