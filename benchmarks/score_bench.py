"""Scoring throughput and memory: `alsel score` on float16 pools against paired texts.

Prints, in one run on one machine, for each pool size (float16, D = 512 by default):
  - alsel score, exact low-precision path (--precision bf16 on CPU, fp16 on CUDA): pool rows/s as
    the command reports it (scoring only; ξ comes from one `alsel threshold` run), peak RSS
  - alsel score, float32 path: rows/s on a leading shard of the pool (same per-row work)
  - the limits: bare torch.mm of alsel's tile shapes against all texts, in the low precision and in
    float32, data resident, no reduction (mean of a run before and one after) — and the ratios
  - a straightforward NumPy implementation (h5py reads, float32 matrix per chunk, reduce)
  - faiss-cpu brute force: IndexFlatIP over the texts, range search at the lowest ξ, then each
    (row, text) hit filtered by its own ξ_j (skipped when faiss is not installed: pip install faiss-cpu)
Baselines run on the first --sample rows (their per-row cost does not depend on the pool size);
pools larger than --max-rows are scored on a leading shard of at most --max-rows rows (and say so).

    python benchmarks/score_bench.py --rows 100000,1000000 --texts 50000      # the issue's case
    python benchmarks/score_bench.py --rows 20000 --texts 5000 --sample 5000   # a quick look
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


def bare_matmul_rate(tile_rows, tile_cols, dim, n_texts, dtype, device, seconds=3.0):
    """Rows/s of a plain torch.mm over alsel's compute tiles against all texts, data resident."""
    x = torch.randn(tile_rows, dim, device=device).to(dtype)
    a = torch.randn(n_texts, dim, device=device).to(dtype)
    out = torch.empty(tile_rows, min(tile_cols, n_texts), device=device, dtype=dtype)

    def sweep_once():
        for c0 in range(0, n_texts, tile_cols):
            blk = a[c0:c0 + tile_cols]
            torch.mm(x, blk.T, out=out[:, :len(blk)])

    sweep_once()
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        sweep_once()
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return reps * tile_rows / (time.perf_counter() - t)


def numpy_rate(texts, xi, pool_path, rows, chunk=4096):
    """A straightforward NumPy implementation (h5py reads, float32, full-chunk matrix, then reduce)."""
    import h5py

    t = time.perf_counter()
    with h5py.File(pool_path, "r") as f:
        emb = f["images/emb"]
        for a in range(0, rows, chunk):
            x = emb[a:min(rows, a + chunk)].astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            c = x @ texts.T - xi[None, :]
            count = (c > 0).sum(axis=1)
            surplus = np.where(c > 0, c, 0).sum(axis=1)
    del count, surplus
    return rows / (time.perf_counter() - t)


def faiss_rate(texts, xi, pool_path, rows, chunk=4096):
    """faiss-cpu brute force: IndexFlatIP range search at min ξ, then per-text filtering; None without faiss."""
    try:
        import faiss
    except ImportError:
        return None
    import h5py

    index = faiss.IndexFlatIP(texts.shape[1])
    index.add(np.ascontiguousarray(texts, dtype=np.float32))
    radius = float(np.min(xi[np.isfinite(xi)]))
    t = time.perf_counter()
    hits = 0
    with h5py.File(pool_path, "r") as f:
        emb = f["images/emb"]
        for a in range(0, rows, chunk):
            x = emb[a:min(rows, a + chunk)].astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            lims, sims, ids = index.range_search(x, radius)
            c = sims - xi[ids]
            keep = c > 0
            row = np.repeat(np.arange(len(x)), np.diff(lims).astype(np.int64))
            count = np.bincount(row[keep], minlength=len(x))
            surplus = np.bincount(row[keep], weights=c[keep], minlength=len(x))
            hits += len(sims)
    del count, surplus
    return rows / (time.perf_counter() - t), hits / rows


PEAK_RSS = """
import atexit, sys
def _peak():
    with open(sys.argv[1], "w") as out:
        out.write(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")))
atexit.register(_peak)
import cli
sys.exit(cli.main(sys.argv[2:]))
"""


def run_alsel(args):
    """Run an alsel command; (stdout, peak RSS GiB, wall s). Exits on failure.

    The peak is the child's own VmHWM, written at exit: getrusage/wait4 would report at least this
    (large) process's RSS, which Linux carries into ru_maxrss of a forked and exec'd child."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".rss") as peak:
        cmd = [sys.executable, "-c", PEAK_RSS, peak.name, *args[1:]]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"{' '.join(args)} failed:\n{proc.stderr}")
        kib = int(peak.read().split()[1])
    return proc.stdout, kib / 2**20, wall


def reported_rate(stdout):
    return float(re.search(r"([\d,]+) rows/s", stdout).group(1).replace(",", ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="100000,1000000", help="pool sizes, comma-separated")
    ap.add_argument("--texts", type=int, default=50000)
    ap.add_argument("--captions", type=int, default=5)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--sample", type=int, default=20000, help="rows for the float32 path and the baselines")
    ap.add_argument("--max-rows", type=int, default=1_000_000, help="score at most this many rows of a pool")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--workdir", default="bench-out/score")
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the generated stores")
    args = ap.parse_args()

    from alsel.rounding import resolve_precision
    from alsel.stream import CPU_LOW_COL_BLOCK, CPU_TILE_ROWS, CUDA_COL_BLOCK, CUDA_TILE_ROWS

    device = torch.device(args.device)
    low = resolve_precision("fp16" if device.type == "cuda" else "bf16", device)
    low_name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[low]
    os.makedirs(args.workdir, exist_ok=True)
    rng = np.random.default_rng(0)
    alsel = shutil.which("alsel") or "alsel"
    paired = os.path.join(args.workdir, f"paired_{args.texts}x{args.dim}.h5")
    if not (args.keep and os.path.exists(paired)):
        images = make_paired(paired, args.texts, args.captions, args.dim, rng)
    else:
        import h5py
        with h5py.File(paired, "r") as f:
            images = f["images/emb"][:].astype(np.float32)
    xi_path = os.path.join(args.workdir, "xi.h5")
    _, _, xi_wall = run_alsel([alsel, "threshold", "--paired", paired, "--out", xi_path, "--device", args.device])
    import h5py
    with h5py.File(xi_path, "r") as f:
        xi = f["xi"][:]
    with h5py.File(paired, "r") as f:
        texts = f["texts/emb"][:].astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}; {args.texts} paired texts x D = {args.dim}; "
          f"ξ by `alsel threshold` in {xi_wall:.1f} s")

    cuda = device.type == "cuda"
    tile_rows = CUDA_TILE_ROWS if cuda else CPU_TILE_ROWS
    low_cols = CUDA_COL_BLOCK if cuda else CPU_LOW_COL_BLOCK
    bare_low = bare_matmul_rate(tile_rows, low_cols, args.dim, args.texts, low, device)
    bare_32 = bare_matmul_rate(tile_rows, CUDA_COL_BLOCK if cuda else 512, args.dim, args.texts, torch.float32, device)
    rows_list = [int(r) for r in args.rows.split(",")]
    results = []
    for n in rows_list:
        pool = os.path.join(args.workdir, f"pool_{n}x{args.dim}.h5")
        t = time.perf_counter()
        if not (args.keep and os.path.exists(pool)):
            make_pool(pool, n, args.dim, images, rng)
        made = time.perf_counter() - t
        out = os.path.join(args.workdir, "scores.h5")
        base = [alsel, "score", "--paired", paired, "--unpaired", pool, "--thresholds", xi_path, "--out", out,
                "--device", args.device]
        shards = -(-n // args.max_rows)
        cmd = base + ["--precision", low_name] + (["--shard", f"0/{shards}"] if shards > 1 else [])
        stdout, rss, wall = run_alsel(cmd)
        scored = n // shards
        low_rate = reported_rate(stdout)
        sample_shards = max(1, n // args.sample)
        stdout32, rss32, _ = run_alsel(base + ["--precision", "fp32", "--shard", f"0/{sample_shards}"])
        rate32 = reported_rate(stdout32)
        results.append((n, scored, low_rate, rss, rate32, os.path.getsize(pool) / 2**30, made))
        if not args.keep and n != rows_list[0]:
            os.unlink(pool)  # the first pool stays for the baselines
    bare_low = (bare_low + bare_matmul_rate(tile_rows, low_cols, args.dim, args.texts, low, device)) / 2
    bare_32 = (bare_32 + bare_matmul_rate(tile_rows, CUDA_COL_BLOCK if cuda else 512, args.dim, args.texts,
                                          torch.float32, device)) / 2
    first_pool = os.path.join(args.workdir, f"pool_{rows_list[0]}x{args.dim}.h5")
    sample = min(args.sample, rows_list[0])
    np_rate = numpy_rate(texts, xi, first_pool, sample)
    fa = faiss_rate(texts, xi, first_pool, sample)

    print(f"limit: bare {low_name} mm {bare_low:,.0f} rows/s; bare fp32 mm {bare_32:,.0f} rows/s "
          f"(tiles {tile_rows} x {low_cols} / {512 if not cuda else CUDA_COL_BLOCK} against {args.texts} texts)")
    print(f"numpy baseline: {np_rate:,.0f} rows/s (first {sample} rows)")
    if fa is None:
        print("faiss baseline: skipped (faiss not installed)")
    else:
        print(f"faiss baseline: {fa[0]:,.0f} rows/s (IndexFlatIP range search at min ξ = {np.min(xi):.3f}: "
              f"{fa[1]:,.0f} hits per row to filter; first {sample} rows)")
    print(f"{'pool rows':>10} {'scored':>9} {'GiB':>6} | {'alsel ' + low_name:>11} {'/limit':>6} {'peak RSS':>8} | "
          f"{'alsel fp32':>10} {'/limit':>6} | {low_name + '/fp32':>9} {'/numpy':>7} {'/faiss':>7}")
    for n, scored, low_rate, rss, rate32, gib, made in results:
        fa_ratio = f"{low_rate / fa[0]:7.1f}" if fa else f"{'-':>7}"
        print(f"{n:>10,} {scored:>9,} {gib:6.2f} | {low_rate:11,.0f} {low_rate / bare_low:6.2f} {rss:7.2f}G | "
              f"{rate32:10,.0f} {rate32 / bare_32:6.2f} | {low_rate / rate32:9.2f} {low_rate / np_rate:7.1f} {fa_ratio}")
    if not args.keep:
        shutil.rmtree(args.workdir)


if __name__ == "__main__":
    main()
