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

STRATEGIES = ("random", "coreset", "typiclust", "hn", "hn-density", "hn-learnability", "ascmr", "probcover",
              "schedule")  # the dearest last: a run cut short at its limit still prints the rest


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


def ids_read_seconds(pool: str) -> float:
    """A bare read of the pool's variable-length /images/id (h5py, in the 2^16-row slices alsel reads ids
    in): what any command pays once under the contract (the duplicate-id check of every input), and what
    no device can speed up."""
    import h5py

    with h5py.File(pool, "r") as f:
        ds = f["images/id"]
        t0 = time.perf_counter()
        for a in range(0, len(ds), 1 << 16):
            ds[a:a + (1 << 16)]
        return time.perf_counter() - t0


def rate_normal(device, seconds=1.0) -> float:
    """Standard normal float32 numbers per second of bare torch.randn (the ASCMR family's J samples)."""
    out = torch.empty(1 << 24, device=device)
    torch.randn(out.shape, out=out, device=device)
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.randn(out.shape, out=out, device=device)
        reps += 1
    sync(device)
    return reps * out.numel() / (time.perf_counter() - t0)


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


def run(*args) -> float | None:
    """Seconds of one command in this process; None (and its error on stderr) where it failed, so that one
    strategy's failure on a device costs its line, not the rest of the run."""
    import contextlib
    import io

    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the commands' tables: only the times are printed here
            code = cli.main([str(a) for a in args] + ["--quiet"])
    except Exception:  # noqa: BLE001 - ALSEL_DEBUG=1 re-raises: the traceback, then the next command
        import traceback

        traceback.print_exc()
        code = "raised"
    if code != 0:
        print(f"FAILED: alsel {' '.join(map(str, args))}: exit {code}", flush=True)
        return None
    return time.perf_counter() - t0


def select_args(s: str, paired: str, prob_head: str, head: str) -> list:
    extra = ["--head", prob_head] if s.startswith("ascmr") else ["--paired", paired]
    return extra + (["--head", head] if s == "hn-learnability" else [])


def rows_of(path: str) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return f["row"][:]


def agree(d: str, device: str, n: int, budget: int, strategies) -> None:
    """Each command on the CPU and on the device, on the same clustered world (`alsel synth`, D = 512):
    score's counts (equal where the rounding bound makes them exact) and scores, and each strategy's picks
    (shared rows of the two selections, and whether their order is the same)."""
    w = os.path.join(d, "agree")
    run("synth", "--out", w, "--images", n, "--dim", 512, "--captions", 2, "--classes", 40, "--paired", 0.1,
        "--test", 0.05, "--seed", 3)
    paired, pool, pairs = (os.path.join(w, f) for f in ("paired.h5", "pool_images.h5", "oracle.h5"))
    ph, rh = os.path.join(d, "agree_ph.pt"), os.path.join(d, "agree_rh.pt")
    save_prob_head(ph, ProbHead(512, 40, ProbConfig(dim=64)).eval())
    run("train", "--paired", paired, "--out", rh, "--epochs", 2, "--device", "cpu")
    import h5py

    for i, dev in enumerate(("cpu", device)):
        run("score", "--paired", paired, "--unpaired", pool, "--out", os.path.join(d, f"score_{i}.h5"), "--device", dev)
        run("score", "--paired", paired, "--unpaired", pool, "--weight", "surplus", "--out",
            os.path.join(d, f"surplus_{i}.h5"), "--device", dev)
    for kind in ("score", "surplus"):
        with h5py.File(os.path.join(d, f"{kind}_0.h5")) as a, h5py.File(os.path.join(d, f"{kind}_1.h5")) as b:
            same = np.mean(a["count"][:] == b["count"][:])
            diff = np.max(np.abs(a["score"][:].astype(np.float64) - b["score"][:]))
            cdiff = np.max(np.abs(a["closest"][:].astype(np.float64) - b["closest"][:]))
            print(f"agree {kind:>16}: counts equal on {same:.4%} of {len(a['count'])} rows, max |score diff| "
                  f"{diff:.3g}, max |closest diff| {cdiff:.3g}", flush=True)
    for s in strategies:
        picks = []
        for i, dev in enumerate(("cpu", device)):
            src = pairs if s.startswith("ascmr") else pool
            f = os.path.join(d, f"agree_{s}_{i}.h5")
            if run("select", "--strategy", s, "--unpaired", src, *select_args(s, paired, ph, rh), "--budget", budget,
                   "--out", f, "--device", dev) is not None:
                picks.append(rows_of(f))
        if len(picks) == 2:
            a, b = picks
            print(f"agree {s:>16}: {len(np.intersect1d(a, b))} of {len(a)} picks shared, same order: "
                  f"{bool(np.array_equal(a, b))}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--paired", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--profile", default="typiclust,ascmr,schedule,hn",
                    help="commands profiled on the first size's pool (score or strategy names; empty: none)")
    ap.add_argument("--agree", type=int, default=20000,
                    help="images of the clustered world on which the CPU and the device are compared (0: none)")
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rates = {"bf16": rate_mm(torch.bfloat16, device), "fp16": rate_mm(torch.float16, device),
             "fp32": rate_mm(torch.float32, device), "scan": rate_scan(device, 1 << 26 if device.type == "cpu" else 1 << 31),
             "normal": rate_normal(device)}
    rates["bf16"] = max(rates["bf16"], rates["fp16"])  # the exact low-precision path uses fp16 on CUDA
    print(f"{name}, torch {torch.__version__}: bare mm fp16 {rates['fp16'] / 1e12:.1f} T/s, bf16 "
          f"{rates['bf16'] / 1e12:.1f} T/s, fp32 {rates['fp32'] / 1e12:.2f} T/s (multiply-adds); memory scan "
          f"{rates['scan'] / 2**30:.0f} GiB/s; randn {rates['normal'] / 1e9:.1f} G/s", flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        paired = os.path.join(d, "paired.h5")
        write_pairs(paired, args.paired, args.dim, 1, "p", device)
        save_prob_head(os.path.join(d, "ph.pt"), ProbHead(args.dim, 10, ProbConfig(dim=64)).eval())
        run("train", "--paired", paired, "--out", os.path.join(d, "rh.pt"), "--epochs", 1, "--device", args.device)
        if args.agree:  # on a CPU it compares the CPU with itself: the script's own check
            t0 = time.perf_counter()
            agree(d, args.device, args.agree, args.budget, args.strategies.split(","))
            print(f"(agreement checks {time.perf_counter() - t0:.0f} s)", flush=True)
        for n in (int(x) for x in args.sizes.split(",")):
            pool = os.path.join(d, f"pool{n}.h5")
            t0 = time.perf_counter()
            write_pairs(pool, n, args.dim, n, "u", device)
            rates["read"] = rate_read(pool, device)
            ids_s = ids_read_seconds(pool)
            print(f"\npool {n:,} rows ({n * args.dim * 2 / 2**30:.1f} GiB, written in {time.perf_counter() - t0:.0f} s); "
                  f"bare read to the device {rates['read'] / 2**30:.1f} GiB/s; bare read of its {n:,} ids "
                  f"{ids_s:.2f} s (host; every command reads them once: the ratios after / add it to the limit)",
                  flush=True)
            dt = run("score", "--paired", paired, "--unpaired", pool, "--out", os.path.join(d, "s.h5"), "--device",
                     args.device) or float("nan")
            products = n * args.paired * args.dim
            mm_s = products / rates["fp16"]
            read_s = n * args.dim * 2 / rates["read"]
            print(f"{'score':>16} {dt:7.1f} s  {n / dt:12,.0f} rows/s; bare fp16 mm of the same shapes {mm_s:.2f} s, "
                  f"bare read {read_s:.2f} s: {dt / max(mm_s, read_s):.2f} x the larger / "
                  f"{dt / (max(mm_s, read_s) + ids_s):.2f}", flush=True)
            for s in args.strategies.split(","):
                extra = select_args(s, paired, os.path.join(d, "ph.pt"), os.path.join(d, "rh.pt"))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                dt = run("select", "--strategy", s, "--unpaired", pool, *extra, "--budget", args.budget, "--out",
                         os.path.join(d, f"sel_{s}.h5"), "--device", args.device)
                if dt is None:
                    continue
                need = limits(s, n, args.paired, args.dim, args.budget, 64)
                limit = sum(need.get(k, 0) / rates[k] for k in ("bf16", "fp32", "read", "scan", "normal"))
                ratio = f"ratio {dt / limit:5.1f} / {dt / (limit + ids_s):4.1f}" if limit else \
                    f"(no products or passes: no limit) / {dt / ids_s:4.1f}"
                print(f"{s:>16} {dt:7.1f} s  limit {limit:6.2f} s  {ratio}", flush=True)
            if n == int(args.sizes.split(",")[0]):  # the first size: the host-side structure at a small cost
                for s in filter(None, args.profile.split(",")):
                    profile(s, d, pool, paired, args)
            os.unlink(pool)


def profile(s: str, d: str, pool: str, paired: str, args) -> None:
    """cProfile of one command on the first size's pool: its 30 dearest functions (own time) into
    $OUT/profile_NAME.txt (or TMPDIR), where the time above the limit goes."""
    import cProfile
    import pstats

    if s == "score":
        cmd = ["score", "--paired", paired, "--unpaired", pool, "--out", os.path.join(d, "s.h5")]
    else:
        cmd = ["select", "--strategy", s, "--unpaired", pool, *select_args(s, paired, os.path.join(d, "ph.pt"),
               os.path.join(d, "rh.pt")), "--budget", args.budget, "--out", os.path.join(d, f"sel_{s}.h5")]
    prof = cProfile.Profile()
    prof.enable()
    dt = run(*cmd, "--device", args.device)
    prof.disable()
    out = os.path.join(os.environ.get("OUT") or tempfile.gettempdir(), f"profile_{s}.txt")
    with open(out, "w") as fh:
        fh.write(f"{s}: {dt} s under cProfile\n")
        pstats.Stats(prof, stream=fh).sort_stats("tottime").print_stats(30)
    print(f"(profile of {s}: {out})", flush=True)


if __name__ == "__main__":
    main()
