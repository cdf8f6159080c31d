"""Scoring throughput and memory: `alsel score` on a float16 pool against paired texts.

Prints, in one run on one machine:
  - alsel score: pool rows/s (scoring only, as the command reports it) and the whole command's wall time
  - the limit: a bare float32 torch.mm of the same shapes (chunk x D @ D x N_texts), same device,
    data already in memory, no reduction — rows/s (mean of a run before and one after alsel's, the
    machine's rate drifts), and alsel's ratio to it
  - a straightforward NumPy implementation (h5py reads, float32 matrix per chunk, then reduce): rows/s
  - peak resident memory (ru_maxrss) of the `alsel score` process, and the pool's size on disk

    python benchmarks/score_bench.py --rows 2000000 --texts 5000       # the issue's case (2 GB pool)
    python benchmarks/score_bench.py --rows 200000                      # a quicker look
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alsel.store import StoreWriter, write_store  # noqa: E402
from alsel.stream import auto_chunk_size  # noqa: E402

MODEL = "bench"


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def make_paired(path, n_texts, captions, dim, rng):
    n_images = n_texts // captions
    images = unit(rng.standard_normal((n_images, dim))).astype(np.float32)
    ti = np.repeat(np.arange(n_images), captions)
    texts = unit(images[ti] + 0.9 * rng.standard_normal((n_texts, dim)) / np.sqrt(dim) * 8).astype(np.float32)
    write_store(path, images=images.astype(np.float16), image_ids=[f"i{i}" for i in range(n_images)],
                texts=texts.astype(np.float16), text_ids=[f"t{j}" for j in range(n_texts)], text_image=ti,
                model=MODEL, pretrained="bench", created_by="score_bench")
    return images


def make_pool(path, rows, dim, images, rng, block=65536):
    """Pool rows: half near paired images (hard negatives), half random."""
    with StoreWriter(path, model=MODEL, pretrained="bench", created_by="score_bench") as w:
        w.add_group("images", rows, dim, np.float16)
        for s in range(0, rows, block):
            n = min(block, rows - s)
            x = rng.standard_normal((n, dim)).astype(np.float32)
            near = rng.random(n) < 0.5
            x[near] = images[rng.integers(0, len(images), near.sum())] * 12 + x[near] / np.sqrt(dim) * 8
            w.write("images", s, unit(x).astype(np.float16), [f"u{s + r}" for r in range(n)])


def bare_matmul_rate(chunk, dim, n_texts, min_rows, device):
    """Rows/s of a plain float32 matmul with alsel's chunk shape, data resident."""
    x = torch.randn(chunk, dim, device=device)
    a = torch.randn(n_texts, dim, device=device)
    out = torch.empty(chunk, n_texts, device=device)
    torch.mm(x, a.T, out=out)
    reps = max(2, -(-min_rows // chunk))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(x, a.T, out=out)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return reps * chunk / (time.perf_counter() - t)


def numpy_rate(paired_path, pool_path, weight_rows, chunk=16384):
    """A straightforward NumPy implementation (h5py reads, float32, full-chunk matrix, then reduce)."""
    import h5py

    from alsel.store import load_paired, open_store
    from alsel.thresholds import ThresholdParams, make_thresholds

    with open_store(paired_path, need="paired") as st:
        p = load_paired(st)
    xi = make_thresholds(p, ThresholdParams(), torch.device("cpu")).xi
    texts = p.texts
    t = time.perf_counter()
    with h5py.File(pool_path, "r") as f:
        emb = f["images/emb"]
        for a in range(0, weight_rows, chunk):
            x = emb[a:min(weight_rows, a + chunk)].astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            c = x @ texts.T - xi[None, :]
            count = (c > 0).sum(axis=1)
            surplus = np.where(c > 0, c, 0).sum(axis=1)
    del count, surplus
    return weight_rows / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--texts", type=int, default=5000)
    ap.add_argument("--captions", type=int, default=5)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--workdir", default="bench-out/score")
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the generated stores")
    args = ap.parse_args()

    os.makedirs(args.workdir, exist_ok=True)
    paired = os.path.join(args.workdir, f"paired_{args.texts}x{args.dim}.h5")
    pool = os.path.join(args.workdir, f"pool_{args.rows}x{args.dim}.h5")
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    if not (args.keep and os.path.exists(paired) and os.path.exists(pool)):
        images = make_paired(paired, args.texts, args.captions, args.dim, rng)
        make_pool(pool, args.rows, args.dim, images, rng)
    print(f"stores ready in {time.perf_counter() - t:.1f} s: pool {args.rows} x {args.dim} float16 "
          f"({os.path.getsize(pool) / 2**30:.2f} GiB on disk), {args.texts} paired texts")

    device = torch.device(args.device)
    chunk = min(args.chunk_size or auto_chunk_size(args.dim, device), args.rows)
    bare_rows = min(args.rows, 200_000)
    bare_before = bare_matmul_rate(chunk, args.dim, args.texts, bare_rows, device)

    out = os.path.join(args.workdir, "scores.h5")
    alsel = shutil.which("alsel") or "alsel"
    cmd = [alsel, "score", "--paired", paired, "--unpaired", pool, "--out", out, "--device", args.device]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"alsel score failed:\n{stderr}")
    m = re.search(r"([\d,]+) rows/s", stdout)
    alsel_rate = float(m.group(1).replace(",", ""))
    peak_rss = usage.ru_maxrss / 2**20  # KiB -> GiB

    bare_after = bare_matmul_rate(chunk, args.dim, args.texts, bare_rows, device)
    bare = (bare_before + bare_after) / 2
    np_rows = min(args.rows, 100_000)
    np_rate = numpy_rate(paired, pool, np_rows)

    print(f"device {args.device}, torch threads {torch.get_num_threads()}, chunk {chunk} rows")
    print(f"alsel score        {alsel_rate:12,.0f} pool rows/s   (whole command {wall:.1f} s, incl. start-up and ξ)")
    print(f"bare float32 mm    {bare:12,.0f} rows/s        ({chunk} x {args.dim} @ {args.dim} x {args.texts}; "
          f"{bare_before:,.0f} before and {bare_after:,.0f} after the alsel run)")
    print(f"ratio to bare mm   {alsel_rate / bare:12.2f}")
    print(f"numpy baseline     {np_rate:12,.0f} rows/s        (h5py + float32 numpy, first {np_rows} rows); "
          f"alsel is {alsel_rate / np_rate:.2f}x faster")
    print(f"peak RSS of alsel score: {peak_rss:.2f} GiB (pool on disk {os.path.getsize(pool) / 2**30:.2f} GiB)")
    if not args.keep:
        shutil.rmtree(args.workdir)


if __name__ == "__main__":
    main()
