"""Sharded selection against one process (SPEC §10), on random data: what a merge of n shards gives up.

For a uniform pool and a clustered one sorted by cluster (contiguous shards then see few clusters: the
adversarial case), D = 32, a paired store of 200 pairs, budget 100, 2, 4 and 8 shards, it prints
  - for the exact strategies (random, typiclust, hn-density, hn): whether the merged selection equals the
    single-process one, row for row;
  - coreset: the covering radius of paired + picks over the pool (float64), single vs merged, and the
    merged file's a-posteriori bound (radius_bound = r_union + max r_i);
  - probcover: the points covered within δ by paired + picks, single vs merged (bound: ≥ (1 − 1/e)/2),
    δ where the paired set alone covers 30% of the pool.

    python benchmarks/shard_quality.py [--pool 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from alsel import strategies  # noqa: E402
from alsel.candidates import save_candidates  # noqa: E402
from alsel.store import open_store, write_store  # noqa: E402
from alsel.strategies import Inputs  # noqa: E402

CPU = torch.device("cpu")
EXACT = ("random", "typiclust", "hn-density", "hn")


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def world(d: str, n_pool: int, dim: int, clustered: bool, seed: int = 0) -> tuple[str, str]:
    rng = np.random.default_rng(seed)
    images = unit(rng.standard_normal((200, dim)))
    texts = unit(images + 0.3 * rng.standard_normal(images.shape))
    paired = os.path.join(d, "p.h5")
    write_store(paired, images=images, image_ids=[f"p{i}" for i in range(200)], texts=texts,
                text_ids=[f"t{i}" for i in range(200)], text_image=np.arange(200), model="bench", pretrained="none",
                created_by="shard_quality")
    if clustered:
        centers = unit(rng.standard_normal((400, dim)))  # more clusters than the budget
        label = np.sort(rng.integers(0, 400, n_pool))
        rows = unit(centers[label] + 0.1 * rng.standard_normal((n_pool, dim)))
    else:
        rows = unit(rng.standard_normal((n_pool, dim)))
    pool = os.path.join(d, f"u{int(clustered)}.h5")
    write_store(pool, images=rows, image_ids=[f"u{i}" for i in range(n_pool)], model="bench", pretrained="none",
                created_by="shard_quality")
    return paired, pool


def run(d, name, paired, pool, budget, n, **kw):
    with open_store(paired, need="paired") as p, open_store(pool) as u:
        one = strategies.select(name, Inputs(pool=u, paired=p, budget=budget, seed=1, device=CPU), **kw)
        paths = []
        for i in range(n):
            data, attrs = strategies.select_shard(name, Inputs(pool=u, paired=p, budget=budget, seed=1, device=CPU,
                                                               shard=(i, n)), **kw)
            paths.append(os.path.join(d, f"c{i}.h5"))
            save_candidates(paths[-1], data, attrs)
    return one, strategies.merge_shards(paths)


def nearest(points, centers, block=4096):
    """Distance of every point to its nearest center (float64)."""
    c = centers.astype(np.float64)
    out = np.empty(len(points))
    for a in range(0, len(points), block):
        x = points[a:a + block].astype(np.float64)
        out[a:a + block] = np.sqrt(np.maximum(2 - 2 * (x @ c.T).max(axis=1), 0))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--shards", default="2,4,8")
    args = ap.parse_args()
    shards = [int(s) for s in args.shards.split(",")]
    print(f"pool {args.pool:,} rows, D = {args.dim}, 200 paired pairs, budget {args.budget}")
    for clustered in (False, True):
        with tempfile.TemporaryDirectory() as d:
            paired, pool = world(d, args.pool, args.dim, clustered)
            with open_store(paired, need="paired") as p, open_store(pool) as u:
                P = p.images.read(0, p.images.n).astype(np.float64)
                U = u.images.read(0, u.images.n).astype(np.float64)
            kind = "clustered, sorted by cluster" if clustered else "uniform"
            print(f"\n{kind}:")
            for n in shards:
                same = []
                for name in EXACT:
                    one, merged = run(d, name, paired, pool, args.budget, n)
                    same.append(f"{name} {'equal' if list(one.rows) == list(merged.rows) else 'DIFFERENT'}")
                one, merged = run(d, "coreset", paired, pool, args.budget, n)
                r_one = nearest(U, np.concatenate([P, U[one.rows]])).max()
                r_merged = nearest(U, np.concatenate([P, U[merged.rows]])).max()
                # δ at which the paired set alone covers 30% of the pool: the picks have much left to cover
                delta = round(float(np.quantile(nearest(U, P), 0.3)), 3)
                one_pc, merged_pc = run(d, "probcover", paired, pool, args.budget, n, delta=delta)
                pts = np.concatenate([P, U])
                c_one = int((nearest(pts, np.concatenate([P, U[one_pc.rows]])) <= delta).sum())
                c_merged = int((nearest(pts, np.concatenate([P, U[merged_pc.rows]])) <= delta).sum())
                print(f"  {n} shards: {', '.join(same)}")
                print(f"    coreset covering radius: single {r_one:.4f}, merged {r_merged:.4f} "
                      f"(ratio {r_merged / r_one:.3f}; bound from the files {float(merged.attrs['radius_bound']):.4f})")
                print(f"    probcover points covered at δ = {delta}: single {c_one:,}, merged {c_merged:,} "
                      f"(ratio {c_merged / max(c_one, 1):.3f}; bound {(1 - 1 / np.e) / 2:.3f})")


if __name__ == "__main__":
    main()
