"""`alsel embed` throughput: images/s and captions/s, end to end (decode, preprocess, model, store).

    python benchmarks/embed_bench.py                    # CPU, the tiny test model (tests/tiny-clip.json)
    python benchmarks/embed_bench.py --gpu              # also ViT-B-32, random weights, batch 256, fp16, on CUDA

Images are generated PNGs (256 x 256) in a temporary folder; no download. Figures are printed, not
asserted.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from alsel.embed import ModelSpec, embed, list_images, read_captions  # noqa: E402

TINY = os.path.join(ROOT, "tests", "tiny-clip.json")


def make_inputs(folder: str, n_images: int, n_captions: int, size: int = 256):
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "imgs"), exist_ok=True)
    base = (rng.random((size, size, 3)) * 255).astype("uint8")
    for i in range(n_images):
        Image.fromarray(np.roll(base, i, axis=0)).save(os.path.join(folder, "imgs", f"{i:06d}.png"))
    words = ["a", "photo", "of", "two", "dogs", "on", "the", "grass", "near", "red", "car", "with", "people"]
    with open(os.path.join(folder, "caps.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        for j in range(n_captions):
            w.writerow([f"c{j}", " ".join(rng.choice(words, size=12))])


def run(folder, spec, device, batch_size, workers, label):
    imgs = list_images(os.path.join(folder, "imgs"))
    caps = read_captions(os.path.join(folder, "caps.csv"))
    t = time.perf_counter()
    embed(os.path.join(folder, f"{label}_img.h5"), images=imgs, spec=spec, device=device, batch_size=batch_size,
          workers=workers)
    t_img = time.perf_counter() - t
    t = time.perf_counter()
    embed(os.path.join(folder, f"{label}_txt.h5"), captions=caps, spec=spec, device=device, batch_size=batch_size)
    t_txt = time.perf_counter() - t
    print(f"{label:34s} {len(imgs.paths) / t_img:9.1f} images/s   {len(caps.ids) / t_txt:9.1f} captions/s "
          f"(batch {batch_size}, {spec.precision}, workers {workers}; model load included)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--captions", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="also ViT-B-32 (random weights) on CUDA, batch 256, fp16")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        make_inputs(d, args.images, args.captions)
        print(f"torch threads {torch.get_num_threads()}, {args.images} PNG images 256x256, {args.captions} captions")
        run(d, ModelSpec(name="tiny-clip", pretrained=None, config=TINY), torch.device("cpu"), args.batch_size,
            args.workers, "cpu tiny-clip fp32")
        if args.gpu:
            if not torch.cuda.is_available():
                print("no CUDA device here: the ViT-B-32 GPU figures need one")
                return
            run(d, ModelSpec(name="ViT-B-32", pretrained=None, precision="fp16"), torch.device("cuda"), 256,
                max(args.workers, 8), f"cuda ViT-B-32 fp16 ({torch.cuda.get_device_name()})")


if __name__ == "__main__":
    main()
