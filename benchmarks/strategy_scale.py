"""How every strategy of the registry scales with the pool, against its streaming limit on this machine.

Writes, per size N, a pool of N pairs (random unit rows, float16, D = 512: images with one caption each,
so the same file serves the strategies that take pool images and those that take pool pairs), a paired
store of 5,000 pairs and a randomly initialised probabilistic head, then runs `alsel select --strategy NAME
--budget B` in a fresh process per strategy and size and prints its seconds and peak RSS (VmHWM) beside
its *limit*: what its passes and products cost at this machine's bare rates, measured in the same run —

    start     a fresh interpreter importing torch and alsel and opening the stores (`alsel select` on a
              10-row pool with --strategy random);
    mm_bf16   a bare bfloat16 torch.mm of 1024 × 512 tiles against 2048 columns (float32 accumulation),
    mm_fp32   the same in float32 (also what k-means fitting runs at);
    read      a bare read of the pool's rows from the page cache (float16 file);
    scan      a bare pass over the rows held in memory as float32 (a matrix-vector product);
    normal    bare torch.randn (the ASCMR family draws J = 8 samples of each Gaussian it maps).

    limit = start + products / mm rate + bytes / read or scan rate, per strategy (LIMITS below: the
    products and passes each strategy cannot avoid, at the precision it may use exactly; bfloat16 products
    at the faster of the two mm rates, since a CPU without native bfloat16 runs them in float32).

    python benchmarks/strategy_scale.py --sizes 100000,1000000
    python benchmarks/strategy_scale.py --sizes 20000 --strategies typiclust,probcover   # a quick look
    python benchmarks/strategy_scale.py --sizes 10000000 --shards 4 --strategies coreset,typiclust   # sharded:
        each shard in its own process (or on the local SLURM with --slurm), time and peak RSS per shard
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from alsel import strategies  # noqa: E402
from alsel.clustering import KMEANS_ITERS, KMEANS_SAMPLE  # noqa: E402
from alsel.probhead import ProbConfig, ProbHead, save_prob_head  # noqa: E402
from alsel.store import StoreWriter  # noqa: E402
from alsel.strategies.probcover import MAX_TARGETS  # noqa: E402

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


# --------------------------------------------------------------------------- bare rates


def rate_mm(dtype, seconds: float = 1.5) -> float:
    """Multiply-adds per second of bare torch.mm on alsel's CPU tile shapes (1024 × D by D × 2048)."""
    a = torch.randn(1024, 512).to(dtype)
    b = torch.randn(2048, 512).to(dtype)
    out = torch.empty(1024, 2048, dtype=dtype)
    torch.mm(a, b.T, out=out)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b.T, out=out)
        n += 1
    return n * 1024 * 2048 * 512 / (time.perf_counter() - t0)


def rate_read(pool: str) -> float:
    """Bytes per second of reading the pool's /images/emb once from the page cache (after a warm-up read)."""
    import h5py

    with h5py.File(pool, "r") as f:
        ds = f["images/emb"]
        off, nbytes = ds.id.get_offset(), ds.size * ds.dtype.itemsize
    with open(pool, "rb") as fh:
        fh.seek(off)
        fh.read(nbytes)  # into the page cache
        t0 = time.perf_counter()
        fh.seek(off)
        view = memoryview(bytearray(min(nbytes, 1 << 28)))
        left = nbytes
        while left > 0:
            got = fh.readinto(view[:min(left, len(view))])
            left -= got
        return nbytes / (time.perf_counter() - t0)


def rate_scan(n: int = 1 << 20, d: int = 512, seconds: float = 1.5) -> float:
    """Bytes per second of a float32 matrix-vector product over rows held in memory (k-center's per-pick pass)."""
    x = torch.randn(n, d)
    v = torch.randn(d)
    x @ v
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x @ v
        k += 1
    return k * n * d * 4 / (time.perf_counter() - t0)


def rate_normal(seconds: float = 1.5) -> float:
    """Standard normal float32 numbers per second of bare torch.randn (the ASCMR family's samples)."""
    g = torch.Generator().manual_seed(0)
    out = torch.empty(4096, 1024)
    torch.randn(out.shape, generator=g, out=out)
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.randn(out.shape, generator=g, out=out)
        k += 1
    return k * out.numel() / (time.perf_counter() - t0)


def one_cpu_rates(rates: dict) -> dict:
    """The bare rates again with one torch thread: what an array task has (submit.sh asks for one CPU per
    task, and alsel keeps to SLURM's allocation), for the per-task limits. The read is one thread anyway."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = dict(rates, bf16=rate_mm(torch.bfloat16), fp32=rate_mm(torch.float32), scan=rate_scan(),
                   normal=rate_normal())
    finally:
        torch.set_num_threads(threads)
    print(f"one CPU per array task: bf16 mm {one['bf16'] / 1e9:.0f} G/s, fp32 mm {one['fp32'] / 1e9:.0f} G/s, "
          f"scan {one['scan'] / 2**30:.1f} GiB/s, randn {one['normal'] / 1e6:.0f} M/s (the tasks' limits)")
    return one


# --------------------------------------------------------------------------- limits


def limits(name: str, n: int, p: int, d: int, b: int, dim: int) -> dict:
    """The products (multiply-adds, by precision) and bytes (read from the file, scanned in memory) a
    strategy cannot avoid for a pool of n rows, p paired pairs, dimension d, budget b."""
    read = n * d * 2  # one pass over the float16 pool
    k_sample = min(KMEANS_SAMPLE, n + p)
    lloyd = lambda k: k_sample * k * d * KMEANS_ITERS  # noqa: E731  (k-means Lloyd steps on the sample, float32)
    if name == "random":
        return {}
    if name == "coreset":  # distances to the paired set, then one pass over the held rows per pick
        return {"fp32": n * p * d, "read": read, "scan": b * n * d * 4}
    if name in ("hn", "hn-learnability"):  # thresholds (paired × paired) and the scores (pool × captions)
        times = 2 if name == "hn-learnability" else 1
        return {"bf16": times * (p * p * d + n * p * d), "read": times * read}
    m = min(MAX_TARGETS, n + p)
    purity_delta = m * m * d + m * 20 * d + lloyd(20)  # δ auto: k-means (--clusters 20) on a sample, the members
    if name == "hn-density":
        return {"bf16": p * p * d + n * p * d, "fp32": n * b * d + lloyd(b), "read": 2 * read}
    if name == "schedule":  # δ, the coverage (pool × paired), TypiClust, and hn when c·B rounds to an item
        parts = [limits("typiclust", n, p, d, b, dim), limits("hn", n, p, d, b, dim),
                 {"bf16": n * p * d, "fp32": purity_delta, "read": read}]
        return {key: sum(x.get(key, 0) for x in parts) for key in ("bf16", "fp32", "read", "scan", "normal")}
    if name == "typiclust":  # k-means (fit, assignment), typicality against the cluster's sampled points
        k = min(p + b, 500)
        return {"fp32": n * k * d + n * (k_sample / k) * d + lloyd(k), "read": read}
    if name == "probcover":  # the purity δ, then every pool row against the ball members
        return {"bf16": n * m * d, "fp32": purity_delta, "read": read}
    # the ASCMR family: both Gaussian maps of every pool pair, J = 8 samples of each written and read once,
    # then k-means on the fused means
    return {"fp32": n * 2 * 2 * d * dim + lloyd(20), "read": 2 * read, "scan": 2 * 2 * 8 * n * dim * 4,
            "normal": 2 * 8 * n * dim}


def limit_seconds(need: dict, rates: dict) -> float:
    """Products that may run in bfloat16 count at the faster of the two matmul rates: where a CPU has no
    native bfloat16 (its bare bf16 mm slower than float32), `--precision auto` runs them in float32."""
    rate = dict(rates, bf16=max(rates["bf16"], rates["fp32"]))
    return rate["start"] + sum(need.get(k, 0) / rate[k] for k in ("bf16", "fp32", "read", "scan", "normal"))


def shard_limit(name: str, n: int, shards: int, args, rates: dict) -> float:
    """The limit of one shard's task: the strategy's limit on its n / shards rows, with the picks it keeps
    (a strategy's shard_keep × B: core-set and ProbCover keep more than B candidates per shard)."""
    picks = args.budget * strategies.get(name).shard_keep
    return limit_seconds(limits(name, n // shards, args.paired, args.dim, picks, 64), rates)


def run_select(d: str, name: str, pool: str, paired: str, head: str, budget: int, extra=()) -> tuple[float, float]:
    s = strategies.get(name)
    args = ["--head", head] if "prob_head" in s.needs else ["--paired", paired]
    if "head" in s.needs:
        args += ["--head", os.path.join(d, "rh.pt")]
    hwm = os.path.join(d, f"hwm{os.getpid()}")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, hwm, "select", "--strategy", name, "--unpaired", pool, *args,
                        "--budget", str(budget), "--out", os.path.join(d, f"sel_{name}.h5"), "--device", "cpu",
                        "--quiet", *extra], cwd=ROOT, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{name}: {r.stderr}")
    return dt, int(open(hwm).read().split()[1]) / 2**20


WRAPPER = """#!/usr/bin/env bash
# alsel as the job scripts call it, recording each process's wall time and peak RSS (VmHWM)
t0=$(date +%s.%N)
set +e
task=${{SLURM_ARRAY_TASK_ID:-${{SLURM_JOB_NAME#alsel-}}}}
{python} -c '{child}' "{out}/hwm_$task" "$@"
rc=$?
echo "$task $t0 $(date +%s.%N) $rc" >> "{out}/times"
exit $rc
"""


def slurm_shards(d: str, name: str, pool: str, paired: str, n: int, args, task_limit: float) -> None:
    """The shards of `name` as a SLURM array (examples/slurm/submit.sh, STRATEGY=name) and the merge, on a
    one-node cluster started for the run: per task its wall time, its ratio to one shard's limit
    (`task_limit`, not for the merge) and peak RSS."""
    out = os.path.join(d, f"slurm_{name}")
    os.makedirs(os.path.join(out, "bin"))
    wrapper = os.path.join(out, "bin", "alsel")
    with open(wrapper, "w") as fh:
        fh.write(WRAPPER.format(python=sys.executable, child=CHILD.replace("'", "'\\''"), out=out))
    os.chmod(wrapper, 0o755)
    cluster = os.path.join(d, "cluster")
    if not os.path.exists(os.path.join(cluster, "slurm.conf")):
        os.makedirs(cluster, exist_ok=True)
        r = subprocess.run(["bash", os.path.join(ROOT, "tests", "slurm", "cluster.sh"), "start", cluster],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"cannot start SLURM: {r.stderr.strip()[-300:]}")
    env = dict(os.environ, SLURM_CONF=os.path.join(cluster, "slurm.conf"), PATH=f"{os.path.dirname(wrapper)}:"
               f"{os.environ['PATH']}", PAIRED=paired, POOL=pool, OUT=os.path.join(out, "run"), SHARDS=str(args.shards),
               BUDGET=str(args.budget), STRATEGY=name, GRES="", CPUS="1", ALSEL_PROGRESS_SECONDS="60",
               PYTHONPATH=ROOT)
    t0 = time.perf_counter()
    r = subprocess.run(["bash", os.path.join(ROOT, "examples", "slurm", "submit.sh")], capture_output=True, text=True,
                       env=env)
    if r.returncode != 0:
        sys.exit(f"submit.sh: {r.stderr}")
    merge = re.search(r"(?:merge|selection) (\d+)", r.stdout).group(1)
    while True:
        q = subprocess.run(["scontrol", "-o", "show", "job", merge], capture_output=True, text=True, env=env).stdout
        state = next((f.split("=")[1] for f in q.split() if f.startswith("JobState=")), "")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") or (not q and time.perf_counter() - t0 > 30):
            break
        time.sleep(2)
    wall = time.perf_counter() - t0
    rows = [line.split() for line in open(os.path.join(out, "times"))]
    what = "thresholds, a scoring array, the selection" if name == "hn" else "a shard array, the merge"
    print(f"{name:>18} on SLURM ({what}), {args.shards} array tasks of {n // args.shards:,} rows "
          f"({state}, {wall:.0f} s in all; limit of one task {task_limit:.1f} s):", flush=True)
    for task, a, b, rc in sorted(rows, key=lambda x: (not x[0].isdigit(), x[0])):
        kib = int(open(os.path.join(out, f"hwm_{task}")).read().split()[1]) if os.path.exists(
            os.path.join(out, f"hwm_{task}")) else 0
        dt = float(b) - float(a)
        ratio = f" ({dt / task_limit:.2f} × the limit)" if task.isdigit() else ""
        print(f"{'':>18}   task {task}: {dt:7.1f} s{ratio}, peak RSS {kib / 2**20:.2f} GiB, exit {rc}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--strategies", default=",".join(strategies.names()))
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--paired", type=int, default=5000)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--shards", type=int, default=1, help="run each strategy as this many shards (one process "
                                                           "each, one after the other) and the merge")
    ap.add_argument("--slurm", action="store_true", help="with --shards: submit them as an array with "
                                                         "examples/slurm/submit.sh on a one-node SLURM started here "
                                                         "(tests/slurm/cluster.sh; root)")
    ap.add_argument("--pools", default=None, help="a folder that keeps the generated pools (pool<N>.h5) and reuses "
                                                  "them when present (they are the same for the same N)")
    args = ap.parse_args()
    torch.manual_seed(0)
    names = args.strategies.split(",")
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        head = ProbHead(args.dim, 10, ProbConfig(dim=64)).eval()
        save_prob_head(os.path.join(d, "ph.pt"), head)
        paired = os.path.join(d, "paired.h5")
        write_pairs(paired, args.paired, args.dim, 1, "p")
        if any("head" in strategies.get(n).needs for n in names):
            r = subprocess.run([sys.executable, "-c", "import sys, cli; sys.exit(cli.main(sys.argv[1:]))", "train",
                                "--paired", paired, "--out", os.path.join(d, "rh.pt"), "--epochs", "1", "--quiet",
                                "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        tiny = os.path.join(d, "tiny.h5")
        write_pairs(tiny, 10, args.dim, 2, "t")
        starts = [run_select(d, "random", tiny, paired, os.path.join(d, "ph.pt"), 5)[0] for _ in range(3)]
        print(f"paired store {args.paired:,} pairs, D = {args.dim}, float16 pools, budget {args.budget}, "
              f"{os.cpu_count()} CPU cores, torch {torch.__version__}")
        for n in (int(x) for x in args.sizes.split(",")):
            pool = os.path.join(args.pools or d, f"pool{n}x{args.dim}.h5")
            if not (args.pools and os.path.exists(pool)):
                write_pairs(pool + ".part", n, args.dim, n, "u")
                os.replace(pool + ".part", pool)
            rates = {"start": float(np.median(starts)), "bf16": rate_mm(torch.bfloat16), "fp32": rate_mm(torch.float32),
                     "read": rate_read(pool), "scan": rate_scan(min(n, 1 << 20), args.dim), "normal": rate_normal()}
            print(f"\npool {n:,} rows ({n * args.dim * 2 / 2**30:.2f} GiB). Bare rates in this run: start "
                  f"{rates['start']:.1f} s, bf16 mm {rates['bf16'] / 1e9:.0f} G/s, fp32 mm {rates['fp32'] / 1e9:.0f} G/s, "
                  f"read {rates['read'] / 2**30:.1f} GiB/s, scan "
                  f"{rates['scan'] / 2**30:.1f} GiB/s, randn {rates['normal'] / 1e6:.0f} M/s")
            if args.shards > 1 and args.slurm:
                rates = one_cpu_rates(rates)
            print(f"{'strategy':>18} {'seconds':>8} {'limit':>7} {'ratio':>6} {'peak RSS':>10}")
            for name in names:
                limit = limit_seconds(limits(name, n, args.paired, args.dim, args.budget, 64), rates)
                if args.shards > 1 and args.slurm:
                    if strategies.get(name).shardable:
                        slurm_shards(d, name, pool, paired, n, args, shard_limit(name, n, args.shards, args, rates))
                    continue
                if args.shards > 1:
                    if not strategies.get(name).shardable:
                        continue
                    per = []
                    for i in range(args.shards):
                        dt, gib = run_select(d, name, pool, paired, os.path.join(d, "ph.pt"), args.budget,
                                             ["--shard", f"{i}/{args.shards}"])
                        os.replace(os.path.join(d, f"sel_{name}.h5"), os.path.join(d, f"cand_{name}_{i}.h5"))
                        per.append((dt, gib))
                    t0 = time.perf_counter()
                    r = subprocess.run([sys.executable, "-c", "import sys, cli; sys.exit(cli.main(sys.argv[1:]))",
                                        "select", "--candidates", *[os.path.join(d, f"cand_{name}_{i}.h5")
                                                                    for i in range(args.shards)],
                                        "--out", os.path.join(d, "merged.h5"), "--quiet"], cwd=ROOT,
                                       capture_output=True, text=True)
                    assert r.returncode == 0, r.stderr
                    merge = time.perf_counter() - t0
                    task_limit = shard_limit(name, n, args.shards, args, rates)
                    print(f"{name:>18} shards of {n // args.shards:,} rows (limit {task_limit:.1f} s): " + ", ".join(
                        f"{dt:.1f} s ({dt / task_limit:.2f}×) / {gib:.2f} GiB" for dt, gib in per)
                        + f"; merge {merge:.1f} s", flush=True)
                    continue
                dt, gib = run_select(d, name, pool, paired, os.path.join(d, "ph.pt"), args.budget)
                print(f"{name:>18} {dt:>8.1f} {limit:>7.1f} {dt / limit:>6.2f} {gib:>8.2f} GiB", flush=True)
            if not args.pools:
                os.unlink(pool)
        cluster = os.path.join(d, "cluster")
        if os.path.exists(os.path.join(cluster, "slurm.conf")):
            subprocess.run(["bash", os.path.join(ROOT, "tests", "slurm", "cluster.sh"), "stop", cluster],
                           capture_output=True)


if __name__ == "__main__":
    main()
