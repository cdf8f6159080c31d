"""score and every strategy on one GPU at 10^6 and 10^7 pool rows, against that GPU's bare rates measured in
the same run: a bare float16 and bfloat16 matmul (and float32), the device's memory bandwidth, and a bare
read of the pool (page cache to the GPU). Run by benchmarks/gpu_check.sh on a lent GPU machine (the
`device` tool); on a CPU it runs too, on small sizes, to check the script itself:

    python benchmarks/gpu_bench.py --sizes 1000000,10000000            # on a GPU machine
    python benchmarks/gpu_bench.py --device cpu --sizes 20000 --budget 20   # the script itself, anywhere

Every command runs in this one process (cli.main), so the times are the work, not interpreter start-up;
each strategy's limit is strategy_scale.py's formula (its products and passes) at this GPU's rates.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import cli  # noqa: E402
from alsel.probhead import ProbConfig, ProbHead, save_prob_head  # noqa: E402
from alsel.store import StoreWriter  # noqa: E402
from strategy_scale import limits  # noqa: E402

STRATEGIES = ("random", "coreset", "typiclust", "probcover", "hn", "hn-density", "schedule", "hn-learnability",
              "ascmr")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate_mm(dtype, device, m=8192, k=512, n=8192, seconds=1.0) -> float:
    a, b = torch.randn(m, k, device=device).to(dtype), torch.randn(n, k, device=device).to(dtype)
    torch.mm(a, b.T)
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b.T)
        reps += 1
    sync(device)
    return reps * m * n * k / (time.perf_counter() - t0)


def rate_scan(device, nbytes=1 << 31, seconds=1.0) -> float:
    x = torch.empty(nbytes // 4, device=device).normal_()
    x.sum()
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x.sum()
        reps += 1
    sync(device)
    return reps * nbytes / (time.perf_counter() - t0)


def rate_read(pool: str, device) -> float:
    """A bare read of the pool's float16 rows from the page cache onto the device, in 2^20-row slices."""
    from alsel.store import open_store

    with open_store(pool) as st:
        emb = st.images
        for a in range(0, emb.n, 1 << 20):  # warm the page cache
            np.asarray(emb.raw(a, min(emb.n, a + (1 << 20)))).sum()
        sync(device)
        t0 = time.perf_counter()
        for a in range(0, emb.n, 1 << 20):
            torch.from_numpy(np.ascontiguousarray(emb.raw(a, min(emb.n, a + (1 << 20))))).to(device)
        sync(device)
        return emb.n * emb.d * 2 / (time.perf_counter() - t0)


def write_pairs(path: str, n: int, d: int, seed: int, prefix: str, device) -> None:
    """n images and one caption each, random unit rows made on the device, float16, in 2^20-row slices."""
    g = torch.Generator(device=device).manual_seed(seed)
    with StoreWriter(path, model="bench", pretrained="none", created_by="gpu_bench") as w:
        w.add_group("images", n, d, np.float16)
        w.add_group("texts", n, d, np.float16, text_image=np.arange(n))
        for a in range(0, n, 1 << 20):
            m = min(1 << 20, n - a)
            x = torch.nn.functional.normalize(torch.randn(m, d, device=device, generator=g), dim=1)
            t = torch.nn.functional.normalize(x + 0.7 * torch.randn(m, d, device=device, generator=g) / d ** 0.5, dim=1)
            w.write("images", a, x.half().cpu().numpy(), [f"{prefix}i{i}" for i in range(a, a + m)])
            w.write("texts", a, t.half().cpu().numpy(), [f"{prefix}t{i}" for i in range(a, a + m)])


def run(*args) -> float:
    import contextlib
    import io

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the commands' tables: only the times are printed here
        code = cli.main([str(a) for a in args] + ["--quiet"])
    if code != 0:
        raise SystemExit(f"alsel {' '.join(map(str, args))}: exit {code}")
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--paired", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rates = {"bf16": rate_mm(torch.bfloat16, device), "fp16": rate_mm(torch.float16, device),
             "fp32": rate_mm(torch.float32, device), "scan": rate_scan(device, 1 << 26 if device.type == "cpu" else 1 << 31)}
    rates["bf16"] = max(rates["bf16"], rates["fp16"])  # the exact low-precision path uses fp16 on CUDA
    print(f"{name}, torch {torch.__version__}: bare mm fp16 {rates['fp16'] / 1e12:.1f} T/s, bf16 "
          f"{rates['bf16'] / 1e12:.1f} T/s, fp32 {rates['fp32'] / 1e12:.2f} T/s (multiply-adds); memory scan "
          f"{rates['scan'] / 2**30:.0f} GiB/s", flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        paired = os.path.join(d, "paired.h5")
        write_pairs(paired, args.paired, args.dim, 1, "p", device)
        save_prob_head(os.path.join(d, "ph.pt"), ProbHead(args.dim, 10, ProbConfig(dim=64)).eval())
        run("train", "--paired", paired, "--out", os.path.join(d, "rh.pt"), "--epochs", 1, "--device", args.device)
        for n in (int(x) for x in args.sizes.split(",")):
            pool = os.path.join(d, f"pool{n}.h5")
            t0 = time.perf_counter()
            write_pairs(pool, n, args.dim, n, "u", device)
            rates["read"] = rate_read(pool, device)
            print(f"\npool {n:,} rows ({n * args.dim * 2 / 2**30:.1f} GiB, written in {time.perf_counter() - t0:.0f} s); "
                  f"bare read to the device {rates['read'] / 2**30:.1f} GiB/s", flush=True)
            dt = run("score", "--paired", paired, "--unpaired", pool, "--out", os.path.join(d, "s.h5"), "--device",
                     args.device)
            products = n * args.paired * args.dim
            mm_s = products / rates["fp16"]
            read_s = n * args.dim * 2 / rates["read"]
            print(f"{'score':>16} {dt:7.1f} s  {n / dt:12,.0f} rows/s; bare fp16 mm of the same shapes {mm_s:.2f} s, "
                  f"bare read {read_s:.2f} s: {dt / max(mm_s, read_s):.2f} x the larger", flush=True)
            for s in args.strategies.split(","):
                extra = ["--head", os.path.join(d, "ph.pt")] if s.startswith("ascmr") else ["--paired", paired]
                if s == "hn-learnability":
                    extra += ["--head", os.path.join(d, "rh.pt")]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                dt = run("select", "--strategy", s, "--unpaired", pool, *extra, "--budget", args.budget, "--out",
                         os.path.join(d, f"sel_{s}.h5"), "--device", args.device)
                need = limits(s, n, args.paired, args.dim, args.budget, 64)
                limit = sum(need.get(k, 0) / rates[k] for k in ("bf16", "fp32", "read", "scan"))
                print(f"{s:>16} {dt:7.1f} s  limit {limit:6.2f} s  ratio {dt / max(limit, 1e-3):5.1f}", flush=True)
            os.unlink(pool)


if __name__ == "__main__":
    main()
